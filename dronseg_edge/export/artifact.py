"""Checkpoint -> ONNX file or TensorRT engine of one precision, with its parity check.

File names (the table: docs/export.md), in ``RUN/export/`` or beside a bare checkpoint: ``NAME_<precision>.onnx``,
``NAME_<precision>_<gpu>_sm<cc>[_dla<N>]_trt<version>.engine`` + its ``.json`` sidecar, ``<artifact stem>.parity.json``,
``*.failed`` (failed parity), ``triton/NAME_<precision>[_plan]/``; NAME is built by ``_final_path``.

A new artifact is written under a hidden pending name, checked, and only then renamed into
place, so a failing export never replaces a good file of the same name.

Faults: a full or unwritable disk is the one-line RuntimeFailure naming the artifact (exit code 5).
An export claims its folder while it works (leftovers.FolderClaim); the hidden working files a
killed export left there (EXPORT_LEFTOVERS) are removed by the next export into that folder, once
no other live export holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.util
import operator
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from dronseg_edge.atomic import ensure_writable_dir, name_too_long, storage_faults
from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint
from dronseg_edge.classes import NUM_CLASSES
from dronseg_edge.devices import resolve_device
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.export import embedded
from dronseg_edge.export import onnx as onnx_export
from dronseg_edge.export.images import check_folder, resolve_images
from dronseg_edge.export.options import EXPORT_PRECISIONS, ExportOptions
from dronseg_edge.export.parity import check_parity
from dronseg_edge.export.parity_picture import picture_path, save_difference_picture
from dronseg_edge.export.parity_report import ParityReport, parity_report_path
from dronseg_edge.export.quantize import calibration_record
from dronseg_edge.leftovers import RANDOM, TAGGED, FolderClaim, working_prefix
from dronseg_edge.media import native_name
from dronseg_edge.metadata import ModelInfo, read_engine_sidecar, read_onnx_info, sidecar_path

_PRECISION = "|".join(EXPORT_PRECISIONS)
# The hidden names an export works under, all in the export folder: each carries the package tag and
# its process's claim token (TAGGED), so the files of other programs never match (leftovers.py).
EXPORT_LEFTOVERS = tuple((".", re.compile(pattern)) for pattern in (
    rf"^\.(export|quantize)\.{TAGGED}\.{RANDOM}$",  # working folders (onnx.py, embedded.py, quantize.py, _write_onnx)
    rf"^\..+\.{TAGGED}\.pending\.(onnx|engine)(\.json|\.data)?$",  # an artifact before its parity check
    rf"^\..+\.(onnx|engine|json|data|png)\.{TAGGED}\.{RANDOM}\.tmp$",  # atomic.py's temporary files (png: parity pictures)
    rf"^\..+_({_PRECISION})(_plan)?\.{TAGGED}\.({RANDOM}\.tmp|old-{RANDOM})$",  # triton.py's staged and swapped-out model folders
))


@dataclass
class ExportResult:
    path: Path  # the artifact, or its *.failed name when parity failed
    info: ModelInfo
    report: ParityReport | None  # None when parity was skipped (or the file was reused)
    passed: bool
    notes: tuple[str, ...] = ()  # what else happened: an ONNX file reused or built, dynamic shapes verified
    reused: bool = False  # an existing file was returned (ExportOptions.reuse), nothing was written
    served: Path | None = None  # --format triton: the ONNX file or engine the repository serves (its parity report's)


@dataclass(frozen=True)
class _Source:
    """The checkpoint of one export, read and hashed once and handed to every step (ONNX, engine, parity)."""

    path: Path
    state: dict[str, Any]  # load_checkpoint's dict
    info: ModelInfo  # ModelInfo.from_checkpoint(state): training size, classes, normalisation, sha256


def default_out_dir(checkpoint: Path) -> Path:
    """``RUN/export`` for ``RUN/weights/x.pt``; the checkpoint's own folder for a bare file."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent / "export" if checkpoint.parent.name == "weights" else checkpoint.parent


def artifact_path(checkpoint: Path, options: ExportOptions | None = None, /, **changes) -> Path:
    """The path ``export_artifact`` writes for these options (engines: for this GPU and TensorRT).

    ``changes`` override single fields of ``options`` (default ExportOptions()), as in export_artifact.
    """
    options = dataclasses.replace(options or ExportOptions(), **changes)
    ckpt = load_checkpoint(checkpoint)
    folder = options.out_dir if options.out_dir is not None else default_out_dir(checkpoint)
    return _final_path(Path(checkpoint), (int(ckpt["input_size"][0]), int(ckpt["input_size"][1])), options, folder)


