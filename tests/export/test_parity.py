"""Parity statistics on hand-built outputs with known answers, the verdict rules, and the difference picture."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dronseg_edge.classes import IMAGENET_MEAN, IMAGENET_STD
from dronseg_edge.export.parity import LogitComparison, check_parity
from dronseg_edge.export.parity_picture import DIFFERENCE_BGR, MIN_TILE
from dronseg_edge.export.parity_report import borderline
from dronseg_edge.export.parity_report import ParityThresholds, parity_report_path

from testkit import FakeBackend

W, H = 8, 4


def fake(path: str, make, precision: str = "fp32", head: str = "logits") -> FakeBackend:
    """An artifact at ``path`` (no file behind it) that returns ``make(batch)``."""
    return FakeBackend(path, respond=make, arch="lraspp_mobilenet_v3_large", input_size=(W, H), batch=1,
                       dynamic=False, precision=precision, head=head)


def one_hot_logits(mask: torch.Tensor, scale: float = 5.0) -> torch.Tensor:
    """(N, H, W) class map -> (N, 12, H, W) logits whose argmax is the map."""
    return torch.nn.functional.one_hot(mask.long(), 12).permute(0, 3, 1, 2).float() * scale


def dataset(root: Path, masks: list[np.ndarray]) -> Path:
    """A Kaggle-layout folder whose images encode their index (pixel value) and hold the given masks."""
    (root / "imgs/imgs").mkdir(parents=True)
    (root / "masks/masks").mkdir(parents=True)
    for i, mask in enumerate(masks):
        cv2.imwrite(str(root / "imgs/imgs" / f"{i}.png"), np.full((H, W, 3), 40 * (i + 1), np.uint8))
        cv2.imwrite(str(root / "masks/masks" / f"{i}.png"), mask.astype(np.uint8))
    return root


SKY_ROAD = np.array([[11] * W] * 2 + [[10] * W] * 2, np.uint8)  # top half sky, bottom half road


def test_logit_statistics_have_the_expected_values():
    ref = torch.ones(1, 2, 2, 2)
    cand = ref.clone()
    cand[0, 0, 0, 0] = 1.5  # one error of 0.5 among 8 values
    stats = LogitComparison()
    stats.update(ref, cand)
    from dronseg_edge.export.parity_report import OutputStats

    out = stats.fill(OutputStats("logits", "logits"))
    assert out.abs_max == pytest.approx(0.5) and out.abs_mean == pytest.approx(0.5 / 8)
    assert out.rel_max == pytest.approx(0.5) and out.nonfinite_candidate == 0
    expected_cos = 8.5 / math.sqrt(8 * (7 + 2.25))
    assert out.cosine == pytest.approx(expected_cos) and out.cosine_min == pytest.approx(expected_cos)
    assert out.abs_p99 == pytest.approx(np.percentile([0.5] + [0] * 7, 99))


def test_nan_and_inf_are_counted_not_averaged():
    ref = torch.zeros(1, 1, 2, 2)
    cand = torch.tensor([[[[math.nan, math.inf], [0.0, 0.25]]]])
    stats = LogitComparison()
    stats.update(ref, cand)
    from dronseg_edge.export.parity_report import OutputStats

    out = stats.fill(OutputStats("logits", "logits"))
    assert out.nonfinite_candidate == 2 and out.abs_max == pytest.approx(0.25) and out.abs_mean == pytest.approx(0.125)


def test_identical_models_pass_with_exact_numbers(tmp_path):
    data = dataset(tmp_path / "d", [SKY_ROAD, SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)
    model = lambda x: one_hot_logits(truth.expand(x.shape[0], H, W))  # noqa: E731
    report = check_parity(fake("ref.pt", model), fake("cand.onnx", model), data, device="cpu")
    assert report and report.passed and report.agreement == 1.0
    out = report.outputs[0]
    assert out.abs_max == 0 and out.cosine_min == pytest.approx(1.0)
    assert report.ground_truth.reference_miou == pytest.approx(1.0) and report.miou_delta == pytest.approx(0.0)
    assert report.class_iou[11] == pytest.approx(1.0) and report.class_iou[3] is None
    assert report.summary_line().startswith("PASSED | logits: agreement 100.00% | abs max 0 mean 0 p99 0")


def test_a_static_reference_of_another_size_says_which_order_works(tmp_path):
    """`parity static.onnx best.pt` (trained at another size) said "compare exports of the same --size", though
    `parity best.pt static.onnx` compares them: the reference runs at the candidate's size, as any checkpoint can."""
    from dronseg_edge.errors import DronsegError

    data = dataset(tmp_path / "d", [SKY_ROAD])
    model = lambda x: one_hot_logits(torch.from_numpy(SKY_ROAD).expand(x.shape[0], H, W))  # noqa: E731
    static = fake("static.onnx", model)
    other = FakeBackend("best.pt", respond=model, input_size=(2 * W, 2 * H))  # dynamic: any size
    with pytest.raises(DronsegError, match=r"^static.onnx takes 8x4 inputs but best.pt 16x8: give best.pt first: "):
        check_parity(static, other, data, device="cpu")
    assert check_parity(other, static, data, device="cpu").passed
    with pytest.raises(DronsegError, match=r"16x8: compare exports of the same --size$"):
        check_parity(static, FakeBackend("other.onnx", respond=model, input_size=(2 * W, 2 * H), batch=1, dynamic=False),
                     data, device="cpu")


