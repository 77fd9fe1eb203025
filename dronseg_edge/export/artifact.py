"""Checkpoint -> ONNX file or TensorRT engine of one precision, with its parity check.

File names (in the checkpoint's run folder ``RUN/export/``, or beside a bare checkpoint):

    NAME = <checkpoint stem>[_argmax][_<W>x<H> if not the training size][_b<N> | _dyn]
    NAME_<precision>.onnx                                   fp32 | fp16 | int8
    NAME_<precision>_<gpu>_sm<cc>_trt<version>.engine       + NAME_..engine.json (metadata sidecar)
    <artifact stem>.parity.json                             the parity report (PASS or FAIL)
    *.failed                                                an artifact that failed parity

A new artifact is written under a hidden pending name, checked, and only then renamed into
place, so a failing export never replaces a good file of the same name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from dronseg_edge.atomic import ensure_writable_dir
from dronseg_edge.checkpoint import info_from_checkpoint, load_checkpoint, model_from_checkpoint
from dronseg_edge.classes import NUM_CLASSES
from dronseg_edge.devices import resolve_device
from dronseg_edge.errors import DronsegError
from dronseg_edge.export import onnx as onnx_export
from dronseg_edge.export.images import resolve_images
from dronseg_edge.export.onnx_metadata import read_onnx_info, sidecar_path
from dronseg_edge.export.parity import check_parity
from dronseg_edge.export.parity_report import ParityReport, ParityThresholds, parity_report_path
from dronseg_edge.metadata import HEADS, ModelInfo

FORMATS = ("onnx", "engine")
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
CALIB_IMAGES = 32
PARITY_IMAGES = 16


@dataclass
class ExportResult:
    path: Path  # the artifact, or its *.failed name when parity failed
    info: ModelInfo
    report: ParityReport | None  # None when parity was skipped
    passed: bool
    notes: tuple[str, ...] = ()  # what else happened: an ONNX file reused or built, dynamic shapes verified


def default_out_dir(checkpoint: Path) -> Path:
    """``RUN/export`` for ``RUN/weights/x.pt``; the checkpoint's own folder for a bare file."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "weights":
        return checkpoint.parent.parent / "export"
    return checkpoint.parent


def artifact_base(checkpoint: Path, train_size: tuple[int, int], size: tuple[int, int], batch: int,
                  dynamic: bool, head: str) -> str:
    parts = [Path(checkpoint).stem]
    if head == "argmax":
        parts.append("argmax")
    if tuple(size) != tuple(train_size):
        parts.append(f"{size[0]}x{size[1]}")
    if dynamic:
        parts.append("dyn")
    elif batch != 1:
        parts.append(f"b{batch}")
    return "_".join(parts)


def check_options(fmt: str, precision: str, head: str, batch: int, workspace_gib: float) -> None:
    if fmt not in FORMATS:
        raise DronsegError(f"--format {fmt!r} is not one of onnx, engine, all")
    if precision not in EXPORT_PRECISIONS:
        raise DronsegError(f"--precision {precision!r} is not one of {', '.join(EXPORT_PRECISIONS)} for an export")
    if head not in HEADS:
        raise DronsegError(f"--head {head!r} is not one of {', '.join(HEADS)}")
    if int(batch) < 1:
        raise DronsegError(f"--batch {batch} must be 1 or more")
    if not workspace_gib > 0:
        raise DronsegError(f"--workspace {workspace_gib} must be a positive number of GiB")


def onnx_precision_for_engine(precision: str) -> str:
    """The ONNX graph an engine of ``precision`` is built from (fp16 on TensorRT 10.x: the fp32 graph + flag)."""
    from dronseg_edge.export.tensorrt import import_tensorrt, trt_major

    if precision == "fp16" and trt_major(import_tensorrt()) < 11:
        return "fp32"
    return precision


def artifact_path(checkpoint: Path, fmt: str = "onnx", precision: str = "fp32", size: tuple[int, int] | None = None,
                  batch: int = 1, dynamic: bool = False, head: str = "logits", out_dir: Path | None = None,
                  device: str = "auto") -> Path:
    """The path ``export_artifact`` writes for these options (engines: for this GPU and TensorRT)."""
    ckpt = load_checkpoint(checkpoint)
    train_size = (int(ckpt["input_size"][0]), int(ckpt["input_size"][1]))
    folder = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint)
    return _path_for(checkpoint, train_size, fmt, precision, tuple(size or train_size), batch, dynamic, head, folder, device)


def _path_for(checkpoint: Path, train_size: tuple[int, int], fmt: str, precision: str, size: tuple[int, int],
              batch: int, dynamic: bool, head: str, folder: Path, device: str | torch.device = "auto") -> Path:
    base = artifact_base(checkpoint, train_size, size, batch, dynamic, head)
    if fmt == "onnx":
        return folder / f"{base}_{precision}.onnx"
    from dronseg_edge.export.tensorrt import engine_filename, gpu_identity, import_tensorrt

    trt = import_tensorrt()
    identity = gpu_identity(device if isinstance(device, torch.device) else resolve_device(device))
    return folder / engine_filename(base, precision, identity["gpu_name"], identity["compute_capability"], str(trt.__version__))


