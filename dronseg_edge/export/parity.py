"""Parity: run a reference and a candidate model on the same real images and compare them (what is
reported, and the default rules: docs/export.md, "Parity").

Both get the same images as float32 batches (``runtime/host.preprocess_host``, at the candidate's input size),
each normalised and in the colour order its own metadata names, as ``infer`` feeds it; a frames graph gets the
frames themselves, in its colour order. The verdict uses per-precision thresholds
(parity_report.DEFAULT_THRESHOLDS) that callers can override. The image the two agree on least is
kept, so a failed or borderline report can picture it (parity_picture.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch

from dronseg_edge.checkpoint import load_checkpoint
from dronseg_edge.classes import NUM_CLASSES
from dronseg_edge.devices import resolve_device, tf32_mode
from dronseg_edge.errors import DronsegError
from dronseg_edge.export.accuracy import class_map_at, source_checkpoint
from dronseg_edge.export.images import ImageItem, ImageSet, load_item, resolve_images
from dronseg_edge.export.parity_picture import WorstImage
from dronseg_edge.export.parity_report import GroundTruthScores, OutputStats, ParityReport, ParityThresholds
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.metrics import SegmentationMetrics, confusion_matrix, iou_from_confusion
from dronseg_edge.option_fields import whole
from dronseg_edge.runtime.base import Backend, pad_batch
from dronseg_edge.runtime.host import frames_in_order, preprocess_host, resize_frame
from dronseg_edge.runtime.registry import check_model_file, is_checkpoint, load_backend
from dronseg_edge.runtime.torch import TorchBackend

REL_FLOOR = 1e-3  # relative error divides by max(|reference|, this): logits near 0 would make it meaningless
SAMPLE_PER_IMAGE = 1 << 18  # values per image kept for the p99 estimates
FP16_MAX = 65504.0
SUSPICIOUS_LOGIT = 1e4  # trained segmentation heads stay far below; random BatchNorm statistics give ~1e5


class LogitComparison:
    """Accumulates element-wise error statistics of two logit tensors over batches (on the CPU)."""

    def __init__(self):
        self.count = 0
        self.abs_sum = self.rel_sum = self.abs_max = self.rel_max = 0.0
        self.dot = self.ref_sq = self.cand_sq = 0.0
        self.cosine_min = math.inf
        self.nonfinite_candidate = self.nonfinite_reference = 0
        self.candidate_abs_max = self.reference_abs_max = 0.0
        self.abs_samples: list[np.ndarray] = []
        self.rel_samples: list[np.ndarray] = []
        self.generator = torch.Generator().manual_seed(0)

    def update(self, reference: torch.Tensor, candidate: torch.Tensor) -> None:
        """reference, candidate: (N, C, H, W) float tensors of equal shape."""
        ref, cand = reference.detach().double().cpu(), candidate.detach().double().cpu()
        finite_ref, finite_cand = torch.isfinite(ref), torch.isfinite(cand)
        self.nonfinite_reference += int((~finite_ref).sum())
        self.nonfinite_candidate += int((~finite_cand).sum())
        self.candidate_abs_max = max(self.candidate_abs_max, float(torch.where(finite_cand, cand.abs(), 0.0).max()))
        self.reference_abs_max = max(self.reference_abs_max, float(torch.where(finite_ref, ref.abs(), 0.0).max()))
        both = finite_ref & finite_cand
        diff = (cand - ref).abs()[both]
        rel = diff / ref.abs()[both].clamp_min(REL_FLOOR)
        if diff.numel():
            self.count += diff.numel()
            self.abs_sum, self.rel_sum = self.abs_sum + float(diff.sum()), self.rel_sum + float(rel.sum())
            self.abs_max, self.rel_max = max(self.abs_max, float(diff.max())), max(self.rel_max, float(rel.max()))
            keep = slice(None) if diff.numel() <= SAMPLE_PER_IMAGE else \
                torch.randperm(diff.numel(), generator=self.generator)[:SAMPLE_PER_IMAGE]
            self.abs_samples.append(diff[keep].numpy())
            self.rel_samples.append(rel[keep].numpy())
        for r, c in zip(torch.where(both, ref, 0.0).flatten(1), torch.where(both, cand, 0.0).flatten(1)):
            dot, rr, cc = float(r @ c), float(r @ r), float(c @ c)
            self.dot, self.ref_sq, self.cand_sq = self.dot + dot, self.ref_sq + rr, self.cand_sq + cc
            self.cosine_min = min(self.cosine_min, _cosine(dot, rr, cc))

    def fill(self, stats: OutputStats) -> OutputStats:
        if self.count:
            abs_all, rel_all = np.concatenate(self.abs_samples), np.concatenate(self.rel_samples)
            stats.abs_max, stats.abs_mean, stats.abs_p99 = self.abs_max, self.abs_sum / self.count, float(np.percentile(abs_all, 99))
            stats.rel_max, stats.rel_mean, stats.rel_p99 = self.rel_max, self.rel_sum / self.count, float(np.percentile(rel_all, 99))
            stats.sampled_values = int(abs_all.size)
        stats.cosine = _cosine(self.dot, self.ref_sq, self.cand_sq)
        stats.cosine_min = self.cosine_min if math.isfinite(self.cosine_min) else stats.cosine
        stats.nonfinite_candidate, stats.nonfinite_reference = self.nonfinite_candidate, self.nonfinite_reference
        stats.candidate_abs_max, stats.reference_abs_max = self.candidate_abs_max, self.reference_abs_max
        return stats


class MaskTally:
    """Class maps of candidate vs reference over images: agreeing pixels, per-class IoU between the two,
    both against ground truth where it exists, and the image they agree on least."""

    def __init__(self, info: ModelInfo):
        self.classes = info.num_classes
        self.agree = self.total = self.gt_images = 0
        self.between = torch.zeros(self.classes, self.classes, dtype=torch.int64)
        self.ref_scores, self.cand_scores = SegmentationMetrics(self.classes), SegmentationMetrics(self.classes)
        self.worst = WorstImage(info.class_names, info.palette)

    def add(self, name: str, frame: np.ndarray, ref_mask: torch.Tensor, cand_mask: torch.Tensor, truth) -> None:
        """(H, W) class maps of the BGR ``frame``; ``truth``: its ground-truth mask (any size) or None."""
        self.agree += int((ref_mask == cand_mask).sum())
        self.total += ref_mask.numel()
        self.between += confusion_matrix(cand_mask, ref_mask, self.classes)
        self.worst.update(name, frame, ref_mask, cand_mask)
        if truth is not None:
            height, width = ref_mask.shape
            truth = torch.from_numpy(cv2.resize(truth, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)).long()
            self.ref_scores.update(ref_mask, truth)
            self.cand_scores.update(cand_mask, truth)
            self.gt_images += 1

    def report(self, ref: Backend, cand: Backend, images: ImageSet, thresholds: ParityThresholds, stats: OutputStats,
               size: tuple[int, int], data_source: str) -> ParityReport:
        """The unjudged report with ``stats`` (its agreement filled in here)."""
        stats.agreement = self.agree / self.total if self.total else math.nan
        ground_truth = None
        if self.gt_images:
            r, c = self.ref_scores.compute(), self.cand_scores.compute()
            ground_truth = GroundTruthScores(self.gt_images, r["miou"], c["miou"], r["mdice"], c["mdice"])
        info = cand.info
        return ParityReport(
            reference=str(ref.path), candidate=str(cand.path), reference_provider=ref.describe(),
            candidate_provider=cand.describe(), precision=info.precision, head=info.head, size=tuple(size),
            images=len(images.items), data_source=data_source, outputs=[stats], class_names=list(info.class_names),
            class_iou=[None if math.isnan(v) else v for v in iou_from_confusion(self.between).tolist()],
            ground_truth=ground_truth, thresholds=thresholds, synthetic_data=images.synthetic, worst_image=self.worst)


def _cosine(dot: float, a: float, b: float) -> float:
    if a == 0.0 or b == 0.0:
        return float(a == b)  # two zero vectors are alike, one is not like anything
    return dot / math.sqrt(a * b)


Model = Union[Path, Backend, dict[str, Any]]  # a file, an open Backend, or a loaded checkpoint (load_checkpoint's dict)


def _open(model: Model, device: torch.device, owned: list[Backend]) -> tuple[Backend, dict[str, Any] | None]:
    """(backend, the loaded checkpoint when ``model`` is one): a Backend is used as given, anything else opened here."""
    if isinstance(model, Backend):
        return model, None
    ckpt = model if isinstance(model, dict) else None
    if ckpt is None and is_checkpoint(model):
        ckpt = load_checkpoint(check_model_file(model))
    # A checkpoint loaded once (by the caller, or above) is not read or hashed again.
    backend = TorchBackend.from_checkpoint(ckpt, device, head="logits") if ckpt is not None else load_backend(Path(model), device)
    owned.append(backend)
    return backend, ckpt


def _checkpoint_for_images(opened: list[tuple[Backend, dict[str, Any] | None]]) -> dict | None:
    """A loaded checkpoint among the models (or the one an export records as its source), for its split."""
    loaded = (ckpt for _, ckpt in opened if ckpt is not None)
    # Else a checkpoint the caller opened (e.g. a TorchBackend at fp16), or an export's recorded source.
    paths = (source_checkpoint(backend.path, backend.info) for backend, _ in opened)
    return next(itertools.chain(loaded, (load_checkpoint(path) for path in paths if path)), None)


def _static(info: ModelInfo) -> bool:
    return not info.dynamic and info.batch is not None


def _run(backend: Backend, x: torch.Tensor) -> torch.Tensor:
    """Infer ``x`` (N, 3, H, W), in chunks of the backend's fixed batch if it has one."""
    size = backend.info.batch if _static(backend.info) else x.shape[0]
    chunks = [pad_batch(x[start:start + size], size) for start in range(0, x.shape[0], size)]
    return torch.cat([backend.infer(chunk)[:real] for chunk, real in chunks])


