"""Decompression bombs in a data set (issue 19): `train` and `eval` stop with one line naming the file,
exit code 2, before any decode and before anything is written, whatever --workers is."""

import shutil

import pytest
from testkit import run_cli, write_png_bomb


@pytest.fixture
def data(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    return root


TINY = ["--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--size", "96x64", "--epochs", "1",
        "--batch", "8", "--device", "cpu", "--no-tensorboard"]


@pytest.mark.parametrize("where", ["image", "mask"])
def test_train_refuses_a_bomb_in_its_data_with_one_line_before_writing(where, data, tmp_path, capsys):
    """Issue 19: 4 bombs renamed .jpg reached 15.7 GB with --workers 4; a mask bomb was a PIL traceback."""
    victims = sorted((data / "masks/masks").glob("*.png"))[:4]
    bombs = [data / "imgs/imgs" / f"{v.stem}.jpg" for v in victims] if where == "image" else victims
    for bomb in bombs:
        write_png_bomb(bomb, 12000, 12000)
    code, err = run_cli(capsys, "train", "--data", data, *TINY, "--workers", "4", "--out", tmp_path / "run")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (f"error: {where} {bombs[0]} is 12000x12000 (144.0 MP), above the 67.1 MP limit (a decompression "
                        "bomb, or a larger image than expected): remove it (--max-pixels takes at most 134.2 MP)")
    assert not (tmp_path / "run").exists()


def test_train_takes_max_pixels_for_a_data_set_of_large_images(data, tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--data", data, *TINY, "--workers", "0", "--max-pixels", "1000",
                        "--out", tmp_path / "run")
    assert code == 2 and "is 96x64 (6144 pixels), above the 1000 pixels limit" in err and not (tmp_path / "run").exists()


def test_eval_refuses_a_mask_bomb_with_one_line(tiny_checkpoint, data, capsys):
    bomb = write_png_bomb(sorted((data / "masks/masks").glob("*.png"))[0], 10000, 10000)
    args = ["eval", tiny_checkpoint, "--data", data, "--split", "all", "--device", "cpu", "--workers", "0"]
    code, err = run_cli(capsys, *args)
    assert code == 2 and err.strip() == (f"error: mask {bomb} is 10000x10000 (100.0 MP), above the 67.1 MP limit (a "
                                         "decompression bomb, or a larger image than expected): remove it, or raise "
                                         "--max-pixels if it is a genuine image"), err
    code, err = run_cli(capsys, *args, "--max-pixels", str(1 << 27))  # let through: decoded, then its size is wrong
    assert code == 2 and err.strip().startswith(f"error: mask {bomb} is 10000x10000 but image") and \
        "masks must match their images" in err, err


def test_submit_takes_max_pixels_as_eval_does(tiny_checkpoint, data, tmp_path, capsys):
    """submit advised 'raise --max-pixels' for a large test image and had no such option."""
    code, err = run_cli(capsys, "submit", tiny_checkpoint, "--data", data, "--out", tmp_path / "s.csv", "--device", "cpu",
                        "--workers", "0", "--max-pixels", "1000")
    assert code == 2 and "is 96x64 (6144 pixels), above the 1000 pixels limit" in err and not (tmp_path / "s.csv").exists(), err
