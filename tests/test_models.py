"""Model construction: 12-class heads, local weights, stage freezing, output stride, the inference wrapper."""

import warnings

import pytest
import torch

from dronseg_edge.errors import DronsegError
from dronseg_edge.models import (ARCHS, SegmentationNet, backbone_stages, build_model, check_output_stride,
                                 freeze_backbone_stages, keep_frozen_norms_in_eval, load_matching_weights,
                                 output_stride_of, read_weights_file, set_bn_momentum)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_builds_with_12_classes_on_meta(arch):
    with torch.device("meta"):
        model = build_model(arch, weights="none", aux_loss=True)
    out = model(torch.empty(2, 3, 64, 96, device="meta"))
    assert out["out"].shape == (2, 12, 64, 96)
    assert ("aux" in out) == arch.startswith("deeplabv3")  # LR-ASPP has no aux head


def test_aux_head_is_dropped_unless_asked():
    assert build_model("deeplabv3_mobilenet_v3_large", weights="none").aux_classifier is None


def test_unknown_arch_and_weights_path():
    with pytest.raises(DronsegError, match="--model"):
        build_model("unet")
    with pytest.raises(DronsegError, match="no such file"):
        build_model("lraspp_mobilenet_v3_large", weights="/nonexistent/w.pth")


def test_local_weights_copy_matching_tensors_and_skip_the_head(tmp_path):
    torch.manual_seed(1)
    donor = build_model("lraspp_mobilenet_v3_large", weights="none", num_classes=21)  # e.g. a VOC-style head
    torch.save(donor.state_dict(), tmp_path / "donor.pth")
    torch.manual_seed(2)
    model = build_model("lraspp_mobilenet_v3_large", weights=str(tmp_path / "donor.pth"))
    assert torch.equal(model.backbone["0"][0].weight, donor.backbone["0"][0].weight)
    assert model.classifier.high_classifier.out_channels == 12
    # A backbone-only state dict (keys without the "backbone." prefix) is recognised as well.
    torch.save({k[len("backbone."):]: v for k, v in donor.state_dict().items() if k.startswith("backbone.")}, tmp_path / "bb.pth")
    assert load_matching_weights(build_model("lraspp_mobilenet_v3_large"), tmp_path / "bb.pth") > 50
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(DronsegError, match="no tensor matches"):
        load_matching_weights(model, tmp_path / "other.pth")
    (tmp_path / "bad.pth").write_bytes(b"not torch")
    with pytest.raises(DronsegError, match="bad.pth"):
        load_matching_weights(model, tmp_path / "bad.pth")


def test_local_weights_of_torchvisions_mobilenet_v3_imagenet_file_fill_the_backbone(tmp_path):
    """The file --weights imagenet loads, given as a path (keys features.N.*), was refused: "no tensor matches"."""
    from torchvision.models import mobilenet_v3_large

    donor = mobilenet_v3_large()
    torch.save(donor.state_dict(), tmp_path / "mobilenet_v3_large-8738ca79.pth")
    model = build_model("lraspp_mobilenet_v3_large", weights=str(tmp_path / "mobilenet_v3_large-8738ca79.pth"))
    assert torch.equal(model.backbone["16"][0].weight, donor.features[16][0].weight)


@pytest.mark.parametrize("wrap", [lambda s: {"state_dict": s, "epoch": 3},  # a plain training script's checkpoint
                                  lambda s: {"module." + k: v for k, v in s.items()},  # saved from DataParallel
                                  # a LightningModule whose self.model is the torchvision model; a torch.compile'd model
                                  lambda s: {"state_dict": {"model." + k: v for k, v in s.items()}, "global_step": 9},
                                  lambda s: {"_orig_mod." + k: v for k, v in s.items()}])
def test_local_weights_of_a_plain_training_script_are_copied(wrap, tmp_path):
    """These were refused: "no tensor matches this model's layers; is it for another --model?" (the last two until
    leading parts of any name were dropped)."""
    donor = build_model("lraspp_mobilenet_v3_large", weights="none")
    torch.save(wrap(donor.state_dict()), tmp_path / "w.pth")
    model = build_model("lraspp_mobilenet_v3_large")
    assert load_matching_weights(model, tmp_path / "w.pth") == len(donor.state_dict())


