"""Export: checkpoints to ONNX files and TensorRT engines (fp32, fp16, int8), each proven by a parity check.

Public API::

    options = ExportOptions(fmt="onnx"|"engine", precision="fp32"|"fp16"|"int8", size=None, batch=1, ...)
    export_artifact(checkpoint, options) -> ExportResult       (or export_artifact(checkpoint, precision="fp16"))
    artifact_path(checkpoint, options) -> Path
    reusable_artifact(path, expected_info) -> ModelInfo | None
    default_out_dir(checkpoint) -> Path
    check_parity(reference, candidate, data=None, *, device, thresholds, max_images) -> ParityReport
    ParityThresholds.for_precision(precision, min_agreement=None, max_miou_drop=None)

``ExportOptions`` is frozen and validates itself (DronsegError on a bad value). TensorRT and ONNX
Runtime are imported only when used, so this package imports without them.
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
