"""The Kaggle-layout reader: valid data passes, every kind of bad file is named before training."""

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile
from testkit import write_png_bomb

from dronseg_edge.data import aeroscapes
from dronseg_edge.data.aeroscapes import (dataset_samples, read_ids, read_image, read_mask, samples_for_ids,
                                          validate_samples)
from dronseg_edge.errors import DronsegError


def make_layout(root: Path, n: int = 6, size=(32, 24), n_test: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    (root / "imgs/imgs").mkdir(parents=True)
    (root / "masks/masks").mkdir(parents=True)
    ids = [f"{i:06d}_001" for i in range(n)]
    for i, image_id in enumerate(ids):
        cv2.imwrite(str(root / f"imgs/imgs/{image_id}.jpg"), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        if i < n - n_test:
            mask = np.full((size[1], size[0]), i % 12, np.uint8)
            mask[: size[1] // 2] = 9
            cv2.imwrite(str(root / f"masks/masks/{image_id}.png"), mask)
    (root / "train.csv").write_text("ImageID\n" + "\n".join(ids[: n - n_test]) + "\n")
    (root / "test.csv").write_text("ImageID\n" + "\n".join(ids[n - n_test:]) + "\n")
    return ids


def test_valid_layout_reads_and_counts(tmp_path):
    ids = make_layout(tmp_path)
    train = dataset_samples(tmp_path, "train")
    test = dataset_samples(tmp_path, "test")
    assert [s.image_id for s in train] == ids[:4]
    assert [s.image_id for s in test] == ids[4:] and all(s.mask_path is None for s in test)
    stats = validate_samples(train)
    assert stats.presence.shape == (4, 12)
    assert stats.presence[:, 9].all()  # top half is vegetation in every mask
    assert stats.counts.sum() == 4 * 32 * 24
    assert stats.sizes == [(32, 24)] * 4
    assert [s.image_id for s in samples_for_ids(tmp_path, [ids[1], ids[0]])] == [ids[1], ids[0]]


def test_a_split_image_without_its_mask_is_refused_not_scored_as_all_ignored(tmp_path):
    ids = make_layout(tmp_path)  # a val ID listed as a test image here: eval gave it Dice 1.0 for every class
    with pytest.raises(DronsegError, match=f"no mask .*{ids[4]}.png"):
        samples_for_ids(tmp_path, [ids[0], ids[4]])


def test_split_ids_of_another_data_set_and_an_unreadable_csv_are_one_line_errors(tmp_path):
    ids = make_layout(tmp_path)
    with pytest.raises(DronsegError, match=r"1 split IDs \(first: 999999_001\) are not in .*imgs: is it the same data set"):
        samples_for_ids(tmp_path, [ids[0], "999999_001"])  # another data set's split
    (tmp_path / "train.csv").write_text("ImageID\n" + "x" * 200_000 + "\n")  # over the csv module's field limit
    with pytest.raises(DronsegError, match="cannot read .*train.csv: field larger than field limit"):
        read_ids(tmp_path / "train.csv")


def test_layout_without_csvs_uses_masks(tmp_path):
    ids = make_layout(tmp_path)
    (tmp_path / "train.csv").unlink()
    (tmp_path / "test.csv").unlink()
    for hidden in (f"imgs/imgs/._{ids[0]}.jpg", f"masks/masks/._{ids[0]}.png", f"imgs/imgs/._{ids[4]}.jpg"):
        (tmp_path / hidden).write_bytes(b"\x00\x05\x16\x07Mac OS X")  # macOS's resource forks: no images
    assert [s.image_id for s in dataset_samples(tmp_path, "train")] == ids[:4]
    assert [s.image_id for s in dataset_samples(tmp_path, "test")] == ids[4:]


def test_a_synth_set_cut_short_before_its_csvs_is_refused_not_trained_on(tmp_path):
    make_layout(tmp_path)  # synth writes synth.json first and its CSVs last: Ctrl-C between leaves this
    (tmp_path / "train.csv").unlink()
    (tmp_path / "synth.json").write_text('{"generator": "dronseg-edge synth", "finished": false}')
    for subset in ("train", "test"):
        with pytest.raises(DronsegError, match="never finished .* --force"):
            dataset_samples(tmp_path, subset)

def test_without_train_csv_the_images_test_csv_lists_are_not_trained_on(tmp_path):
    ids = make_layout(tmp_path)
    (tmp_path / "train.csv").unlink()
    (tmp_path / "masks/masks" / f"{ids[0]}.png").rename(tmp_path / "masks/masks" / f"{ids[4]}.png")
    (tmp_path / "test.csv").write_text(f"ImageID\n{ids[4]}\n")  # a labelled image kept for the test side
    assert [s.image_id for s in dataset_samples(tmp_path, "train")] == ids[1:4]
    assert [s.image_id for s in dataset_samples(tmp_path, "test")] == [ids[4]]


def test_suffixes_in_capitals_are_read_for_masks_as_for_images(tmp_path):
    ids = make_layout(tmp_path)
    for image_id in ids[:2]:  # a camera's or a Windows tool's X.JPG and X.PNG
        (tmp_path / f"imgs/imgs/{image_id}.jpg").rename(tmp_path / f"imgs/imgs/{image_id}.JPG")
        (tmp_path / f"masks/masks/{image_id}.png").rename(tmp_path / f"masks/masks/{image_id}.PNG")
    train = dataset_samples(tmp_path, "train")
    assert [s.image_id for s in train] == ids[:4] and train[0].mask_path.name == f"{ids[0]}.PNG"
    assert validate_samples(train).counts.sum() == 4 * 32 * 24


@pytest.mark.parametrize("folder, second", [("imgs/imgs", "{}.png"), ("masks/masks", "{}.PNG")])
def test_two_files_of_one_id_are_refused_naming_both(tmp_path, folder, second):
    """X.jpg and X.png in imgs/imgs: one of them was trained on, silently (the last in name order)."""
    ids = make_layout(tmp_path)
    cv2.imwrite(str(tmp_path / folder / second.format(ids[1])), np.zeros((24, 32), np.uint8))
    message = _error(dataset_samples, tmp_path)
    assert str(tmp_path / folder / ids[1]) in message and second.format(ids[1]) in message and "keep one" in message


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DronsegError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_root_and_folders(tmp_path):
    assert "does not exist" in _error(dataset_samples, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "imgs/imgs" in _error(dataset_samples, tmp_path / "empty")


def test_missing_mask_is_named(tmp_path):
    ids = make_layout(tmp_path)
    (tmp_path / f"masks/masks/{ids[2]}.png").unlink()
    message = _error(dataset_samples, tmp_path)
    assert f"{ids[2]}.png" in message and "missing" in message


def test_extra_mask_is_named(tmp_path):
    make_layout(tmp_path)
    cv2.imwrite(str(tmp_path / "masks/masks/999999_001.png"), np.zeros((24, 32), np.uint8))
    assert "999999_001.png" in _error(dataset_samples, tmp_path)


@pytest.mark.parametrize("which", [1, 5, -1])  # a train image; a test image (without a mask); a train mask
def test_a_link_whose_target_is_gone_is_named_as_such_not_as_a_file_missing(tmp_path, which):
    """A broken image link was "mask has no image"; a broken mask link "mask is missing: add it", and a broken
    test image link was "listed in a CSV but missing" (dropped without a word without test.csv)."""
    ids = make_layout(tmp_path)
    link = tmp_path / (f"imgs/imgs/{ids[which]}.jpg" if which >= 0 else f"masks/masks/{ids[0]}.png")
    link.rename(tmp_path / "moved")
    link.symlink_to(tmp_path / "gone")
    message = _error(dataset_samples, tmp_path, "all")
    assert message.startswith(f"{link} is a link to a file that does not exist: restore its target or remove it")


def test_a_folder_without_images_says_so_once(tmp_path):
    (tmp_path / "imgs/imgs").mkdir(parents=True)
    assert _error(dataset_samples, tmp_path, "images").startswith(f"{tmp_path} has no images; ")


@pytest.mark.parametrize("name", ["train.csv", "test.csv"])
@pytest.mark.parametrize("kind", ["folder", "broken link"])
def test_a_csv_that_is_not_a_file_is_refused_not_read_as_no_list(name, kind, tmp_path):
    make_layout(tmp_path)
    listing = tmp_path / name
    listing.unlink()
    listing.mkdir() if kind == "folder" else listing.symlink_to(tmp_path / "gone.csv")
    (tmp_path / "synth.json").write_text("{}")  # not called a synth set never finished either
    assert _error(dataset_samples, tmp_path).startswith(f"{listing} is not a readable file: ")


def test_a_csv_in_another_encoding_is_named_with_the_fix(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "train.csv").write_bytes("ImageID\n000000_001\u00e9\n".encode("latin-1"))
    assert _error(dataset_samples, tmp_path).endswith("is not UTF-8 text (byte 18): save it as CSV UTF-8")


def test_csv_row_without_image(tmp_path):
    make_layout(tmp_path)
    with open(tmp_path / "train.csv", "a") as handle:
        handle.write("123456_999\n")
    assert "123456_999" in _error(dataset_samples, tmp_path)


def test_a_test_csv_of_a_header_alone_is_named_for_submit(tmp_path):
    """submit said 'ROOT has no test images; expected the Kaggle layout ... ROOT/train.csv', never naming test.csv."""
    ids = make_layout(tmp_path)
    (tmp_path / "test.csv").write_text("ImageID\n")
    assert _error(dataset_samples, tmp_path, "test") == (f"{tmp_path / 'test.csv'} lists no ImageID: add the test images' "
                                                         "IDs, or remove it to take every image without a mask")
    (tmp_path / "test.csv").unlink()
    assert [s.image_id for s in dataset_samples(tmp_path, "test")] == ids[4:]


def test_csv_without_imageid_column(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "train.csv").write_text("id\nx\n")
    assert "ImageID" in _error(dataset_samples, tmp_path)


def test_csv_saved_with_a_byte_order_mark_is_read(tmp_path):
    ids = make_layout(tmp_path)
    text = (tmp_path / "train.csv").read_text()
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_ids(tmp_path / "train.csv") == ids[:4]  # before: "no ImageID column (header: ['\\ufeffImageID'])"
    assert sorted(s.image_id for s in dataset_samples(tmp_path)) == ids[:4]


def test_duplicate_image_id_is_refused_with_its_rows(tmp_path):
    ids = make_layout(tmp_path)
    with open(tmp_path / "train.csv", "a") as handle:
        handle.write(f"{ids[0]}\n")
    message = _error(dataset_samples, tmp_path)
    assert f"ImageID {ids[0]} is listed again" in message and "first on line 2" in message
    assert "train.csv line" in message and "\n" not in message


def test_an_id_in_both_csvs_is_refused_not_trained_on_and_submitted(tmp_path):
    ids = make_layout(tmp_path)
    (tmp_path / "test.csv").write_text(f"ImageID\n{ids[4]}\n{ids[1]}\n")
    for subset in ("train", "test"):
        message = _error(dataset_samples, tmp_path, subset)
        assert f"ImageID {ids[1]} is listed in both {tmp_path / 'train.csv'} and {tmp_path / 'test.csv'}" in message


def test_size_mismatch_is_named(tmp_path):
    ids = make_layout(tmp_path)
    cv2.imwrite(str(tmp_path / f"masks/masks/{ids[0]}.png"), np.zeros((10, 10), np.uint8))
    message = _error(validate_samples, dataset_samples(tmp_path))
    assert f"{ids[0]}.png" in message and "10x10" in message and "32x24" in message


def test_out_of_range_values_are_named(tmp_path):
    ids = make_layout(tmp_path)
    cv2.imwrite(str(tmp_path / f"masks/masks/{ids[1]}.png"), np.full((24, 32), 17, np.uint8))
    message = _error(validate_samples, dataset_samples(tmp_path))
    assert f"{ids[1]}.png" in message and "17" in message


def test_colour_mask_is_refused(tmp_path):
    ids = make_layout(tmp_path)
    cv2.imwrite(str(tmp_path / f"masks/masks/{ids[3]}.png"), np.zeros((24, 32, 3), np.uint8))
    message = _error(validate_samples, dataset_samples(tmp_path))
    assert f"{ids[3]}.png" in message and "single-channel" in message


def test_unreadable_files_are_named(tmp_path):
    ids = make_layout(tmp_path)
    (tmp_path / f"imgs/imgs/{ids[0]}.jpg").write_bytes(b"not a jpeg")
    assert f"{ids[0]}.jpg" in _error(validate_samples, dataset_samples(tmp_path))
    make_layout(tmp_path / "b")
    (tmp_path / f"b/masks/masks/{ids[1]}.png").write_bytes(b"\x89PNG garbage")
    assert f"{ids[1]}.png" in _error(validate_samples, dataset_samples(tmp_path / "b"))


def test_a_mask_with_negative_values_is_refused(tmp_path):
    """A 32-bit mask (a TIFF under a .png name) holding -2 passed the data check as 254 and stopped the first
    training step with 'index 254 is out of bounds' (a traceback; on a GPU a device-side assert)."""
    mask = np.zeros((4, 6), np.int32)
    mask[0, :2] = -2
    Image.fromarray(mask).save(tmp_path / "m.png", format="TIFF")
    with pytest.raises(DronsegError, match=r"m\.png holds values \[-2\] outside 0\.\.11: fix the labels"):
        read_mask(tmp_path / "m.png")



def test_a_mask_of_the_data_sets_classes_past_a_models_names_both_counts(tmp_path):
    """eval of a 5-class .onnx (and parity of a 5-class model) on AeroScapes masks said "fix the labels"."""
    Image.fromarray(np.full((4, 6), 10, np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DronsegError, match=r"m\.png holds classes up to 10 of the data set's 12, but the model predicts 5: "):
        read_mask(tmp_path / "m.png", num_classes=5)

@pytest.mark.parametrize("value", [np.nan, 3.7])
def test_a_mask_of_fractional_values_is_refused(value, tmp_path):
    # a float TIFF under a .png name: NaN was a ValueError traceback in eval and train, 3.7 was read as class 3
    mask = np.zeros((4, 6), np.float32)
    mask[0, 0] = value
    Image.fromarray(mask, mode="F").save(tmp_path / "m.png", format="TIFF")
    with pytest.raises(DronsegError, match=r"m\.png holds float32 values \(mode F\); masks must be single-channel PNGs"):
        read_mask(tmp_path / "m.png")


def test_palette_mode_masks_keep_indices(tmp_path):
    mask = np.arange(12, dtype=np.uint8).repeat(4).reshape(4, 12)
    image = Image.fromarray(mask, mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), mask)


def test_masks_are_read_upright_as_their_images_and_a_jpeg_mask_is_refused(tmp_path):
    # an image and its mask that both carry EXIF orientation 6 (a tool copied the photo's metadata): OpenCV
    # turned the image upright, Pillow left the mask as stored: labels turned 90 degrees on a square image
    ids = make_layout(tmp_path, size=(24, 24))
    stored = np.zeros((24, 24), np.uint8)
    stored[:, :8] = 10
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / f"masks/masks/{ids[0]}.png", exif=exif)
    picture = np.zeros((24, 24, 3), np.uint8)
    picture[:, :8] = 255
    Image.fromarray(picture).save(tmp_path / f"imgs/imgs/{ids[0]}.jpg", exif=exif, quality=95)
    image, mask = read_image(tmp_path / f"imgs/imgs/{ids[0]}.jpg"), read_mask(tmp_path / f"masks/masks/{ids[0]}.png")
    assert ((image[..., 0] > 128) == (mask == 10)).all()
    Image.fromarray(stored).save(tmp_path / "as_jpeg.png", format="JPEG")  # a JPEG named .png: edges relabelled
    with pytest.raises(DronsegError, match="as_jpeg.png is a JPEG file, whose lossy coding changes class indices"):
        read_mask(tmp_path / "as_jpeg.png")


def test_a_jpeg_mask_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """A mask that is a JPEG of 1,000 progressive scans (125 kB) held the data check 23 s before it was refused."""
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "m.png", format="JPEG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the JPEG mask was decoded"))
    with pytest.raises(DronsegError, match="m.png is a JPEG file, whose lossy coding changes class indices"):
        read_mask(tmp_path / "m.png")


def test_a_mask_drawn_on_the_stored_pixels_of_a_turned_image_is_named_with_the_tag(tmp_path):
    ids = make_layout(tmp_path)  # 32x24 images
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / f"imgs/imgs/{ids[0]}.jpg", exif=exif)
    message = _error(validate_samples, dataset_samples(tmp_path))
    assert "is 24x32 (stored 32x24, turned upright by its EXIF orientation tag" in message