@pytest.mark.parametrize("limit", [0, 2.5])
def test_a_limit_below_one_image_is_refused(tmp_path, limit):
    # "up to max_images images": 0 compared all three; 2.5 was numpy's TypeError (linspace) once both models were open
    from dronseg_edge.errors import DronsegError

    data = dataset(tmp_path / "d", [SKY_ROAD] * 3)
    model = lambda x: one_hot_logits(torch.from_numpy(SKY_ROAD).expand(x.shape[0], H, W))  # noqa: E731
    with pytest.raises(DronsegError, match=f"max_images {limit} must be a whole number, at least 1"):
        check_parity(fake("ref.pt", model), fake("cand.onnx", model), data, device="cpu", max_images=limit)


def test_disagreeing_pixels_fail_with_the_reason_and_exact_agreement(tmp_path):
    data = dataset(tmp_path / "d", [SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)
    wrong = truth.clone()
    wrong[3, :2] = 3  # 2 road pixels become car: 30/32 agree
    ref = fake("ref.pt", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W)))
    cand = fake("cand.onnx", lambda x: one_hot_logits(wrong.expand(x.shape[0], H, W)))
    report = check_parity(ref, cand, data, device="cpu")
    assert not report and report.agreement == pytest.approx(30 / 32)
    assert report.failures == ["logits: argmax agreement 93.750% < 99.9%"]
    # road: 16 reference pixels, 14 shared -> IoU 14/16; car appears only in the candidate -> 0
    assert report.class_iou[10] == pytest.approx(14 / 16) and report.class_iou[3] == pytest.approx(0.0)
    gt = report.ground_truth
    assert gt.reference_miou == pytest.approx(1.0)
    assert gt.candidate_miou == pytest.approx((1.0 + 14 / 16 + 0.0) / 3)
    assert report.miou_delta == pytest.approx(100 * ((1 + 14 / 16) / 3 - 1))
    relaxed = check_parity(ref, cand, data, device="cpu", thresholds=ParityThresholds(min_agreement=0.9))
    assert relaxed.passed


def test_int8_mIoU_limit_applies_against_ground_truth(tmp_path):
    data = dataset(tmp_path / "d", [SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)
    wrong = truth.clone()
    wrong[3, 0] = 11  # 1 pixel of 32 off: agreement 96.9% passes an 0.95 floor, the mIoU drop does not
    ref = fake("ref.pt", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W)))
    cand = fake("cand.onnx", lambda x: one_hot_logits(wrong.expand(x.shape[0], H, W)), precision="int8")
    report = check_parity(ref, cand, data, device="cpu",
                          thresholds=ParityThresholds.for_precision("int8", min_agreement=0.95))
    assert not report.passed and len(report.failures) == 1
    assert report.failures[0].startswith("mean IoU drops") and "(limit 1)" in report.failures[0]