def _final_path(checkpoint: Path, train_size: tuple[int, int], options: ExportOptions, folder: Path) -> Path:
    size = options.size or train_size
    parts = [checkpoint.stem, "argmax" if options.head == "argmax" else "",
             "" if tuple(size) == tuple(train_size) else f"{size[0]}x{size[1]}",
             "dyn" if options.dynamic else "dynbatch" if options.dynamic_batch and options.fmt != "triton"
             else f"b{options.batch}" if options.batch != 1 else ""]
    if options.io == "frames":
        source = options.source_size
        parts += ["frames", f"src{source[0]}x{source[1]}" if source is not None and tuple(source) != tuple(size) else "",
                  "conf" if options.confidence else ""]
    base = "_".join(part for part in parts if part)
    if options.fmt == "onnx":
        return folder / f"{base}_{options.precision}.onnx"
    if options.fmt == "triton":
        from dronseg_edge.export.triton import model_name

        # Its own repository folder: Triton takes every subfolder for a model, and the export folder has others.
        return folder / "triton" / model_name(base, options.precision, options.triton_backend)
    from dronseg_edge.export.tensorrt import engine_filename
    from dronseg_edge.runtime import tensorrt_env

    identity = tensorrt_env.gpu_identity(resolve_device(str(options.device)))
    return folder / engine_filename(base, options.precision, identity["gpu_name"], identity["compute_capability"],
                                    str(tensorrt_env.import_tensorrt().__version__), dla_core=options.dla_core)


def _pending(final: Path) -> Path:
    return final.with_name(f"{working_prefix(final.stem)}pending{final.suffix}")


def _check_placeable(final: Path) -> None:
    """Before any work: each name the export places fits the file system and holds no folder (the rename, after the
    parity report, would fail)."""
    failed = final.with_name(final.name + ".failed")
    report = parity_report_path(final)
    sidecars = (sidecar_path(final), sidecar_path(failed)) if final.suffix == ".engine" else ()
    for path in (final, failed, *sidecars, report, picture_path(report)):
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise DronsegError(name_too_long(path)) from None
            continue
        if stat.S_ISDIR(mode):
            raise DronsegError(f"{path} is a folder, where the export places a file: move it away, or give another "
                               "--out")


def _move(src: Path, dest: Path) -> None:
    os.replace(src, dest)
    if sidecar_path(src).exists():
        os.replace(sidecar_path(src), sidecar_path(dest))


def _discard(path: Path) -> None:
    for leftover in (path, sidecar_path(path)):
        with contextlib.suppress(OSError):
            leftover.unlink()


def reusable_artifact(path: Path, expected: ModelInfo) -> ModelInfo | None:
    """The metadata of ``path`` when it can stand in for a fresh export described by ``expected``, else None.

    Reusable means: made from the same checkpoint bytes (sha256) with the same precision, head, input
    size, batch and dynamic flag. An ONNX file carries this in its metadata, an engine in its sidecar;
    a missing or unreadable file is not reusable (it is exported again).
    """
    found = _metadata(Path(path))
    if found is None or not expected.source_sha256:  # an unknown source proves nothing
        return None
    same = operator.attrgetter("source_sha256", "precision", "head", "input_size", "batch", "dynamic", "io",
                               "source_size", "outputs")
    return found if same(found) == same(expected) else None


def _metadata(path: Path) -> ModelInfo | None:
    """The metadata of the ONNX file or engine at ``path``; None when there is none to read."""
    try:
        return (read_onnx_info(path) if path.suffix.lower() == ".onnx" else read_engine_sidecar(path)) if path.is_file() else None
    except DronsegError:
        return None


def _calibrated_as_asked(found: ModelInfo, source: _Source, options: ExportOptions) -> bool:
    """Whether the int8 calibration ``found`` records is the one ``options`` ask for: method, image count and folder;
    without --calib-data where the checkpoint's data set is not here (a Jetson building a copied run's engine): the method."""
    if options.precision != "int8":
        return True
    recorded = found.extra.get("calibration") or {}
    try:
        images = resolve_images(options.calib_data, source.state, option="--calib-data", max_images=options.calib_images,
                                size=found.input_size, allow_synthetic=False)
    except DronsegError:
        return options.calib_data is None and recorded.get("method") == options.calib_method
    return recorded == calibration_record(images, options.calib_method)


