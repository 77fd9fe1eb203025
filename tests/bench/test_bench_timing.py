from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench_fakes import FakeBackend, requires_cuda, sleep_backend
from dronseg_edge.bench import run, timing
from dronseg_edge.bench.run import (HOST_TIMED_GPU_NOTE, PreparedBench, bench_model, make_input, open_backend,
                                    resolve_bench_device, resolve_shape, run_prepared)
from dronseg_edge.bench.options import DEFAULT_MIN_ITERS, BenchOptions
from dronseg_edge.bench.timing import TimingSettings, measure, timer_name
from dronseg_edge.devices import Device
from dronseg_edge.errors import DronsegError

BATCH = torch.zeros(1, 3, 16, 32)


def test_counts_warmup_and_measured_iterations():
    backend = sleep_backend()
    m = measure(backend, BATCH, TimingSettings(warmup_iters=3, iters=7))
    assert backend.calls == 3 + 7
    assert (m.warmup_iters, m.compute.count, m.latency.count) == (3, 7, 7)
    assert m.timer == "perf_counter" and m.h2d is None and m.d2h is None
    assert m.output_shape == [1, 12, 16, 32] and m.output_dtype == "float32"


def test_zero_warmup_still_makes_one_untimed_call():
    backend = sleep_backend()
    m = measure(backend, BATCH, TimingSettings(warmup_s=0, iters=2))
    assert m.warmup_iters == 1 and backend.calls == 3


def test_latency_reflects_the_backend_time():
    m = measure(sleep_backend(delay_s=0.004), BATCH, TimingSettings(warmup_iters=1, iters=5))
    assert m.latency.min_ms >= 4.0  # sleep never returns early
    assert m.latency.median_ms < 200  # and the harness adds no gross overhead
    assert m.latency.throughput_fps == pytest.approx(1000 / m.latency.mean_ms)


def ticking_backend(monkeypatch, call_s: float):
    """A sleep_backend whose every call takes ``call_s`` on the harness's clock, which only its calls move: a
    pause of the machine (a garbage collection of 0.2 s in the suite's process) in the first call made it
    the only warm-up or measured one, where these windows are 30 to 50 ms."""
    clock, backend = [0.0], sleep_backend()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    infer = backend._infer
    backend._infer = lambda batch: clock.__setitem__(0, clock[0] + call_s) or infer(batch)
    return backend


def test_warmup_by_time_and_measure_by_duration(monkeypatch):
    backend = ticking_backend(monkeypatch, 0.002)
    m = measure(backend, BATCH, TimingSettings(warmup_s=0.03, duration_s=0.05))
    assert m.warmup_s >= 0.03 and m.warmup_iters >= 2
    assert m.measure_s >= 0.05 and m.compute.count >= 2


def test_iters_and_duration_together_need_both(monkeypatch):
    m = measure(ticking_backend(monkeypatch, 0.001), BATCH, TimingSettings(warmup_iters=1, iters=3, duration_s=0.04))
    assert m.measure_s >= 0.04 and m.compute.count > 3


def test_default_bounds_follow_trtexec():
    assert TimingSettings().bounds() == (DEFAULT_MIN_ITERS, 3.0)
    assert TimingSettings(iters=5).bounds() == (5, 0.0)
    assert TimingSettings(duration_s=2).bounds() == (1, 2.0)


def test_transfers_do_not_exist_on_cpu():
    m = measure(sleep_backend(), BATCH, TimingSettings(warmup_iters=1, iters=3, include_transfers=True))
    assert m.h2d is None and not m.include_transfers
    assert m.latency.to_dict() == m.compute.to_dict()


@pytest.mark.parametrize("kwargs, word", [
    ({"iters": 0}, "--iters"), ({"warmup_s": -1}, "--warmup-s"), ({"warmup_iters": -2}, "--warmup-iters"),
    ({"duration_s": 0}, "--duration-s"), ({"warmup_s": float("nan")}, "--warmup-s"),
    ({"warmup_s": "2"}, "--warmup-s '2' must be a number"),  # a TypeError traceback
    ({"duration_s": True}, "--duration-s True must be a number"), ({"warmup_s": True}, "--warmup-s"),  # taken as 1 s
])
def test_invalid_settings_are_user_errors(kwargs, word):
    with pytest.raises(DronsegError, match=word):
        TimingSettings(**kwargs)


