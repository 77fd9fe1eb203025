"""Image folders and globs as sources: images over --max-pixels are skipped before OpenCV decodes them,
and a recursive glob visits each file once through symlink loops."""

import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pipeline_media import scene
from testkit import write_png_bomb

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline import image_sources
from dronseg_edge.pipeline.image_sources import ImageSource, _output_names, glob_files
from dronseg_edge.pipeline.source_spec import open_source


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """The byte counts cv2.imdecode was given, to show which files OpenCV saw."""
    seen, real = [], cv2.imdecode

    def recording(data, flags):
        seen.append(int(data.size))
        return real(data, flags)

    monkeypatch.setattr(image_sources.cv2, "imdecode", recording)
    return seen


def test_a_bomb_in_a_folder_is_skipped_and_counted_without_being_decoded(tmp_path, decoded, caplog):
    cv2.imwrite(str(tmp_path / "a.jpg"), scene(0, (96, 64)))
    bomb = write_png_bomb(tmp_path / "b.png", 12000, 12000)  # 144 MP, 432 MB once decoded to BGR
    cv2.imwrite(str(tmp_path / "c.png"), scene(3, (64, 48)))
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        source = open_source(tmp_path)
        records = list(source.frames())
    assert [r.name for r in records] == ["a", "c"] and source.end == "ended"
    assert (source.oversized, source.corrupt) == (1, 1)
    assert bomb.stat().st_size not in decoded and len(decoded) == 2  # a.jpg and c.png only: d.jpg's header failed
    assert f"image {bomb} is 12000x12000 (144.0 MP), above the 67.1 MP limit" in caplog.text
    assert f"image {tmp_path / 'd.jpg'} cannot be decoded (truncated or not an image); skipped" in caplog.text
    # 144 MP is over the most --max-pixels takes: raising it cannot let the image through, so it is not advised
    assert "limit (a decompression bomb, or a larger image than expected): skipped (--max-pixels takes at most 134.2 MP)" \
        in caplog.text and "raise --max-pixels" not in caplog.text


def test_the_limit_is_an_option_and_applies_to_globs_and_single_images(tmp_path):
    cv2.imwrite(str(tmp_path / "small.png"), scene(0, (40, 30)))  # 1200 pixels
    cv2.imwrite(str(tmp_path / "large.png"), scene(1, (96, 64)))  # 6144 pixels
    source = open_source(str(tmp_path / "*.png"), max_pixels=5000)
    assert [r.name for r in source.frames()] == ["small"] and source.oversized == 1
    with pytest.raises(DronsegError, match=r"none of the 1 image\(s\) in .*large.png can be decoded \(1 above "
                                           r"--max-pixels\): replace them, or raise --max-pixels"):
        list(open_source(tmp_path / "large.png", max_pixels=5000).frames())
    (tmp_path / "bad.jpg").write_bytes(b"not an image")  # nothing above the limit: no advice to raise it
    with pytest.raises(DronsegError, match=r"\(1 damaged or not images\): replace them$"):
        list(open_source(tmp_path / "bad.jpg").frames())
    # --stride 2 reads bad.jpg and large.png only: it said "none of the 3 image(s) can be decoded", small.png among them
    (tmp_path / "large.png").rename(tmp_path / "t.png")
    with pytest.raises(DronsegError, match=r"none of the 2 image\(s\) --stride 2 reads in .* \(1 damaged or not "
                                           r"images, 1 above"):
        list(open_source(str(tmp_path / "*.*"), max_pixels=5000).frames(stride=2))
    with pytest.raises(DronsegError, match="--max-pixels 0 must be a whole number"):
        ImageSource([tmp_path / "small.png"], "x", max_pixels=0)


