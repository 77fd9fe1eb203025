"""Choosing the images parity checks and int8 calibration run on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

import dronseg_edge.export.images as images
from dronseg_edge.errors import DronsegError
from dronseg_edge.export.images import load_item, resolve_images


def write_images(folder, count, masks=False):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"f{i:02d}.png"), np.full((8, 12, 3), i * 10, np.uint8))
    return folder


def test_plain_image_folder_is_used_in_name_order_and_capped_evenly(tmp_path):
    folder = write_images(tmp_path / "frames", 10)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._f00.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # macOS's resource fork, which infer leaves out too
    with resolve_images(folder, None, option="--parity-data", max_images=4, size=(12, 8), allow_synthetic=True) as found:
        assert [i.image.name for i in found.items] == ["f00.png", "f03.png", "f06.png", "f09.png"]
        assert all(item.mask is None for item in found.items) and not found.synthetic and "image folder" in found.source


def test_dataset_root_brings_its_masks(scenes):
    found = resolve_images(scenes, None, option="--calib-data", max_images=None, size=(96, 64), allow_synthetic=False)
    assert len(found.items) == 40 and all(item.mask is not None for item in found.items)
    frame, mask = load_item(found.items[0], 12)
    assert frame.shape == (64, 96, 3) and mask.shape == (64, 96) and mask.max() < 12


def test_dataset_root_without_its_masks_gives_its_images(scenes, tmp_path):
    """A data set copied without masks/ (to a Jetson, for the engine's calibration) was refused: "mask ... is missing
    for train image ...: add it or drop the image from train.csv", masks that calibration never reads."""
    (tmp_path / "imgs").symlink_to(scenes / "imgs")
    (tmp_path / "train.csv").write_text((scenes / "train.csv").read_text())
    found = resolve_images(tmp_path, None, option="--calib-data", max_images=None, size=(96, 64), allow_synthetic=False)
    assert len(found.items) == 40 and all(item.mask is None for item in found.items)


def test_default_is_the_checkpoints_validation_split(scenes):
    ckpt = {"path": "best.pt", "config": {"data": str(scenes)}, "split": {"val": ["scene_038", "scene_039"]}}
    found = resolve_images(None, ckpt, option="--calib-data", max_images=16, size=(96, 64), allow_synthetic=False)
    assert [i.image.stem for i in found.items] == ["scene_038", "scene_039"]
    assert "validation split" in found.source


def test_empty_or_missing_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DronsegError, match="--calib-data .*empty holds no images"):
        resolve_images(tmp_path / "empty", None, option="--calib-data", max_images=8, size=(96, 64), allow_synthetic=False)
    with pytest.raises(DronsegError, match="--calib-data .*nowhere does not exist"):
        resolve_images(tmp_path / "nowhere", None, option="--calib-data", max_images=8, size=(96, 64), allow_synthetic=False)


def test_a_broken_image_link_in_a_plain_folder_is_named_not_left_out(tmp_path):
    """A link whose target is gone was left out without a word (parity of 9 of 10 images), as a data set's is refused."""
    folder = write_images(tmp_path / "frames", 2)
    (folder / "f02.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DronsegError, match=r"f02.png is a link to a file that does not exist: restore its target"):
        resolve_images(folder, None, option="--parity-data", max_images=None, size=(12, 8), allow_synthetic=True)


def test_calibration_never_falls_back_to_synthetic_images():
    ckpt = {"path": "tiny.pt"}  # a checkpoint that recorded no split
    with pytest.raises(DronsegError, match="--calib-data is needed: checkpoint tiny.pt records no validation split"):
        resolve_images(None, ckpt, option="--calib-data", max_images=8, size=(96, 64), allow_synthetic=False)
    moved = {"path": "tiny.pt", "config": {"data": "/no/such/data"}, "split": {"val": ["a"]}}
    with pytest.raises(DronsegError, match="/no/such/data that checkpoint tiny.pt was trained on no longer exists"):
        resolve_images(None, moved, option="--calib-data", max_images=8, size=(96, 64), allow_synthetic=False)


def test_parity_without_any_real_images_asks_for_them_when_no_synthesizer(monkeypatch):
    monkeypatch.setattr(images.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DronsegError, match="pass --parity-data DIR"):
        resolve_images(None, {"path": "tiny.pt"}, option="--parity-data", max_images=4, size=(96, 64), allow_synthetic=True)


@pytest.mark.skipif(importlib.util.find_spec("dronseg_edge.data.synthetic") is None,
                    reason="dronseg_edge.data.synthetic is not in this tree yet")
def test_parity_falls_back_to_synthetic_scenes_and_says_so():
    found = resolve_images(None, {"path": "tiny.pt"}, option="--parity-data", max_images=3, size=(96, 64),
                           allow_synthetic=True)
    try:
        assert found.synthetic and len(found.items) == 3 and "synthetic" in found.source
        assert all(item.image.is_file() for item in found.items)
        folder = found.items[0].image.parent
    finally:
        found.close()
    assert not folder.exists()


@pytest.mark.skipif(importlib.util.find_spec("dronseg_edge.data.synthetic") is None,
                    reason="dronseg_edge.data.synthetic is not in this tree yet")
@pytest.mark.parametrize("size, rendered", [((24, 16), (32, 32)), ((8200, 32), (8192, 32))])
def test_synthetic_scenes_for_a_model_size_synth_does_not_take_are_rendered_within_its_range(size, rendered):
    # export --size 24x24 (export takes 16..16384), or a checkpoint trained at 16x16, without a recorded split:
    # "error: --size 24x24 is out of range: each side must be 32..8192 pixels", an option synth's, not export's
    with resolve_images(None, {"path": "tiny.pt"}, option="--parity-data", max_images=1, size=size,
                        allow_synthetic=True) as found:
        assert cv2.imread(str(found.items[0].image)).shape[1::-1] == rendered


def test_an_image_folder_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    # recorded in an int8 artifact's calibration metadata and the parity report: "data set s1" named nothing
    # once the file left that folder, and made the artifact's bytes depend on how the path was typed
    from dronseg_edge.export.images import images_from_folder

    (tmp_path / "pictures").mkdir()
    cv2.imwrite(str(tmp_path / "pictures" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    assert images_from_folder(Path("pictures"), "--calib-data")[1] == f"image folder {(tmp_path / 'pictures').resolve()}"


def test_an_image_over_the_limit_is_not_advised_a_max_pixels_parity_and_export_lack(tmp_path, capsys, tiny_checkpoint):
    """parity, export's parity and calibration read at the default limit and take no --max-pixels: the advice
    to raise it could not be followed (`parity --max-pixels`: no such option)."""
    from testkit import run_cli, write_png_bomb

    (tmp_path / "big").mkdir()
    bomb = write_png_bomb(tmp_path / "big" / "a.png", 9000, 8000)
    for num_classes in (12, None):  # parity's image and mask, calibration's image alone
        with pytest.raises(DronsegError, match=r"72.0 MP\), above the 67.1 MP limit .*: remove it or scale it down "
                                               r"\(this command takes no --max-pixels\)$"):
            load_item(images.ImageItem(bomb, bomb), num_classes)
    write_png_bomb(tmp_path / "mask.png", 9000, 8000)
    assert load_item(images.ImageItem(write_images(tmp_path / "small", 1) / "f00.png", tmp_path / "mask.png"), None)[1] is None
    code, err = run_cli(capsys, "parity", tiny_checkpoint, tiny_checkpoint, "--data", bomb.parent)
    assert code == 2 and err.strip().endswith("(this command takes no --max-pixels)") and "raise" not in err, err