def export_artifact(checkpoint: Path, options: ExportOptions | None = None, /, **changes) -> ExportResult:
    """Export ``checkpoint`` as ``options.fmt`` (onnx | engine | triton) at ``options.precision`` and check parity.

    ``options`` default to ExportOptions(); keyword ``changes`` override single fields of it
    (``export_artifact(ckpt, precision="fp16")``: a shorthand for scripts and tests). ``fmt='engine'``
    builds (or reuses) the precision-specific ONNX first. Parity runs on ``parity_data`` (default: the
    checkpoint's validation split) with ``thresholds`` (default: the precision's); a failing artifact
    is renamed ``*.failed``. The checkpoint is read and hashed once. Raises DronsegError on bad input.
    """
    # The device resolved once here; the engine's ONNX step inherits the torch.device through dataclasses.replace.
    options = dataclasses.replace(options or ExportOptions(), **changes)
    options = dataclasses.replace(options, device=resolve_device(str(options.device)))
    checkpoint = Path(checkpoint)
    if options.fmt == "engine" or (options.fmt == "triton" and options.triton_backend == "tensorrt"):
        from dronseg_edge.runtime import tensorrt_env

        try:
            tensorrt_env.import_tensorrt()  # fail before minutes of ONNX work, not after
        except BackendUnavailable as exc:
            if options.fmt != "triton":
                raise
            raise BackendUnavailable(
                f"--triton-backend tensorrt builds model.plan here, on the GPU that will serve it, and needs TensorRT: "
                f"{exc}; or use the default --triton-backend onnxruntime (model.onnx, which Triton's ONNX Runtime "
                "backend runs with its TensorRT accelerator)") from None
        tensorrt_env.gpu_identity(options.device)
    state = load_checkpoint(checkpoint, num_classes=NUM_CLASSES)
    source = _Source(checkpoint, state, ModelInfo.from_checkpoint(state))
    folder = options.out_dir if options.out_dir is not None else default_out_dir(checkpoint)
    native_name(folder), native_name(checkpoint)  # the artifacts' names, which the exporters take as UTF-8
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # removed again, leaf first, if left empty
    folder = ensure_writable_dir(folder, "output folder" if options.out_dir else "output folder (--out's default)")
    try:
        with FolderClaim(folder, EXPORT_LEFTOVERS) as claim, storage_faults(folder):
            result = _export(source, folder, options)
    except BaseException:  # a refused --opset or --calib-data, a failed export: no empty --out left behind
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    note = claim.note("export")
    return dataclasses.replace(result, notes=(note, *result.notes)) if note else result


def _artifact_info(source: _Source, options: ExportOptions) -> ModelInfo:
    """The metadata the artifact of ``options`` carries: the checkpoint's, with the export's shape and precision."""
    batch = None if options.dynamic or options.dynamic_batch else options.batch  # None: any batch
    info = dataclasses.replace(
        source.info, input_size=tuple(options.size or source.info.input_size), precision=options.precision,
        head=options.head, batch=batch, dynamic=options.dynamic,
        extra={"source_checkpoint": str(source.path.resolve()), "train_size": list(source.info.input_size)})
    info = embedded.frames_info(info, options.source_size, options.confidence) if options.io == "frames" else info
    # Checked as every reader checks it (metadata_checks): a batch or size they refuse would make a file nothing reads.
    ModelInfo.from_dict(info.to_dict(), source=f"export of {source.path}", fix="pass a smaller --batch, --size or --source-size")
    return info