def test_static_artifact_refuses_other_size_and_batch():
    static = sleep_backend(dynamic=False, batch=1, input_size=(32, 16))
    assert resolve_shape(static, None, 1) == (32, 16)
    assert resolve_shape(static, (32, 16), 1) == (32, 16)
    with pytest.raises(DronsegError, match=r"built for 32x16 .*--size 64x32"):
        resolve_shape(static, (64, 32), 1)
    with pytest.raises(DronsegError, match=r"batch 1 .*--batch 4"):
        resolve_shape(static, None, 4)
    half = FakeBackend(input_size=(32, 16), precision="fp16", dynamic=False, batch=1)
    with pytest.raises(DronsegError, match=r"`dronseg-edge export CHECKPOINT --precision fp16 --size 32x16 --batch 4`"):
        resolve_shape(half, None, 4)  # re-exported at its own precision, not fp32
    engine = FakeBackend("m.engine", input_size=(32, 16), precision="fp16", head="argmax", dynamic=False, batch=1)
    with pytest.raises(DronsegError, match=r"`dronseg-edge export CHECKPOINT --format engine --head argmax --precision fp16 "
                                           r"--size 64x32`"):
        resolve_shape(engine, (64, 32), 1)  # an engine with a class-map head again, not a logits ONNX file
    dynamic = sleep_backend(dynamic=True, batch=None)
    assert resolve_shape(dynamic, (64, 32), 4) == (64, 32)
    with pytest.raises(DronsegError, match="--size '0x32' is out of range"):  # bench_model ran it: "the torch backend failed"
        resolve_shape(dynamic, (0, 32), 1)
    for batch in (2.5, True):  # 2.5: numpy's TypeError making the input; True was taken as 1
        with pytest.raises(DronsegError, match=f"--batch {batch} must be a whole number"):
            resolve_shape(dynamic, None, batch)


@pytest.mark.parametrize("meta, args, hint", [
    ({"input_size": (64, 48), "batch": 2}, (None, 1), "--size 64x48`"),  # was `export CKPT --batch 1`: at 96x64
    ({"input_size": (64, 48), "batch": 1}, ((32, 32), 2), "--size 32x32 --batch 2`"),  # would fail again at batch 2
    ({"io": "frames", "source_size": (192, 128), "head": "argmax", "batch": 1, "input_size": (64, 48),
      "outputs": ["classes", "confidence"]}, (None, 2),  # was frames of the model's size, at the training size
     "--io frames --size 64x48 --confidence --source-size 192x128 --batch 2`"),
])
def test_the_re_export_hint_keeps_the_files_size_and_the_batch_asked_for(meta, args, hint):
    """A static file's re-export hint gave only the one option that differed, so the export it named made
    another shape: the training size for a file exported at --size/--source-size, batch 1 for --batch 2."""
    backend = FakeBackend(**{"input_size": (96, 64), "dynamic": False, **meta})
    with pytest.raises(DronsegError, match="re-export") as info:
        resolve_shape(backend, *args)
    assert hint in str(info.value), str(info.value)


def test_an_input_too_large_for_the_memory_is_one_line(monkeypatch):
    """--size 8192x8192 --batch 1024 of a dynamic model was numpy's MemoryError traceback (192 GiB)."""
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 192. GiB")

    monkeypatch.setattr(run, "preprocess_host", no_memory)
    with pytest.raises(DronsegError, match="memory for an input of batch 1024 at 40x24: lower --batch or --size"):
        make_input(sleep_backend().info, (40, 24), 1024)


def test_make_input_is_normalised_and_reproducible():
    info = sleep_backend().info
    a, b = make_input(info, (40, 24), 2), make_input(info, (40, 24), 2)
    assert isinstance(a, np.ndarray) and a.shape == (2, 3, 24, 40) and a.dtype == np.float32  # host memory, no torch
    assert np.array_equal(a, b)
    assert -3 < float(a.min()) < -1 and 1 < float(a.max()) < 3  # ImageNet-normalised uint8 noise