def test_each_reason_prints_a_number_beyond_its_limit(tmp_path):
    """One pixel of 999 differs (99.8999 % agree) and the mIoU drops 0.2003 points: printed to 3 and 2
    decimals they read "99.900% < 99.9%" and "drops 0.20 points (limit 0.2)", a failure that contradicts itself."""
    width, height = 37, 27
    truth = np.full((height, width), 10, np.uint8)
    truth[:13] = 11
    for folder, picture in (("imgs/imgs", np.full((height, width, 3), 40, np.uint8)), ("masks/masks", truth)):
        (tmp_path / "d" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "d" / folder / "0.png"), picture)
    wrong = torch.from_numpy(truth).clone()
    wrong[-1, -1] = 11
    ref, cand = (FakeBackend(name, respond=lambda x, m=mask: one_hot_logits(m.expand(x.shape[0], height, width)),
                             input_size=(width, height), batch=1, dynamic=False)
                 for name, mask in (("ref.pt", torch.from_numpy(truth)), ("cand.onnx", wrong)))
    report = check_parity(ref, cand, tmp_path / "d", device="cpu", thresholds=ParityThresholds(0.999, max_miou_drop=0.2))
    agreement, floor = map(float, re.search(r"agreement ([\d.]+)% < ([\d.]+)%", report.failures[0]).groups())
    drop, limit = map(float, re.search(r"drops ([\d.]+) points .*\(limit ([\d.]+)\)", report.failures[1]).groups())
    assert agreement < floor and drop > limit


def test_fp16_overflow_is_detected_and_fp32_recommended(tmp_path):
    data = dataset(tmp_path / "d", [SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)

    def overflowing(x):
        out = one_hot_logits(truth.expand(x.shape[0], H, W))
        out[:, 0, 0, 0] = math.inf
        out[:, 1, 0, 0] = math.nan
        return out

    ref = fake("ref.pt", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W)))
    report = check_parity(ref, fake("cand.onnx", overflowing, precision="fp16"), data, device="cpu")
    assert not report.passed
    assert any("NaN/Inf" in f for f in report.failures)
    assert " | cos 1.00000 | NaN/Inf 2 | mIoU " in report.summary_line()
    assert any(w.startswith("fp16 overflow") and "--precision fp32" in w for w in report.warnings)
    saturated = check_parity(ref, fake("c.onnx", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W), 60000.0),
                                              precision="fp16"), data, device="cpu")
    assert any(w.startswith("fp16 saturation") for w in saturated.warnings)


def test_a_comparison_that_proves_little_says_why_in_the_report(tmp_path):
    huge = lambda x: one_hot_logits(torch.zeros(x.shape[0], H, W), 2e4)  # noqa: E731 (an untrained model's size)
    (tmp_path / "pictures").mkdir()
    cv2.imwrite(str(tmp_path / "pictures" / "0.png"), np.zeros((H, W, 3), np.uint8))  # no masks
    ref, cand = fake("ref.onnx", huge), fake("cand.onnx", huge, precision="int8")
    table = check_parity(ref, cand, tmp_path / "pictures", device="cpu").table()
    assert "warning: reference logits reach 2e+04: an untrained model or broken BatchNorm statistics" in table
    assert "warning: mIoU limit not checked: no ground-truth masks among the images" in table
    assert "warning: compared on synthetic scenes: pass --parity-data with real images" in \
        check_parity(ref, cand, device="cpu", max_images=1).table()


def test_argmax_head_candidate_gets_mask_metrics_only(tmp_path):
    data = dataset(tmp_path / "d", [SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)
    ref = fake("ref.pt", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W)))
    cand = fake("m.onnx", lambda x: truth.expand(x.shape[0], H, W).to(torch.uint8), head="argmax")
    report = check_parity(ref, cand, data, device="cpu")
    assert report.passed and report.outputs[0].name == "mask" and report.outputs[0].abs_max is None
    assert "abs max" not in report.summary_line()


