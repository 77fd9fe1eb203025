"""The latency stage's rows and their order, without torch: the plan (benchmarks/gpu_check/plan.py)
lists them with their estimates before any stage runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    label: str
    precision: str
    cuda_graph: bool | None = None
    tf32: bool | None = None  # None: torch's defaults; False: strict fp32
    compile_mode: str | None = None

    @property
    def reference(self) -> bool:
        """Measured on the strict-fp32 reference backend itself (no graph, fp32)."""
        return self.precision == "fp32" and not self.cuda_graph and self.compile_mode is None

    def needs_cuda(self) -> bool:
        return self.precision != "fp32" or bool(self.cuda_graph) or self.compile_mode is not None


STRICT = Row("pytorch fp32 (no TF32)", "fp32", tf32=False)
DEFAULT = Row("pytorch fp32 (TF32 default)", "fp32")
FP16 = Row("pytorch fp16 channels_last", "fp16", cuda_graph=False)
FP16_GRAPH = Row("pytorch fp16 channels_last + CUDA graph", "fp16", cuda_graph=True)
BF16_GRAPH = Row("pytorch bf16 channels_last + CUDA graph", "bf16", cuda_graph=True)


def schedule(archs: tuple[str, ...], compile_mode: str | None) -> list[tuple[str, Row]]:
    """(arch, row) in priority order: strict reference and fp16 + graph of every arch before the rest."""
    order = [(a, r) for a in archs for r in (STRICT, FP16_GRAPH)]
    order += [(a, r) for r in (DEFAULT, FP16, BF16_GRAPH) for a in archs]
    if compile_mode:
        order += [(a, Row(f"pytorch fp16 + torch.compile({compile_mode})", "fp16", cuda_graph=False,
                          compile_mode=compile_mode)) for a in archs]
    return order


def row_items(archs: tuple[str, ...], compile_mode: str | None) -> list[str]:
    """The plan's item name of every row, in the order the stage runs them: ``ARCH: LABEL``."""
    return [item_name(arch, row) for arch, row in schedule(archs, compile_mode)]


def item_name(arch: str, row: Row) -> str:
    return f"{arch}: {row.label}"
