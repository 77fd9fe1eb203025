"""fp32 ONNX graph -> int8 graph with explicit QuantizeLinear/DequantizeLinear (Q/DQ) nodes.

Calibrated on real images with ``onnxruntime.quantization.quantize_static``; the settings are
the ones TensorRT's explicit quantization accepts (TensorRT 11 has no other int8 path):
- symmetric int8 activations and weights, so every zero point is 0;
- per-channel weight scales (axis 0 of each Conv);
- Q/DQ only around convolutions, and biases left in float (TensorRT has no int32 DequantizeLinear);
the rest of the graph stays float and runs as such.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from packaging.version import Version

from dronseg_edge.errors import BackendUnavailable
from dronseg_edge.export.images import ImageSet, load_item
from dronseg_edge.leftovers import working_prefix
from dronseg_edge.machine import onnxruntime_for_numpy_1
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.base import pad_batch
from dronseg_edge.runtime.host import preprocess_host, resize_frame

# Clip the rarest activations: a handful of outliers would otherwise stretch the int8 range. Of
# 99.9 / 99.99 / 99.999 / 99.9999 this kept the most argmax pixels on the test model (93.6 / 96.2 /
# 97.0 / 96.3 %, on an earlier head-only-trained test model, 2 CPU cores); minmax gave 96.4 %.
PERCENTILE = 99.999


def calibration_batches(images: ImageSet, info: ModelInfo, input_name: str, first: int = 0,
                        last: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of one batch each, as the graph takes it at inference: normalised float32 (B, 3, H, W), or for a
    frames graph (export/embedded.py) uint8 BGR (B, H, W, 3) frames at its source size (dynamic: their own).

    B is the graph's fixed batch (1 when it is dynamic); the last batch repeats its final image. Batches
    ``first`` to ``last`` (exclusive) only: the images before them are not read.
    """
    batch, size = info.batch or 1, info.source_size

    def prepare(frames: list[np.ndarray]) -> np.ndarray:
        if info.io == "tensors":
            return preprocess_host(frames, info)
        return np.stack([frame if size is None else resize_frame(frame, *size) for frame in frames])

    stop = len(images.items) if last is None else min(len(images.items), last * batch)
    for start in range(first * batch, stop, batch):
        frames = [load_item(item, None)[0] for item in images.items[start:start + batch]]  # masks unused: not read
        yield {input_name: pad_batch(prepare(frames), batch)[0]}


def calibration_record(images: ImageSet, method: str) -> dict:
    """What the int8 file's metadata says of its calibration (``extra["calibration"]``); a reused file must match it."""
    return {"method": method, "images": len(images.items), "source": images.source}


def quantize_int8(fp32_path: Path, dest: Path, images: ImageSet, info: ModelInfo, *, input_name: str,
                  method: str) -> dict:
    """Write a Q/DQ int8 copy of the ONNX file ``fp32_path`` to ``dest`` (a scratch path).

    Returns what was done (method, image count, source) for the metadata; ``images`` is never empty
    (resolve_images refuses that). Raises BackendUnavailable without onnxruntime.
    """
    try:
        import onnxruntime
        from onnxruntime import quantization
    except ImportError:
        raise BackendUnavailable(onnxruntime_for_numpy_1() or "int8 export needs onnxruntime (its quantizer): pip install "
                                 "onnxruntime (or onnxruntime-gpu)") from None
    if Version(onnxruntime.__version__).release < (1, 19) and importlib.util.find_spec("onnx.mapping") is None:
        # onnxruntime 1.17.3 beside a newer onnx (tried): otherwise an AttributeError deep in the quantizer.
        raise BackendUnavailable(f"int8 export with onnxruntime {onnxruntime.__version__} needs onnx < 1.19 (its quantizer "
                                 "reads onnx.mapping, which onnx 1.19 removed): pip install 'onnx<1.19', or onnxruntime >= 1.19")
    methods = {"minmax": quantization.CalibrationMethod.MinMax, "percentile": quantization.CalibrationMethod.Percentile}

    class Reader(quantization.CalibrationDataReader):
        """Serves one range of batches at a time (``set_range``), so the calibrator sees them in chunks."""

        def __init__(self):
            self.set_range(0, None)

        def __len__(self) -> int:
            return -(-len(images.items) // (info.batch or 1))

        def set_range(self, start_index: int, end_index: int | None) -> None:
            # Read from the range's first image on: ORT asks for each chunk in turn, and skipping the
            # batches before it by reading them made N images cost N (N + 1) / 2 reads.
            self._batches = calibration_batches(images, info, input_name, start_index, end_index)

        def get_next(self):
            return next(self._batches, None)

    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "CalibTensorRangeSymmetric": True,
        # Q/DQ on the inputs of each Conv only (NVIDIA's placement for explicit quantization):
        # TensorRT fuses the activation that follows and quantises where the next Conv reads.
        "OpTypesToExcludeOutputQuantization": ["Conv"],
        # Collect one batch at a time: ORT's calibrators otherwise keep every intermediate tensor of
        # every calibration image in memory (tens of GB for DeepLabV3 at 1280x720); the histogram
        # calibrators merge the chunks, so the result is the same calibration, in bounded memory.
        "CalibStridedMinMax": 1,
    }
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix=working_prefix("quantize"), dir=Path(dest).parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference first (the quantizer needs tensor shapes); graph optimisation is left to
        # the runtimes, so the file stays plain ONNX that TensorRT parses.
        quantization.quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True,
                                       skip_onnx_shape=False, skip_symbolic_shape=False)
        # The calibrator prints its progress to stdout; the CLI's own output should stay readable. It also
        # stamps onnx.infer / onnx.quant.pre_process = onnxruntime.quant (plain text) into the metadata:
        # metadata.set_onnx_metadata stores such foreign entries as JSON strings, so every value parses.
        with contextlib.redirect_stdout(io.StringIO()):
            quantization.quantize_static(
                str(prepared), str(dest), Reader(),
                quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=["Conv"],
                per_channel=True,
                activation_type=quantization.QuantType.QInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=methods[method],
                extra_options=extra,
            )
    return {"calibration": calibration_record(images, method),
            "quantizer": f"onnxruntime {onnxruntime.__version__} quantize_static QDQ int8 symmetric per-channel"}
