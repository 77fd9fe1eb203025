"""The parity verdict: thresholds, the report object (truthy on PASS) and its text forms.

Modelled on Polygraphy's comparator result: one summary line per comparison
(``PASSED | logits: agreement 99.97% | abs max ... | rel ... | cos ...``), a table with the
error statistics, and a JSON form saved beside the artifact as ``NAME.parity.json``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dronseg_edge.atomic import json_safe, write_json_atomic
from dronseg_edge.errors import DronsegError
from dronseg_edge.export.parity_picture import WorstImage, save_difference_picture

# Minimum argmax agreement (fraction) and maximum mean-IoU loss against ground truth (points) per precision.
DEFAULT_THRESHOLDS = {
    "fp32": (0.999, None),
    "fp16": (0.995, None),
    "bf16": (0.99, None),
    "int8": (0.98, 1.0),
}


@dataclass
class ParityThresholds:
    """PASS needs ``agreement >= min_agreement`` (0..1), no NaN/Inf, and, where ground truth exists and
    ``max_miou_drop`` is set, reference mIoU - candidate mIoU <= ``max_miou_drop`` (points)."""

    min_agreement: float = 0.999
    max_miou_drop: float | None = None

    def __post_init__(self) -> None:  # made directly too (the Python API), not only by for_precision
        if not 0.0 <= self.min_agreement <= 1.0:
            raise DronsegError(f"--min-agreement {self.min_agreement * 100:g} must be a percentage 0..100 "
                               f"(min_agreement {self.min_agreement:g}: a fraction 0..1)")
        if self.max_miou_drop is not None and not self.max_miou_drop >= 0:  # NaN: never checked
            raise DronsegError(f"--max-miou-drop {self.max_miou_drop} must be >= 0 (points of mean IoU)")

    @classmethod
    def for_precision(cls, precision: str, min_agreement: float | None = None,
                      max_miou_drop: float | None = None) -> "ParityThresholds":
        """The defaults of ``precision`` with the given values (if not None) overriding them."""
        base_agreement, base_drop = DEFAULT_THRESHOLDS.get(precision, DEFAULT_THRESHOLDS["fp32"])
        return cls(base_agreement if min_agreement is None else float(min_agreement),
                   base_drop if max_miou_drop is None else float(max_miou_drop))


@dataclass
class OutputStats:
    """Comparison of one output over all images. Errors are candidate - reference, in logit units;
    ``rel`` divides by max(|reference|, REL_FLOOR); p99 values come from a sample when outputs are large."""

    name: str
    kind: str  # "logits" or "mask"
    agreement: float = math.nan
    abs_max: float | None = None
    abs_mean: float | None = None
    abs_p99: float | None = None
    rel_max: float | None = None
    rel_mean: float | None = None
    rel_p99: float | None = None
    cosine_min: float | None = None
    cosine: float | None = None
    nonfinite_candidate: int = 0
    nonfinite_reference: int = 0
    candidate_abs_max: float | None = None
    reference_abs_max: float | None = None
    sampled_values: int = 0


@dataclass
class GroundTruthScores:
    """Mean IoU / Dice (0..1) of reference and candidate against ground-truth masks (at the export size)."""

    images: int
    reference_miou: float
    candidate_miou: float
    reference_mdice: float
    candidate_mdice: float

    @property
    def miou_delta(self) -> float:
        """Candidate minus reference mean IoU, in points (percent)."""
        return 100.0 * (self.candidate_miou - self.reference_miou)

    @property
    def mdice_delta(self) -> float:
        return 100.0 * (self.candidate_mdice - self.reference_mdice)


@dataclass
class ParityReport:
    reference: str
    candidate: str
    reference_provider: str
    candidate_provider: str
    precision: str
    head: str
    size: tuple[int, int]
    images: int
    data_source: str
    outputs: list[OutputStats]
    class_names: list[str]
    class_iou: list[float | None]  # IoU of candidate vs reference masks per class (None: class in neither)
    ground_truth: GroundTruthScores | None
    thresholds: ParityThresholds
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    synthetic_data: bool = False
    difference_picture: str | None = None  # file name of the PNG beside the saved report (failed or borderline only)
    worst_image: WorstImage | None = field(default=None, repr=False, compare=False)  # not saved

    def __bool__(self) -> bool:
        return bool(self.passed)

    @property
    def agreement(self) -> float:
        """Fraction (0..1) of pixels whose argmax class agrees (the first output's)."""
        return self.outputs[0].agreement

    @property
    def miou_delta(self) -> float | None:
        """Candidate - reference mean IoU against ground truth, in points; None without ground-truth masks."""
        return None if self.ground_truth is None else self.ground_truth.miou_delta

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["worst_image"]
        data["status"] = "PASSED" if self.passed else "FAILED"
        # as data_source: a report beside the artifact names the models wherever it is read, not where export ran
        data["reference"], data["candidate"] = os.path.abspath(self.reference), os.path.abspath(self.candidate)
        data["agreement"] = self.agreement
        data["miou_delta"] = self.miou_delta
        data["class_iou"] = {n: v for n, v in zip(self.class_names, self.class_iou)}
        if self.ground_truth is not None:
            data["ground_truth"]["miou_delta"] = self.ground_truth.miou_delta
            data["ground_truth"]["mdice_delta"] = self.ground_truth.mdice_delta
        return json_safe(data, str)  # a NaN in a report is a finding: 'nan', not null

    def save(self, path: Path) -> Path:
        """Write the JSON report, and for a failed or borderline one its difference picture beside it."""
        wanted = not self.passed or borderline(self)
        self.difference_picture = save_difference_picture(self.worst_image, wanted, path)
        return write_json_atomic(path, self.to_dict())

    def summary_line(self) -> str:
        """``PASSED | logits: agreement 99.97% | abs max 0.012 mean 0.001 p99 0.004 | rel ... | cos 0.99999``."""
        parts = ["PASSED" if self.passed else "FAILED"]
        for out in self.outputs:
            parts.append(f"{out.name}: agreement {100 * out.agreement:.2f}%")
            if out.abs_max is not None:
                parts.append(f"abs max {_g(out.abs_max)} mean {_g(out.abs_mean)} p99 {_g(out.abs_p99)}")
                parts.append(f"rel max {_g(out.rel_max)} mean {_g(out.rel_mean)} p99 {_g(out.rel_p99)}")
                parts.append(f"cos {out.cosine_min:.5f}" if out.cosine_min is not None else "cos -")
            if out.nonfinite_candidate:
                parts.append(f"NaN/Inf {out.nonfinite_candidate}")
        if self.ground_truth is not None:
            gt = self.ground_truth
            parts.append(f"mIoU {100 * gt.reference_miou:.2f} -> {100 * gt.candidate_miou:.2f} ({gt.miou_delta:+.2f})")
        return " | ".join(parts)

    def table(self) -> str:
        """A multi-line text report: what was compared, the statistics, per-class IoU, verdict and reasons."""
        width, height = self.size
        lines = [
            f"parity: {self.candidate} ({self.candidate_provider})",
            f"    vs  {self.reference} ({self.reference_provider})",
            f"    on  {self.images} images at {width}x{height} from {self.data_source}",
            "",
            f"{'output':<10} {'agree %':>8} {'abs max':>10} {'abs mean':>10} {'abs p99':>10} "
            f"{'rel max':>10} {'rel mean':>10} {'rel p99':>10} {'cos min':>9} {'NaN/Inf':>8}",
        ]
        for out in self.outputs:
            lines.append(
                f"{out.name:<10} {100 * out.agreement:>8.3f} {_g(out.abs_max):>10} {_g(out.abs_mean):>10} "
                f"{_g(out.abs_p99):>10} {_g(out.rel_max):>10} {_g(out.rel_mean):>10} {_g(out.rel_p99):>10} "
                f"{('%.6f' % out.cosine_min) if out.cosine_min is not None else '-':>9} {out.nonfinite_candidate:>8d}"
            )
        lines += ["", "IoU of candidate vs reference masks per class:"]
        named = [f"{n} {('%.4f' % v) if v is not None else '-'}" for n, v in zip(self.class_names, self.class_iou)]
        lines += ["    " + ", ".join(named[i:i + 6]) for i in range(0, len(named), 6)]
        if self.ground_truth is not None:
            gt = self.ground_truth
            lines += ["", f"against ground truth ({gt.images} masks): mIoU reference {100 * gt.reference_miou:.2f}, "
                          f"candidate {100 * gt.candidate_miou:.2f} ({gt.miou_delta:+.2f} points); mDice reference "
                          f"{100 * gt.reference_mdice:.2f}, candidate {100 * gt.candidate_mdice:.2f} ({gt.mdice_delta:+.2f})"]
        else:
            lines += ["", "no ground-truth masks among the images: mIoU/Dice not compared"]
        drop = f", mIoU drop <= {self.thresholds.max_miou_drop:g} points" if self.thresholds.max_miou_drop is not None else ""
        lines.append(f"thresholds ({self.precision}): agreement >= {100 * self.thresholds.min_agreement:g}%{drop}, no NaN/Inf")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"failed: {f}" for f in self.failures]
        if self.difference_picture:
            lines.append(f"where the classes differ on the worst image: {self.difference_picture} (beside the report)")
        lines.append(self.summary_line())
        return "\n".join(lines)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def parity_report_path(artifact: Path) -> Path:
    """``model_fp16.onnx`` -> ``model_fp16.parity.json`` (also for ``model_fp16.onnx.failed``)."""
    artifact = Path(artifact)
    name = artifact.name[: -len(".failed")] if artifact.name.endswith(".failed") else artifact.name
    return artifact.with_name(Path(name).stem + ".parity.json")


# A pass that used more than this share of its allowed disagreement (1 - min_agreement), or of its
# allowed mIoU drop, is borderline: one more rounding change and it fails, so it is worth a look.
BORDERLINE_SHARE = 0.5


def borderline(report: "ParityReport") -> bool:
    """With more than BORDERLINE_SHARE of its allowed disagreement or mIoU drop used up (asked of a passed report)."""
    limits = report.thresholds
    allowed = 1.0 - limits.min_agreement
    used = [1.0 - out.agreement for out in report.outputs if math.isfinite(out.agreement)]
    if allowed > 0 and any(u > BORDERLINE_SHARE * allowed for u in used):
        return True
    if limits.max_miou_drop and report.ground_truth is not None:
        return -report.ground_truth.miou_delta > BORDERLINE_SHARE * limits.max_miou_drop
    return False
