"""Model construction: torchvision's DeepLabV3 / LR-ASPP with a 12-class head.

``weights`` is one of ``coco`` (torchvision's COCO-with-VOC-labels segmentation weights, head
replaced), ``imagenet`` (ImageNet backbone, fresh head), ``none`` (random init, for tests) or a
path to a local ``.pt``/``.pth`` file (a torchvision state dict, a backbone state dict or a
dronseg-edge checkpoint); matching tensors are copied, the rest keep their initialisation.

``output_stride`` is input size / backbone feature-map size: torchvision builds the ResNet DeepLabV3s
at 8 and the MobileNetV3 models at 16. The ResNets can also be built at 16 (layer3 strides again,
ASPP rates 6, 12, 18 as in the DeepLabV3 paper), which cuts layer3, layer4 and the head about
fourfold; the tensors are the same at either stride, so COCO/ImageNet weights load into both.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights
from torchvision.models import segmentation as seg

from dronseg_edge.classes import NUM_CLASSES
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import default_output_stride
from dronseg_edge.option_fields import one_of

# arch -> (builder, COCO segmentation weights, ImageNet backbone weights)
ARCHS: dict[str, tuple[Callable[..., nn.Module], object, object]] = {
    "deeplabv3_resnet101": (seg.deeplabv3_resnet101, seg.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
                            ResNet101_Weights.IMAGENET1K_V1),
    "deeplabv3_resnet50": (seg.deeplabv3_resnet50, seg.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
                           ResNet50_Weights.IMAGENET1K_V1),
    "deeplabv3_mobilenet_v3_large": (seg.deeplabv3_mobilenet_v3_large,
                                     seg.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
                                     MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "lraspp_mobilenet_v3_large": (seg.lraspp_mobilenet_v3_large, seg.LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
                                  MobileNet_V3_Large_Weights.IMAGENET1K_V1),
}


def check_arch(arch: str) -> str:
    one_of(arch, "--model", ARCHS)  # a list was a TypeError (unhashable) against the dict
    return arch


def supports_aux(arch: str) -> bool:
    return arch.startswith("deeplabv3")


def output_strides(arch: str) -> tuple[int, ...]:
    """The output strides ``arch`` can be built with (module docstring)."""
    return (8, 16) if "resnet" in check_arch(arch) else (default_output_stride(arch),)


def check_output_stride(arch: str, output_stride: int | None) -> int:
    """``output_stride`` (None: the arch's torchvision default) if ``arch`` can be built with it, else a DronsegError."""
    native = default_output_stride(check_arch(arch))
    if output_stride is None:
        return native
    allowed = output_strides(arch)
    if len(allowed) == 1 and output_stride not in allowed:
        raise DronsegError(f"--output-stride {output_stride}: {arch} exists only at output stride {native} "
                           "(torchvision dilates just its last stage); 8 is for the DeepLabV3 ResNet models")
    one_of(output_stride, "--output-stride", allowed)  # not int() first: 16.5 was built at 16, "abc" a ValueError
    return int(output_stride)


def head_channels(state: dict, arch: str) -> int | None:
    """Output channels (classes) of the final classifier convolution in ``arch``'s state dict ``state``,
    or None when it has none."""
    weight = state.get("classifier.high_classifier.weight" if arch.startswith("lraspp") else "classifier.4.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 4 else None


def output_stride_of(model: nn.Module, arch: str) -> int:
    """The output stride ``model`` (built by ``build_model(arch)``) was built with."""
    return int(getattr(model, "output_stride", None) or default_output_stride(arch))


def build_model(arch: str = "deeplabv3_resnet101", num_classes: int = NUM_CLASSES, weights: str = "none",
                aux_loss: bool = False, output_stride: int | None = None,
                state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Build ``arch`` with a ``num_classes`` head; returns a module whose forward gives ``{'out': (N,C,H,W)}``.

    ``output_stride`` 8 or 16 (None: the arch's default, see the module docstring); the model keeps it
    as its ``output_stride`` attribute, which checkpoints record. ``state``: the tensors of ``weights``
    (a path) when ``read_weights_file`` has read them already.
    """
    builder, coco, imagenet = ARCHS[check_arch(arch)]
    output_stride = check_output_stride(arch, output_stride)
    aux_loss = bool(aux_loss) and supports_aux(arch)
    choice = str(weights).lower()
    if choice == "coco":
        model = _download(lambda: builder(weights=coco, aux_loss=supports_aux(arch) or None), coco)
        _replace_heads(model, num_classes)
    elif choice == "imagenet":
        model = _download(lambda: builder(weights=None, weights_backbone=imagenet, num_classes=num_classes,
                                          aux_loss=aux_loss or None), imagenet)
    else:
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss or None)
        if choice != "none":
            load_matching_weights(model, Path(weights), state)
    if not aux_loss and getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None
    if output_stride != default_output_stride(arch):
        _set_resnet_output_stride(model, output_stride)
    model.output_stride = output_stride
    return model


# (stride of the first block, dilation of its 3x3 conv, dilation of the other blocks' 3x3 convs),
# as torchvision's ResNet._make_layer lays them out for replace_stride_with_dilation [F, T, T] / [F, F, T].
_RESNET_LAYOUTS = {
    8: {"layer3": (1, 1, 2), "layer4": (1, 2, 4)},
    16: {"layer3": (2, 1, 1), "layer4": (1, 1, 2)},
}
_ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def _set_resnet_output_stride(model: nn.Module, output_stride: int) -> None:
    """Re-stride a DeepLabV3-ResNet in place: strides, dilations and paddings change, no tensor does."""
    for name, (stride, first, rest) in _RESNET_LAYOUTS[output_stride].items():
        for index, block in enumerate(model.backbone[name]):
            dilation, block_stride = (first, stride) if index == 0 else (rest, 1)
            block.conv2.stride, block.conv2.dilation, block.conv2.padding = (block_stride,) * 2, (dilation,) * 2, (dilation,) * 2
            block.stride = block_stride
            if block.downsample is not None:
                block.downsample[0].stride = (block_stride,) * 2
    aspp = model.classifier[0]
    for branch, rate in zip(list(aspp.convs)[1:-1], _ASPP_RATES[output_stride]):  # [1x1, 3 atrous, pooling]
        branch[0].dilation, branch[0].padding = (rate, rate), (rate, rate)


def _download(build: Callable[[], nn.Module], weights_enum) -> nn.Module:
    try:
        return build()
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a truncated file raises RuntimeError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
        raise DronsegError(f"cannot load torchvision weights {weights_enum} ({type(exc).__name__}): download "
                           f"{weights_enum.url} to {cache}, or pass --weights PATH to a local file, or --weights none") from None


def _replace_heads(model: nn.Module, num_classes: int) -> None:
    """Swap the final 1x1 convolutions of the pretrained heads for ``num_classes`` outputs."""

    def fresh(conv: nn.Conv2d) -> nn.Conv2d:
        return nn.Conv2d(conv.in_channels, num_classes, kernel_size=1, bias=conv.bias is not None)

    classifier = model.classifier
    if hasattr(classifier, "low_classifier"):  # LR-ASPP
        classifier.low_classifier = fresh(classifier.low_classifier)
        classifier.high_classifier = fresh(classifier.high_classifier)
    else:
        classifier[-1] = fresh(classifier[-1])
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier[-1] = fresh(model.aux_classifier[-1])


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``--weights`` file ``path`` (a state dict, or a checkpoint's ``model``/``state_dict``), loaded as
    data only (torch_floor.torch_load); a one-line DronsegError naming the option. Cheap to call before any
    other work: a bad file is refused before a run writes anything."""
    from dronseg_edge.torch_floor import torch_load

    path = Path(path)
    state = torch_load(path, f"--weights {path}",
                       f"--weights {path}: no such file; use coco, imagenet, none or a path to a .pt/.pth file",
                       ": pass a state dict saved as plain tensors (torch.save(model.state_dict(), F)), or coco, imagenet, none")
    if isinstance(state, dict):  # a checkpoint's (ours: "model") or a training script's ("state_dict") weights
        state = next((state[key] for key in ("model", "state_dict") if isinstance(state.get(key), dict)), state)
    if not isinstance(state, dict):
        raise DronsegError(f"--weights {path}: expected a state dict, found {type(state).__name__}")
    odd = odd_weight(state)
    if odd is not None:
        raise DronsegError(f"--weights {path}: {odd}: pass a state dict saved as plain tensors, or coco, imagenet, "
                           "none")
    bad = nonfinite_weight(state)  # a diverged run's weights: training from them diverges at once
    if bad is not None:
        raise DronsegError(f"--weights {path}: tensor {bad} holds NaN or Inf (saved by a run that diverged): "
                           "pass weights saved before its loss went NaN, or coco, imagenet, none")
    return state


def odd_weight(state: dict) -> str | None:
    """What makes ``state`` other than dense tensors under text names (naming the first such entry), or None. A view
    can declare more values than the file stores (stride 0: one value "holding" 10^12), which nonfinite_weight would
    allocate: a 13 MB file took 14 GB. Weights torch.save wrote never overlap themselves."""
    for name, value in state.items():
        if not isinstance(name, str) or (torch.is_tensor(value) and value.layout != torch.strided):  # 5; sparse
            return f"weight {reprlib.repr(name)} is not a dense tensor under a text name"
        if torch.is_tensor(value) and value.is_quantized:  # torchvision's quantized models: no float weight to copy
            return f"weight {name} is quantized ({value.dtype}), not floating point"
        if torch.is_tensor(value) and value.is_meta:  # saved from a model built on the meta device: no values at all
            return f"weight {name} is a meta tensor, which holds no values"
        if torch.is_tensor(value) and value.numel() * value.element_size() > value.untyped_storage().nbytes():
            return f"weight {name} declares {value.numel()} values but stores {value.untyped_storage().nbytes()} bytes"
    return None


def nonfinite_weight(state: dict) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding NaN or Inf, or None."""
    return next((k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()  # float8: no isfinite
                 and not bool(torch.isfinite(v.float() if v.element_size() == 1 else v).all())), None)


def is_weights_path(weights: str) -> bool:
    """Whether a ``--weights`` value names a file (anything but coco, imagenet, none)."""
    return str(weights).lower() not in ("coco", "imagenet", "none")


def load_matching_weights(model: nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None) -> int:
    """Copy every tensor of ``path`` (or of its ``state``, read already by ``read_weights_file``) whose name and shape
    match ``model``'s, less leading parts (DataParallel's ``module.``, a LightningModule's ``model.``, torchvision's
    MobileNetV3 ``features.``) and under ``backbone.`` for a classification backbone's; return how many were copied."""
    state = read_weights_file(path) if state is None else state
    own = model.state_dict()
    tops = {key.split(".")[0] for key in own}  # backbone, classifier, aux_classifier: never dropped

    def layer(name: str) -> str | None:
        parts = name.split(".")
        tails = [".".join(parts[start:]) for start in range(len(parts)) if not tops.intersection(parts[:start])]
        return next((key for tail in tails for key in (tail, "backbone." + tail) if key in own), None)

    copied = {key: tensor for name, tensor in state.items() if isinstance(tensor, torch.Tensor)
              and (key := layer(name)) is not None and own[key].shape == tensor.shape}
    if not copied:
        raise DronsegError(f"--weights {path}: no tensor matches this model's layers; is it for another --model?")
    model.load_state_dict(copied, strict=False)
    return len(copied)


def backbone_stages(model: nn.Module) -> list[list[nn.Module]]:
    """The backbone split into stages, shallowest first (ResNet: stem, layer1..4; MobileNetV3: by stride)."""
    named = list(model.backbone.named_children())
    if any(name == "layer1" for name, _ in named):
        return [[m for n, m in named if not n.startswith("layer")]] + [[m] for n, m in named if n.startswith("layer")]
    stages: list[list[nn.Module]] = []
    for _, block in named:
        strided = any(getattr(conv, "stride", (1, 1)) != (1, 1) for conv in block.modules() if isinstance(conv, nn.Conv2d))
        if strided or not stages:
            stages.append([])
        stages[-1].append(block)
    return stages


def backbone_stage_count(arch: str) -> int:
    """How many stages ``backbone_stages`` finds in ``arch`` (the most ``--freeze-stages`` can freeze); built on
    the meta device: no memory, no weights, no random numbers drawn."""
    with torch.device("meta"):
        return len(backbone_stages(build_model(arch)))


def freeze_backbone_stages(model: nn.Module, num_stages: int) -> int:
    """Stop gradients in the first ``num_stages`` backbone stages (0 unfreezes all); return the stage count."""
    stages = backbone_stages(model)
    for index, stage in enumerate(stages):
        for param in (p for module in stage for p in module.parameters()):
            param.requires_grad_(index >= num_stages)
    return len(stages)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Override every BatchNorm's running-statistics momentum.

    torchvision's MobileNetV3 uses 0.01, tuned for long runs from pretrained statistics; a short run
    from scratch needs ~0.1, or evaluation (which uses the running statistics) lags far behind training.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are frozen keep their running statistics (call after ``train()``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


class SegmentationNet(nn.Module):
    """Inference form of a model: a tensor in, a tensor out (what export and the runtimes use).

    ``head='logits'``: (N, C, H, W) float scores; ``head='argmax'``: (N, H, W) class indices (uint8).
    """

    def __init__(self, model: nn.Module, head: str = "logits"):
        super().__init__()
        one_of(head, "--head", ("logits", "argmax"))
        self.model, self.head = model, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)["out"]
        if self.head == "argmax":
            # Through float: TensorRT converts to uint8 only from float32/float16 (not from ArgMax's integers).
            return logits.argmax(dim=1).to(torch.float32).to(torch.uint8)
        return logits
