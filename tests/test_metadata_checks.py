"""metadata_checks.py: every ModelInfo field read from a file is checked once, with one line naming the
file and the field (exit code 2); JSON is bounded in size and depth before it is parsed. Issue 19, section 3."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import ModelInfo, read_engine_sidecar, read_onnx_info, set_onnx_metadata, sidecar_path
from dronseg_edge import metadata_checks
from dronseg_edge.metadata_checks import MAX_JSON_BYTES, MAX_JSON_DEPTH, load_json
from dronseg_edge.runtime.registry import read_meta_file

GOOD = {"arch": "lraspp_mobilenet_v3_large", "input_size": [96, 64]}
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("field, value, says", [
    ("palette", [[300, -5, "x"]] * 12, "palette[0][0] 300 is outside 0..255"),
    ("palette", [[1, 2, 3]] * 11 + [[1, 2, "x"]], "palette[11][2] 'x' is not a whole number"),
    ("palette", [[1, 2, 3]] * 3, "has 3 colours for 12 classes"),
    ("palette", [[1, 2]] * 12, "palette[0] [1, 2] has 2 entries, not 3"),
    ("input_size", [0, 0], "input_size[0] 0 is outside 1..16384"),
    ("input_size", [-320, 192], "input_size[0] -320 is outside 1..16384"),
    ("input_size", [100000, 100000], "input_size[0] 100000 is outside 1..16384"),
    ("input_size", [16384, 16384], "is 268435456 pixels, over the 67108864"),
    ("input_size", [96.5, 64], "input_size[0] 96.5 is not a whole number"),
    ("input_size", "96x64", "input_size '96x64' is not a list"),
    ("source_size", [0, 720], "source_size[0] 0 is outside"),
    ("class_names", list(range(12)), "class_names[0] 0 is not a non-empty printable text"),
    ("class_names", [""] * 12, "class_names[0] '' is not a non-empty"),
    ("class_names", ["a"] * 12, "names 'a' twice"),
    ("class_names", [], "has 0 entries, not 1..255"),
    ("class_names", [f"c{i}" for i in range(256)], "has 256 entries, not 1..255"),  # class 255: ignored pixels' value
    ("std", [0, 0, 0], "std[0] 0 is outside 0.001..10"),
    ("std", [0.2, float("nan"), 0.2], "std[1] nan is not a finite number"),
    ("mean", [123.7, 116.3, 103.5], "mean[0] 123.7 is outside 0..1"),
    ("mean", [0.5, 0.5], "has 2 entries, not 3"),
    ("batch", 0, "batch 0 is outside 1..1024"),
    ("batch", True, "batch True is not a whole number"),
    ("precision", "fp8", "precision 'fp8' is not one of fp32, fp16, bf16, int8"),
    ("head", "softmax", "head 'softmax' is not one of logits, argmax"),
    ("io", "video", "io 'video' is not one of tensors, frames"),
    ("layout", "NWHC", "layout 'NWHC' is not one of NCHW, NHWC"),
    ("dynamic", "yes", "dynamic 'yes' is not true or false"),
    ("outputs", ["mask", "mask"], "names 'mask' twice"),
    ("output_stride", 32, "output_stride 32 is not one of 8, 16"),
    ("extra", [1], "extra [1] is not an object with text keys"),
])
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(field, value, says):
    with pytest.raises(DronsegError) as info:
        ModelInfo.from_dict({**GOOD, field: value}, source="model.onnx", fix="re-export it")
    message = str(info.value)
    assert message.startswith(f"model.onnx: metadata {field}") and says in message, message
    assert message.endswith(": re-export it") and "\n" not in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("field", ["input_size", "source_size"])
def test_a_batch_past_the_pixels_a_model_input_may_have_is_refused(field):
    """A 1.7 kB ONNX file declaring batch 1024 at 8192x8192 made infer ask numpy for 767 GiB: a MemoryError traceback."""
    with pytest.raises(DronsegError) as info:
        ModelInfo.from_dict({**GOOD, field: [8192, 8192], "batch": 1024}, source="model.onnx", fix="re-export it")
    assert str(info.value) == (f"model.onnx: metadata batch 1024 of 8192x8192 ({field}) is 68719476736 pixels, over the "
                               "67108864 a model input may have: re-export it")
    assert ModelInfo.from_dict({**GOOD, field: [1280, 720], "batch": 64}, source="m").batch == 64


def test_good_fields_come_back_normalised():
    info = ModelInfo.from_dict({**GOOD, "source_size": (1280, 720), "mean": [0, 1, 0.5], "batch": None, "dynamic": True},
                               source="m")
    assert info.input_size == (96, 64) and info.source_size == (1280, 720) and info.mean == [0.0, 1.0, 0.5]
    assert info.palette[0] == [0, 0, 0] and len(info.class_names) == 12


def test_a_checkpoints_field_nested_100000_deep_is_one_line_not_a_recursion_error():
    """A checkpoint's metadata is a pickle, not JSON: nothing bounded its depth, and the error's repr recursed."""
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(DronsegError) as info:
        ModelInfo.from_dict({**GOOD, "class_names": [deep]}, source="checkpoint c.pt", fix="retrain")
    assert str(info.value) == ("checkpoint c.pt: metadata class_names[0] [[[[[[[...]]]]]]] is not a non-empty printable "
                               "text of at most 200 characters: retrain")


def test_json_nested_100000_deep_is_refused_before_parsing_not_a_recursion_error():
    with pytest.raises(DronsegError, match=f"nests 100000 levels deep \\(at most {MAX_JSON_DEPTH}\\): fix it"):
        load_json(DEEP, "m.json", "fix it")
    assert load_json('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', "m", "f") == {"a": "[" * 40}  # inside a string


def test_an_unclosed_string_of_escaped_quotes_is_scanned_once_not_from_every_quote():
    # '"\\"\\"\\"...': the depth scan's string pattern failed at each quote and was tried again from the next, so a
    # 1 MiB ONNX entry held infer for about an hour before its "not valid JSON"; an unclosed string now runs to the end.
    text = '"' + '\\"' * 2000
    assert [m.span() for m in metadata_checks._STRING.finditer(text)] == [(0, len(text))]
    with pytest.raises(DronsegError, match="m.onnx entry arch: metadata is not valid JSON"):
        load_json('"' + '\\"' * (MAX_JSON_BYTES // 2 - 1), "m.onnx entry arch", "fix it")


def test_json_larger_than_the_bound_is_refused(tmp_path):
    with pytest.raises(DronsegError, match=f"metadata JSON of {MAX_JSON_BYTES + 3} bytes is over"):
        load_json('"' + "x" * (MAX_JSON_BYTES + 1) + '"', "m.json", "fix it")
    big = tmp_path / "big.json"  # only the bound's bytes are read: the file's own size is named (it said 1048577)
    big.write_text(json.dumps({**GOOD, "pad": "x" * 5_000_000}))
    with pytest.raises(DronsegError, match=f"--meta {big}: metadata JSON of {big.stat().st_size} bytes is over"):
        read_meta_file(big)


def _identity_onnx(path, info: ModelInfo, **overrides):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 64, 96])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    set_onnx_metadata(model, info)
    for entry in model.metadata_props:
        if entry.key in overrides:
            entry.value = overrides[entry.key]
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("form", ["onnx", "sidecar", "meta"])
def test_every_on_disk_form_refuses_deep_json_and_bad_fields(form, tmp_path):
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64))
    if form == "onnx":
        deep = _identity_onnx(tmp_path / "deep.onnx", info, extra=DEEP)
        bad = _identity_onnx(tmp_path / "bad.onnx", info, std="[0, 0, 0]")
        read = read_onnx_info
    else:
        deep, bad = tmp_path / "deep.engine", tmp_path / "bad.engine"
        data = {"format": "dronseg-edge-engine", **info.to_dict()}
        sidecar_path(deep).write_text(json.dumps(data)[:-1] + ', "more": ' + DEEP + "}")
        sidecar_path(bad).write_text(json.dumps({**data, "std": [0, 0, 0]}))
        read = read_engine_sidecar if form == "sidecar" else (lambda path: read_meta_file(sidecar_path(path)))
    with pytest.raises(DronsegError, match="metadata JSON nests 10000[01] levels deep") as deep_error:
        read(deep)
    with pytest.raises(DronsegError, match="metadata std\\[0\\] 0 is outside 0.001..10") as bad_error:
        read(bad)
    for error, path in ((deep_error, deep), (bad_error, bad)):
        assert "\n" not in str(error.value) and (path.name in str(error.value) or sidecar_path(path).name in str(error.value))


def test_metadata_bytes_that_are_not_utf8_are_one_line():
    with pytest.raises(DronsegError, match="^m.json: metadata is not UTF-8 text: FIX$"):
        metadata_checks.load_json(b'{"arch": "\xff"}', "m.json", "FIX")
