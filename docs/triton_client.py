"""Send frames to a model that `dronseg-edge export --format triton` wrote, as any Triton client would.

The request is built from the model's configuration alone (the server's get_model_config, or the
folder's config.pbtxt): the input's name, data type and dims, whether the model batches
(max_batch_size > 0: the dims leave out the batch), and for a float input the mean, std and size in
its parameters. The outputs that come back are checked against the declared ones.

    python triton_client.py MODEL frame.jpg [more.jpg ...] [--url localhost:8000]
    python triton_client.py OUT/triton/MODEL frame.jpg --onnxruntime   # no server: ONNX Runtime stands in

MODEL is the model folder's name (with --onnxruntime: its path). Needs numpy, opencv-python-headless
and tritonclient[http] (tritonclient[grpc] and onnxruntime for --onnxruntime).
tests/export/test_triton.py runs this file, with ONNX Runtime standing in, for every model variant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_UINT8": np.uint8}


def _batching(config: dict) -> bool:
    return int(config.get("max_batch_size", 0)) > 0


def _parameter(config: dict, key: str) -> str:
    return config["parameters"][key]["string_value"]


def make_input(config: dict, frames: list[np.ndarray]) -> tuple[str, np.ndarray]:
    """(input name, batch) for uint8 BGR frames (H, W, 3), laid out, sized and typed as ``config`` declares.

    uint8 (H, W, 3) input: the frames themselves (resized to H x W where fixed; the graph does the rest).
    float (3, H, W) input: resized to H x W (-1: the parameter input_size), RGB, / 255, (x - mean) / std.
    """
    [spec] = config["input"]
    dims = [int(d) for d in spec["dims"]]
    if _batching(config):
        if len(frames) > int(config["max_batch_size"]):
            raise ValueError(f"{len(frames)} frames: this model takes at most {config['max_batch_size']} per request")
    elif dims[0] not in (-1, len(frames)):
        raise ValueError(f"{len(frames)} frames: this model takes exactly {dims[0]} per request")
    else:
        dims = dims[1:]  # without the fixed batch: one frame's dims
    dtype = NUMPY_TYPES[spec["data_type"]]
    frames_in = dims[-1] == 3  # (H, W, 3) frames, else (3, H, W) tensors
    height, width = dims[:2] if frames_in else dims[1:]
    if not frames_in and height < 0:
        width, height = (int(v) for v in _parameter(config, "input_size").split("x"))
    batch = []
    for frame in frames:
        if height > 0 and frame.shape[:2] != (height, width):
            if width <= frame.shape[1] and height <= frame.shape[0]:
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            else:  # enlarged in float and rounded, as the package and its frames graphs do (uint8 bilinear is fixed-point)
                frame = np.rint(cv2.resize(frame.astype(np.float32), (width, height),
                                           interpolation=cv2.INTER_LINEAR)).astype(np.uint8)
        if not frames_in:
            mean, std = (np.array(_parameter(config, key).split(","), np.float32) for key in ("mean", "std"))
            rgb = frame[:, :, ::-1].astype(np.float32)
            frame = ((rgb / 255.0 - mean) / std).transpose(2, 0, 1)
        batch.append(frame)
    if len({f.shape for f in batch}) > 1:
        raise ValueError("frames of different sizes: one request is one tensor, send them separately")
    return spec["name"], np.ascontiguousarray(np.stack(batch), dtype=dtype)


def check_outputs(config: dict, outputs: dict[str, np.ndarray], count: int) -> None:
    """ValueError unless every declared output came back with its data type and dims (``count`` frames)."""
    for spec in config["output"]:
        dims = [int(d) for d in spec["dims"]]
        expected = [count, *dims] if _batching(config) else dims
        array = outputs.get(spec["name"])
        if array is None:
            raise ValueError(f"output {spec['name']!r} is declared but did not come back")
        fits = len(array.shape) == len(expected) and all(e in (-1, a) for e, a in zip(expected, array.shape))
        if array.dtype != NUMPY_TYPES[spec["data_type"]] or not fits:
            raise ValueError(f"output {spec['name']!r} is {array.dtype} {list(array.shape)}, but the config declares "
                             f"{spec['data_type']} {expected}")


def class_names(config: dict) -> list[str] | None:
    """The model's class names; None for a folder exported before 2026-12-06, whose parameters lack them."""
    return json.loads(_parameter(config, "class_names")) if "class_names" in config.get("parameters", {}) else None