def _pending(final: Path) -> Path:
    return final.with_name(f".{final.stem}.pending{final.suffix}")


def _move(src: Path, dest: Path) -> None:
    os.replace(src, dest)
    if sidecar_path(src).exists():
        os.replace(sidecar_path(src), sidecar_path(dest))


def _discard(path: Path) -> None:
    for leftover in (path, sidecar_path(path)):
        with contextlib.suppress(OSError):
            leftover.unlink()


@dataclass
class ExportRequest:
    """The options of one export_artifact call (see its docstring)."""

    checkpoint: Path
    fmt: str
    precision: str
    size: tuple[int, int]
    batch: int
    dynamic: bool
    opset: int | None
    head: str
    calib_data: Path | None
    parity_data: Path | None
    folder: Path
    workspace_gib: float
    parity: bool
    thresholds: ParityThresholds | None
    device: torch.device
    calib_method: str
    calib_images: int
    parity_images: int


def export_artifact(checkpoint: Path, *, fmt: str = "onnx", precision: str = "fp32", size: tuple[int, int] | None = None,
                    batch: int = 1, dynamic: bool = False, opset: int | None = None, head: str = "logits",
                    calib_data: Path | None = None, parity_data: Path | None = None, out_dir: Path | None = None,
                    workspace_gib: float = 4.0, parity: bool = True, thresholds: ParityThresholds | None = None,
                    device: str = "auto", calib_method: str = "percentile", calib_images: int = CALIB_IMAGES,
                    parity_images: int = PARITY_IMAGES) -> ExportResult:
    """Export ``checkpoint`` as ``fmt`` (onnx | engine) at ``precision`` and check parity against it.

    ``size`` (W, H) defaults to the training size; ``batch`` is fixed unless ``dynamic`` (then N, H, W
    are dynamic). ``fmt='engine'`` builds (or reuses) the precision-specific ONNX first. Parity runs on
    ``parity_data`` (default: the checkpoint's validation split) with ``thresholds`` (default: the
    precision's); a failing artifact is renamed ``*.failed``. Raises DronsegError on bad input.
    """
    check_options(fmt, precision, head, batch, workspace_gib)
    from dronseg_edge.export.quantize import CALIBRATION_METHODS

    if precision == "int8" and calib_method not in CALIBRATION_METHODS:
        raise DronsegError(f"--calib-method {calib_method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    for option, value in (("--calib-images", calib_images), ("--parity-images", parity_images)):
        if int(value) < 1:
            raise DronsegError(f"{option} {value} must be 1 or more")
    checkpoint = Path(checkpoint)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    if fmt == "engine":
        from dronseg_edge.export.tensorrt import gpu_identity, import_tensorrt

        import_tensorrt()  # fail before minutes of ONNX work, not after
        gpu_identity(torch_device)
    ckpt = load_checkpoint(checkpoint, num_classes=NUM_CLASSES)
    info = info_from_checkpoint(ckpt)
    train_size = info.input_size
    folder = ensure_writable_dir(Path(out_dir) if out_dir is not None else default_out_dir(checkpoint))
    request = ExportRequest(checkpoint, fmt, precision, tuple(size) if size is not None else train_size, int(batch),
                            bool(dynamic), opset, head, calib_data, parity_data, folder, float(workspace_gib), parity,
                            thresholds, torch_device, calib_method, int(calib_images), int(parity_images))
    info.input_size, info.precision, info.head = request.size, precision, head
    info.batch, info.dynamic = (None, True) if dynamic else (int(batch), False)
    info.extra = {"source_checkpoint": str(checkpoint.resolve()), "train_size": list(train_size)}
    if fmt == "engine":
        return _export_engine(request, train_size, info)
    final = _path_for(checkpoint, train_size, "onnx", precision, request.size, request.batch, request.dynamic, head, folder)
    calibration = None
    if precision == "int8":  # before exporting, so an empty calibration folder fails fast
        calibration = resolve_images(calib_data, ckpt, option="--calib-data", max_images=calib_images,
                                     size=request.size, allow_synthetic=False)
    pending = _pending(final)
    try:
        notes = _write_onnx(model_from_checkpoint(ckpt), pending, info, precision, opset, calibration, calib_method)
        return _check_and_place(request, pending, final, info, notes)
    finally:
        _discard(pending)
        if calibration is not None:
            calibration.close()


def _write_onnx(model, dest: Path, info: ModelInfo, precision: str, opset: int | None, calibration, method: str) -> tuple[str, ...]:
    notes = []
    if precision == "fp32":
        onnx_export.export_onnx(model, dest, info, opset=opset)
        if info.dynamic:
            notes.append(onnx_export.verify_dynamic(dest, model, info))
        return tuple(notes)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dest.parent) as tmp:
        fp32_info = ModelInfo.from_dict({**info.to_dict(), "precision": "fp32"})
        fp32_path = onnx_export.export_onnx(model, Path(tmp) / "fp32.onnx", fp32_info, opset=opset)
        if info.dynamic:
            notes.append(onnx_export.verify_dynamic(fp32_path, model, fp32_info))
        info.extra.update({k: v for k, v in fp32_info.extra.items() if k not in info.extra})
        if precision == "fp16":
            from dronseg_edge.export.fp16 import convert_to_fp16

            graph = convert_to_fp16(onnx.load(str(fp32_path)))
            info.extra["fp16"] = "onnxruntime.transformers.float16, float32 input/output, reductions kept in fp32"
        else:
            from dronseg_edge.export.quantize import quantize_int8

            int8_path = Path(tmp) / "int8.onnx"
            info.extra.update(quantize_int8(fp32_path, int8_path, calibration, info, input_name=onnx_export.INPUT_NAME,
                                            method=method))
            graph = onnx.load(str(int8_path))
        onnx_export.finish_graph(graph, info, simplify=False)
        onnx_export.save_onnx(graph, dest, info)
    return tuple(notes)