def test_a_recursive_glob_visits_each_file_once_through_symlink_loops(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    for path in (root / "a.png", root / "sub" / "b.png"):
        cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    os.symlink(".", root / "selfdir")  # a loop: glob.glob lists a.png 41 times through it
    os.symlink("..", root / "sub" / "up")  # a second loop: glob.glob would walk 2^40 paths
    os.symlink(root / "sub", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a link to a folder seen already, under another name
    os.symlink(root / "missing", root / "dangling")
    once = [root / "a.png", root / "linked" / "b.png"]  # each file under its first name in sorted order
    assert glob_files(str(root / "**" / "*.png")) == once
    assert glob_files(str(root / "**")) == [once[0], root / "dangling", once[1]]  # to be skipped and counted
    assert [r.name for r in open_source(str(root / "**/*.png")).frames()] == ["a", "b"]
    outside = tmp_path / "other"
    outside.mkdir()
    cv2.imwrite(str(outside / "c.png"), np.zeros((8, 8, 3), np.uint8))
    os.symlink(outside, root / "more")  # a symlinked folder that is not a loop is followed
    assert glob_files(str(root / "**" / "*.png")) == [*once, root / "more" / "c.png"]



@pytest.mark.parametrize("glob", [False, True])
def test_an_image_link_whose_target_is_gone_is_skipped_counted_and_named(tmp_path, caplog, glob):
    """A broken link in an image folder (or glob) was left out without a word: 1 of 2 images segmented, none skipped."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    os.symlink(tmp_path / "gone.png", tmp_path / "b.png")
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        source = open_source(str(tmp_path / "*.png") if glob else tmp_path)
        assert [r.name for r in source.frames()] == ["a"] and source.corrupt == 1
    assert "b.png cannot be decoded (a link to a file that does not exist); skipped" in caplog.text

def test_a_recursive_glob_walks_a_tree_deeper_than_the_recursion_limit(tmp_path):
    """os.walk recurses before Python 3.12: `infer "data/**/*.jpg"` over 1,100 nested folders was a RecursionError
    traceback."""
    deepest = tmp_path / "data"
    deepest.mkdir()
    for _ in range(sys.getrecursionlimit() + 100):  # one level at a time: mkdir(parents=True) recurses too
        deepest /= "a"
        deepest.mkdir()
    cv2.imwrite(str(deepest / "x.png"), np.zeros((8, 8, 3), np.uint8))
    try:
        assert glob_files(str(tmp_path / "data" / "**" / "*.png")) == [deepest / "x.png"]
    finally:  # removed one level at a time: shutil.rmtree (pytest's clean-up) recurses before Python 3.12
        (deepest / "x.png").unlink()
        for folder in [deepest, *deepest.parents][:-len(tmp_path.parents) - 1]:
            folder.rmdir()


def test_a_glob_without_double_star_is_plain(tmp_path):
    for name in ("x1.png", "x2.png", ".hidden.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    os.symlink(tmp_path / "x1.png", tmp_path / "x3.png")  # the same file under a second name: listed once
    assert glob_files(str(tmp_path / "x?.png")) == [tmp_path / "x1.png", tmp_path / "x2.png"]


def test_output_names_never_clash_and_a_recursive_glob_skips_earlier_runs(tmp_path, monkeypatch):
    image = np.zeros((8, 8, 3), np.uint8)
    from dronseg_edge.pipeline import open_source

    for name in ("a/x.png", "b/x.png", "c/x_000001.png", "runs/infer/exp/overlay/y.png", "runs/infer/exp2/y.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / name), image)
    (tmp_path / "runs/infer/exp/summary.json").write_text("{}")  # an earlier run's outputs: not the user's images
    (tmp_path / "runs/infer/exp2/stats.jsonl").write_text("")  # nor a killed run's (no summary.json): were segmented
    monkeypatch.chdir(tmp_path)
    source = open_source("~/**/*.png".replace("~", str(tmp_path)))
    assert [str(p.relative_to(tmp_path)) for p in source.paths] == ["a/x.png", "b/x.png", "c/x_000001.png"]
    assert source.names == ["x_000000", "x_000001_", "x_000001"]  # three outputs, none overwriting another
    # a/X.jpg and b/x.JPG (or café in NFC and NFD) are two files here but one output on macOS or an exFAT card
    assert _output_names([Path("a/X.jpg"), Path("b/x.JPG"), Path("caf\u00e9.png"), Path("cafe\u0301.png")]) == [
        "X_000000", "x_000001", "caf\u00e9_000002", "cafe\u0301_000003"]
    # 84 Japanese characters (252 bytes) as .jpg and .png: NAME_000000.png was 263 bytes, every write ENAMETOOLONG
    long = [Path("\u3042" * 84 + suffix) for suffix in (".jpg", ".png")]
    names = _output_names(long)
    assert len(set(names)) == 2 and max(len(os.fsencode(name + ".png")) for name in names) <= 255
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(open_source("~/a/*.png").paths) == 1  # a quoted glob's ~, as a path's
