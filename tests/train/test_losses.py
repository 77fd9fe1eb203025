"""Losses: hand-computed values on tiny tensors, ignore_index, class weights, dtypes, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dronseg_edge.errors import DronsegError
from dronseg_edge.train.losses import (
    LOSS_NAMES,
    focal_dice_loss,
    build_loss,
    class_weights_from_counts,
    cross_entropy,
    focal_loss,
    soft_dice_loss,
    tversky_loss,
)

LN2 = math.log(2.0)


@pytest.fixture
def tiny():
    """Two pixels, two classes: p(a) = [1/2, 1/2] with truth 0; p(b) = [3/4, 1/4] with truth 1."""
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])  # (1, 1, 2)
    return logits, target


@pytest.fixture
def tiny_with_ignored(tiny):
    """The same two pixels plus a third, ignored pixel with a confident wrong prediction."""
    logits, target = tiny
    extra = torch.tensor([[[[5.0]], [[-5.0]]]])
    return torch.cat([logits, extra], dim=3), torch.cat([target, torch.tensor([[[255]]])], dim=2)


# Per class over the batch: class 0 has TP 1/2, FP 3/4, FN 1/2; class 1 has TP 1/4, FP 1/2, FN 3/4.
DICE_EPS1 = ((2 * 0.5 + 1) / (1.25 + 1.0 + 1), (2 * 0.25 + 1) / (0.75 + 1.0 + 1))  # 8/13, 6/11
HAND_VALUES = {
    "ce": (LN2 + 2 * LN2) / 2,
    "ce_weighted": (1 * LN2 + 3 * 2 * LN2) / (1 + 3),
    "focal": (0.25 * LN2 + 0.5625 * 2 * LN2) / 2,
    "dice": ((1 - DICE_EPS1[0]) + (1 - DICE_EPS1[1])) / 2,
    "dice_log": -(math.log(DICE_EPS1[0]) + math.log(DICE_EPS1[1])) / 2,
    "dice_weighted": (1 * (1 - DICE_EPS1[0]) + 3 * (1 - DICE_EPS1[1])) / 4,
    "dice_smooth0": ((1 - 1.0 / 2.25) + (1 - 0.5 / 1.75)) / 2,
    "tversky_03_07": ((1 - 1.5 / (0.5 + 0.3 * 0.75 + 0.7 * 0.5 + 1)) + (1 - 1.25 / (0.25 + 0.3 * 0.5 + 0.7 * 0.75 + 1))) / 2,
}


def _hand_cases(logits, target):
    w = torch.tensor([1.0, 3.0])
    return {
        "ce": cross_entropy(logits, target),
        "ce_weighted": cross_entropy(logits, target, class_weights=w),
        "focal": focal_loss(logits, target, gamma=2.0),
        "dice": soft_dice_loss(logits, target, smooth=1.0),
        "dice_log": soft_dice_loss(logits, target, smooth=1.0, log=True),
        "dice_weighted": soft_dice_loss(logits, target, class_weights=w),
        "dice_smooth0": soft_dice_loss(logits, target, smooth=0.0),
        "tversky_03_07": tversky_loss(logits, target, alpha=0.3, beta=0.7, smooth=1.0),
    }


def test_hand_computed_values(tiny):
    for name, value in _hand_cases(*tiny).items():
        assert value.dtype == torch.float32 and value.ndim == 0, name
        assert value.item() == pytest.approx(HAND_VALUES[name], rel=1e-5), name


def test_ignored_pixels_change_nothing(tiny_with_ignored):
    for name, value in _hand_cases(*tiny_with_ignored).items():
        assert value.item() == pytest.approx(HAND_VALUES[name], rel=1e-5), name


def test_focal_alpha_scales_and_per_class_alpha(tiny):
    logits, target = tiny
    assert focal_loss(logits, target, alpha=0.25).item() == pytest.approx(0.25 * HAND_VALUES["focal"], rel=1e-5)
    # alpha (C,) = [1, 2]: pixel a (class 0) 0.25 ln2 * 1, pixel b (class 1) 1.125 ln2 * 2.
    expected = (0.25 * LN2 * 1 + 1.125 * LN2 * 2) / 2
    assert focal_loss(logits, target, alpha=torch.tensor([1.0, 2.0])).item() == pytest.approx(expected, rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6) * 3
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    for w in (None, weights):
        focal = focal_loss(logits, target, gamma=0.0, class_weights=w)
        ours = cross_entropy(logits, target, class_weights=w)
        torch_ce = F.cross_entropy(logits, target, weight=w, ignore_index=255)
        assert focal.item() == pytest.approx(torch_ce.item(), rel=1e-5)
        assert ours.item() == pytest.approx(torch_ce.item(), rel=1e-5)


def test_cross_entropy_label_smoothing_matches_torch():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[1, 0] = 255
    weights = torch.tensor([1.0, 2.0, 0.5])
    ours = cross_entropy(logits, target, class_weights=weights, label_smoothing=0.1)
    reference = F.cross_entropy(logits, target, weight=weights, ignore_index=255, label_smoothing=0.1)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours.item() != pytest.approx(cross_entropy(logits, target, class_weights=weights).item(), rel=1e-3)


def test_class_weights_raise_the_loss_of_errors_on_the_weighted_class():
    # Pixel 0 (class 0) is predicted right, pixel 1 (class 1) wrong: weighting class 1 up raises every loss.
    logits = torch.tensor([[[[3.0, 3.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])
    up = torch.tensor([1.0, 5.0])
    for fn in (cross_entropy, focal_loss, soft_dice_loss, tversky_loss):
        assert fn(logits, target, class_weights=up) > fn(logits, target), fn.__name__


def _scenes(seed: int = 0, num_classes: int = 4):
    """A target and two predictions: the good one is right on 90% of pixels, the bad one on 50%."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (2, 8, 8), generator=generator)
    target[:, 0, :3] = 255
    noise = torch.randn(2, num_classes, 8, 8, generator=generator) * 0.3

    def prediction(correct_share: float) -> torch.Tensor:
        guess = torch.where(torch.rand(target.shape, generator=generator) < correct_share, target,
                            torch.randint(0, num_classes, target.shape, generator=generator))
        guess = torch.where(guess == 255, torch.zeros_like(guess), guess)
        return 3.0 * F.one_hot(guess, num_classes).permute(0, 3, 1, 2).float() + noise

    return target, prediction(0.9), prediction(0.5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_better_prediction_has_lower_loss(name):
    target, good, bad = _scenes()
    for weights in (None, torch.tensor([1.0, 2.0, 3.0, 0.5])):
        loss = build_loss(name, class_weights=weights)
        assert loss(good, target) < loss(bad, target), (name, weights)
    # The perfect, confident prediction is the best of all.
    perfect = 20.0 * F.one_hot(torch.where(target == 255, 0, target), 4).permute(0, 3, 1, 2).float()
    assert build_loss(name)(perfect, target) < build_loss(name)(good, target)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_low_precision_extreme_logits_give_finite_float32_and_gradients(name, dtype):
    target, _, _ = _scenes(seed=2)
    wrong = torch.remainder(torch.where(target == 255, 0, target) + 1, 4)
    for labels in (torch.where(target == 255, 0, target), wrong):  # confidently right, then confidently wrong
        logits = (F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 2e4 - 1e4).to(dtype).requires_grad_(True)
        loss = build_loss(name, dice_log=True)(logits, target)
        assert loss.dtype == torch.float32 and torch.isfinite(loss), (name, dtype)
        loss.backward()
        assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all(), (name, dtype)


def test_loss_under_cpu_autocast_is_float32():
    conv = torch.nn.Conv2d(3, 4, 1)
    target, _, _ = _scenes()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(torch.randn(2, 3, 8, 8))
        assert logits.dtype == torch.bfloat16
        losses = [build_loss(name)(logits, target) for name in LOSS_NAMES]
    for name, loss in zip(LOSS_NAMES, losses):
        assert loss.dtype == torch.float32, name


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradients_are_finite_and_nonzero(name):
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target, _, _ = _scenes()
    build_loss(name, class_weights=[1.0, 2.0, 0.5, 1.0])(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # Ignored pixels receive no gradient at all.
    assert (logits.grad.permute(0, 2, 3, 1)[target == 255] == 0).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_batch_with_only_ignored_pixels_gives_zero_not_nan(name):
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    target = torch.full((1, 3, 3), 255)
    loss = build_loss(name)(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_dice_combines_its_parts(tiny):
    logits, target = tiny
    combined = focal_dice_loss(logits, target, focal_weight=0.5, dice_weight=2.0)
    expected = 0.5 * HAND_VALUES["focal"] + 2.0 * HAND_VALUES["dice"]
    assert combined.item() == pytest.approx(expected, rel=1e-5)
    built = build_loss("Focal+Dice", focal_weight=0.5, dice_weight=2.0)
    assert built(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_build_loss_passes_its_settings(tiny):
    logits, target = tiny
    assert build_loss("tversky", tversky_alpha=0.3, tversky_beta=0.7)(logits, target).item() == pytest.approx(
        HAND_VALUES["tversky_03_07"], rel=1e-5)
    assert build_loss("dice", dice_log=True)(logits, target).item() == pytest.approx(HAND_VALUES["dice_log"], rel=1e-5)
    assert build_loss("focal", focal_alpha=0.25)(logits, target).item() == pytest.approx(
        0.25 * HAND_VALUES["focal"], rel=1e-5)
    assert build_loss("ce", class_weights=[1.0, 3.0])(logits, target).item() == pytest.approx(
        HAND_VALUES["ce_weighted"], rel=1e-5)
    # Class weights are buffers, so moving the loss moves them with the model.
    loss = build_loss("focal+dice", class_weights=[1.0, 3.0], focal_alpha=[0.5, 1.0])
    assert {name for name, _ in loss.named_buffers()} >= {"class_weights", "alpha"}


def test_build_loss_rejects_unknown_names_and_bad_settings(tiny):
    with pytest.raises(DronsegError, match="ce, focal, dice, focal\\+dice, tversky"):
        build_loss("lovasz")
    with pytest.raises(DronsegError, match="gamma"):
        build_loss("focal", focal_gamma=-1.0)
    with pytest.raises(DronsegError, match="label_smoothing"):
        build_loss("ce", label_smoothing=1.0)
    with pytest.raises(DronsegError, match="3 entries .* 2 classes"):
        build_loss("ce", class_weights=[1.0, 2.0, 3.0])(*tiny)


def test_class_weights_from_counts_by_hand():
    counts = [100, 25, 0, 4]  # class 2 has no pixels: it gets the largest weight
    sqrt = torch.tensor([0.1, 0.2, 0.5, 0.5])  # proportional to 1 / sqrt(count)
    assert torch.allclose(class_weights_from_counts(counts), sqrt / sqrt.mean())
    inverse = torch.tensor([0.01, 0.04, 0.1, 0.1])  # 1 / count, capped at 10x the smallest
    assert torch.allclose(class_weights_from_counts(counts, "inverse"), inverse / inverse.mean())
    uncapped = torch.tensor([0.01, 0.04, 0.25, 0.25])
    assert torch.allclose(class_weights_from_counts(torch.tensor(counts), "inverse", max_ratio=None), uncapped / uncapped.mean())
    assert torch.equal(class_weights_from_counts(counts, "none"), torch.ones(4))


def test_class_weights_for_aeroscapes_shares():
    # Pixel shares in percent from docs/facts.md#kaggle-format, in class order.
    shares = [23.1, 0.41, 0.05, 0.37, 0.03, 0.02, 0.08, 0.57, 4.4, 37.1, 29.3, 4.6]
    weights = class_weights_from_counts(shares)
    assert weights.dtype == torch.float32 and weights.shape == (12,)
    assert weights.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert weights.max() / weights.min() == pytest.approx(10.0, rel=1e-5)
    assert weights.argmin().item() == 9  # vegetation, the largest class
    assert weights[5] == weights.max()  # boat, the rarest


def test_class_weights_from_counts_errors():
    for bad in ([1, -2, 3], [0, 0, 0], [[1, 2], [3, 4]], [1.0, float("nan")]):
        with pytest.raises(DronsegError):
            class_weights_from_counts(bad)
    with pytest.raises(DronsegError, match="inverse_sqrt, inverse, none"):
        class_weights_from_counts([1, 2], method="median")
    with pytest.raises(DronsegError, match="max_ratio"):
        class_weights_from_counts([1, 2], max_ratio=0.5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_logits_and_target_of_other_sizes_are_refused_by_every_loss(name):
    with pytest.raises(ValueError, match=r"expected logits \(N, C, H, W\) and target \(N, H, W\); got \(1, 2, 4, 4\) and "
                                         r"\(1, 3, 3\)"):
        build_loss(name)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 3, dtype=torch.long))