def test_report_json_is_standard_json_and_named_after_the_artifact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # models typed relative to the working folder are named by absolute path
    data = dataset(tmp_path / "d", [SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)
    model = lambda x: one_hot_logits(truth.expand(x.shape[0], H, W))  # noqa: E731
    report = check_parity(fake("r.pt", model), fake("c.onnx", model), data, device="cpu")
    path = report.save(parity_report_path(tmp_path / "best_fp16.onnx"))
    assert path.name == "best_fp16.parity.json"
    assert parity_report_path(tmp_path / "best_fp16.onnx.failed").name == "best_fp16.parity.json"
    doc = json.loads(path.read_text())  # class IoU holds NaN-free values; strict parser accepts it
    assert doc["status"] == "PASSED" and doc["agreement"] == 1.0 and doc["class_iou"]["sky"] == 1.0
    assert (doc["reference"], doc["candidate"]) == (str(tmp_path / "r.pt"), str(tmp_path / "c.onnx"))
    assert "IoU of candidate vs reference masks per class:" in report.table()


def test_thresholds_per_precision_and_overrides():
    assert ParityThresholds.for_precision("fp32") == ParityThresholds(0.999, None)
    assert ParityThresholds.for_precision("fp16") == ParityThresholds(0.995, None)
    assert ParityThresholds.for_precision("int8") == ParityThresholds(0.98, 1.0)
    assert ParityThresholds.for_precision("int8", min_agreement=0.9, max_miou_drop=2) == ParityThresholds(0.9, 2.0)
    from dronseg_edge.errors import DronsegError

    with pytest.raises(DronsegError, match="percentage"):
        ParityThresholds.for_precision("fp32", min_agreement=99.0)
    with pytest.raises(DronsegError, match="--max-miou-drop nan must be >= 0"):  # NaN: the limit was never checked
        ParityThresholds.for_precision("int8", max_miou_drop=float("nan"))


def test_thresholds_made_directly_are_checked_too():
    """The Python API makes them directly: NaN passed every int8 file without checking its mIoU,
    99 (a percentage, as the CLI takes it) failed every file as 'agreement 100.000% < 9900%'."""
    from dronseg_edge.errors import DronsegError

    with pytest.raises(DronsegError, match="--max-miou-drop nan must be >= 0"):
        ParityThresholds(0.98, max_miou_drop=float("nan"))
    with pytest.raises(DronsegError, match="a fraction 0..1"):
        ParityThresholds(min_agreement=99)


def test_failed_report_pictures_its_worst_image_and_names_the_picture(tmp_path):
    data = dataset(tmp_path / "d", [SKY_ROAD, SKY_ROAD, SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)

    def candidate(x):  # image i (pixel value 40 (i + 1)) gets i wrong road pixels: image 2 is the worst
        maps = truth.expand(x.shape[0], H, W).clone()
        index = int(round(float(x[0, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255 / 40)) - 1
        maps[:, 3, :index] = 3
        return one_hot_logits(maps)

    ref = fake("ref.pt", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W)))
    report = check_parity(ref, fake("cand.onnx", candidate), data, device="cpu")
    assert not report.passed and report.worst_image.name == "2.png"
    assert report.worst_image.agreement == pytest.approx(30 / 32)
    path = report.save(parity_report_path(tmp_path / "best_fp32.onnx.failed"))
    assert json.loads(path.read_text())["difference_picture"] == "best_fp32.parity.png"
    assert "best_fp32.parity.png" in report.table()
    picture = cv2.imread(str(tmp_path / "best_fp32.parity.png"))
    tile = MIN_TILE  # the 8-pixel-wide images are enlarged to the minimum tile width
    assert picture.shape[1] == 4 * tile
    scale = tile // W
    top = 22 + 22  # title strip, then the captions
    red = list(DIFFERENCE_BGR)
    # The differences tile: the 2 changed pixels (row 3, columns 0-1) red, the rest the image greyed.
    assert picture[top + 3 * scale + 1, 3 * tile + 1].tolist() == red
    assert picture[top + 3 * scale + 1, 3 * tile + 2 * scale + 1].tolist() != red
    assert picture[top + 1, 3 * tile + 1].tolist() != red


def test_borderline_pass_is_pictured_and_a_clear_pass_removes_an_old_picture(tmp_path):
    data = dataset(tmp_path / "d", [SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)
    wrong = truth.clone()
    wrong[3, :2] = 3  # 30/32 agree: passes a 0.9 floor, using 0.0625 of its 0.1 allowance
    ref = fake("ref.pt", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W)))
    cand = fake("cand.onnx", lambda x: one_hot_logits(wrong.expand(x.shape[0], H, W)))
    report = check_parity(ref, cand, data, device="cpu", thresholds=ParityThresholds(min_agreement=0.9))
    assert report.passed and borderline(report)
    json_path = tmp_path / "m_fp16.parity.json"
    report.save(json_path)
    assert report.difference_picture == "m_fp16.parity.png" and (tmp_path / "m_fp16.parity.png").is_file()
    roomy = check_parity(ref, cand, data, device="cpu", thresholds=ParityThresholds(min_agreement=0.8))
    assert roomy.passed and not borderline(roomy)  # 0.0625 of a 0.2 allowance
    roomy.save(json_path)
    assert roomy.difference_picture is None and not (tmp_path / "m_fp16.parity.png").exists()
    assert json.loads(json_path.read_text())["difference_picture"] is None


def test_a_json_report_never_removes_or_replaces_a_picture_of_the_same_name(tmp_path):
    """`parity --json flight.json` deleted the user's flight.png on a clear pass (and replaced it on a failure)."""
    data = dataset(tmp_path / "d", [SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)
    wrong = truth.clone()
    wrong[3, :2] = 3
    ref = fake("ref.pt", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W)))
    photo = tmp_path / "flight.png"
    photo.write_bytes(b"the user's own picture")
    for floor in (0.8, 0.99):  # a clear pass (nothing pictured), then a failure (pictured)
        report = check_parity(ref, fake("cand.onnx", lambda x: one_hot_logits(wrong.expand(x.shape[0], H, W))), data,
                              device="cpu", thresholds=ParityThresholds(min_agreement=floor))
        report.save(tmp_path / "flight.json")
    assert photo.read_bytes() == b"the user's own picture"
    assert report.difference_picture == "flight.parity.png" and (tmp_path / "flight.parity.png").is_file()


