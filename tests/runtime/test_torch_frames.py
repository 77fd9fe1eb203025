"""runtime/torch_frames.py, a checkpoint's pre/post on its GPU, run here on CPU tensors: the same
arithmetic as the host implementation (runtime/host.py) with the host's uint8 rounding."""

import numpy as np
import torch
import torch.nn.functional as F

from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime import torch_frames
from dronseg_edge.runtime.host import preprocess_host
from testkit import scene


def _info(size=(96, 64)) -> ModelInfo:
    return ModelInfo(arch="test", input_size=size)


def test_model_input_matches_the_host_preprocessing_to_its_rounding():
    info = _info()
    for size in ((288, 192), (200, 150), (192, 128), (96, 64), (64, 48)):  # shrink 3x, 2.1x, exactly 2x, as is, enlarge
        frames = np.stack([scene(i, size) for i in range(2)])
        got = torch_frames.to_model_input(torch.from_numpy(frames), info).numpy()
        want = preprocess_host(list(frames), info)
        # both round the resized frame as the host's uint8 one is (it was left unrounded: half a level off);
        # an enlargement's float ties may round apart, as in the frames graph: one level, on 1 % of values here
        assert got.shape == want.shape == (2, 3, 64, 96)
        off = np.abs(got - want) > 1e-5
        assert not off.any() if size[0] >= 96 else off.mean() < 0.02, size
        assert np.abs(got - want).max() <= 1.0 / 255 / min(info.std) + 1e-6, size


def test_model_input_swaps_bgr_to_rgb():
    frame = np.zeros((1, 64, 96, 3), np.uint8)
    frame[..., 0] = 255  # blue
    x = torch_frames.to_model_input(torch.from_numpy(frame), _info())
    assert x[0, 2].mean() > x[0, 0].mean()  # the blue channel is RGB's last


def test_class_maps_upsample_logits_before_the_argmax_and_give_confidence():
    logits = torch.zeros(1, 12, 4, 6)
    logits[:, 3, :, :3] = 2.0  # left half class 3, right half class 5
    logits[:, 5, :, 3:] = 1.0
    classes, conf = torch_frames.class_maps(logits, 8, 12, confidence=True)
    expected = F.interpolate(logits, size=(8, 12), mode="bilinear", align_corners=False).argmax(1).to(torch.uint8)
    assert classes.dtype == torch.uint8 and torch.equal(classes, expected)
    assert set(classes.unique().tolist()) == {3, 5}
    top = torch.softmax(F.interpolate(logits, size=(8, 12), mode="bilinear", align_corners=False), 1).amax(1)
    assert (conf.int() - (top * 255).round().int()).abs().max() <= 1


def test_class_maps_of_an_argmax_head_are_resized_nearest():
    classes = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.int64)
    got, conf = torch_frames.class_maps(classes, 4, 4, confidence=False)
    assert conf is None and got.tolist() == [[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]]
