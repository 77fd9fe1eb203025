import logging
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pipeline_media import scene

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline import Segmenter
from dronseg_edge.pipeline.source_base import FramesSource
from dronseg_edge.runtime.registry import load_backend
from testkit import (model_input, OTHER_FILTER_MARGIN, SAME_PREPOST_MARGIN, FakeBackend, assert_same_classes_where_decided,
                     requires_cuda)


def nearest(classes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel-centre nearest-neighbour resize (what PIL and torch's nearest-exact do), written out."""
    height, width = classes.shape
    ys = np.minimum(np.floor((np.arange(size[1]) + 0.5) * height / size[1]).astype(int), height - 1)
    xs = np.minimum(np.floor((np.arange(size[0]) + 0.5) * width / size[0]).astype(int), width - 1)
    return classes[ys][:, xs]


@pytest.fixture(scope="module")
def segmenter(trained_checkpoint):
    """Resizing every frame (tests/pipeline/test_tiling.py covers the windows). The trained model: its
    logits are decisive, so comparisons with other paths mean something (testkit.assert_same_classes_where_decided)."""
    with Segmenter(trained_checkpoint, device="cpu", tile="off") as seg:
        yield seg


@pytest.fixture(scope="module")
def reference(trained_checkpoint):
    """Logits of the checkpoint's own backend for a frame resized to the model's size (96x64) by the host
    pre-processing, which the Segmenter uses on the CPU."""
    backend = load_backend(trained_checkpoint, device="cpu")
    backend.activate()

    def logits(frame):
        return backend.infer(model_input(frame, backend.info, backend.device))

    return logits


def test_frame_at_model_size_gives_the_argmax_of_the_logits(segmenter, reference):
    frame = scene(3, (96, 64))
    result = segmenter.predict(frame)
    expected = reference(frame).argmax(1)[0].numpy()
    assert result.mask.dtype == np.uint8 and result.mask.shape == (64, 96)
    assert np.array_equal(result.mask, expected)
    assert len(np.unique(result.mask)) > 1  # a constant map would make this comparison weak
    assert result.frame is frame
    assert set(result.timings) == {"decode", "preprocess", "inference", "postprocess"}


def test_larger_frame_gets_the_class_map_resized_back(segmenter, reference):
    big = scene(3, (192, 128))
    result = segmenter.predict(big)
    logits = reference(big)[0]  # shrunk by the same host pre-processing (INTER_AREA)
    expected = nearest(logits.argmax(0).numpy().astype(np.uint8), (192, 128))
    assert result.mask.shape == (128, 192) and result.size == (192, 128)
    assert_same_classes_where_decided(result.mask, expected, logits, SAME_PREPOST_MARGIN)


def test_shares_are_pixel_fractions(segmenter):
    result = segmenter.predict(scene(1, (120, 90)))
    counts = np.bincount(result.mask.ravel(), minlength=12)
    assert np.allclose(result.shares, counts / counts.sum())
    assert result.shares.sum() == pytest.approx(1.0)
    by_name = result.shares_by_name()
    assert list(by_name)[:2] == ["background", "person"] and len(by_name) == 12


def test_mixed_sizes_in_one_batch_match_single_predictions(trained_checkpoint, segmenter, reference):
    frames = [scene(i, size) for i, size in enumerate([(96, 64), (130, 70), (40, 30), (96, 64)])]
    singles = [segmenter.predict(f).mask for f in frames]
    with Segmenter(trained_checkpoint, device="cpu", batch=3, tile="off") as batched:
        results = batched.predict_batch(frames)
    assert [r.mask.shape for r in results] == [f.shape[:2] for f in frames]
    for frame, single, result in zip(frames, singles, results):
        logits = reference(frame)[0]
        # batched convolutions may round differently: only near-ties may differ
        assert_same_classes_where_decided(result.mask, single, logits, SAME_PREPOST_MARGIN)


def test_stream_of_arrays_matches_predict_and_respects_max_frames(segmenter):
    frames = [scene(i, (96, 64)) for i in range(6)]
    streamed = list(segmenter.stream(iter(frames), max_frames=4))
    assert [r.index for r in streamed] == [0, 1, 2, 3]
    for frame, result in zip(frames, streamed):
        assert np.array_equal(segmenter.predict(frame).mask, result.mask)


def test_stream_of_a_generator_that_refills_one_buffer_keeps_each_frame():
    # a camera SDK's cap.read(buf): the reader thread read ahead, so frames and masks were of later frames
    # (every Result's frame was the last one)
    buffer = np.empty((12, 16, 3), np.uint8)

    def camera():
        for level in range(12):
            buffer[...] = level * 20  # blue level / 20: class `level` everywhere (blue_classes)
            yield buffer

    with Segmenter(FakeBackend(respond=blue_classes, input_size=(16, 12))) as seg:
        results = list(seg.stream(camera()))
    assert [int(r.frame[0, 0, 0]) for r in results] == [level * 20 for level in range(12)]
    assert [int(r.mask[0, 0]) for r in results] == list(range(12))


def test_a_stream_of_an_iterator_takes_no_frame_past_max_frames():
    # chunks of one iterator (stream(it, max_frames=10) again and again): the reader's read-ahead took
    # frames 10-19 from the iterator and dropped them, so 50 of 100 frames were segmented
    frames = iter([np.full((12, 16, 3), level * 20, np.uint8) for level in range(12)])
    seen = []
    with Segmenter(FakeBackend(respond=blue_classes, input_size=(16, 12))) as seg:
        while chunk := list(seg.stream(frames, max_frames=5)):
            seen += [int(r.mask[0, 0]) for r in chunk]
        rest = iter([np.zeros((12, 16, 3), np.uint8)] * 7)
        assert [r.index for r in seg.stream(rest, max_frames=2, stride=3)] == [0, 3] and len(list(rest)) == 3
    assert seen == list(range(12))


def test_stream_of_a_video_path(segmenter, video_path):
    results = list(segmenter.stream(str(video_path), stride=4))
    assert [r.index for r in results] == [0, 4, 8, 12, 16, 20]
    assert all(r.mask.shape == (80, 128) and r.timings["decode"] >= 0 for r in results)
    assert results[1].timestamp == pytest.approx(4 / 30)


def test_live_mode_refuses_batches_and_closes_the_source_it_opened(tiny_checkpoint, monkeypatch):
    closed = []
    monkeypatch.setattr(FramesSource, "close", lambda self: closed.append(self.name))
    with Segmenter(tiny_checkpoint, device="cpu", batch=2) as seg:
        with pytest.raises(DronsegError, match="--live"):
            next(seg.stream(iter([scene(0, (32, 32))]), live=True))
    assert closed == ["frames"]


def test_half_on_the_cpu_warns_and_runs_fp32(tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        with Segmenter(tiny_checkpoint, device="cpu", half=True) as seg:
            assert seg.backend.precision == "fp32"
    assert "--half is ignored on the CPU" in caplog.text
    with pytest.raises(DronsegError, match="needs a CUDA GPU"):
        Segmenter(tiny_checkpoint, device="cpu", precision="bf16")


def test_size_override_for_a_checkpoint(tiny_checkpoint):
    with Segmenter(tiny_checkpoint, device="cpu", size=(64, 32)) as seg:
        assert seg.info.input_size == (64, 32)
        assert seg.predict(scene(0, (128, 80))).mask.shape == (80, 128)
    with Segmenter(tiny_checkpoint, device="cpu", size="64x32") as seg:  # the command line's spelling
        assert seg.info.input_size == (64, 32)
    for size, says in (((0, 0), "size '0x0' is out of range"), ((-160, 96), "size '-160x96' is not a size"),
                       ("big", "size 'big' is not a size")):
        with pytest.raises(DronsegError, match=re.escape(says)):  # not an OpenCV assertion at the first frame
            Segmenter(tiny_checkpoint, device="cpu", size=size)



def test_a_size_is_refused_for_a_backend_passed_in_not_set_on_it(tiny_checkpoint):
    """Segmenter(backend, size=...) set the size on the backend itself: another Segmenter on it ran at that size."""
    backend, frame = load_backend(tiny_checkpoint, "cpu"), scene(0, (96, 64))
    own = Segmenter(load_backend(tiny_checkpoint, "cpu")).predict(frame).mask
    with pytest.raises(DronsegError, match=r"size=32x16: a Backend passed in runs at its own size \(96x64\); pass the model's path"):
        Segmenter(backend, size=(32, 16))
    with Segmenter(backend) as plain:
        assert plain.info.input_size == backend.info.input_size == (96, 64)
        assert np.array_equal(plain.predict(frame).mask, own)


def test_backend_options_meta_and_cuda_graph_are_refused_for_a_backend_passed_in(tiny_checkpoint):
    backend = load_backend(tiny_checkpoint, "cpu")
    for given in ({"cuda_graph": True}, {"backend_options": {"provider": "cuda"}}, {"meta": "m.json"}, {"device": "cpu"}):
        with pytest.raises(DronsegError, match=f"{next(iter(given))}=.*: a Backend passed in was made with its own"):
            Segmenter(backend, **given)  # silently ignored before (device was refused already)
    Segmenter(backend, backend_options={}).close()  # nothing given


def right_half_class_3(batch):
    """Like an exported ArgMax head: an int64 class map, its right half class 3."""
    classes = torch.zeros(batch.shape[0], 6, 8, dtype=torch.int64)
    classes[:, :, 4:] = 3
    return classes


def argmax_backend(**options) -> FakeBackend:
    """An exported-style artifact: fixed batch 2, 8x6 input, returning a class map."""
    return FakeBackend(respond=right_half_class_3, input_size=(8, 6), head="argmax", batch=2, dynamic=False,
                       provider="test", **options)


def test_class_map_backend_with_fixed_batch_is_padded_and_resized_nearest():
    backend = argmax_backend()
    seg = Segmenter(backend)
    result = seg.predict(scene(0, (80, 60)))
    assert backend.batches == [(2, 3, 6, 8)]  # one frame padded to the artifact's batch of 2
    assert result.mask.shape == (60, 80)
    assert (result.mask[:, :40] == 0).all() and (result.mask[:, 40:] == 3).all()
    assert result.shares[3] == pytest.approx(0.5)
    with pytest.raises(DronsegError, match="exported for batch 2"):
        Segmenter(argmax_backend(), batch=3)
    with pytest.raises(DronsegError, match="exported for 8x6"):
        Segmenter(argmax_backend(), size=(32, 24))



def test_a_batch_or_confidence_of_another_type_is_refused_not_taken_as_another_value():
    """batch="2" was a TypeError for a fixed-batch artifact and batch 2 for a dynamic one, 2.5 was 2, confidence="no" True."""
    for backend in (argmax_backend, FakeBackend):
        for batch in ("2", 2.5, True):
            with pytest.raises(DronsegError, match=re.escape(f"--batch {batch!r} must be a whole number, at least 1")):
                Segmenter(backend(), batch=batch)
        with pytest.raises(DronsegError, match="confidence='no': give True or False"):
            Segmenter(backend(), confidence="no")
    for tile_batch in (2.5, "2"):  # 2.5 was taken as 2
        with pytest.raises(DronsegError, match=re.escape(f"--tile-batch {tile_batch!r} must be a whole number")):
            Segmenter(FakeBackend(), tile_batch=tile_batch)
    for name in ("half", "streaming", "cuda_graph"):  # "no" was taken as true (half: fp16 on a GPU)
        with pytest.raises(DronsegError, match=f"{name} 'no' is not one of True, False"):
            Segmenter("model.onnx", **{name: "no"})
    with pytest.raises(DronsegError, match="--tile-overlap '0.5' must be a number"):  # was taken as 0.5
        Segmenter(FakeBackend(), tile_overlap="0.5")
    with Segmenter(FakeBackend()) as seg, pytest.raises(DronsegError, match="live 'no' is not one of None, True, False"):
        next(seg.stream([scene(0, (16, 12))], live="no"))  # was live: the newest frame only
    with Segmenter(FakeBackend(), batch=np.int64(2)) as seg, pytest.raises(DronsegError, match="confidence='no'"):
        assert seg.batch == 2
        next(seg.stream([scene(0, (16, 12))], confidence="no"))




def test_backend_called_outside_inference_mode_after_the_segmenter():
    backend = argmax_backend(static_buffer=True)
    seg = Segmenter(backend)
    seg.predict(scene(0, (8, 6)))  # the Segmenter works under inference mode: the buffer is made there
    backend.infer(torch.zeros(2, 3, 6, 8))  # as benchmarks/pipeline.py times segmenter.backend afterwards
    with torch.no_grad():
        backend.infer(torch.ones(2, 3, 6, 8))
    assert len(backend.batches) == 3


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("half", [False, True])
def test_gpu_pre_and_post_processing_gives_host_uint8_maps_and_shares(half, trained_checkpoint):
    frames = [scene(i, (128, 80)) for i in range(4)]
    with Segmenter(trained_checkpoint, device="cpu") as cpu_seg, \
            Segmenter(trained_checkpoint, device="cuda", half=half) as gpu_seg:
        assert gpu_seg.backend.provider.endswith("+ CUDA graph") and ("fp16" in gpu_seg.backend.provider) == half
        for frame in frames:
            expected, got = cpu_seg.predict(frame), gpu_seg.predict(frame)
            assert isinstance(got.mask, np.ndarray) and got.mask.dtype == np.uint8 and got.mask.shape == (80, 128)
            # bilinear logits on the GPU, a nearest class map on the CPU, fp16/TF32: only undecided pixels differ
            logits = cpu_seg.backend.segment(frame[None], logits=True).logits[0]
            assert_same_classes_where_decided(got.mask, expected.mask, logits, OTHER_FILTER_MARGIN)
            counts = np.bincount(got.mask.ravel(), minlength=12)
            assert np.allclose(got.shares, counts / counts.sum())
            assert got.timings["inference"] > 0
        streamed = list(gpu_seg.stream(iter(frames)))
        assert [r.index for r in streamed] == [0, 1, 2, 3]
        for result, frame in zip(streamed, frames):
            assert np.array_equal(result.mask, gpu_seg.predict(frame).mask)


@requires_cuda
@pytest.mark.gpu
def test_gpu_logits_are_upsampled_before_the_argmax(trained_checkpoint, reference):
    frame = scene(2, (192, 128))
    with Segmenter(trained_checkpoint, device="cuda", cuda_graph=False, tile="off") as seg:
        smooth = seg.predict(frame).mask
    logits = F.interpolate(reference(frame), size=(128, 192), mode="bilinear", align_corners=False)[0]
    assert_same_classes_where_decided(smooth, logits.argmax(0).numpy().astype(np.uint8), logits, OTHER_FILTER_MARGIN)


def blue_classes(batch):
    """A fake model's logits: each pixel's class is its blue level / 20 (so a frame can spell out its classes)."""
    from dronseg_edge.classes import IMAGENET_MEAN, IMAGENET_STD

    blue = (batch[:, 2] * IMAGENET_STD[2] + IMAGENET_MEAN[2]) * 255.0 / 20
    return -((blue[:, None] - torch.arange(12.0).view(1, 12, 1, 1)) ** 2)


def striped_frame(classes=(1, 3, 9, 10), size=(16, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A BGR frame of vertical stripes, one per class (blue = class x 20), and its class map."""
    width, height = size
    truth = np.repeat(np.array(classes, np.uint8), width // len(classes))[None].repeat(height, 0)
    frame = np.full((height, width, 3), 60, np.uint8)
    frame[..., 0] = truth * 20
    return frame, truth


def test_predict_takes_a_frame_or_a_list_and_batches_the_list():
    backend = FakeBackend(respond=blue_classes, input_size=(16, 12))
    frame, truth = striped_frame()
    with Segmenter(backend, batch=2) as seg:
        one = seg.predict(frame)
        several = seg.predict([frame, frame[:, ::-1].copy(), frame])
        stacked = seg.predict(np.stack([frame, frame]))
    assert np.array_equal(one.mask, truth)
    assert isinstance(several, list) and [r.index for r in several] == [0, 1, 2]
    assert np.array_equal(several[1].mask, truth[:, ::-1]) and len(stacked) == 2
    assert backend.batches == [(1, 3, 12, 16), (2, 3, 12, 16), (1, 3, 12, 16), (2, 3, 12, 16)]  # CPU: no padding


def test_result_plot_and_save_write_mask_colours_overlay_and_confidence(tmp_path):
    from dronseg_edge.classes import PALETTE
    from dronseg_edge.pictures import bgr_lut, colorize
    from dronseg_edge.pipeline.overlay import overlay

    frame, truth = striped_frame()
    with Segmenter(FakeBackend(respond=blue_classes, input_size=(16, 12)), confidence=True) as seg:
        result = seg.predict(frame)
    picture = result.plot(alpha=0.4)
    assert picture.dtype == np.uint8 and np.array_equal(picture, overlay(frame, truth, bgr_lut(PALETTE), 0.4))
    with pytest.raises(DronsegError, match="alpha 1.5"):
        result.plot(alpha=1.5)
    for alpha in ("0.5", True):  # a TypeError and an OpenCV error
        with pytest.raises(DronsegError, match=re.escape(f"alpha {alpha!r} must be a number")):
            result.plot(alpha=alpha)
    written = result.save(tmp_path / "out", name="shot")
    assert {kind: path.name for kind, path in written.items()} == {
        "mask": "shot_mask.png", "color": "shot_color.png", "overlay": "shot_overlay.jpg", "conf": "shot_conf.png"}
    read = lambda kind, flag=cv2.IMREAD_UNCHANGED: cv2.imread(str(written[kind]), flag)  # noqa: E731
    assert np.array_equal(read("mask"), truth) and np.array_equal(read("conf"), result.confidence)
    assert np.array_equal(read("color", cv2.IMREAD_COLOR), colorize(truth, bgr_lut(PALETTE)))
    assert np.abs(read("overlay", cv2.IMREAD_COLOR).astype(int) - result.plot(0.5)).mean() < 6  # JPEG
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written.values())


def test_a_class_filter_keeps_the_chosen_classes_in_masks_shares_and_pictures():
    from dronseg_edge.pipeline.request import FILTERED

    frame, truth = striped_frame()
    with Segmenter(FakeBackend(respond=blue_classes, input_size=(16, 12)), classes="Person, car") as seg:
        result = seg.predict(frame)
        everything = list(seg.stream(iter([frame]), classes=None))
        assert np.array_equal(everything[0].mask, truth)  # a stream may ask for all classes
    kept = np.isin(truth, [1, 3])
    assert np.array_equal(result.mask, np.where(kept, truth, FILTERED))
    assert result.classes == (1, 3) and result.shares[[1, 3]].tolist() == [0.25, 0.25] and result.shares.sum() == 0.5
    assert result.shares_by_name() == {"person": 0.25, "car": 0.25}
    picture = result.plot(alpha=1.0)
    assert np.array_equal(picture[~kept], frame[~kept]) and not np.array_equal(picture[kept], frame[kept])
    with pytest.raises(DronsegError, match="--classes ufo: fake.onnx has no such class; its classes are background, "
                                           "person, bike"):
        Segmenter(FakeBackend(respond=blue_classes), classes=["car", "ufo"])
    assert Segmenter(FakeBackend(), classes=1).classes == (1,)  # one id: was TypeError "'int' object is not iterable"
    with pytest.raises(DronsegError, match="--classes is empty: give one or more class names"):
        Segmenter(FakeBackend(), classes=" , ")  # not a filter that keeps no class
    # ids in a string, as --classes 1,3 and RunOptions' help give them: were "--classes 1,3: ... has no such class"
    assert Segmenter(FakeBackend(), classes="1, 3").classes == Segmenter(FakeBackend(), classes=("car", "1")).classes == (1, 3)


def test_confidence_needs_logits():
    with pytest.raises(DronsegError, match=r"class map \(--head argmax\), so it has no probabilities"):
        Segmenter(argmax_backend(), confidence=True)
    with pytest.raises(DronsegError, match="without a confidence output: re-export it with --confidence"):
        Segmenter(FakeBackend("frames.onnx", io="frames", head="argmax"), confidence=True)


def test_in_order_yields_in_order_with_groups_in_flight_and_stops_its_threads():
    import random
    import threading
    import time

    from dronseg_edge.pipeline.segmenter import _in_order

    running, most = [0], [0]
    lock = threading.Lock()

    def work(n):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(random.Random(n).uniform(0, 0.02))
        with lock:
            running[0] -= 1
        return n

    assert list(_in_order(range(20), work, 2)) == list(range(20)) and most[0] == 2
    assert list(_in_order(range(5), work, 1)) == list(range(5))
    early = _in_order(iter(range(100)), work, 2)
    assert next(early) == 0
    early.close()  # the consumer stops: the pool is shut down, nothing keeps running
    assert not [t for t in threading.enumerate() if t.name.startswith("dronseg-segment")]


def test_in_order_raises_a_groups_error_after_the_results_before_it():
    from dronseg_edge.pipeline.segmenter import _in_order

    def work(n):
        if n == 3:
            raise RuntimeError("group 3 failed")
        return n

    got = []
    with pytest.raises(RuntimeError, match="group 3"):
        for n in _in_order(range(10), work, 2):
            got.append(n)
    assert got == [0, 1, 2]


@pytest.mark.parametrize("in_flight, size", [(1, 4), (2, 1), (2, 3)])
def test_frames_read_before_the_source_fails_still_come_out_then_its_error(in_flight, size):
    # A stream lost beyond --reconnect-s mid-run: the frames already read are segmented and written
    # (docs/reliability.md: every output final up to the last frame) before the loss is raised.
    from dronseg_edge.pipeline.segmenter import _groups, _in_order

    def source():
        yield from range(6)
        raise RuntimeError("stream lost")

    got = []
    with pytest.raises(RuntimeError, match="stream lost"):
        for group in _in_order(_groups(source(), size, None), lambda group: group, in_flight):
            got += group
    assert got == list(range(6))


@pytest.mark.parametrize("frame, says", [(None, r"is None \(cv2.imread's answer for a file it cannot read\)"),
                                         (np.zeros((36, 64), np.uint8), r"is uint8 \(36, 64\).*COLOR_GRAY2BGR"),
                                         (np.zeros((36, 64, 3), np.uint8)[10:10], r"is uint8 \(0, 64, 3\)"),
                                         (np.zeros((36, 64, 3), np.float32), r"is float32 .*\(f \* 255\).round\(\)"),
                                         ("frame.jpg", r"not a file name \(frame.jpg\): read it with cv2.imread"),
                                         (pytest.importorskip("PIL.Image").new("RGB", (64, 36)), r"a PIL image is RGB")])
def test_a_frame_an_api_user_gets_wrong_is_one_line_naming_it(frame, says):
    # cv2.imread's None, a grey frame and an empty crop: each was a TypeError, a row-by-row shape or an
    # OpenCV assertion
    with Segmenter(argmax_backend()) as seg, pytest.raises(DronsegError, match=says):
        seg.predict(frame)


def test_pil_images_in_a_list_or_a_stream_are_refused_not_read_as_bgr():
    # a list of PIL images went through np.asarray: RGB segmented as BGR, without a word
    image = pytest.importorskip("PIL.Image").new("RGB", (64, 36))
    with Segmenter(argmax_backend()) as seg:
        for call in (lambda: seg.predict([image]), lambda: next(seg.stream([image]))):
            with pytest.raises(DronsegError, match=r"frame 0 of frames: a PIL image is RGB.*COLOR_RGB2BGR"):
                call()


def test_a_torch_tensor_is_one_frame_or_a_stack_as_a_numpy_array_is():
    frame = scene(0, (80, 60))
    with Segmenter(argmax_backend()) as seg:
        one, stacked = seg.predict(torch.from_numpy(frame)), seg.predict(torch.from_numpy(np.stack([frame, frame])))
        assert np.array_equal(one.mask, seg.predict(frame).mask) and len(stacked) == 2
        assert np.array_equal(stacked[1].mask, one.mask)  # (H, W, 3) was taken row by row: "frame 0 is (80, 3)"


@pytest.mark.parametrize("bad", [dict(stride=0), dict(stride=-2), dict(max_frames=0), dict(max_frames=-1),
                                 dict(max_frames=2.5), dict(stride=2.5), dict(stride=True), dict(max_frames="2")])
def test_stream_refuses_a_stride_or_frame_limit_below_one(bad):
    # stride 0 read every frame silently; max_frames=-1 and 2.5 were islice's ValueError; stride 2.5 read every 2nd;
    # stride=True was taken as 1, where whole() refuses it everywhere else
    (name, value), = bad.items()
    with Segmenter(argmax_backend()) as seg, pytest.raises(DronsegError, match=re.escape(f"{name} {value!r} must be a whole number")):
        next(seg.stream([scene(0, (80, 60))], **bad))


def test_an_api_argument_of_the_wrong_kind_is_one_error_naming_it(tiny_checkpoint):
    """Segmenter(None), predict(5), stream(None) and an unknown backend_options key were TypeErrors from deep inside
    (pathlib, list(), islice, the backend's constructor) that named neither the argument nor what it takes."""
    with pytest.raises(DronsegError, match="model: a NoneType is not a model: give the path of a .pt"):
        Segmenter(None)
    with pytest.raises(DronsegError, match="backend_options provider: torch .* takes channels_last, compile_mode"):
        Segmenter(tiny_checkpoint, device="cpu", backend_options={"provider": "cuda"})
    with Segmenter(FakeBackend()) as seg:
        with pytest.raises(DronsegError, match=re.escape("predict() takes an (H, W, 3) uint8 BGR frame or a list")):
            seg.predict(5)
        with pytest.raises(DronsegError, match="source: a NoneType is not a source"):
            next(seg.stream(None))


def test_settings_a_backend_passed_in_cannot_take_are_refused_not_ignored():
    for changes in ({"device": "cpu"}, {"half": True}, {"precision": "fp16"}, {"streaming": True}):
        with pytest.raises(DronsegError, match=re.escape(f"{', '.join(f'{k}={v!r}' for k, v in changes.items())}: a Backend")):
            Segmenter(FakeBackend(), **changes)