def test_borderline_counts_the_miou_allowance_too(tmp_path):
    data = dataset(tmp_path / "d", [SKY_ROAD])
    truth = torch.from_numpy(SKY_ROAD)
    wrong = truth.clone()
    wrong[3, 0] = 11  # 31/32 agree; mIoU drops about 2 points
    ref = fake("ref.pt", lambda x: one_hot_logits(truth.expand(x.shape[0], H, W)))
    cand = fake("cand.onnx", lambda x: one_hot_logits(wrong.expand(x.shape[0], H, W)), precision="int8")
    drop = -check_parity(ref, cand, data, device="cpu").miou_delta
    near = check_parity(ref, cand, data, device="cpu", thresholds=ParityThresholds(0.5, max_miou_drop=1.5 * drop))
    far = check_parity(ref, cand, data, device="cpu", thresholds=ParityThresholds(0.5, max_miou_drop=3 * drop))
    assert near.passed and borderline(near) and far.passed and not borderline(far)


def test_one_differing_pixel_of_a_large_frame_stays_visible_when_shrunk():
    from dronseg_edge.classes import CLASS_NAMES, PALETTE
    from dronseg_edge.export.parity_picture import MAX_TILE, WorstImage

    worst = WorstImage(CLASS_NAMES, PALETTE)
    reference = np.full((720, 1280), 9)
    candidate = reference.copy()
    candidate[300, 641] = 1
    worst.update("big.jpg", np.zeros((720, 1280, 3), np.uint8), reference, candidate)
    worst.update("better.jpg", np.zeros((720, 1280, 3), np.uint8), reference, reference)  # agrees more: not kept
    assert worst.name == "big.jpg"
    picture = worst.picture()
    assert picture.shape[1] == 4 * MAX_TILE
    differences = picture[44:44 + 270, 3 * MAX_TILE:]  # below the title and captions; 1280x720 shrunk to 480x270
    assert (differences == DIFFERENCE_BGR).all(axis=-1).sum() == 1


