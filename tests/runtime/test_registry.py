"""The suffix table: which files are checkpoints, the model-file check, and each backend's declared options."""

from __future__ import annotations

import importlib
import inspect

import pytest

from dronseg_edge.errors import DronsegError
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.registry import BACKENDS, CHECKPOINT_SUFFIXES, check_model_file, is_checkpoint, load_backend


def test_is_checkpoint_by_suffix_in_any_case(tmp_path):
    assert is_checkpoint("runs/x/weights/best.pt") and is_checkpoint(tmp_path / "LAST.PTH")
    assert not is_checkpoint("model.onnx") and not is_checkpoint("model.engine") and not is_checkpoint("best")
    assert not is_checkpoint("best.pt.failed")
    assert {BACKENDS[s][1] for s in CHECKPOINT_SUFFIXES} == {"TorchBackend"}


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist: pass a .pt checkpoint, .onnx file or .engine file"),
    ("folder", "is a folder: pass a .pt checkpoint"),
    ("suffix", "is of an unknown kind (.tflite)"),
])
def test_model_file_check_is_shared_by_load_backend(case, message, tmp_path):
    path = {"missing": tmp_path / "nope.onnx", "folder": tmp_path, "suffix": tmp_path / "m.tflite"}[case]
    if case == "suffix":
        path.write_bytes(b"x")
    for check in (check_model_file, lambda p: load_backend(p, "cpu")):
        with pytest.raises(DronsegError) as info:
            check(path)
        assert message in str(info.value) and str(path) in str(info.value)


def test_model_file_check_returns_the_path(tiny_checkpoint):
    assert check_model_file(str(tiny_checkpoint)) == tiny_checkpoint


@pytest.mark.parametrize("module, name", sorted(set(BACKENDS.values())))
def test_declared_options_are_the_constructor_keywords(module, name):
    """bench passes only what OPTIONS lists, so the table must follow the constructor (no tensorrt needed to import)."""
    cls = getattr(importlib.import_module(module), name)
    keywords = set(inspect.signature(cls.__init__).parameters) - {"self", "path", "device"}
    assert cls.OPTIONS == keywords and isinstance(cls.OPTIONS, frozenset)
    assert Backend.OPTIONS == frozenset()