def _decodes_recorded(monkeypatch) -> list[str]:
    """The image files OpenCV and the mask files Pillow were asked to decode."""
    seen = []
    real_imread, real_array = aeroscapes.cv2.imread, aeroscapes.np.array

    def imread(path, flags):
        seen.append(Path(path).name)
        return real_imread(path, flags)

    def array(value, *args, **kwargs):
        if isinstance(value, Image.Image):
            seen.append(Path(value.filename).name)
        return real_array(value, *args, **kwargs)

    monkeypatch.setattr(aeroscapes.cv2, "imread", imread)
    monkeypatch.setattr(aeroscapes.np, "array", array)
    return seen


@pytest.mark.parametrize("where", ["image", "mask"])
def test_a_decompression_bomb_is_refused_by_its_header_before_any_decode(where, tmp_path, monkeypatch):
    """Issue 19: a 109 KB PNG of 30000x30000 zeros (renamed .jpg among the images) reached 15.7 GB."""
    ids = make_layout(tmp_path)
    bomb = (tmp_path / "imgs/imgs" / f"{ids[2]}.jpg") if where == "image" else (tmp_path / "masks/masks" / f"{ids[2]}.png")
    write_png_bomb(bomb, 12000, 12000)
    decoded = _decodes_recorded(monkeypatch)
    message = _error(validate_samples, dataset_samples(tmp_path), workers=4)
    assert message == (f"{where} {bomb} is 12000x12000 (144.0 MP), above the 67.1 MP limit (a decompression bomb, "
                       "or a larger image than expected): remove it (--max-pixels takes at most 134.2 MP)")
    assert decoded == []  # the headers are all checked before the first decode
    with pytest.raises(DronsegError, match="above the 67.1 MP limit"):
        (read_image if where == "image" else read_mask)(bomb)  # the loaders check too (a file changed after the check)
    assert bomb.name not in decoded


