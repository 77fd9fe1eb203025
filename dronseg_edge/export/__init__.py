"""Export: checkpoints to ONNX files, TensorRT engines and Triton repositories (fp32, fp16, int8), each
proven by a parity check: ``export_artifact(checkpoint, ExportOptions(...))`` (or ``precision="fp16"``
and other fields as keywords), ``artifact_path``, ``reusable_artifact``, ``default_out_dir``,
``check_parity`` -> ``ParityReport``, ``ParityThresholds.for_precision``. TensorRT and ONNX Runtime are
imported only when used, so this package imports without them.
"""

import importlib

# Imported when first used: the CLI reads ExportOptions for --help without torch.
_WHERE = {**dict.fromkeys(("ExportResult", "artifact_path", "default_out_dir", "export_artifact", "reusable_artifact"),
                          "dronseg_edge.export.artifact"),
          **dict.fromkeys(("EXPORT_PRECISIONS", "FORMATS", "ExportOptions"), "dronseg_edge.export.options"),
          "check_parity": "dronseg_edge.export.parity",
          **dict.fromkeys(("ParityReport", "ParityThresholds", "parity_report_path"), "dronseg_edge.export.parity_report")}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'dronseg_edge.export' has no attribute {name!r}")


def __dir__() -> list[str]:  # help() and a notebook's completion read dir(): the names above too
    return sorted({*globals(), *_WHERE})
