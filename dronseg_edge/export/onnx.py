"""PyTorch model -> ONNX file: export in eval mode, check, simplify with onnxslim, stamp metadata.

onnxslim is optional: without it the graph is written as exported (a one-line warning says so, and
``extra.simplifier`` records it); the simplification only folds constants and tidies shapes.

The exporter is chosen deliberately: TorchScript (``dynamo=False``) where this torch still has it,
because it writes one self-contained file, handles DeepLabV3/LR-ASPP with dynamic axes and needs no
extra package; the dynamo exporter (needs ``onnxscript``) only where TorchScript export is gone.
The choice and the versions are recorded in the metadata (``extra.exporter``).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from dronseg_edge.atomic import atomic_path, ensure_writable_dir
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.export.options import DEFAULT_OPSET
from dronseg_edge.leftovers import working_prefix
from dronseg_edge.machine import installed_version
from dronseg_edge.metadata import ModelInfo, set_onnx_metadata
from dronseg_edge.models import SegmentationNet

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = {"logits": "logits", "argmax": "mask"}
MIN_OPSET = 13  # per-channel QuantizeLinear (int8) and Resize semantics TensorRT parses
MAX_PROTO_BYTES = 2**31 - 2**20  # protobuf's 2 GiB limit, with room for the graph itself


def choose_exporter() -> str:
    """``torchscript`` where torch still ships it (torch <= 2.15 does), else ``dynamo``."""
    return "torchscript" if hasattr(torch.onnx, "utils") and hasattr(torch.onnx.utils, "export") else "dynamo"


def exporter_versions(exporter: str) -> str:
    onnxscript = installed_version("onnxscript") if exporter == "dynamo" else None
    return (f"{exporter} (torch {torch.__version__}, onnx {onnx.__version__}"
            + (f", onnxscript {onnxscript})" if onnxscript else ")"))


def check_opset(opset: int | None, exporter: str) -> int:
    """The opset to export with; DronsegError when ``opset`` is outside what the exporter writes."""
    if opset is None:
        return DEFAULT_OPSET[exporter]
    from torch.onnx import _constants

    low = max(MIN_OPSET, 18 if exporter == "dynamo" else 0)
    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 17) if exporter == "torchscript" else _constants.ONNX_MAX_OPSET
    if not low <= int(opset) <= high:
        raise DronsegError(f"--opset {opset} is out of range for the {exporter} exporter of torch {torch.__version__}: use {low}..{high}")
    return int(opset)


def export_onnx(model: nn.Module, path: Path, info: ModelInfo, *, opset: int | None = None,
                exporter: str | None = None) -> Path:
    """Write ``model`` (forward -> ``{'out': logits}``) to ``path`` as a checked, simplified ONNX graph.

    Input ``images``: float32 (N, 3, H, W) normalised RGB at ``info.input_size`` (W, H); output
    ``logits`` (N, C, H, W) float32, or ``mask`` (N, H, W) uint8 for ``info.head == 'argmax'``.
    ``info.batch`` fixes N (None: N dynamic; with ``info.dynamic`` H and W too). The exporter and
    opset used are added to ``info.extra``; the file carries ``info`` in its metadata_props.
    """
    width, height = info.input_size
    # The free axes of the (N, 3, H, W) input: N when info.batch is None, H and W too when info.dynamic.
    free = {0: "batch"} if info.batch is None or info.dynamic else {}
    free = {**free, 2: "height", 3: "width"} if info.dynamic else free
    out_name = OUTPUT_NAMES[info.head]
    mask_axes = {{0: 0, 2: 1, 3: 2}[axis]: name for axis, name in free.items()}  # (N, H, W): no channel axis
    axes = {INPUT_NAME: free, out_name: mask_axes if out_name == "mask" else free} if free else None
    return write_graph(SegmentationNet(model, head=info.head).eval(), torch.zeros(info.batch or 1, 3, height, width),
                       path, info, opset=opset, exporter=exporter or choose_exporter(), axes=axes,
                       names=(INPUT_NAME, [out_name]))


def write_graph(net: nn.Module, example: torch.Tensor, path: Path, info: ModelInfo, *, opset: int | None,
                exporter: str, axes: dict | None, names: tuple[str, list[str]], **extra) -> Path:
    """Export ``net`` traced on ``example`` with ``axes`` (torch.onnx's dynamic_axes) free, finish, stamp and save it."""
    path = Path(path)
    opset = check_opset(opset, exporter)
    input_name, output_names = names
    ensure_writable_dir(path.parent)
    with tempfile.TemporaryDirectory(prefix=working_prefix("export"), dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        export = _export_torchscript if exporter == "torchscript" else _export_dynamo
        export(net, example, raw, opset, axes, names)
        graph = onnx.load(str(raw))
    graph = finish_graph(graph, info)
    info.extra.update({"exporter": exporter_versions(exporter), "opset": opset, "input_name": input_name,
                       "output_name": output_names[0], **extra})
    save_onnx(graph, path, info)
    return path


def _export_torchscript(net: nn.Module, example: torch.Tensor, dest: Path, opset: int, axes: dict | None,
                        names: tuple[str, list[str]]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 warns on every TorchScript export; the choice is deliberate (module docstring).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(net, (example,), str(dest), input_names=[names[0]], output_names=list(names[1]),
                          opset_version=opset, dynamic_axes=axes, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.EVAL, dynamo=False)


def _export_dynamo(net: nn.Module, example: torch.Tensor, dest: Path, opset: int, axes: dict | None,
                   names: tuple[str, list[str]]) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise BackendUnavailable(
            f"torch {torch.__version__} only has the dynamo ONNX exporter, which needs onnxscript: pip install onnxscript"
        ) from None
    shapes = {names[0]: dict.fromkeys(axes[names[0]], torch.export.Dim.AUTO)} if axes else None
    with torch.no_grad():
        program = torch.onnx.export(net, (example,), None, input_names=[names[0]], output_names=list(names[1]),
                                    opset_version=opset, dynamo=True, dynamic_shapes=shapes, external_data=False)
    program.save(str(dest), external_data=False)


def finish_graph(graph: onnx.ModelProto, info: ModelInfo, simplify: bool = True) -> onnx.ModelProto:
    """Check, simplify (onnxslim, when installed) and name the output dimensions of an exported graph.

    With ``simplify``, ``info.extra['simplifier']`` says what simplified the graph, or why nothing did.
    """
    _check(graph, "exported graph")
    if simplify:
        graph, info.extra["simplifier"] = _slim(graph)
    _name_output_dims(graph, info)
    # The lowest IR version its opsets allow, from ONNX's own table (opset 17 and 18: IR 8). The dynamo
    # exporter writes its newest (10), which onnxruntime 1.17 refuses (it reads up to 9; 1.17.3 tried).
    graph.ir_version = min(graph.ir_version, onnx.helper.find_min_ir_version_for(list(graph.opset_import), True))
    _check(graph, "simplified graph")
    return graph


def _slim(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """(graph simplified by onnxslim, what did it) or (graph as exported, why not): never fails the export."""
    try:
        import onnxslim
    except ImportError:
        log.warning("onnxslim is not installed: the ONNX graph was not slimmed (it runs the same; "
                    "pip install onnxslim, or the export extra, to simplify it)")
        return graph, "none (onnxslim not installed)"
    try:
        return onnxslim.slim(graph), f"onnxslim {getattr(onnxslim, '__version__', '?')}"
    except Exception as exc:  # a simplifier failure must not cost the user the export
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        log.warning("onnxslim could not simplify the graph (%s); keeping it as exported", reason)
        return graph, f"none (onnxslim failed: {reason})"


def _check(graph: onnx.ModelProto, what: str) -> None:
    try:
        if graph.ByteSize() < MAX_PROTO_BYTES:
            onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise RuntimeError(f"onnx.checker rejected the {what}: {first}") from exc


def _name_output_dims(graph: onnx.ModelProto, info: ModelInfo) -> None:
    """Fixed class count and the batch/height/width of the input on the output (simplifiers lose them)."""
    # A frames graph (io='frames') returns its maps at the frame's size, not the model input's.
    width, height = info.source_size if info.io == "frames" and info.source_size else info.input_size
    spatial = ["height", "width"] if info.dynamic else [height, width]
    batch = "batch" if info.batch is None or info.dynamic else info.batch
    dims = [batch, info.num_classes, *spatial] if info.head == "logits" else [batch, *spatial]
    for output in graph.graph.output if info.io == "frames" else graph.graph.output[:1]:
        shape = output.type.tensor_type.shape
        for proto, value in zip(shape.dim, dims) if len(shape.dim) == len(dims) else ():
            setattr(proto, "dim_param" if isinstance(value, str) else "dim_value", value)  # a oneof: the other clears


def save_onnx(graph: onnx.ModelProto, path: Path, info: ModelInfo) -> Path:
    """Stamp ``info`` into metadata_props and write ``path`` atomically (external data only past 2 GiB)."""
    set_onnx_metadata(graph, info)
    path = Path(path)
    # Past protobuf's limit the weights must live in a second file; its name is fixed inside the
    # graph, so it is written under its final name first and the graph file is renamed last.
    large = graph.ByteSize() >= MAX_PROTO_BYTES
    with atomic_path(path) as tmp:
        onnx.save_model(graph, str(tmp), save_as_external_data=large, location=path.name + ".data")
    return path


def verify_dynamic(path: Path, model: nn.Module, info: ModelInfo) -> str:
    """Run a file with a free batch at batch 2 (a --dynamic one also at another size than it was traced
    with) and compare with PyTorch; DronsegError when the graph froze a shape (the known failure of
    AdaptiveAvgPool2d/Resize exports)."""
    def probe(side: int) -> int:  # another multiple of 32 than the traced side
        half = max(64, side // 2 // 32 * 32)
        return half + 32 if half == side else half

    width, height = info.input_size
    size = (probe(height), probe(width)) if info.dynamic else (height, width)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    return compare_with_torch(path, SegmentationNet(model, head=info.head).eval(), x, info, f"export of {info.arch}",
                              "drop --dynamic and export one static file per size")


def compare_with_torch(path: Path, net: nn.Module, x: torch.Tensor, info: ModelInfo, subject: str, dynamic_fix: str) -> str:
    """Run the graph at ``path`` and ``net`` on ``x``; the verdict as a note, or a DronsegError naming the
    ``--dynamic`` (``dynamic_fix``) or dynamic-batch ``subject`` and the fix.
    Float outputs must match closely, class maps on 99.9 % of pixels. Skipped without onnxruntime."""
    what = f"{'--dynamic' if info.dynamic else 'dynamic-batch'} {subject}"
    fix = dynamic_fix if info.dynamic else "export --format onnx with a fixed --batch"
    try:
        import onnxruntime
    except ImportError:
        return "dynamic shapes not verified (onnxruntime missing)"
    with torch.no_grad():
        expected = net(x)
    expected = expected[0] if isinstance(expected, tuple) else expected
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = "x".join(map(str, x.shape))
    try:
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    except Exception as exc:  # onnxruntime reports a frozen shape as a runtime error
        raise DronsegError(f"{what} fails at {shape} ({str(exc).splitlines()[0][:160]}): {fix}") from None
    if got.shape != expected.shape:
        raise DronsegError(f"{what} returns {tuple(got.shape)} for a {shape} input instead of {tuple(expected.shape)}: {fix}")
    if expected.is_floating_point():
        worst = float((got - expected).abs().max())
        if not torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * max(1.0, float(expected.abs().max()))):
            raise DronsegError(f"{what} differs from PyTorch at {shape} (max error {worst:.3g}): {fix}")
        return f"dynamic shapes verified at {shape} (max error {worst:.2g})"
    # The graph computes what the module does; random inputs only risk a rare near-tie in the logits.
    agreement = float((got.long() == expected.long()).float().mean())
    if agreement < 0.999:
        raise DronsegError(f"{what} agrees with PyTorch on only {100 * agreement:.2f}% of pixels at {shape}: {fix}")
    return f"dynamic shapes verified at {shape} (agreement {100 * agreement:.2f}%)"