def test_a_raised_limit_lets_large_images_through_and_a_lowered_one_refuses_small_ones(tmp_path):
    ids = make_layout(tmp_path)
    samples = dataset_samples(tmp_path)
    assert len(validate_samples(samples, max_pixels=32 * 24).ids) == 4
    message = _error(validate_samples, samples, max_pixels=32 * 24 - 1)
    assert message.startswith(f"image {tmp_path / 'imgs/imgs' / ids[0]}.jpg is 32x24 (768 pixels), above the 767 pixels limit")
    assert message.endswith(": remove it, or raise --max-pixels if it is a genuine image")  # a higher one lets it through


def test_the_data_check_decodes_within_its_pixel_budget_whatever_the_threads(tmp_path, monkeypatch):
    make_layout(tmp_path, n=10, n_test=0)
    active, most, lock = [0], [0], threading.Lock()
    real = aeroscapes.read_bgr

    def slow_read(path, max_pixels):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.02)  # long enough for the other threads to try to start theirs
        try:
            return real(path, max_pixels)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(aeroscapes, "read_bgr", slow_read)
    monkeypatch.setattr(aeroscapes, "DECODE_BUDGET_PIXELS", 2 * 32 * 24)  # two images at a time
    validate_samples(dataset_samples(tmp_path), workers=8, max_pixels=32 * 24)
    assert most[0] == 2


def test_an_image_or_mask_cut_short_after_its_header_is_one_line(tmp_path):
    cv2.imwrite(str(tmp_path / "whole.png"), np.random.default_rng(0).integers(0, 12, (24, 32), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])  # the header, a part of the data
    with pytest.raises(DronsegError, match=r"image .*cut.png cannot be read \(missing, truncated or not an image\)"):
        aeroscapes.read_bgr(tmp_path / "cut.png")
    with pytest.raises(DronsegError, match=r"mask .*cut.png cannot be read \(OSError\): replace it"):
        read_mask(tmp_path / "cut.png")