def red_scene(root: Path) -> Path:
    """A data set of one reddish image (BGR 40, 120, 200) under a sky mask."""
    data = dataset(root, [np.full((H, W), 11, np.uint8)])
    cv2.imwrite(str(data / "imgs/imgs/0.png"), np.full((H, W, 3), (40, 120, 200), np.uint8))
    return data


def sky_where(red_wins: torch.Tensor) -> torch.Tensor:
    return torch.where(red_wins, 11, 10)


def test_each_model_gets_its_own_normalisation_and_colour_order(tmp_path):
    data = red_scene(tmp_path / "d")
    rgb = dict(arch="lraspp_mobilenet_v3_large", input_size=(W, H), batch=1, dynamic=False)
    ref = FakeBackend("ref.pt", respond=lambda x: one_hot_logits(sky_where(x[:, 0] > x[:, 2])), **rgb)
    # The same model reading BGR (its first convolution flipped), described so: infer feeds it BGR, and it agrees.
    bgr = FakeBackend("bgr.onnx", respond=lambda x: one_hot_logits(sky_where(x[:, 2] > x[:, 0])), **rgb,
                      color_order="BGR", mean=IMAGENET_MEAN[::-1], std=IMAGENET_STD[::-1])
    assert check_parity(ref, bgr, data, device="cpu").agreement == 1.0
    # The reference itself, with metadata naming another mean: infer would feed it wrong values; that must show.
    positive = lambda x: one_hot_logits(sky_where(x[:, 0] > 0))  # noqa: E731
    lying = FakeBackend("lying.onnx", respond=positive, **rgb, mean=[0.9, 0.9, 0.9])
    report = check_parity(FakeBackend("ref.pt", respond=positive, **rgb), lying, data, device="cpu")
    assert not report.passed and report.agreement == 0.0


def test_an_onnx_or_engine_reference_is_fed_in_host_memory(tmp_path):
    """load_backend gives a file that is no checkpoint a torch-free devices.Device: `parity A.onnx B.onnx` was a
    TypeError from Tensor.to(Device)."""
    from dronseg_edge.devices import Device

    data = dataset(tmp_path / "d", [SKY_ROAD])
    answer = lambda x: one_hot_logits(torch.from_numpy(SKY_ROAD).long()[None].expand(len(x), -1, -1))  # noqa: E731
    ref = fake("ref.onnx", answer)
    ref.device = Device("cpu")
    assert check_parity(ref, fake("cand.onnx", answer), data, device="cpu").agreement == 1.0


def test_a_frames_candidate_gets_the_frames_in_its_colour_order(tmp_path):
    data = red_scene(tmp_path / "d")
    ref = FakeBackend("ref.pt", respond=lambda x: one_hot_logits(sky_where(x[:, 0] > x[:, 2])),
                      arch="lraspp_mobilenet_v3_large", input_size=(W, H))
    frames = FakeBackend("rgb_frames.onnx", respond=lambda f: sky_where(f[..., 0] > f[..., 2]).to(torch.uint8),
                         arch="lraspp_mobilenet_v3_large", input_size=(W, H), batch=1, dynamic=False, io="frames",
                         head="argmax", layout="NHWC", source_size=(W, H), color_order="RGB", outputs=["mask"])
    report = check_parity(ref, frames, data, device="cpu")
    assert report.passed and report.agreement == 1.0