def _export(source: _Source, folder: Path, options: ExportOptions) -> ExportResult:
    if options.fmt == "triton":
        return _export_triton(source, folder, options)
    info = _artifact_info(source, options)
    final = _final_path(source.path, source.info.input_size, options, folder)
    _check_placeable(final)
    if options.parity and options.parity_data is not None:  # an empty folder or a damaged image fails now, not later
        check_folder(options.parity_data, "--parity-data", options.parity_images)
    if options.precision == "int8" and options.calib_data is not None:  # calibration reads no masks
        check_folder(options.calib_data, "--calib-data", options.calib_images, masks=False)
    notes: tuple[str, ...] = ()
    if options.reuse:
        found = reusable_artifact(final, info)
        if found is not None and found.extra.get(embedded.BUILDER_KEY) != info.extra.get(embedded.BUILDER_KEY):
            found, notes = None, (f"exporting {final.name} again: another version's frames graph builder made it",)
        # An --opset given is kept (TensorRT 8.6 asks for 17: a file of another opset would fail it again).
        if found is not None and options.opset in (None, found.extra.get("opset")) and _calibrated_as_asked(found, source, options):
            return ExportResult(final, found, None, True, notes=(f"reused {final.name}",), reused=True)
        if found is not None and options.keep:  # this checkpoint's file, calibrated otherwise: perhaps the user's own
            made = found.extra.get("calibration") or {}
            raise DronsegError(f"{final} is this checkpoint's, calibrated otherwise ({made.get('method')}, {made.get('images')} "
                               f"images of {made.get('source')}), and is kept: bench it by name, or give another --out")
        theirs = _metadata(final) if options.keep and found is None else None
        if options.keep and found is None and theirs is None and final.exists():  # a file of that name, not our export
            raise DronsegError(f"{final} carries no dronseg-edge metadata (not an export of this package) and is kept: "
                               "bench it by name (with --meta), or give another --out")
        made_from = theirs.extra.get("source_checkpoint") if theirs is not None else None
        # Another run's best.pt exported here is kept; an earlier state of this very file (trained on since) is not.
        if made_from not in (None, info.extra["source_checkpoint"]) and theirs.source_sha256 != info.source_sha256:
            raise DronsegError(f"{final} was exported from another checkpoint ({made_from}) and is kept: bench it by "
                               "name, or give another --out")
    if options.fmt == "engine":
        result = _export_engine(source, folder, options, info, final)
        return dataclasses.replace(result, notes=notes + result.notes)
    # int8: its images found before exporting, so an empty calibration folder fails fast.
    calibration = resolve_images(options.calib_data, source.state, option="--calib-data", max_images=options.calib_images,
                                 size=info.input_size, allow_synthetic=False) if options.precision == "int8" else None
    pending = _pending(final)
    # storage_faults: exporters write where atomic.py cannot see: name the artifact.
    try:
        with calibration or contextlib.nullcontext(), storage_faults(final):
            notes += _write_onnx(model_from_checkpoint(source.state), pending, info, options.precision, options.opset,
                                 calibration, options.calib_method)
            return _check_and_place(source, options, pending, final, info, notes)
    finally:
        _discard(pending)


def _write_onnx(model, dest: Path, info: ModelInfo, precision: str, opset: int | None, calibration, method: str) -> tuple[str, ...]:
    frames = info.io == "frames"  # pre/post inside the graph (export/embedded.py)
    export = embedded.export_frames_onnx if frames else onnx_export.export_onnx
    verify = embedded.verify_frames_dynamic if frames else onnx_export.verify_dynamic
    if precision == "fp32":
        export(model, dest, info, opset=opset)
        return (verify(dest, model, info),) if info.batch is None else ()
    with tempfile.TemporaryDirectory(prefix=working_prefix("export"), dir=dest.parent) as tmp:
        fp32_info = ModelInfo.from_dict({**info.to_dict(), "precision": "fp32"})
        fp32_path = export(model, Path(tmp) / "fp32.onnx", fp32_info, opset=opset)
        notes = (verify(fp32_path, model, fp32_info),) if info.batch is None else ()
        info.extra.update({k: v for k, v in fp32_info.extra.items() if k not in info.extra})
        if precision == "fp16":
            from dronseg_edge.export.fp16 import convert_to_fp16

            keep = embedded.FP32_NODES if frames else ()
            graph = convert_to_fp16(onnx.load(str(fp32_path)), keep_fp32_nodes=keep)
            info.extra["fp16"] = "onnxruntime.transformers.float16, float32 input/output, reductions kept in fp32"
        else:
            from dronseg_edge.export.quantize import quantize_int8

            int8_path = Path(tmp) / "int8.onnx"
            input_name = embedded.FRAMES_INPUT if frames else onnx_export.INPUT_NAME
            info.extra.update(quantize_int8(fp32_path, int8_path, calibration, info, input_name=input_name, method=method))
            graph = onnx.load(str(int8_path))
        onnx_export.save_onnx(onnx_export.finish_graph(graph, info, simplify=False), dest, info)
    return notes


