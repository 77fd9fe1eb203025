"""The Segmenter on ONNX files: plain tensor artifacts through the one host pre/post-processing
(runtime/host.py), frames artifacts fed uint8 frames as they are."""

import numpy as np
import pytest
from pipeline_media import scene

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline import Segmenter
from testkit import SAME_PREPOST_MARGIN, assert_same_classes_where_decided

pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend needs onnxruntime (extra: ort)")


@pytest.fixture(scope="module")
def models(trained_checkpoint, onnx_export):
    return {
        "tensors": onnx_export(trained_checkpoint),
        "frames": onnx_export(trained_checkpoint, io="frames", dynamic=True, confidence=True),
        "frames_static": onnx_export(trained_checkpoint, io="frames", source_size=(128, 80)),
    }


def test_onnx_on_the_cpu_gives_uint8_maps_at_the_frame_size(models):
    with Segmenter(models["tensors"], device="cpu") as seg:
        result = seg.predict(scene(3, (128, 80)))
    assert result.mask.shape == (80, 128) and result.mask.dtype == np.uint8
    assert result.shares.sum() == pytest.approx(1.0) and result.confidence is None
    assert set(result.timings) >= {"decode", "preprocess", "inference", "postprocess"}


def test_frames_artifact_class_map_is_used_as_it_comes_out(models):
    import onnxruntime as ort

    frames = [scene(i, (128, 80)) for i in range(3)]
    session = ort.InferenceSession(str(models["frames"]), providers=["CPUExecutionProvider"])
    direct_mask, direct_conf = session.run(None, {session.get_inputs()[0].name: np.stack(frames)})
    with Segmenter(models["frames"], device="cpu", batch=3) as seg:
        calls = []
        infer = seg.backend.infer
        seg.backend.infer = lambda batch: calls.append(batch.shape) or infer(batch)
        results = seg.predict_batch(frames)
    assert calls == [(3, 80, 128, 3)]  # one stacked uint8 batch, no preprocessing
    for i, result in enumerate(results):
        assert (result.mask == direct_mask[i]).all()
        assert result.confidence is not None and (result.confidence == direct_conf[i]).all()
        counts = np.bincount(direct_mask[i].ravel(), minlength=12)[:12]
        np.testing.assert_allclose(result.shares, counts / counts.sum())


def test_frames_of_several_sizes_go_in_one_call_per_size(models):
    frames = [scene(0, (128, 80)), scene(1, (128, 80)), scene(2, (96, 64)), scene(3, (128, 80))]
    with Segmenter(models["frames"], device="cpu", batch=4) as seg:
        calls = []
        infer = seg.backend.infer
        seg.backend.infer = lambda batch: calls.append(batch.shape[:3]) or infer(batch)
        results = seg.predict_batch(frames)
    assert calls == [(2, 80, 128), (1, 64, 96), (1, 80, 128)]
    assert [r.mask.shape for r in results] == [(80, 128), (80, 128), (64, 96), (80, 128)]


def test_static_frames_artifact_refuses_another_frame_size_with_the_fix(models):
    with Segmenter(models["frames_static"], device="cpu") as seg:
        assert seg.predict(scene(0, (128, 80))).mask.shape == (80, 128)
        with pytest.raises(DronsegError, match="--source-size"):
            seg.predict(scene(0, (96, 64)))


def test_a_dynamic_frames_artifact_refuses_another_model_size(models):
    # Its graph shrinks every frame to its own model size: size= cannot change that (it was ignored).
    with pytest.raises(DronsegError, match=r"was exported for 96x64; re-export it with --size 160x96$"):
        Segmenter(models["frames"], device="cpu", size=(160, 96))


def test_checkpoint_and_onnx_share_the_host_pre_and_post_processing(models, trained_checkpoint):
    frames = [scene(i, (128, 80)) for i in range(4)]
    with Segmenter(models["tensors"], device="cpu") as onnx, Segmenter(trained_checkpoint, device="cpu") as torch_seg:
        for frame in frames:
            a, b = onnx.predict(frame), torch_seg.predict(frame)
            logits = torch_seg.backend.segment(frame[None], logits=True).logits[0]
            assert_same_classes_where_decided(a.mask, b.mask, logits, SAME_PREPOST_MARGIN)