def test_models_naming_their_classes_otherwise_are_not_compared(tmp_path):
    from dronseg_edge.classes import CLASS_NAMES
    from dronseg_edge.errors import DronsegError

    data = dataset(tmp_path / "d", [SKY_ROAD])
    swapped = ["person", "background", *CLASS_NAMES[2:]]  # a class map whose person pixels infer calls background
    cand = FakeBackend("c.onnx", arch="lraspp_mobilenet_v3_large", input_size=(W, H), class_names=swapped)
    with pytest.raises(DronsegError, match="names class 0 as 'background' but c.onnx as 'person'"):
        check_parity(fake("r.pt", lambda x: one_hot_logits(torch.zeros(x.shape[0], H, W))), cand, data, device="cpu")
    with pytest.raises(DronsegError, match="names 12 classes but c.onnx 11"):
        check_parity(fake("r.pt", None), FakeBackend("c.onnx", input_size=(W, H), class_names=CLASS_NAMES[:11]), data,
                     device="cpu")


def test_a_candidate_whose_outputs_are_smaller_than_its_input_is_one_line(tmp_path):
    from dronseg_edge.errors import DronsegError

    data = dataset(tmp_path / "d", [SKY_ROAD])
    small = fake("small.onnx", lambda x: torch.zeros(x.shape[0], 12, H // 2, W // 2))  # no final upsampling
    with pytest.raises(DronsegError, match=r"small.onnx outputs 4x2 maps where r.pt outputs 8x4 \(inputs 8x4\)"):
        check_parity(fake("r.pt", None), small, data, device="cpu")


def test_a_frames_candidate_whose_map_is_smaller_than_its_frames_is_one_line(tmp_path):
    """The same mistake in a frames graph was a RuntimeError traceback (the size of tensor a (8) must match ...)."""
    from dronseg_edge.errors import DronsegError

    data = dataset(tmp_path / "d", [SKY_ROAD])
    small = FakeBackend("small_frames.onnx", respond=lambda f: torch.zeros(f.shape[0], H // 2, W // 2, dtype=torch.uint8),
                        arch="lraspp_mobilenet_v3_large", input_size=(W, H), batch=1, dynamic=False, io="frames",
                        head="argmax", layout="NHWC", source_size=(W, H), outputs=["mask"])
    ref = FakeBackend("ref.pt", arch="lraspp_mobilenet_v3_large", input_size=(W, H))
    with pytest.raises(DronsegError, match=r"small_frames.onnx outputs 4x2 maps for 8x4 frames"):
        check_parity(ref, small, data, device="cpu")


def test_a_frames_graph_is_compared_with_its_checkpoint_only(tmp_path):
    from dronseg_edge.errors import DronsegError

    frames = FakeBackend("f.onnx", arch="lraspp_mobilenet_v3_large", input_size=(W, H), batch=1, dynamic=False, io="frames",
                         head="argmax", layout="NHWC", source_size=(W, H), outputs=["mask"])
    with pytest.raises(DronsegError, match=r"f.onnx takes frames \(export --io frames\): compare it with its checkpoint, "
                                           "not with r.onnx"):
        check_parity(fake("r.onnx", None), frames, device="cpu")  # a static reference cannot run at the frame's size
    with pytest.raises(DronsegError, match=r"f.onnx takes frames \(export --io frames\): it can only be a candidate"):
        check_parity(frames, fake("c.onnx", None), device="cpu")


def test_models_of_another_class_count_are_compared_on_synthetic_scenes_without_their_masks():
    """parity of two 5-class models without images failed on its own rendered (12-class) masks, naming a deleted
    temporary file: 'mask /tmp/dronseg-parity-.../000001_001.png holds values ... outside 0..4: fix the labels'."""
    from dronseg_edge.classes import CLASS_NAMES, PALETTE

    five = dict(class_names=CLASS_NAMES[:5], palette=PALETTE[:5], respond=lambda x: torch.zeros(x.shape[0], 5, H, W))
    report = check_parity(FakeBackend("r.onnx", **five), FakeBackend("c.onnx", **five), None, device="cpu", max_images=1)
    assert report.passed and report.ground_truth is None and "synthetic" in report.data_source
