"""torch, torchvision, CUDA and each GPU: name, compute capability, memory, bf16, and a real kernel."""

from __future__ import annotations

import os
from typing import Iterator

from dronseg_edge.checks import jetson
from dronseg_edge.checks.base import FAIL, OK, WARN, Check, first_line, import_optional

NO_TORCH = "inference of .onnx/.engine only; training, export and .pt checkpoints need torch"


def torch_checks() -> Iterator[Check]:
    torch, why = import_optional("torch")
    if torch is None:
        yield Check("torch", WARN, f"{why}: {NO_TORCH}")
        return
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    yield Check("torch", OK, f"{torch.__version__} ({build})")
    yield torchvision_check()
    if not torch.cuda.is_available():
        yield no_cuda_check(torch)
        return
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    count = torch.cuda.device_count()
    yield Check("cuda", OK, f"CUDA {torch.version.cuda}, cuDNN {cudnn or 'not available'}, {count} GPU{'s' * (count != 1)}")
    for index in range(count):
        yield gpu_check(torch, index)


def torchvision_check() -> Check:
    torchvision, why = import_optional("torchvision")
    if torchvision is None:
        # The classic failure: the registry's torchvision built for another torch ("operator torchvision::nms does not exist").
        hint = "install the torchvision release built for this torch" if why != "not installed" else "pip install torchvision"
        return Check("torchvision", WARN, f"{why}: .pt checkpoints cannot be built or loaded ({hint})")
    return Check("torchvision", OK, str(torchvision.__version__))


def no_cuda_check(torch) -> Check:
    if not torch.version.cuda:
        hint = ("install NVIDIA's torch wheel for this JetPack" if jetson.is_jetson()
                else "install a CUDA build of torch (pip install torch)")
        return Check("cuda", WARN, f"this torch is CPU-only: no GPU training or inference through torch ({hint})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return Check("cuda", WARN, f"torch is built for CUDA {torch.version.cuda} but sees no GPU (no NVIDIA driver, "
                               f"or none visible{hidden}): torch runs on the CPU")


def arch_supported(arch_list: list[str], major: int, minor: int) -> bool:
    """Whether a torch built for ``arch_list`` (['sm_80', 'sm_90', 'compute_90', ...]) has kernels for sm_<major><minor>.

    Exact SASS, or PTX of an older or equal architecture that the driver can compile just in time.
    An empty list (some builds do not report it) is given the benefit of the doubt.
    """
    if not arch_list:
        return True
    wanted = major * 10 + minor
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = "".join(ch for ch in number if ch.isdigit())
        if not digits:
            continue
        if (kind == "sm" and int(digits) == wanted) or (kind == "compute" and int(digits) <= wanted):
            return True
    return False


def gpu_check(torch, index: int) -> Check:
    name = f"gpu{index}"
    props = torch.cuda.get_device_properties(index)
    major, minor = props.major, props.minor
    # bf16 tensor cores from Ampere (sm 8.0) on: the --amp auto choice.
    detail = (f"{props.name}, sm {major}.{minor}, {props.total_memory / 2**30:.1f} GiB, "
              f"bf16 {'yes' if major >= 8 else 'no (fp16 AMP instead)'}")
    supported = arch_supported(list(torch.cuda.get_arch_list()), major, minor)
    try:  # a kernel must really run: a listed GPU the build has no kernels for fails only here
        value = torch.ones(4, device=f"cuda:{index}").add_(1).sum().item()
        if value != 8.0:
            return Check(name, FAIL, f"{detail}; a test kernel computed {value} instead of 8")
    except Exception as exc:
        hint = (f"; this torch has no kernels for sm_{major}{minor} (built for {' '.join(torch.cuda.get_arch_list())}): "
                "install a torch build for this GPU") if not supported else ""
        return Check(name, FAIL, f"{detail}; a test kernel failed: {first_line(exc)}{hint}")
    if not supported:
        return Check(name, WARN, f"{detail}; this torch has no kernels built for sm_{major}{minor}")
    return Check(name, OK, detail)
