"""runtime/staging.py: frames reach the device through reusable (pinned on CUDA) host buffers that
are never overwritten while a copy out of them may still be running."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_cuda import FakeCuda, FakeEvent

from dronseg_edge.runtime.base import preprocess
from dronseg_edge.runtime.staging import HostStaging
from testkit import TINY_SIZE, requires_cuda

CPU = torch.device("cpu")


def frame(seed: int, size=(96, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def test_buffers_are_reused_grown_and_results_stay_independent():
    staging = HostStaging(CPU, pin=False)
    small, big = frame(0, (32, 16)), frame(1, (64, 48))
    first = staging.upload(small)
    buffer = staging.buffers()[0]
    second = staging.upload(frame(2, (32, 16)))
    assert staging.buffers() == [buffer] and not buffer.is_pinned()  # one slot, reused (no copy in flight on the CPU)
    grown = staging.upload(big)
    assert len(staging.buffers()) == 1 and staging.buffers()[0].numel() == big.size  # grown to the larger frame
    assert np.array_equal(first.numpy(), small)  # later uploads did not overwrite earlier results
    assert np.array_equal(grown.numpy(), big) and second.shape == (16, 32, 3)
    floats = staging.upload(np.ones((2, 3), dtype=np.float32))
    assert floats.dtype == torch.float32 and len(staging.buffers(torch.float32)) == 1 and len(staging.buffers()) == 1


def test_strided_frames_and_device_tensors():
    staging = HostStaging(CPU, pin=False)
    image = frame(3)
    flipped = image[:, ::-1]  # negative strides: torch.from_numpy refuses these
    assert np.array_equal(staging.upload(flipped).numpy(), flipped)
    tensor = torch.arange(6, dtype=torch.uint8).view(2, 3)
    assert torch.equal(staging.upload(tensor.t()), tensor.t())


def test_buffers_made_under_inference_mode_are_refilled_outside_it():
    staging = HostStaging(CPU, pin=False)
    with torch.inference_mode():
        staging.upload(torch.zeros(2, 3, dtype=torch.uint8))  # as the Segmenter does
    again = staging.upload(torch.ones(2, 3, dtype=torch.uint8))  # as a preprocess caller may
    assert torch.equal(again, torch.ones(2, 3, dtype=torch.uint8)) and len(staging.buffers()) == 1


def test_busy_buffer_is_not_overwritten_until_its_copy_is_done(monkeypatch):
    FakeCuda().install(monkeypatch)
    events = []

    def pending_event(enable_timing=False):
        events.append(FakeEvent(done=False))
        return events[-1]

    monkeypatch.setattr(torch.cuda, "Event", pending_event)
    staging = HostStaging(CPU, slots=2, pin=False)
    staging.cuda = True  # the CUDA path (copy stream, events) with CPU tensors and fake streams
    a = staging.upload(frame(0))
    b = staging.upload(frame(1))
    first, second = staging.buffers()
    assert first.data_ptr() != second.data_ptr()  # the first copy is still in flight: a second buffer
    assert not any(e.synchronized for e in events)
    c = staging.upload(frame(2))  # both busy, no third allowed: wait for the oldest, then reuse it
    assert events[0].synchronized and not events[1].synchronized
    assert staging.buffers()[0].data_ptr() == first.data_ptr() and len(staging.buffers()) == 2
    events[1].done = True
    staging.upload(frame(3))  # the second buffer's copy is done: reused without waiting
    assert not events[1].synchronized and not events[2].synchronized
    for got, seed in ((a, 0), (b, 1), (c, 2)):
        assert np.array_equal(got.numpy(), frame(seed))
    assert all(e.recorded_on is staging._stream for e in events)  # copies on the copy stream, not the default
    assert torch.cuda.current_stream().waited_for == events  # the caller's stream waits for each copy


def test_preprocess_through_staging_matches_the_plain_path():
    from dronseg_edge.metadata import ModelInfo

    info = ModelInfo(arch="x", input_size=TINY_SIZE)
    frames = np.stack([frame(4), frame(5)])
    staging = HostStaging(CPU, pin=False)
    assert torch.equal(preprocess(frames, info, CPU, staging=staging), preprocess(frames, info, CPU))
    assert len(staging.buffers()) == 1


@requires_cuda
@pytest.mark.gpu
def test_gpu_uploads_are_pinned_reused_and_correct():
    device = torch.device("cuda")
    staging = HostStaging(device)
    images = [frame(i, (1280, 720)) for i in range(12)]
    got = [staging.upload(image) for image in images]  # no synchronisation in between
    torch.cuda.synchronize()
    assert 1 <= len(staging.buffers()) <= staging.max_slots
    assert all(buffer.is_pinned() for buffer in staging.buffers())
    for tensor, image in zip(got, images):
        assert tensor.is_cuda and np.array_equal(tensor.cpu().numpy(), image)
    pointers = {buffer.data_ptr() for buffer in staging.buffers()}
    staging.upload(images[0])
    assert {buffer.data_ptr() for buffer in staging.buffers()} == pointers  # reused, not reallocated