def test_local_weights_holding_nan_are_refused_before_training(tmp_path):
    """A diverged run's weights trained an epoch, then stopped as "the training diverged; retrain with a lower --lr"."""
    state = build_model("lraspp_mobilenet_v3_large", weights="none").state_dict()
    state["backbone.0.0.weight"][0] = float("nan")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(DronsegError, match=r"--weights .*w.pth: tensor backbone.0.0.weight holds NaN"):
        read_weights_file(tmp_path / "w.pth")


def _qint8(tensor: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch deprecates its quantized tensors, which such files still hold
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor(tensor, 0.1, 0, torch.qint8)


@pytest.mark.parametrize("weight, says", [
    (torch.zeros(1).expand(10**8, 10**8), "weight backbone.0.0.weight declares 10000000000000000 values but stores 4 bytes"),
    (torch.zeros(16, 3, 3, 3).to_sparse(), "weight 'backbone.0.0.weight' is not a dense tensor under a text name"),
    # torchvision's quantized ResNet/MobileNetV3 files: load_state_dict's "Copying from quantized Tensor" traceback
    (_qint8(torch.zeros(16, 3, 3, 3)),
     r"weight backbone.0.0.weight is quantized \(torch.qint8\), not floating point"),
    (torch.empty(16, 3, 3, 3, device="meta"), "weight backbone.0.0.weight is a meta tensor, which holds no values"),
])
def test_local_weights_that_are_no_plain_tensors_are_refused_before_the_nan_check(weight, says, tmp_path):
    # One value viewed as 10^16 (stride 0): the NaN check allocated them all (a MemoryError traceback, or the
    # out-of-memory killer); checkpoints were refused so, --weights files were not.
    torch.save({"backbone.0.0.weight": weight}, tmp_path / "w.pth")
    with pytest.raises(DronsegError, match=f"--weights .*w.pth: {says}: pass a state dict saved as plain tensors"):
        read_weights_file(tmp_path / "w.pth")


def test_a_weights_file_of_no_state_dict_or_torchvision_weights_that_cannot_load_are_one_line(tmp_path):
    from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights

    from dronseg_edge.models import _download

    torch.save([torch.zeros(1)], tmp_path / "w.pth")
    with pytest.raises(DronsegError, match="--weights .*w.pth: expected a state dict, found list"):
        read_weights_file(tmp_path / "w.pth")

    def offline():
        raise OSError("no network")

    with pytest.raises(DronsegError, match=r"cannot load torchvision weights .* \(OSError\): download https://.* to "):
        _download(offline, LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1)


def test_frozen_stages_do_not_move_and_keep_their_statistics():
    torch.manual_seed(0)
    model = build_model("lraspp_mobilenet_v3_large", weights="none")
    # stem + 3 stride-2 stages: the segmentation backbone dilates its last stage instead of striding
    assert len(backbone_stages(model)) == 4
    freeze_backbone_stages(model, 2)
    first = backbone_stages(model)[0][0]
    later = backbone_stages(model)[-1][0]
    before_first = {k: v.clone() for k, v in first.state_dict().items()}
    before_later = {k: v.clone() for k, v in later.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    keep_frozen_norms_in_eval(model)
    model(torch.randn(2, 3, 64, 96))["out"].square().mean().backward()
    optimizer.step()
    for key, value in first.state_dict().items():
        assert torch.equal(value, before_first[key]), key  # weights and BatchNorm running stats unchanged
    assert any(not torch.equal(v, before_later[k]) for k, v in later.state_dict().items())
    freeze_backbone_stages(model, 0)
    assert all(p.requires_grad for p in model.parameters())


def test_bn_momentum_override():
    model = build_model("lraspp_mobilenet_v3_large")
    set_bn_momentum(model, 0.1)
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}


def test_inference_wrapper_heads():
    model = build_model("lraspp_mobilenet_v3_large").eval()
    x = torch.randn(1, 3, 64, 96)
    logits = SegmentationNet(model, "logits")(x)
    classes = SegmentationNet(model, "argmax")(x)
    assert logits.shape == (1, 12, 64, 96) and classes.dtype == torch.uint8
    assert torch.equal(classes.long(), logits.argmax(1))
    with pytest.raises(DronsegError, match="--head"):
        SegmentationNet(model, "softmax")


def _conv_layout(module: torch.nn.Module, prefix: str) -> dict:
    return {name: (conv.stride, conv.dilation, conv.padding) for name, conv in module.named_modules()
            if isinstance(conv, torch.nn.Conv2d) and name.startswith(prefix)}


def test_resnet_output_stride_16_is_torchvisions_own_layout_with_halved_aspp_rates():
    """ResNet-50 stands for both ResNets: the same code walks layer3/layer4 of any depth (ResNet-101 costs 2x the time)."""
    import torchvision

    arch, resnet = "deeplabv3_resnet50", "resnet50"
    with torch.device("meta"):
        os16 = build_model(arch, output_stride=16, aux_loss=True)
        os8 = build_model(arch, aux_loss=True)
        expected16 = getattr(torchvision.models, resnet)(replace_stride_with_dilation=[False, False, True])
        expected8 = getattr(torchvision.models, resnet)(replace_stride_with_dilation=[False, True, True])
    assert _conv_layout(os16.backbone, "layer") == _conv_layout(expected16, "layer")
    assert _conv_layout(os8.backbone, "layer") == _conv_layout(expected8, "layer")
    assert [branch[0].dilation for branch in list(os16.classifier[0].convs)[1:-1]] == [(6, 6), (12, 12), (18, 18)]
    assert [branch[0].dilation for branch in list(os8.classifier[0].convs)[1:-1]] == [(12, 12), (24, 24), (36, 36)]
    x = torch.empty(2, 3, 64, 96, device="meta")
    assert os16.backbone(x)["out"].shape[-2:] == (4, 6) and os8.backbone(x)["out"].shape[-2:] == (8, 12)
    outputs = os16(x)
    assert outputs["out"].shape == (2, 12, 64, 96) and outputs["aux"].shape == (2, 12, 64, 96)
    assert (os16.output_stride, os8.output_stride) == (16, 8)
    # Same tensors at both strides: weights (COCO, ImageNet, a checkpoint) load into either.
    assert {k: v.shape for k, v in os16.state_dict().items()} == {k: v.shape for k, v in os8.state_dict().items()}


@pytest.mark.parametrize("arch", ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
def test_mobilenet_models_exist_at_output_stride_16_only(arch):
    with torch.device("meta"):
        model = build_model(arch, output_stride=16)
        features = model.backbone(torch.empty(1, 3, 64, 96, device="meta"))
    assert features["out" if "out" in features else "high"].shape[-2:] == (4, 6)  # LR-ASPP: its "high" branch
    assert model.output_stride == 16 and output_stride_of(model, arch) == 16
    assert check_output_stride(arch, None) == 16
    with pytest.raises(DronsegError) as info:
        build_model(arch, output_stride=8)
    message = str(info.value)
    assert message.startswith("--output-stride 8:") and "only at output stride 16" in message and "\n" not in message


def test_output_stride_defaults_and_bad_values():
    assert check_output_stride("deeplabv3_resnet101", None) == 8 and check_output_stride("deeplabv3_resnet50", 16) == 16
    with pytest.raises(DronsegError, match="--output-stride 32 is not one of 8, 16"):
        check_output_stride("deeplabv3_resnet101", 32)
    with pytest.raises(DronsegError, match="--model"):
        check_output_stride("unet", 16)
    for bad in (16.5, "abc", [16]):  # 16.5 was built at 16, "abc" a ValueError and [16] a TypeError traceback
        with pytest.raises(DronsegError, match="--output-stride .* is not one of 8, 16"):
            check_output_stride("deeplabv3_resnet50", bad)
    with pytest.raises(DronsegError, match="--model \\['unet'\\] is not one of"):  # was a TypeError (unhashable)
        check_output_stride(["unet"], 16)
