"""Export: checkpoints to ONNX files and TensorRT engines (fp32, fp16, int8), each proven by a parity check.

Public API::

    export_artifact(checkpoint, fmt="onnx"|"engine", precision="fp32"|"fp16"|"int8", ...) -> ExportResult
    artifact_path(checkpoint, fmt, precision, size, batch, dynamic, head, out_dir, device) -> Path
    default_out_dir(checkpoint) -> Path
    check_parity(reference, candidate, data=None, *, device, thresholds, max_images) -> ParityReport
    ParityThresholds.for_precision(precision, min_agreement=None, max_miou_drop=None)

TensorRT and ONNX Runtime are imported only when used, so this package imports without them.
"""

from dronseg_edge.export.artifact import (
    EXPORT_PRECISIONS,
    FORMATS,
    ExportResult,
    artifact_path,
    default_out_dir,
    export_artifact,
)
from dronseg_edge.export.parity import check_parity
from dronseg_edge.export.parity_report import ParityReport, ParityThresholds, parity_report_path

__all__ = [
    "EXPORT_PRECISIONS",
    "FORMATS",
    "ExportResult",
    "ParityReport",
    "ParityThresholds",
    "artifact_path",
    "check_parity",
    "default_out_dir",
    "export_artifact",
    "parity_report_path",
]