def test_tiled_onnx_on_the_host_matches_the_tiled_checkpoint(models, trained_checkpoint):
    rows = [np.concatenate([scene(i + 3 * j, (96, 64)) for i in range(3)], axis=1) for j in range(2)]
    frame = np.concatenate(rows, axis=0)  # 288x128: three model inputs wide
    with Segmenter(models["tensors"], device="cpu", tile="on", confidence=True) as host, \
            Segmenter(trained_checkpoint, device="cpu", tile="on", confidence=True) as checkpoint:
        a, b = host.predict(frame), checkpoint.predict(frame)
    assert a.tiles == b.tiles > 3 and a.mask.shape == (128, 288)
    # The same windows and blending; the logits of fp32 torch and ONNX Runtime are ~1e-5 apart, so only
    # an exact near-tie could flip (none seen): a bound of 0.1 % of the pixels, whatever the processor.
    assert (a.mask == b.mask).mean() >= 0.999
    assert np.abs(a.confidence.astype(int) - b.confidence).max() <= 1


def test_host_confidence_matches_a_frames_artifacts_own(models):
    frame = scene(5, (96, 64))  # the model's input size: neither resizes
    with Segmenter(models["tensors"], device="cpu", confidence=True) as host, \
            Segmenter(models["frames"], device="cpu") as graph:
        a, b = host.predict(frame), graph.predict(frame)
    assert np.array_equal(a.mask, b.mask) and np.abs(a.confidence.astype(int) - b.confidence).max() <= 1


def test_a_cpu_onnx_stream_keeps_two_frames_in_flight_each_with_its_own_outputs(models):
    import threading

    import onnxruntime as ort

    frames = [scene(i, (128, 80)) for i in range(6)]
    session = ort.InferenceSession(str(models["frames"]), providers=["CPUExecutionProvider"])
    direct = [session.run(None, {session.get_inputs()[0].name: f[None]}) for f in frames]
    with Segmenter(models["frames"], device="cpu", confidence=True) as seg:
        assert seg.backend.concurrent_calls == 2
        together, threads = threading.Barrier(2, timeout=10), set()
        infer = seg.backend.infer

        def overlapping(batch):  # the first two calls wait for each other: they must run at once
            threads.add(threading.current_thread().name)
            if len(threads) <= 2 and not together.broken:
                together.wait()
            return infer(batch)

        seg.backend.infer = overlapping
        results = list(seg.stream(frames))
    assert len(threads) == 2 and all(name.startswith("dronseg-segment") for name in threads)
    assert [r.index for r in results] == list(range(6))  # in order, each with its own frame's outputs
    for result, (mask, conf) in zip(results, direct):
        assert np.array_equal(result.mask, mask[0]) and np.array_equal(result.confidence, conf[0])


def test_a_streaming_cpu_onnx_segmenter_splits_the_cores_between_its_calls_in_flight(models, monkeypatch):
    """Two calls in flight, each on a pool of every core, would oversubscribe them: each gets its share.
    A Segmenter that predicts one frame at a time keeps ONNX Runtime's own pool (0: its default)."""
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    with Segmenter(models["tensors"], device="cpu", streaming=True) as seg, \
            Segmenter(models["tensors"], device="cpu") as single:
        seg.predict(scene(1, (96, 64)))
        assert (seg.backend.concurrent_calls, seg.backend.threads, single.backend.threads) == (2, 4, 0)
        assert seg.backend.provider == "CPUExecutionProvider, 4 threads a call"
        assert single.backend.provider == "CPUExecutionProvider"
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    with Segmenter(models["tensors"], device="cpu", streaming=True) as one_core, \
            Segmenter(models["tensors"], device="cpu", streaming=True, backend_options={"threads": 3}) as given:
        assert (one_core.backend.threads, given.backend.threads) == (1, 3)  # at least one; the caller's own wins


def test_an_onnx_segmenter_on_the_cpu_names_the_cores_not_torchs_threads(models, monkeypatch):
    """"cpu (1 threads)" was torch's count whenever torch was loaded, for a model ONNX Runtime runs on its own pool."""
    import torch

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    with Segmenter(models["tensors"], device="cpu") as seg:
        assert "on cpu (8 cores)," in seg.describe()


def test_checkpoint_options_on_an_onnx_model_warn_that_it_runs_as_exported(models, caplog):
    with caplog.at_level("WARNING", logger="dronseg_edge"):
        Segmenter(models["tensors"], device="cpu", half=True).close()
        Segmenter(models["tensors"], device="cpu", precision="fp16").close()
    name = models["tensors"].name
    assert f"--half does not change {name}: its precision (fp32) was fixed at export" in caplog.text
    assert f"precision/cuda_graph apply to checkpoints; {name} runs as exported" in caplog.text