def class_maps(config: dict, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """(N, H, W) uint8 class indices: the ``mask`` output, or the argmax of the ``logits``."""
    classes = outputs["mask"] if "mask" in outputs else outputs["logits"].argmax(1).astype(np.uint8)
    names = class_names(config)
    if names is not None and classes.size and int(classes.max()) >= len(names):
        raise ValueError(f"class index {int(classes.max())} has no name: the model has {len(names)} classes")
    return classes


def infer_triton(url: str, model: str, frames: list[np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, outputs by name) from a Triton server at ``url`` (HTTP)."""
    try:
        import tritonclient.http as httpclient
    except (ImportError, RuntimeError):  # RuntimeError: tritonclient installed without its HTTP part
        raise ValueError("a server is asked through tritonclient's HTTP client: pip install 'tritonclient[http]'") from None
    try:
        client = httpclient.InferenceServerClient(url)
        config = client.get_model_config(model)
        name, batch = make_input(config, frames)
        tensor = httpclient.InferInput(name, list(batch.shape), config["input"][0]["data_type"].removeprefix("TYPE_"))
        tensor.set_data_from_numpy(batch)
        result = client.infer(model, [tensor])
    except (OSError, httpclient.InferenceServerException) as exc:  # refused, unknown host, unknown model
        raise ValueError(f"Triton at {url} ({exc or type(exc).__name__}): check --url (host:port, no http://), "
                         f"that the server runs and that it serves {model}") from None
    outputs = {spec["name"]: result.as_numpy(spec["name"]) for spec in config["output"]}
    return config, outputs


def read_config(folder: Path) -> dict:
    """A model folder's config.pbtxt as the dict get_model_config returns (Triton's schema, field names kept)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(folder) / "config.pbtxt"
    try:  # a hand-edited file (triton.md suggests edits) that Triton would refuse too
        parsed = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{path} is not a model configuration Triton reads: {exc}") from None
    return json_format.MessageToDict(parsed, preserving_proto_field_name=True)


def infer_onnxruntime(folder: Path, frames: list[np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, outputs by name) with ONNX Runtime standing in for Triton: the same request, run on 1/model.onnx."""
    import onnxruntime as ort

    config = read_config(folder)
    name, batch = make_input(config, frames)
    model = Path(folder) / "1" / "model.onnx"
    if not model.is_file():  # a TensorRT plan's folder: ONNX Runtime's NoSuchFile was a traceback
        raise ValueError(f"{model} does not exist: --onnxruntime runs an ONNX model folder, not a TensorRT plan's")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    wanted = [spec["name"] for spec in config["output"]]
    return config, dict(zip(wanted, session.run(wanted, {name: batch})))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the model's name on the server (with --onnxruntime: its folder)")
    parser.add_argument("frames", nargs="+", type=Path, help="images (one request: same size unless the model resizes)")
    parser.add_argument("--url", default="localhost:8000", help="the server's HTTP address")
    parser.add_argument("--onnxruntime", action="store_true", help="run the folder's model.onnx instead of a server")
    args = parser.parse_args(argv)
    frames = [cv2.imread(str(path)) for path in args.frames]
    missing = [str(path) for path, frame in zip(args.frames, frames) if frame is None]
    if missing:
        raise SystemExit(f"cannot read {', '.join(missing)} as images")
    masks = {}  # a.jpg and a.png would both write a.mask.png: the second replaced the first
    for path in args.frames:
        if masks.setdefault(path.with_suffix(".mask.png"), path) != path:
            raise SystemExit(f"error: {masks[path.with_suffix('.mask.png')]} and {path} would both write "
                             f"{path.with_suffix('.mask.png')}: rename one")
    try:
        if args.onnxruntime:
            config, outputs = infer_onnxruntime(Path(args.model), frames)
        else:
            config, outputs = infer_triton(args.url, args.model, frames)
        check_outputs(config, outputs, len(frames))
        maps = class_maps(config, outputs)
    except (ValueError, OSError) as exc:  # too many frames, mixed sizes, no config.pbtxt, an unnamed class: one line
        raise SystemExit(f"error: {exc}") from None
    names = class_names(config) or [f"class {index}" for index in range(256)]
    for path, classes in zip(args.frames, maps):
        mask = path.with_suffix(".mask.png")
        if not cv2.imwrite(str(mask), classes):  # class indices as grey levels; False, not an error, where it cannot
            raise SystemExit(f"error: cannot write {mask}: give frames in a folder this user can write to")
        print(f"{path}: {classes.shape[1]}x{classes.shape[0]} class map, classes "
              f"{', '.join(names[c] for c in np.unique(classes))}; wrote {mask}")


if __name__ == "__main__":
    main()
