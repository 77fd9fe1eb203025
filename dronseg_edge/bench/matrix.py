"""``bench CKPT --matrix``: every format x precision this machine can run, with parity, accuracy and latency.

Each variant is exported (or an existing export in the output folder is reused), compared with the
checkpoint by the export issue's parity check, scored against the ground truth of the validation
split as ``eval`` scores it (export/accuracy.py: mIoU and competition Dice), and timed by the same
harness as ``bench``. A variant this machine cannot run becomes a row that says why instead of a crash.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dronseg_edge.bench.options import require_checkpoint
from dronseg_edge.bench.report import fmt_fps, fmt_ms, render_table
from dronseg_edge.bench.run import BenchResult, artifact_size_mb, bench_model, open_backend
from dronseg_edge.bench.timing import TimingSettings
from dronseg_edge.checkpoint import load_checkpoint
from dronseg_edge.devices import tf32_mode
from dronseg_edge.errors import DronsegError
from dronseg_edge.export import ExportOptions, default_out_dir, export_artifact  # default_out_dir: reused here
from dronseg_edge.export.accuracy import score_backend, split_samples_for
from dronseg_edge.export.parity import check_parity
from dronseg_edge.machine import import_optional
from dronseg_edge.media import without_option
from dronseg_edge.metadata import ModelInfo


@dataclass(frozen=True)
class Variant:
    """One row of the matrix: a format (pytorch | onnx | engine), a precision and runtime switches."""

    fmt: str
    precision: str
    cuda_graph: bool = False
    tf32: bool | None = None  # None: torch's defaults; False: strict fp32 (TF32 off for conv and matmul)

    @property
    def label(self) -> str:
        extras = (["no TF32"] if self.tf32 is False else []) + (["CUDA graph"] if self.cuda_graph else [])
        return f"{self.fmt} {self.precision}" + (f" ({', '.join(extras)})" if extras else "")


# pytorch fp32, fp16, fp16 + graph; onnx fp32 and fp16 without and with a graph, int8; engine fp32, fp16, int8
DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("pytorch", "fp32"), Variant("pytorch", "fp16"), Variant("pytorch", "fp16", cuda_graph=True),
    *(Variant("onnx", precision, cuda_graph=graph) for precision in ("fp32", "fp16") for graph in (False, True)),
    Variant("onnx", "int8"), *(Variant("engine", precision) for precision in ("fp32", "fp16", "int8")))


@dataclass
class MatrixRow:
    """The outcome of one variant: ``status`` is ok | skipped | failed, ``reason`` says why when not ok."""

    variant: Variant
    status: str
    reason: str = ""
    path: str | None = None
    file_mb: float | None = None
    reused: bool = False
    parity: dict[str, Any] | None = None  # ParityReport.to_dict(); None for the reference or when skipped
    parity_passed: bool | None = None
    agreement: float | None = None  # fraction 0..1 of argmax pixels equal to the reference's
    miou_delta: float | None = None  # points, candidate - reference, when ground-truth masks exist
    accuracy: dict[str, Any] | None = None  # miou, competition, images on the validation split (export/accuracy.py)
    result: BenchResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        v, accuracy = self.variant, self.accuracy or {}
        return {"format": v.fmt, "precision": v.precision, "cuda_graph": v.cuda_graph, "tf32": v.tf32, "label": v.label,
                **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("variant", "result")},
                "path": self.path and os.path.abspath(self.path),  # the JSON is read from anywhere, as parity reports
                "miou": accuracy.get("miou"), "competition": accuracy.get("competition"),
                "result": self.result.to_dict() if self.result is not None else None}


def skip_reason(variant: Variant, device: torch.device) -> str | None:
    """Why ``variant`` cannot run on ``device`` here (missing GPU, runtime or provider), or None."""
    reasons = []
    cuda = device.type == "cuda"
    if variant.fmt == "pytorch":
        gpu_only = ([f"PyTorch {variant.precision}"] if variant.precision in ("fp16", "bf16") else []) + \
                   (["CUDA graph"] if variant.cuda_graph else []) + (["TF32 switch"] if variant.tf32 is not None else [])
        if gpu_only and not cuda:
            reasons.append(f"needs CUDA ({', '.join(gpu_only)})")
    elif variant.fmt == "onnx":
        ort = import_optional("onnxruntime")[0]
        if variant.cuda_graph and not cuda:
            reasons.append("needs CUDA (CUDA graph)")
        if ort is None:
            reasons.append("onnxruntime not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)")
        elif cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            reasons.append("onnxruntime CUDA provider not available (pip install onnxruntime-gpu)")
    elif variant.fmt == "engine":
        if not cuda:
            reasons.append("needs CUDA")
        if import_optional("tensorrt")[0] is None:  # or bindings whose libraries are missing
            reasons.append("tensorrt not installed")
    else:
        reasons.append(f"unknown format {variant.fmt!r}")
    return "; ".join(reasons) or None


def run_matrix(checkpoint: Path, device: torch.device, timing: TimingSettings, *, size: tuple[int, int] | None = None,
               batch: int = 1, out_dir: Path | None = None, data: Path | None = None, parity: bool = True,
               variants: Sequence[Variant] = DEFAULT_VARIANTS, log: Callable[[str], None] | None = None) -> list[MatrixRow]:
    """Export (or reuse), check parity, score (on the validation split ``eval`` uses) and time every
    variant of ``checkpoint``; one row per variant (without accuracy, and a note, when there is no data set)."""
    checkpoint = Path(checkpoint)
    require_checkpoint(checkpoint)
    info = ModelInfo.from_checkpoint(load_checkpoint(checkpoint), with_hash=False)
    run_size = tuple(size) if size is not None else tuple(info.input_size)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint)
    say = log or (lambda text: None)
    images = None  # the validation images every row is scored on; none (said once) without a data set
    try:
        images = split_samples_for(checkpoint, info, data, "val")
        say(f"accuracy: {len(images.samples)} images, {images.source}")
    except DronsegError as exc:
        say(f"accuracy: not measured ({str(without_option(exc)).splitlines()[0][:300]})")
    rows = []
    for variant in variants:
        reason = skip_reason(variant, device)
        if reason:
            say(f"{variant.label}: skipped ({reason})")
            rows.append(MatrixRow(variant, "skipped", reason))
            continue
        say(f"{variant.label}: running")
        try:
            with tf32_mode(variant.tf32):
                rows.append(_run_variant(variant, checkpoint, device, timing, run_size, batch, out_dir, data, parity, say,
                                         images))
        except (DronsegError, RuntimeError) as exc:  # one broken variant must not hide the others' numbers
            message = (str(without_option(exc)).strip().splitlines() or [type(exc).__name__])[0][:300]
            if "--calib-data" in message or "--parity-data" in message:
                message += " (bench --matrix passes its --data DIR to both)"
            say(f"{variant.label}: failed ({message})")
            rows.append(MatrixRow(variant, "failed", message))
    return rows


def _run_variant(variant: Variant, checkpoint: Path, device: torch.device, timing: TimingSettings,
                 size: tuple[int, int], batch: int, out_dir: Path, data: Path | None, parity: bool,
                 say: Callable[[str], None], images=None) -> MatrixRow:
    row, pytorch = MatrixRow(variant, "ok"), variant.fmt == "pytorch"
    options = {"cuda_graph": variant.cuda_graph if pytorch or device.type == "cuda" else None}
    if pytorch:
        path, options["precision"] = checkpoint, variant.precision
    else:
        # An existing file export would write from this very checkpoint, else a fresh export (its parity is skipped:
        # every row gets its own check against the checkpoint).
        exported = export_artifact(checkpoint, ExportOptions(
            fmt=variant.fmt, precision=variant.precision, size=size, batch=batch, head="logits", calib_data=data,
            parity_data=data, out_dir=out_dir, parity=False, device=device, reuse=True, keep=True))
        path, row.reused = Path(exported.path), exported.reused
        say(f"{variant.label}: {'reusing' if row.reused else 'exported'} {path}")
    row.path, row.file_mb = str(path), artifact_size_mb(path)
    if parity and not pytorch:
        _record_parity(row, checkpoint, path, data, device)
    elif parity and variant.precision != "fp32":
        candidate, _ = open_backend(checkpoint, device, **options)
        try:
            _record_parity(row, checkpoint, candidate, data, device)
        finally:
            candidate.deactivate()  # check_parity leaves backends it was given open
    if images is not None:
        backend, _ = open_backend(path, device, **options)
        if pytorch:  # scored at the size it is timed at and the exports are made for (--size), not its training size
            backend.info.input_size = tuple(size)
        try:
            scores = score_backend(backend, images.samples, batch)
        finally:
            backend.deactivate()
        row.accuracy = {"miou": scores["miou"], "competition": scores["competition"], "images": scores["images"],
                        "split": images.split, "split_source": images.source, "data": os.path.abspath(images.root)}
        say(f"{variant.label}: mIoU {scores['miou']:.4f}, competition Dice {scores['competition']:.4f}")
    row.result = bench_model(path, device, timing, size=size, batch=batch, **options)
    row.notes = list(row.result.notes)
    if row.parity_passed is False:
        row.reason = "parity FAILED"
    return row


def _record_parity(row: MatrixRow, reference: Path, candidate, data: Path | None, device: torch.device) -> None:
    report = check_parity(reference, candidate, data, device=str(device))
    row.parity, row.parity_passed, row.agreement, row.miou_delta = (report.to_dict(), bool(report.passed),
                                                                    report.agreement, report.miou_delta)


MATRIX_HEADERS = ("format", "precision", "backend / provider", "file MB", "parity", "mIoU delta", "mIoU",
                  "comp. Dice", "median ms", "p99 ms", "fps", "status")


def matrix_table(rows: Sequence[MatrixRow], markdown: bool = False) -> str:
    """One table: format, precision, backend/provider, size MB, parity agreement %, mIoU delta, mIoU and
    competition Dice on the validation split, median/p99 ms, fps."""
    table = []
    for row in rows:
        v, r = row.variant, row.result
        stats = r.measurement.latency if r is not None else None
        timing = [fmt_ms(stats.median_ms), fmt_ms(stats.p99_ms), fmt_fps(stats.throughput_fps)] if stats else ["-"] * 3
        if row.agreement is not None:
            agreement = f"{100 * row.agreement:.2f}% " + ("PASS" if row.parity_passed else "FAIL")
        else:
            agreement = "ref" if (v.fmt, v.precision) == ("pytorch", "fp32") and r else "-"
        table.append([v.fmt + (" (no TF32)" if v.tf32 is False else ""), v.precision + (" +graph" if v.cuda_graph else ""),
                      f"{r.backend} / {r.provider}" if r is not None else "-",
                      f"{row.file_mb:.1f}" if row.file_mb is not None else "-", agreement,
                      f"{row.miou_delta:+.2f}" if row.miou_delta is not None else "-",
                      *(f"{row.accuracy[key]:.4f}" if row.accuracy is not None else "-" for key in ("miou", "competition")),
                      *timing, (f"{row.status}: {row.reason}" if row.reason else row.status) + (" (reused)" * row.reused)])
    return render_table(MATRIX_HEADERS, table, markdown=markdown)