def _check_compatible(reference: Backend, candidate: Backend, frames: bool = False) -> None:
    ref_names, cand_names = list(reference.info.class_names), list(candidate.info.class_names)
    if ref_names != cand_names:  # same count, other order: every class would be named and coloured as another
        at = next(i for i, (a, b) in enumerate(zip(ref_names + [None], cand_names + [None])) if a != b)
        what = (f"{len(ref_names)} classes but {candidate.path} {len(cand_names)}" if len(ref_names) != len(cand_names)
                else f"class {at} as {ref_names[at]!r} but {candidate.path} as {cand_names[at]!r}")
        raise DronsegError(f"{reference.path} names {what}: compare models of the same data set and class order")
    if frames and (reference.info.io == "frames" or reference.info.head != "logits" or not reference.info.dynamic):
        raise DronsegError(f"{candidate.path} takes frames (export --io frames): compare it with its checkpoint, "
                           f"not with {reference.path}")
    if frames:
        return
    if reference.info.io == "frames":
        raise DronsegError(f"{reference.path} takes frames (export --io frames): it can only be a candidate, "
                           "compared with its checkpoint")
    if _static(reference.info) and reference.info.input_size != candidate.info.input_size:
        fix = "compare exports of the same --size" if _static(candidate.info) else (
            f"give {candidate.path} first: the reference takes the candidate's size, which {reference.path} cannot")
        raise DronsegError(f"{reference.path} takes {reference.info.input_size[0]}x{reference.info.input_size[1]} "
                           f"inputs but {candidate.path} {candidate.info.input_size[0]}x"
                           f"{candidate.info.input_size[1]}: {fix}")