def _check_and_place(request: ExportRequest, pending: Path, final: Path, info: ModelInfo,
                     notes: tuple[str, ...]) -> ExportResult:
    """Parity-check the pending file, then rename it to ``final`` (PASS) or ``final.failed`` (FAIL)."""
    report = None
    failed = final.with_name(final.name + ".failed")
    if request.parity:
        report = check_parity(request.checkpoint, pending, request.parity_data, device=request.device,
                              thresholds=request.thresholds, max_images=request.parity_images)
        report.candidate = str(final if report.passed else failed)
        report.save(parity_report_path(final))
    if report is not None and not report.passed:
        _move(pending, failed)
        return ExportResult(failed, info, report, False, notes=notes)
    if report is None:  # an earlier report describes an earlier file, not this unchecked one
        _discard(parity_report_path(final))
    _move(pending, final)
    _discard(failed)  # a stale failure of an earlier attempt no longer describes this file
    return ExportResult(final, info, report, True, notes=notes)


def _existing_onnx(path: Path, info: ModelInfo, precision: str) -> bool:
    """True when ``path`` is an ONNX export of the same checkpoint with the same options (reusable)."""
    if not path.is_file():
        return False
    try:
        found = read_onnx_info(path)
    except DronsegError:
        return False
    return (found.source_sha256 == info.source_sha256 and found.precision == precision and found.head == info.head
            and tuple(found.input_size) == tuple(info.input_size) and found.batch == info.batch
            and found.dynamic == info.dynamic)


def _export_engine(request: ExportRequest, train_size: tuple[int, int], info: ModelInfo) -> ExportResult:
    """Build (or reuse) the ONNX graph the engine needs, then the engine, then check its parity."""
    import importlib.util

    from dronseg_edge.export.tensorrt import build_engine

    r = request
    onnx_precision = onnx_precision_for_engine(r.precision)
    onnx_path = _path_for(r.checkpoint, train_size, "onnx", onnx_precision, r.size, r.batch, r.dynamic, r.head, r.folder)
    notes = []
    if _existing_onnx(onnx_path, info, onnx_precision):
        notes.append(f"reused {onnx_path.name}")
    else:
        check_onnx = r.parity and importlib.util.find_spec("onnxruntime") is not None
        made = export_artifact(r.checkpoint, fmt="onnx", precision=onnx_precision, size=r.size, batch=r.batch,
                               dynamic=r.dynamic, opset=r.opset, head=r.head, calib_data=r.calib_data,
                               parity_data=r.parity_data, out_dir=r.folder, parity=check_onnx,
                               thresholds=r.thresholds if onnx_precision == r.precision else None, device=r.device,
                               calib_method=r.calib_method, calib_images=r.calib_images, parity_images=r.parity_images)
        if not made.passed:
            return made
        notes.append(f"built {onnx_path.name}" + ("" if check_onnx else " (its parity not checked: no onnxruntime)"))
    final = _path_for(r.checkpoint, train_size, "engine", r.precision, r.size, r.batch, r.dynamic, r.head, r.folder, r.device)
    pending = _pending(final)
    try:
        engine_info = build_engine(onnx_path, pending, read_onnx_info(onnx_path), precision=r.precision,
                                   workspace_gib=r.workspace_gib, device=r.device, opt_batch=r.batch)
        return _check_and_place(r, pending, final, engine_info, tuple(notes))
    finally:
        _discard(pending)