def _check_and_place(source: _Source, options: ExportOptions, pending: Path, final: Path, info: ModelInfo,
                     notes: tuple[str, ...]) -> ExportResult:
    """Parity-check the pending file, then rename it to ``final`` (PASS) or ``final.failed`` (FAIL)."""
    failed = final.with_name(final.name + ".failed")
    report = check_parity(source.state, pending, options.parity_data, device=options.device,
                          thresholds=options.thresholds, max_images=options.parity_images) if options.parity else None
    passed = report is None or report.passed
    if report is not None:
        report.candidate = str(final if passed else failed)
        report.save(parity_report_path(final))
    else:  # an earlier report and its difference picture describe an earlier file, not this unchecked one
        _discard(parity_report_path(final))
        save_difference_picture(None, False, parity_report_path(final))
    _move(pending, final if passed else failed)
    if passed:
        _discard(failed)  # a stale failure of an earlier attempt no longer describes this file
    return ExportResult(final if passed else failed, info, report, passed, notes=notes)


def _export_engine(source: _Source, folder: Path, options: ExportOptions, info: ModelInfo,
                   final: Path) -> ExportResult:
    """Build (or reuse) the ONNX graph the engine needs, then the engine, then check its parity."""
    from dronseg_edge.export.tensorrt import build_engine
    from dronseg_edge.runtime import tensorrt_env

    # fp16 on TensorRT 8.6/10.x: the fp32 graph + the FP16 flag; 11.x (strongly typed only) builds from the fp16 graph.
    weak_fp16 = options.precision == "fp16" and tensorrt_env.trt_major(tensorrt_env.import_tensorrt()) < 11
    onnx_precision = "fp32" if weak_fp16 else options.precision
    check_onnx = options.parity and importlib.util.find_spec("onnxruntime") is not None
    # The user's limits were set for the engine's precision; an ONNX graph of another one keeps its own defaults.
    made = _export(source, folder, dataclasses.replace(
        options, fmt="onnx", precision=onnx_precision, parity=check_onnx, reuse=True,
        thresholds=options.thresholds if onnx_precision == options.precision else None))
    if not made.passed:
        return made
    unchecked = "" if check_onnx or not options.parity else " (its parity not checked: no onnxruntime)"
    notes = (f"reused {made.path.name}",) if made.reused else (*made.notes, f"built {made.path.name}{unchecked}")
    pending = _pending(final)
    try:
        with storage_faults(final):
            profile = {"min_shape": options.min_shape, "opt_shape": options.opt_shape, "max_shape": options.max_shape}
            engine_info = build_engine(made.path, pending, read_onnx_info(made.path), precision=options.precision,
                                       workspace_gib=options.workspace_gib, device=options.device, opt_batch=options.batch,
                                       dla_core=options.dla_core, builder_opt_level=options.builder_opt_level,
                                       profile=profile, timing_cache=options.timing_cache, verbose=options.trt_verbose)
            return _check_and_place(source, options, pending, final, engine_info, notes)
    finally:
        _discard(pending)


def _export_triton(source: _Source, folder: Path, options: ExportOptions) -> ExportResult:
    """The ONNX file (or engine) of these options, exported and parity-checked as usual, then laid out as a
    model folder in the Triton repository ``triton/`` beside it; a file that fails parity gets no repository."""
    from dronseg_edge.export.tensorrt import MIN_MAX_BATCH
    from dronseg_edge.export.triton import check_replaceable, write_model_repository

    final = _final_path(source.path, source.info.input_size, options, folder)
    check_replaceable(final)  # before the work, not after the ONNX file is placed
    inner = "engine" if options.triton_backend == "tensorrt" else "onnx"
    made = _export(source, folder, dataclasses.replace(options, fmt=inner))
    if not made.passed:
        return made
    # The ONNX file may batch up to what a dynamic engine's profile allows (export/tensorrt.py).
    repository = write_model_repository(made.path, final.parent, final.name, max_batch=max(options.batch, MIN_MAX_BATCH),
                                        opt_batch=options.batch, workspace_gib=options.workspace_gib)
    return ExportResult(repository, made.info, made.report, True, notes=made.notes, served=made.path)