def check_parity(reference: Model, candidate: Model, data: Path | None = None, *,
                 device: str | torch.device = "auto", thresholds: ParityThresholds | None = None,
                 max_images: int = 16) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on up to ``max_images`` images; returns the report.

    Models are paths (``.pt`` checkpoint, ``.onnx``, ``.engine``), Backends (used as given, not
    closed) or a checkpoint already loaded by ``load_checkpoint`` (run as fp32 logits in PyTorch,
    not read again). Images: ``data`` (dataset root or image folder), else the validation split of a
    checkpoint involved, else synthetic scenes (said in the report). Inputs are at the candidate's
    input size. ``thresholds`` default to the candidate's precision (ParityThresholds.for_precision).
    """
    whole(max_images, "max_images", hint=" (--parity-images)")  # 0 compared every image ("no limit" to pick_evenly)
    torch_device = resolve_device(str(device))
    owned: list[Backend] = []
    try:
        opened = [_open(reference, torch_device, owned), _open(candidate, torch_device, owned)]
        ref, cand = opened[0][0], opened[1][0]
        frames = cand.info.io == "frames"  # pre/post inside the candidate: compared at the frame's size
        _check_compatible(ref, cand, frames)
        size = tuple((cand.info.source_size if frames else None) or cand.info.input_size)
        ckpt = _checkpoint_for_images(opened) if data is None else None
        limits = thresholds or ParityThresholds.for_precision(cand.info.precision)
        with resolve_images(data, ckpt, option="--parity-data", max_images=max_images, size=size,
                            allow_synthetic=True) as images, tf32_mode(False):  # the PyTorch reference must be true fp32, not TF32
            if images.synthetic and cand.info.num_classes != NUM_CLASSES:  # synth's masks: the 12 AeroScapes classes
                images.items = [ImageItem(item.image) for item in images.items]
            return (_compare_frames if frames else _compare)(ref, cand, images, limits)
    finally:
        for backend in owned:
            backend.deactivate()


def _compare(ref: Backend, cand: Backend, images: ImageSet, thresholds: ParityThresholds) -> ParityReport:
    info = cand.info
    batch = info.batch if _static(info) else 1
    logits = LogitComparison() if (ref.info.head == "logits" and info.head == "logits") else None
    tally = MaskTally(info)
    items = images.items
    for start in range(0, len(items), batch):
        group = items[start:start + batch]
        frames, masks = zip(*(load_item(item, info.num_classes) for item in group))
        x, _ = pad_batch(torch.from_numpy(preprocess_host(list(frames), info)), batch)
        ref_out = _run(ref, _reference_input(list(frames), ref, info, batch))[: len(group)].cpu()
        cand_out = _run(cand, x)[: len(group)].cpu()
        ref_mask = ref_out.argmax(1) if ref.info.head == "logits" else ref_out.long()
        cand_mask = cand_out.argmax(1) if info.head == "logits" else cand_out.long()
        if cand_mask.shape != ref_mask.shape:  # a graph from elsewhere without the final upsampling, say
            raise DronsegError(f"{cand.path} outputs {_dims(cand_mask)} maps where {ref.path} outputs {_dims(ref_mask)} "
                               f"(inputs {_dims(x[:, 0])}): compare models whose outputs are at their input's size")
        if logits is not None:
            logits.update(ref_out, cand_out)
        for i, item in enumerate(group):
            tally.add(item.image.name, frames[i], ref_mask[i], cand_mask[i], masks[i])
    stats = OutputStats(name="logits" if info.head == "logits" else "mask", kind=info.head)
    if logits is not None:
        logits.fill(stats)
    return judge(tally.report(ref, cand, images, thresholds, stats, info.input_size, images.source))


def _compare_frames(ref: Backend, cand: Backend, images: ImageSet, thresholds: ParityThresholds) -> ParityReport:
    """``cand`` (io='frames') gets uint8 BGR frames, the graph's fixed source size or their own; ``ref`` (a
    logits model taking any size) the same frames shrunk on the host to the graph's model input (the
    INTER_AREA shrink the graph applies too: its export ``--size``, not the checkpoint's training size)
    and the graph's post-processing (bilinear logits to the frame size, argmax): the whole deployable path."""
    info = cand.info
    source = info.source_size if not info.dynamic else None
    batch = info.batch if (not info.dynamic and info.batch) else 1
    tally, sizes, items = MaskTally(info), set(), images.items
    for start in range(0, len(items), batch):
        loaded = [load_item(item, info.num_classes) for item in items[start:start + batch]]
        frames = [np.ascontiguousarray(frame if source is None else resize_frame(frame, *source)) for frame, _ in loaded]
        padded, real = pad_batch(np.stack(frames), batch)
        cand_out = cand.infer(torch.from_numpy(frames_in_order(padded, info))).cpu()[:real].long()
        if cand_out.shape[1:] != frames[0].shape[:2]:  # a graph from elsewhere whose map is not at its frames' size
            raise DronsegError(f"{cand.path} outputs {_dims(cand_out)} maps for {frames[0].shape[1]}x{frames[0].shape[0]} "
                               "frames: compare a frames graph whose class map is at its frames' size")
        for i, (frame, (_, mask)) in enumerate(zip(frames, loaded)):
            sizes.add(frame.shape[1::-1])
            ref_mask = class_map_at(_run(ref, _reference_input([frame], ref, info, 1))[0].cpu().numpy(), frame.shape[:2])
            tally.add(items[start + i].image.name, frame, ref_mask, cand_out[i], mask)
    size = source or (max(sizes) if sizes else tuple(info.input_size))
    at = f"; frames at {size[0]}x{size[1]}" if source else "; frames at their own sizes"
    return judge(tally.report(ref, cand, images, thresholds, OutputStats(name="mask", kind="argmax"), size,
                              images.source + at))