def test_a_frames_artifact_gets_uint8_frames_at_its_source_size():
    backend = FakeBackend(input_size=(32, 16), io="frames", source_size=(64, 48), head="argmax", dynamic=False, batch=1)
    size = resolve_shape(backend, None, 1)
    assert size == (64, 48)  # the frames it takes, not the model's input inside the graph
    with pytest.raises(DronsegError, match="built for 64x48.*export CHECKPOINT --io frames --size 32x16 "
                                           "--source-size 32x16`"):
        resolve_shape(backend, (32, 16), 1)  # the fix makes a frames graph again, at that frame size
    batch = make_input(backend.info, size, 1)
    assert batch.shape == (1, 48, 64, 3) and batch.dtype == np.uint8
    backend.check_input(batch)  # what the backend takes: no DronsegError


def lean(backend, device_type="cpu"):
    """The backend as the torch-free path opens it: on a devices.Device rather than a torch.device."""
    backend.device = Device(device_type)
    return backend


def test_host_path_times_numpy_in_numpy_out():
    backend = lean(sleep_backend(delay_s=0.002))
    m = measure(backend, np.zeros((1, 3, 16, 32), np.float32), TimingSettings(warmup_iters=1, iters=4))
    assert m.timer == "perf_counter" == timer_name(backend.device) and m.h2d is None and not m.include_transfers
    assert m.latency.count == 4 and m.latency.min_ms >= 2.0
    assert m.output_shape == [1, 12, 16, 32] and m.output_dtype == "float32"


def test_gpu_without_cuda_torch_is_host_timed_with_the_copies_counted(tmp_path):
    """A lean CUDA device: no CUDA events (they need torch), so the latency includes the copies, and a note says so."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"0" * 1000)
    backend = lean(sleep_backend(), "cuda")  # the fake runs numpy on the CPU whatever its device says
    prepared = PreparedBench(path, backend, (32, 16), 1, None, [])
    result = run_prepared(prepared, TimingSettings(warmup_iters=1, iters=3))
    m = result.measurement
    assert m.timer == "perf_counter" and m.h2d is None and m.include_transfers
    assert result.notes == [HOST_TIMED_GPU_NOTE] and "includes the host<->device copies" in HOST_TIMED_GPU_NOTE
    assert timer_name(torch.device("cuda")) == "cuda-events"


class HostArrayBackend(FakeBackend):
    """Takes and returns numpy, as the ONNX Runtime and TensorRT backends do (issue 20's one contract)."""

    native = "numpy"

    def _infer(self, batch):
        return super()._infer(torch.from_numpy(batch)).numpy()


def test_a_backend_of_host_arrays_on_a_cuda_torch_device_is_host_timed_with_the_copies_counted(tmp_path):
    """CUDA events around an .onnx/.engine on a CUDA torch device timed its copies as 'compute': infer moved the
    device input to the host and the output back, inside the events, and the latency said transfers excluded."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"0" * 1000)
    backend = HostArrayBackend("fake.onnx", input_size=(32, 16))
    backend.device = torch.device("cuda")  # as resolve_bench_device gives with a CUDA torch; no CUDA call follows
    result = run_prepared(PreparedBench(path, backend, (32, 16), 1, None, []), TimingSettings(warmup_iters=1, iters=3))
    m = result.measurement
    assert m.timer == "perf_counter" == timer_name(backend.device, "numpy") and m.h2d is None and m.include_transfers
    assert result.notes == [HOST_TIMED_GPU_NOTE] and backend.calls == 4


def test_bench_device_keeps_torch_for_checkpoints_and_cuda_torch(tiny_checkpoint, monkeypatch):
    assert resolve_bench_device("cpu", [tiny_checkpoint]) == torch.device("cpu")
    assert resolve_bench_device("cpu", ["m.onnx"], matrix=True) == torch.device("cpu")
    assert resolve_bench_device("cpu", ["m.onnx", "m.engine"]) == Device("cpu")
    monkeypatch.setattr(run, "resolve_lean_device", lambda name: Device("cuda", 1))  # a GPU the driver sees
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only torch
    assert resolve_bench_device("cuda:1", ["m.onnx"]) == Device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run, "resolve_device", lambda name: torch.device(name))
    assert resolve_bench_device("cuda:1", ["m.onnx"]) == torch.device("cuda:1")


def test_bench_checkpoint_at_own_and_overridden_size(tiny_checkpoint):
    settings = TimingSettings(warmup_iters=1, iters=3)
    own = bench_model(tiny_checkpoint, "cpu", settings)  # a string: resolved to a torch device for a checkpoint
    assert own.input_size == (96, 64) and own.backend == "torch" and own.precision == "fp32"
    assert own.measurement.output_shape == [1, 12, 64, 96]
    assert own.cuda_graph is None or own.cuda_graph is False
    assert own.file_mb == pytest.approx(tiny_checkpoint.stat().st_size / 1e6)
    other = bench_model(tiny_checkpoint, torch.device("cpu"), settings, size=(64, 32), batch=2)
    assert other.measurement.output_shape == [2, 12, 32, 64] and other.measurement.latency.batch == 2


def test_file_size_counts_the_external_data_the_onnx_file_reads(tmp_path):
    """A foreign ONNX's weights in weights.bin were left out of file_mb (a 12.9 MB model recorded as 0.1 MB),
    and a NAME.onnx.data beside it that it does not read was counted."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from testkit import onnx_model

    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000])],
                              [numpy_helper.from_array(np.ones(1000, np.float32), "w")])
    path = tmp_path / "m.onnx"
    onnx.save_model(onnx_model(graph), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "m.onnx.data").write_bytes(bytes(10**6))  # not this model's
    assert run.artifact_size_mb(path) == pytest.approx((path.stat().st_size + 4000) / 1e6)


