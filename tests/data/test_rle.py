"""RLE and submissions: known strings in both pixel orders, round trips, malformed input, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from submissions import read_submission, rle_decode, score_submission

from dronseg_edge.data.rle import submission_rows, write_submission
from dronseg_edge.errors import DronsegError
from dronseg_edge.metrics import SegmentationMetrics

# Row-major pixel numbers 1 2 3 / 4 5 6; column-major 1 3 5 / 2 4 6.
SMALL = np.array([[1, 1, 0],
                  [0, 0, 1]], dtype=bool)


def rle_encode(mask: np.ndarray, order: str = "row") -> str:
    """The RLE of a binary mask: its class 1 row of submission_rows."""
    return submission_rows("m", np.asarray(mask, dtype=np.uint8), num_classes=2, order=order)[1][1]


def test_known_strings_in_both_orders():
    assert rle_encode(SMALL) == "1 2 6 1"  # pixels 1, 2 and 6
    assert rle_encode(SMALL, order="column") == "1 1 3 1 6 1"  # pixels 1, 3 and 6
    assert rle_decode("1 2 6 1", (2, 3)).tolist() == SMALL.tolist()
    assert rle_decode("1 1 3 1 6 1", (2, 3), order="column").tolist() == SMALL.tolist()
    # A run crossing a row boundary in row order: pixels 3, 4, 5.
    assert rle_decode("3 3", (2, 3)).tolist() == [[False, False, True], [True, True, False]]


def test_empty_full_and_integer_masks():
    assert rle_encode(np.zeros((4, 5), dtype=bool)) == ""
    assert rle_encode(np.ones((4, 5), dtype=np.uint8)) == "1 20"
    assert rle_encode(np.ones((4, 5), dtype=bool), order="column") == "1 20"
    assert rle_encode(SMALL.astype(np.uint8)) == rle_encode(SMALL)
    assert not rle_decode("", (4, 5)).any() and not rle_decode(None, (4, 5)).any()
    assert rle_decode("1 20", (4, 5)).all()
    for not_a_class_map in (np.zeros((1, 4, 5), np.uint8), np.full((4, 5), 0.5)):  # a batch, probabilities
        with pytest.raises(ValueError, match=r"submission_rows takes an \(H, W\) integer class map"):
            submission_rows("x", not_a_class_map)


@pytest.mark.parametrize("order", ["row", "column"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (13, 1), (9, 14), (72, 128)])
def test_round_trip_on_random_masks(order, shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.05, 0.5, 0.95, 1.0):
        mask = rng.random(shape) < density
        text = rle_encode(mask, order)
        decoded = rle_decode(text, shape, order)
        assert decoded.dtype == bool and decoded.shape == shape
        assert np.array_equal(decoded, mask), (order, shape, density)
        numbers = [int(v) for v in text.split()]
        assert sum(numbers[1::2]) == mask.sum()


def test_decoding_in_the_wrong_order_gives_another_mask():
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:7] = True
    assert rle_encode(mask, "row") != rle_encode(mask, "column")
    assert not np.array_equal(rle_decode(rle_encode(mask, "column"), mask.shape, "row"), mask)


@pytest.mark.parametrize("text, message", [
    ("1", "odd number"),
    ("1 a", "not all values are integers"),
    ("1.5 2", "not all values are integers"),
    ("0 3", "start below 1"),
    ("2 0", "length below 1"),
    ("5 3", "ends at pixel 7 but a 3x2 image has 6"),
    ("4 1 1 1", "not in increasing order"),
    ("1 3 2 2", "overlap"),
    ("99999999999999999999999 1", "not all values are integers"),
])
def test_malformed_strings_raise_a_clear_error(text, message):
    with pytest.raises(DronsegError, match=message) as info:
        rle_decode(text, (2, 3), source="sub.csv row 7_3")
    assert str(info.value).startswith("sub.csv row 7_3: ")


def test_unknown_order_is_rejected():
    with pytest.raises(DronsegError, match="'row'.*'column'"):
        rle_encode(SMALL, order="fortran")
    with pytest.raises(DronsegError, match="unknown pixel order"):
        rle_decode("1 1", (2, 3), order="C")


def test_submission_rows_count_order_and_content():
    class_map = np.array([[0, 0, 3], [11, 3, 3]], dtype=np.uint8)
    rows = submission_rows("img_42", class_map)
    assert [key for key, _ in rows] == [f"img_42_{c}" for c in range(12)]
    values = dict(rows)
    assert values["img_42_0"] == "1 2" and values["img_42_3"] == "3 1 5 2" and values["img_42_11"] == "4 1"
    assert all(values[f"img_42_{c}"] == "" for c in (1, 2, 4, 5, 6, 7, 8, 9, 10))
    # Each row decodes to its class's pixels, in both orders.
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 4, (7, 9)).astype(np.uint8)
    for order in ("row", "column"):
        rows = submission_rows("x", noisy, num_classes=4, order=order)
        assert [key for key, _ in rows] == [f"x_{c}" for c in range(4)]
        assert all(np.array_equal(rle_decode(text, noisy.shape, order), noisy == c) for c, (_, text) in enumerate(rows))
    with pytest.raises(DronsegError, match="img_9 holds values 0..12"):
        submission_rows("img_9", np.array([[0, 12]], dtype=np.uint8))


def test_write_and_read_submission(tmp_path):
    path = tmp_path / "out" / "submission.csv"
    rows = submission_rows("a", np.array([[0, 1], [1, 1]], dtype=np.uint8), num_classes=3)
    assert write_submission(iter(rows), path) == path
    lines = path.read_text().splitlines()
    assert lines[:3] == ["ImageID,EncodedPixels", "a_0,1 1", "a_1,2 3"] and lines[3] == "a_2,"
    assert read_submission(path) == {"a_0": "1 1", "a_1": "2 3", "a_2": ""}


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "submission.csv"
    write_submission([("a_0", "1 1")], path)
    before = path.read_text()

    def broken_rows():
        yield ("b_0", "1 4")
        raise RuntimeError("model crashed mid-way")

    with pytest.raises(RuntimeError):
        write_submission(broken_rows(), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


@pytest.mark.parametrize("content, message", [
    ("Id,Pixels\na_0,1 1\n", "header is ImageID,EncodedPixels"),
    ("ImageID,EncodedPixels\na_0,1 1,extra\n", "line 2 has 3 fields"),
    ("ImageID,EncodedPixels\na_0,1 1\na_0,2 1\n", "line 3 repeats a_0"),
    ("", "header is"),
])
def test_read_submission_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DronsegError, match=message):
        read_submission(path)
    with pytest.raises(DronsegError, match="not found"):
        read_submission(tmp_path / "missing.csv")


def _random_scenes(count: int = 3, shape=(24, 32), seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scenes = {}
    for i in range(count):
        class_map = np.zeros(shape, dtype=np.uint8)
        for c in rng.choice(np.arange(1, 12), size=4, replace=False):
            y, x = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
            class_map[y:y + rng.integers(2, 7), x:x + rng.integers(2, 9)] = c
        scenes[f"img{i}"] = class_map
    return scenes


def test_score_of_a_perfect_submission_is_one_and_wrong_order_scores_lower(tmp_path):
    truth = _random_scenes()
    for order in ("row", "column"):
        path = tmp_path / f"{order}.csv"
        write_submission((row for image_id, m in truth.items() for row in submission_rows(image_id, m, order=order)), path)
        assert score_submission(path, truth, order=order) == 1.0
    # The column-order file read as row order (the mistake that cost other teams ~0.2 on the leaderboard).
    wrong = score_submission(tmp_path / "column.csv", truth, order="row")
    assert wrong < 0.95


def test_score_by_hand_and_missing_rows(tmp_path):
    truth = {"a": np.array([[0, 1], [1, 1]], dtype=np.uint8)}
    # Predict class 1 everywhere: class 0 Dice 0, class 1 Dice 2*3/(4+3), classes 2..11 absent in both -> 1.
    path = write_submission(submission_rows("a", np.ones((2, 2), dtype=np.uint8)), tmp_path / "s.csv")
    assert score_submission(path, truth) == pytest.approx((0 + 6 / 7 + 10) / 12)
    write_submission([("a_0", "1 1")], tmp_path / "short.csv")
    with pytest.raises(DronsegError, match="has no row a_1"):
        score_submission(tmp_path / "short.csv", truth)
    with pytest.raises(DronsegError, match="row a_0: a run ends"):
        write_submission([(f"a_{c}", "1 9" if c == 0 else "") for c in range(12)], tmp_path / "long.csv")
        score_submission(tmp_path / "long.csv", truth)


def test_score_matches_the_competition_metric_of_segmentation_metrics(tmp_path):
    truth = _random_scenes(count=4, seed=1)
    predicted = _random_scenes(count=4, seed=2)
    rows = [row for image_id, m in predicted.items() for row in submission_rows(image_id, m)]
    path = write_submission(rows, tmp_path / "s.csv")
    metrics = SegmentationMetrics()
    metrics.update(torch.from_numpy(np.stack(list(predicted.values()))), torch.from_numpy(np.stack(list(truth.values()))))
    competition = metrics.compute()["competition"]
    assert 0.0 < competition < 1.0
    assert score_submission(path, truth) == pytest.approx(competition, rel=1e-12)
