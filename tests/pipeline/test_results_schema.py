"""--results lines: the schema's fields, exact pixel counts and bounding boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dronseg_edge.classes import CLASS_NAMES
from dronseg_edge.pipeline.request import FILTERED
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.results_schema import SCHEMA, frame_results


def result_of(mask, classes=None, confidence=None, timestamp=1.25):
    counts = np.bincount(mask.ravel(), minlength=256)[:len(CLASS_NAMES)]
    return Result(mask=mask, shares=counts / mask.size, class_names=list(CLASS_NAMES),
                  frame=np.zeros((*mask.shape, 3), np.uint8), index=7, timestamp=timestamp, name="000007",
                  classes=classes, confidence=confidence)


def test_a_line_holds_shares_and_each_present_class_with_its_pixels_and_box():
    rng = np.random.default_rng(0)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:20, 5:40] = 3  # a car
    mask[30, 60] = 3  # and a stray pixel of it
    mask[40:50, :] = 10
    mask[rng.integers(0, 50, 5), rng.integers(0, 70, 5)] = 1
    line = json.loads(frame_results(result_of(mask)))
    assert list(line)[0] == "schema" and line["schema"] == SCHEMA == 1
    assert (line["frame"], line["name"], line["timestamp"], line["size"]) == (7, "000007", 1.25, [70, 50])
    assert set(line["shares"]) == set(CLASS_NAMES) and sum(line["shares"].values()) == pytest.approx(1.0)
    assert line["low_confidence"] is None and line["wall_time"] > 1.7e9
    for name, region in line["classes"].items():
        ys, xs = np.nonzero(mask == CLASS_NAMES.index(name))
        assert region["pixels"] == len(xs)
        assert region["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert line["classes"]["car"]["bbox"] == [5, 10, 56, 21]
    assert set(line["classes"]) == {CLASS_NAMES[c] for c in np.unique(mask)}


def test_a_class_filter_and_the_confidence_are_followed():
    mask = np.full((8, 8), FILTERED, np.uint8)
    mask[:4] = 1
    confidence = np.full((8, 8), 255, np.uint8)
    confidence[:2] = 10
    line = json.loads(frame_results(result_of(mask, classes=(1,), confidence=confidence), with_confidence=True))
    assert line["shares"] == {"person": 0.5} and list(line["classes"]) == ["person"]
    assert line["classes"]["person"] == {"pixels": 32, "bbox": [0, 0, 8, 4]}
    assert line["low_confidence"] == 0.25


def test_a_line_is_one_line_of_json():
    data = frame_results(result_of(np.zeros((4, 4), np.uint8), timestamp=None))
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and json.loads(data)["timestamp"] is None