def test_cuda_graph_on_cpu_is_a_user_error(tiny_checkpoint):
    with pytest.raises(DronsegError, match="--cuda-graph needs a CUDA device"):
        open_backend(tiny_checkpoint, torch.device("cpu"), cuda_graph=True)


def test_checkpoint_precision_needs_gpu_for_fp16(tiny_checkpoint):
    with pytest.raises(DronsegError, match="fp16"):
        open_backend(tiny_checkpoint, torch.device("cpu"), precision="fp16")


@pytest.mark.gpu
@requires_cuda
def test_cuda_events_time_each_stage(tiny_checkpoint):
    device = torch.device("cuda")
    settings = TimingSettings(warmup_iters=3, iters=10, include_transfers=True)
    result = bench_model(tiny_checkpoint, device, settings)
    m = result.measurement
    assert m.timer == "cuda-events" and m.include_transfers
    assert m.h2d is not None and m.d2h is not None and m.h2d.min_ms > 0 and m.d2h.min_ms > 0
    assert m.latency.median_ms >= m.compute.median_ms
    excluded = bench_model(tiny_checkpoint, device, TimingSettings(warmup_iters=3, iters=10)).measurement
    assert excluded.latency.to_dict() == excluded.compute.to_dict() and excluded.h2d is not None


def test_bench_batch_must_be_a_whole_number():
    for batch in ("2", 2.5, 0):  # "2" was a TypeError; 2.5 was refused only once the model was loaded
        with pytest.raises(DronsegError, match=f"--batch {batch!r} must be a whole number, at least 1"):
            BenchOptions(batch=batch)


def test_iteration_counts_must_be_whole_numbers():
    for changes, message in (({"iters": 2.5}, "--iters 2.5 must be a whole number"),
                             ({"warmup_iters": 1.5}, "--warmup-iters 1.5 must be a whole number")):
        with pytest.raises(DronsegError, match=message):  # "runs exactly iters": 2.5 was 2
            TimingSettings(**changes)


def test_a_long_measurement_keeps_its_samples_compactly(monkeypatch):
    """bench --duration-s kept each iteration's times as Python lists, ~340 bytes an iteration (an hour at 1 ms:
    1.2 GB on a Jetson); four float64 columns take 32."""
    import tracemalloc

    backend, iters = ticking_backend(monkeypatch, 0.0), 20_000
    backend._infer = lambda batch: None
    tracemalloc.start()
    try:
        m = measure(backend, BATCH, TimingSettings(warmup_iters=1, iters=iters))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m.compute.count == iters
    assert peak / iters < 80, f"{peak / iters:.0f} bytes an iteration"
