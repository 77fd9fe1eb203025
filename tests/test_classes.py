import numpy as np
import pytest

from dronseg_edge import classes
from dronseg_edge.classes import class_counts


def test_class_counts_ignores_ids_past_the_classes():
    mask = np.array([[0, 1, 1, 13]], np.uint8)
    assert class_counts(mask, 3).tolist() == [1, 2, 0]


def test_class_counts_in_slices_equal_one_bincount(monkeypatch):
    mask = np.random.default_rng(0).integers(0, 12, (37, 29), dtype=np.uint8)
    monkeypatch.setattr(classes, "_EXACT_COUNT", 100)  # 11 slices, the last one short
    counts = class_counts(mask, 12)
    assert counts.dtype == np.int64 and np.array_equal(counts, np.bincount(mask.ravel(), minlength=12))


def test_class_counts_stay_exact_past_float32s_integers():
    # 2**24 + 5 pixels of one class: one float32 bin would hold 2**24, not the count.
    mask = np.full((1, (1 << 24) + 5), 3, np.uint8)
    assert class_counts(mask, 12)[3] == (1 << 24) + 5


def test_class_counts_take_uint8_maps_only():
    with pytest.raises(TypeError, match="uint8"):
        class_counts(np.zeros((2, 2), np.int64), 12)