def _dims(maps: torch.Tensor) -> str:
    return f"{maps.shape[-1]}x{maps.shape[-2]}"


def _reference_input(frames: list[np.ndarray], ref: Backend, info: ModelInfo, batch: int) -> torch.Tensor:
    """``frames`` as ``ref`` takes them at the candidate's (``info``) input size: its own mean/std and colour order,
    so a candidate whose metadata names others (what infer would feed it) disagrees."""
    x = preprocess_host(frames, dataclasses.replace(ref.info, input_size=info.input_size))
    x = pad_batch(torch.from_numpy(x), batch)[0]
    # An .onnx/.engine reference has a torch-free devices.Device (load_backend) and takes host memory.
    return x.to(ref.device) if isinstance(ref.device, torch.device) else x


def judge(report: ParityReport) -> ParityReport:
    """Set ``passed``, ``failures`` and ``warnings`` of ``report`` from its statistics and thresholds."""
    limits = report.thresholds
    failures, warnings = [], []
    for out in report.outputs:
        if not out.agreement >= limits.min_agreement:
            floor = 100 * limits.min_agreement
            failures.append(f"{out.name}: argmax agreement {_apart(100 * out.agreement, floor, 3)}% < {floor:g}%")
        if out.nonfinite_candidate:
            failures.append(f"{out.name}: {out.nonfinite_candidate} NaN/Inf values in the candidate's output")
        warnings += _overflow_warnings(out, report.precision)
    if limits.max_miou_drop is not None:
        if report.ground_truth is None:
            warnings.append("mIoU limit not checked: no ground-truth masks among the images (pass --parity-data with masks)")
        elif (drop := -report.ground_truth.miou_delta) > limits.max_miou_drop:
            failures.append(f"mean IoU drops {_apart(drop, limits.max_miou_drop, 2)} points against ground truth "
                            f"(limit {limits.max_miou_drop:g})")
    if report.synthetic_data:
        warnings.append("compared on synthetic scenes: pass --parity-data with real images for a meaningful check")
    report.failures, report.warnings = failures, warnings
    report.passed = not failures
    return report


