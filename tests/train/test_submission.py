"""train/submission.py: the Kaggle CSV of a data set's test images."""

import os

import cv2
import numpy as np
import pytest

from dronseg_edge.errors import DronsegError
from dronseg_edge.train.submission import write_competition_csv


def test_an_image_name_that_is_not_utf8_is_refused_before_predicting(tiny_checkpoint, tmp_path):
    """A cp1252 name (b"caf\\xe9") was predicted with every other image, then writing the UTF-8 CSV was a
    UnicodeEncodeError traceback and no file."""
    images = tmp_path / "data" / "imgs" / "imgs"
    images.mkdir(parents=True)
    picture = cv2.imencode(".jpg", np.full((64, 96, 3), 90, np.uint8))[1].tobytes()
    for name in (b"ok.jpg", b"caf\xe9.jpg"):
        with open(os.path.join(os.fsencode(images), name), "wb") as handle:
            handle.write(picture)
    with pytest.raises(DronsegError, match=r"^image .*caf.* has a name that is not UTF-8 .*: rename it$"):
        write_competition_csv(tiny_checkpoint, tmp_path / "data", tmp_path / "sub.csv", device="cpu", workers=0)
    assert not (tmp_path / "sub.csv").exists()


def test_an_unknown_rle_order_is_refused_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(DronsegError, match=r"^--rle-order 'diagonal': choose row \(C order, the likely Kaggle convention\)"):
        write_competition_csv(tmp_path / "missing.pt", tmp_path, tmp_path / "submission.csv", order="diagonal")
