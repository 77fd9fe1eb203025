"""The Backend lifecycle every backend shares: a constructor without side effects, metadata read once
on first use, the input contract checked in the base class, a checkpoint backend from a loaded dict, and
pad_batch (a short batch padded to an artifact's fixed batch by repeating its last frame)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import dronseg_edge.metadata as metadata_module
from dronseg_edge.checkpoint import load_checkpoint
from dronseg_edge.errors import DronsegError
from dronseg_edge.runtime.base import TensorSpec, check_declared_io, pad_batch
from dronseg_edge.runtime.onnxruntime import OnnxRuntimeBackend
from dronseg_edge.runtime.registry import load_backend
from dronseg_edge.runtime.tensorrt import TensorRTBackend
from dronseg_edge.runtime.torch import TorchBackend

from testkit import FakeBackend

CPU = torch.device("cpu")


def counting_backend(dynamic: bool = False) -> FakeBackend:
    """Static 1x3x6x8 (or dynamic) artifact that records what the base class let through."""
    return FakeBackend("counting.onnx", input_size=(8, 6), batch=None if dynamic else 1, dynamic=dynamic)


@pytest.mark.parametrize("cls, name, message", [
    (TorchBackend, "missing.pt", "checkpoint .*missing.pt does not exist"),
    (OnnxRuntimeBackend, "missing.onnx", "ONNX file .*missing.onnx does not exist"),
    (TensorRTBackend, "missing.engine", "no metadata file missing.engine.json"),
])
def test_constructing_opens_no_file_and_info_says_what_is_wrong(tmp_path, cls, name, message):
    backend = cls(tmp_path / name, CPU)  # no file: the constructor only checks its options
    assert not backend.active
    with pytest.raises(DronsegError, match=message):
        backend.info


def test_info_is_read_once_on_first_use():
    backend = counting_backend()
    assert backend.reads == 0
    assert backend.info.input_size == (8, 6) and backend.info is backend.info
    backend.infer(torch.zeros(1, 3, 6, 8))
    assert backend.reads == 1 and backend.activations == 1


@pytest.mark.parametrize("shape, message", [
    ((3, 6, 8), r"takes \(N, 3, H, W\) batches, got \(3, 6, 8\)"),
    ((1, 1, 6, 8), r"takes \(N, 3, H, W\) batches"),
    ((2, 3, 6, 8), "exported for 1x3x6x8 inputs, got 2x3x6x8: re-export with --batch 2 to match, or with --dynamic"),
    ((1, 3, 8, 10), "exported for 1x3x6x8 inputs, got 1x3x8x10: re-export with --size 10x8 to match, or with --dynamic"),
])
def test_input_contract_is_checked_before_the_backend_sees_the_batch(shape, message):
    backend = counting_backend()
    with pytest.raises(DronsegError, match=message):
        backend.infer(torch.zeros(shape))
    assert backend.batches == [] and backend.activations == 0  # refused before any device work


def test_a_frames_graph_of_another_size_names_the_source_size_to_export_as_the_option_takes_it():
    """The shape is (N, H, W, 3) but --source-size takes WxH: '--source-size 96x160' copied from it is transposed."""
    backend = FakeBackend("frames.onnx", input_size=(8, 6), io="frames", source_size=(320, 192), batch=1, dynamic=False)
    with pytest.raises(DronsegError, match=r"exported for 1x192x320x3 frames, got 1x96x160x3: re-export with "
                                           r"--source-size 160x96 to match, or with --dynamic$"):
        backend.segment(np.zeros((1, 96, 160, 3), np.uint8))


def test_a_dynamic_artifact_takes_any_batch_and_size_but_not_other_channels():
    backend = counting_backend(dynamic=True)
    backend.infer(torch.zeros(3, 3, 16, 20))
    assert backend.batches == [(3, 3, 16, 20)]
    with pytest.raises(DronsegError, match="takes"):
        backend.infer(torch.zeros(1, 4, 6, 8))


def test_segment_takes_numpy_uint8_frames_only():
    backend = counting_backend()
    for frames in (np.zeros((6, 8, 3), np.uint8), np.zeros((1, 6, 8, 3), np.float32), [np.zeros((6, 8, 3), np.uint8)]):
        with pytest.raises(DronsegError, match=r"counting.onnx: segment\(\) takes \(N, H, W, 3\) uint8 BGR frames"):
            backend.segment(frames)
    assert backend.activations == 0


def test_a_graph_unlike_its_metadata_is_one_line_naming_the_file():
    x, four = TensorSpec("images", "float32", (None, 3, None, None)), TensorSpec("images", "float32", (1, 4, 6, 8))
    y = TensorSpec("logits", "float32", (None, 12, None, None))
    for inputs, outputs, says in (([x, x], [y], "one image input, but the model has inputs ['images', 'images']"),
                                  ([four], [y], "3 colour channels, but the model takes 4"),
                                  ([x], [], "outputs [], but the model has []")):
        with pytest.raises(DronsegError, match=re.escape(f"m.onnx: its metadata says {says}: the metadata was edited")):
            check_declared_io(Path("m.onnx"), FakeBackend().info, inputs, outputs)


def test_torch_backend_checks_the_contract_too(tiny_checkpoint):
    with load_backend(tiny_checkpoint, device="cpu") as backend:
        with pytest.raises(DronsegError, match=r"tiny.pt takes \(N, 3, H, W\) batches"):
            backend.infer(torch.zeros(1, 4, 64, 96))


def test_activate_then_infer_loads_the_model_once(tiny_checkpoint, monkeypatch):
    # the documented lifecycle (activate, then infer): the first infer activated it again, so the torch
    # backend read its checkpoint a second time (DronsegError once the file was gone) and ORT made a second session
    backend = load_backend(tiny_checkpoint, device="cpu")
    backend.activate()
    net = backend.net
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("checkpoint loaded again"))
    backend.infer(torch.zeros(1, 3, 64, 96))
    assert backend.active and backend.net is net


def test_from_checkpoint_runs_a_loaded_dict_without_reading_or_hashing_the_file(tiny_checkpoint, monkeypatch):
    state = load_checkpoint(tiny_checkpoint)
    x = torch.rand(1, 3, 64, 96)
    with load_backend(tiny_checkpoint, device="cpu") as from_file:
        expected = from_file.infer(x)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    monkeypatch.setattr(metadata_module, "sha256_file", lambda *a, **k: pytest.fail("checkpoint hashed"))
    backend = TorchBackend.from_checkpoint(state, CPU, head="argmax")
    assert backend.path == tiny_checkpoint and backend.info.head == "argmax" and backend.info.source_sha256 == ""
    with backend:
        classes = backend.infer(x)
    assert torch.equal(classes, expected.argmax(1).to(torch.uint8))


def test_each_thread_sees_the_outputs_of_its_own_last_call():
    import threading

    backend = counting_backend()
    backend.infer(torch.zeros(1, 3, 6, 8).numpy())
    backend.last_outputs = {"confidence": "main thread's"}
    seen = {}

    def other():
        seen["before"] = backend.last_outputs
        backend.infer(torch.zeros(1, 3, 6, 8).numpy())
        backend.last_outputs = {"confidence": "other thread's"}
        seen["after"] = backend.last_outputs

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen["before"] == {}  # no call in that thread yet
    assert seen["after"] == {"confidence": "other thread's"}
    assert backend.last_outputs == {"confidence": "main thread's"}


def test_short_batch_repeats_its_last_row():
    batch = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    padded, real = pad_batch(batch, 4)
    assert real == 2 and padded.shape == (4, 3, 2, 2)
    assert torch.equal(padded[:2], batch) and torch.equal(padded[2], batch[1]) and torch.equal(padded[3], batch[1])


def test_full_or_larger_batch_is_returned_as_is():
    batch = torch.zeros(3, 1)
    assert pad_batch(batch, 3)[0] is batch and pad_batch(batch, 3)[1] == 3
    assert pad_batch(batch, 2)[0] is batch and pad_batch(batch, 1)[1] == 3


def test_empty_batch_is_a_bug_not_a_padding():
    with pytest.raises(ValueError):
        pad_batch(torch.zeros(0, 3), 2)


@pytest.mark.parametrize("io, batch", [("tensors", torch.zeros(1, 3, 6, 8)), ("frames", torch.zeros(1, 6, 8, 3, dtype=torch.uint8))])
def test_a_class_map_past_the_class_names_is_one_line(io, batch):
    """3 class names on a 12-class argmax or frames graph (no channels to count at activation) ran with exit 0,
    masks of classes up to 11 and shares summing to a few percent."""
    three = dict(class_names=["a", "b", "c"], palette=[[1, 2, 3]] * 3, head="argmax", io=io, input_size=(8, 6),
                 source_size=(8, 6), batch=1, dynamic=False)
    fine = FakeBackend("m.onnx", respond=lambda x: torch.full((1, 6, 8), 2, dtype=torch.uint8), **three)
    assert int(fine.infer(batch).max()) == 2
    lying = FakeBackend("m.onnx", respond=lambda x: torch.full((1, 6, 8), 11, dtype=torch.uint8), **three)
    with pytest.raises(DronsegError, match=r"m.onnx: its metadata says 3 classes \(class_names\), but the model output class 11"):
        lying.infer(batch)


def test_a_frames_graph_whose_map_is_smaller_than_its_frames_is_brought_to_their_size():
    """A graph from elsewhere without the final upsampling: eval scores its map brought to the frame's size (nearest),
    and infer stopped at the first frame on an OpenCV assertion, called a bug in dronseg-edge."""
    def quarter(frames):
        out = torch.zeros(frames.shape[0], 3, 4, dtype=torch.uint8)
        out[:, 1:] = 10
        return out

    small = FakeBackend("m.onnx", respond=quarter, head="argmax", io="frames", input_size=(8, 6), dynamic=True)
    classes = small.segment(np.zeros((2, 6, 8, 3), np.uint8)).classes
    assert classes.shape == (2, 6, 8) and classes.dtype == np.uint8
    assert (classes[:, :2] == 0).all() and (classes[:, 2:] == 10).all()


def test_a_fixed_batch_artifact_runs_its_own_batch_whatever_pad_to_asks():
    # as segment() documents it; pad_to=4 on a batch-1 file was "exported for 1x3x6x8 inputs, got 4x3x6x8"
    backend = counting_backend()
    assert backend.segment(np.zeros((1, 6, 8, 3), np.uint8), pad_to=4).classes.shape == (1, 6, 8)
    assert backend.batches == [(1, 3, 6, 8)]
