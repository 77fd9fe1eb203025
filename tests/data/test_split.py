"""Multilabel stratified split: each class keeps its share of images on both sides."""

import json

import numpy as np
import pytest

from dronseg_edge.data.split import pick_evenly, save_split, stratified_split
from dronseg_edge.errors import DronsegError


def presence_matrix(n=400, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.array([1.0, 0.8, 0.4, 0.3, 0.12, 0.02, 0.03, 0.66, 0.53, 0.9, 0.86, 0.16])  # AeroScapes-like
    return rng.random((n, rates.size)) < rates


def test_split_keeps_presence_ratios():
    presence = presence_matrix()
    ids = [f"{i:06d}" for i in range(len(presence))]
    train, val = stratified_split(ids, presence, 0.2, seed=0)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(ids)
    assert abs(len(val) - 80) <= 10  # iterative stratification sizes the split approximately
    index = {k: i for i, k in enumerate(ids)}
    val_counts = presence[[index[i] for i in val]].sum(0)
    expected = presence.sum(0) * 0.2
    # Each class's number of validation images stays within a couple of images (+10%) of 20% of its images.
    assert np.all(np.abs(val_counts - expected) <= 2 + 0.1 * expected), (val_counts, expected)
    rare = presence.sum(0) < 20
    assert np.all(val_counts[rare] >= 1)  # boat/animal-like rare classes land in validation too


def test_stratified_beats_random_on_rare_classes():
    presence = presence_matrix(seed=1)
    ids = [str(i) for i in range(len(presence))]
    rare = presence.sum(0) < 60
    expected = presence.sum(0)[rare] * 0.2

    def error(val_rows):
        return np.abs(presence[val_rows].sum(0)[rare] - expected).sum()

    _, val = stratified_split(ids, presence, 0.2, seed=3)
    rng = np.random.default_rng(3)
    random_errors = [error(rng.permutation(len(ids))[: len(val)]) for _ in range(50)]
    assert error([int(i) for i in val]) < np.percentile(random_errors, 25)


def test_split_is_seeded():
    presence = presence_matrix()
    ids = [str(i) for i in range(len(presence))]
    assert stratified_split(ids, presence, 0.2, 5) == stratified_split(ids, presence, 0.2, 5)
    assert stratified_split(ids, presence, 0.2, 5) != stratified_split(ids, presence, 0.2, 6)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(DronsegError, match="val-fraction"):
        stratified_split(["a", "b", "c"], np.ones((3, 12), bool), fraction)


def test_too_few_images():
    with pytest.raises(DronsegError, match="cannot split"):
        stratified_split(["a"], np.ones((1, 12), bool), 0.2)
    with pytest.raises(DronsegError, match="cannot split 9 images"):  # scikit-learn rounds the validation side up
        stratified_split(list("abcdefghi"), np.ones((9, 12), bool), 0.9)


def test_a_few_images_still_give_each_side_one():
    # On these five, iterative stratification (seed 0) put every image in train.
    presence = np.array([[1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0],
                         [1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1], [1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0],
                         [1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]], bool)
    ids = [f"img{i}" for i in range(5)]
    for seed in range(20):
        train, val = stratified_split(ids, presence, 0.2, seed=seed)
        assert train and val and sorted(train + val) == ids
    assert stratified_split(ids, presence, 0.2, seed=0) == (["img1", "img2", "img3", "img4"], ["img0"])


def test_split_json_round_trip(tmp_path):
    presence = presence_matrix(50)
    ids = [str(i) for i in range(50)]
    train, val = stratified_split(ids, presence, 0.2, 0)
    path = save_split(tmp_path / "split.json", train, val, seed=0, val_fraction=0.2, all_ids=ids, presence=presence)
    data = json.loads(path.read_text())
    assert (data["train"], data["val"]) == (train, val)
    assert set(data["presence"]) >= {"background", "sky"} and 0 <= data["presence"]["sky"]["val"] <= 1


def test_pick_evenly_keeps_ends_and_order():
    assert pick_evenly(list(range(100)), 3) == [0, 50, 99]
    assert pick_evenly([1, 2], 5) == [1, 2] and pick_evenly([1, 2, 3], None) == [1, 2, 3]
