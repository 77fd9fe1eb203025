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

from dronseg_edge.export.artifact import (
    ExportResult,
    artifact_path,
    default_out_dir,
    export_artifact,
    reusable_artifact,
)
from dronseg_edge.export.options import EXPORT_PRECISIONS, FORMATS, ExportOptions
from dronseg_edge.export.parity import check_parity
from dronseg_edge.export.parity_report import ParityReport, ParityThresholds, parity_report_path

__all__ = [
    "EXPORT_PRECISIONS",
    "FORMATS",
    "ExportOptions",
    "ExportResult",
    "ParityReport",
    "ParityThresholds",
    "artifact_path",
    "check_parity",
    "default_out_dir",
    "export_artifact",
    "parity_report_path",
    "reusable_artifact",
]
