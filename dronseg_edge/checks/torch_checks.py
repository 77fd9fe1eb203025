"""torch, torchvision, CUDA and each GPU: name, compute capability, memory, bf16, and a real kernel.

Two field failures are told before torch is imported, from its installed metadata: a torch older than
the package's floor for checkpoints (torch_floor.py; NVIDIA's Jetson wheels lag behind), and, after
the import, a CPU-only torch on a machine with an NVIDIA GPU or on a Jetson (pip replaced the CUDA
build, e.g. while resolving an extra).
"""

from __future__ import annotations

import os
from typing import Iterator

from dronseg_edge import devices, machine
from dronseg_edge.checks import jetson
from dronseg_edge.checks.base import FAIL, OK, WARN, Check, first_line, import_optional
from dronseg_edge.errors import docs_url
from dronseg_edge.torch_floor import unsafe_torch_reason

NO_TORCH = "inference of .onnx/.engine only; training, export and .pt checkpoints need torch"
JETSON_TORCH = docs_url("jetson.md", "nvidias-torch-and-onnx-runtime-wheels")
CUDA_TORCH = "https://pytorch.org/get-started/locally/"


def torch_checks() -> Iterator[Check]:
    installed = machine.installed_version("torch")  # told before importing torch
    if installed is not None:
        reason = unsafe_torch_reason(installed, ".pt checkpoints")
        if reason:
            yield Check("torch checkpoints", WARN, reason, {"version": installed, "safe": False})
    torch, why = import_optional("torch")
    if torch is None:
        yield Check("torch", WARN, f"{why}: {NO_TORCH}", {"version": installed, "cuda": None})
        return
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    yield Check("torch", OK, f"{torch.__version__} ({build})", {"version": str(torch.__version__), "cuda": torch.version.cuda})
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
        return Check("torchvision", WARN, f"{why}: .pt checkpoints cannot be built or loaded ({hint})", {"version": None})
    return Check("torchvision", OK, str(torchvision.__version__), {"version": str(torchvision.__version__)})


def no_cuda_check(torch) -> Check:
    """torch sees no GPU. A CPU-only torch is right on a machine without an NVIDIA GPU, a mistake beside one or
    on a Jetson.

    The usual cause is pip: resolving an extra that asks for torch replaced NVIDIA's Jetson wheel (or a
    CUDA build) with the registry's CPU-only aarch64 wheel. The driver is asked, not torch, which sees no GPU.
    """
    driver = devices.cuda_driver_version()
    if torch.version.cuda and driver and int(str(torch.version.cuda).split(".")[0]) > driver[0]:  # pip's CUDA 13 torch
        return Check("cuda", WARN, f"torch is built for CUDA {torch.version.cuda}, and this driver supports CUDA "
                                   f"{driver[0]}.{driver[1]}: torch runs on the CPU; install a torch built for CUDA "
                                   f"{driver[0]} ({CUDA_TORCH}) or a newer driver")
    if torch.version.cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        return Check("cuda", WARN, f"torch is built for CUDA {torch.version.cuda} but sees no GPU (no NVIDIA driver, "
                                   f"or none visible{hidden}): torch runs on the CPU")
    on_jetson, gpus = jetson.is_jetson(), devices.driver_device_count()
    if not on_jetson and gpus == 0:
        return Check("cuda", OK, "CPU-only torch, and no NVIDIA GPU here: torch runs on the CPU")
    where = "this Jetson's GPU" if on_jetson else f"the NVIDIA GPU{'s' * (gpus != 1)} the driver shows ({gpus})"
    fix = (f"pip probably replaced NVIDIA's torch wheel; reinstall it and keep it with a constraint file: {JETSON_TORCH}"
           if on_jetson else f"install a CUDA build of torch for this driver ({CUDA_TORCH})")
    return Check("cuda", WARN, f"torch {torch.__version__} is a CPU-only build and cannot use {where}: {fix}")


def arch_supported(arch_list: list[str], major: int, minor: int) -> bool:
    """Whether a torch built for ``arch_list`` (['sm_80', 'sm_90', 'compute_90', ...]) has kernels for sm_<major><minor>.

    SASS of the same major version and an older or equal minor one (CUDA's binary compatibility: sm_86
    code runs on sm_87 and sm_89; an arch-specific sm_90a only on sm_90), or PTX of an older or equal
    architecture that the driver can compile just in time. An empty list (some builds do not report it)
    is given the benefit of the doubt.
    """
    wanted = major * 10 + minor
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = int("".join(filter(str.isdigit, number)) or -1)
        same_family = digits // 10 == major and digits % 10 <= minor and not number.endswith("a")
        if (kind == "sm" and (digits == wanted or same_family)) or (kind == "compute" and 0 <= digits <= wanted):
            return True
    return not arch_list


def gpu_check(torch, index: int) -> Check:
    name = f"torch gpu{index}"  # the driver's own line for this GPU is gpu{index} (cuda_checks)
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