def _apart(value: float, limit: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, more where fewer would print it on ``limit`` or past it (an agreement
    of 99.8999 % read "99.900% < 99.9%", an mIoU drop of 0.2003 points "0.20 points (limit 0.2)")."""
    while digits < 9 and (float(f"{value:.{digits}f}") - limit) * (value - limit) <= 0:
        digits += 1
    return f"{value:.{digits}f}"


def _overflow_warnings(out: OutputStats, precision: str) -> list[str]:
    found = []
    instead = "export --precision fp32 instead (or run the checkpoint with --precision bf16 on a GPU)"
    if out.nonfinite_candidate and precision == "fp16":
        found.append(f"fp16 overflow: the candidate produced {out.nonfinite_candidate} NaN/Inf values; {instead}")
    if out.candidate_abs_max is not None and out.candidate_abs_max >= 0.5 * FP16_MAX and precision == "fp16":
        found.append(f"fp16 saturation: candidate logits reach {out.candidate_abs_max:.4g}, near the fp16 maximum 65504; {instead}")
    if out.reference_abs_max is not None and out.reference_abs_max >= SUSPICIOUS_LOGIT:
        found.append(f"reference logits reach {out.reference_abs_max:.3g}: an untrained model or broken BatchNorm "
                     "statistics; fp16 overflows on such a model and parity on it proves little")
    return found
