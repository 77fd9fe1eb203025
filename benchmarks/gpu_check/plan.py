"""What each stage runs and for how long: the GPU plan (an H200, 5 minutes in all) and the CPU plan (tiny sizes).

Timeouts sum to 281 s on the GPU (256 s without onnxruntime-gpu to install), so the whole check
ends inside 5 minutes whatever happens: each stage is a subprocess killed at its timeout. A stage also gets a budget a few seconds shorter
than its timeout and stops starting new work when that runs out, so it can still write what it
measured. The first CUDA context and cuDNN's autotuning cost seconds in every stage (one process
each), which is why the GPU iteration counts are modest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

STAGES = ("env", "tests", "latency", "train", "pipeline", "probes", "ort-cuda")

# Seconds per stage on the H200. "wheels" (installing staged wheels before the stages) is not a
# stage but has a timeout of its own, counted in the 5 minutes.
GPU_TIMEOUTS = {"wheels": 25, "env": 15, "tests": 50, "latency": 65, "train": 48, "pipeline": 36, "probes": 15,
                "ort-cuda": 27}
# The CPU plan runs tiny models, but every stage pays a torch import (5-10 s on a busy 2-core machine).
CPU_TIMEOUTS = {"wheels": 60, "env": 60, "tests": 180, "latency": 120, "train": 120, "pipeline": 120, "probes": 120,
                "ort-cuda": 120}

TARGETS = {  # the benchmark targets (for the H100/H200 at 1280x720); not pass/fail of the run
    "resnet101_ms": 6.0,  # DeepLabV3-ResNet-101, batch 1, best backend, median ms
    "mobilenet_ms": 2.0,  # DeepLabV3-MobileNetV3-Large, batch 1, best backend, median ms
    "end_to_end_ratio": 0.9,  # end-to-end video fps / model-only fps
    "train_images_per_s": 45.0,  # ResNet-101 training at 1280x720
}
TARGET_ARCHS = {"resnet101_ms": "deeplabv3_resnet101", "mobilenet_ms": "deeplabv3_mobilenet_v3_large"}


@dataclass(frozen=True)
class Plan:
    mode: str  # "gpu" | "cpu"
    device: str  # torch device for the stages
    latency_archs: tuple[str, ...]
    latency_size: tuple[int, int]  # (width, height)
    latency_warmup_iters: int
    latency_iters: int
    parity_images: int
    train_arch: str
    train_size: tuple[int, int]
    train_batch: int
    train_amp: str
    train_warmup: int
    train_steps: int
    train_images: int
    train_workers: int
    check_batch: int  # the fp16 GradScaler + accumulate + clipping check
    check_amp: str
    check_steps: int
    pipeline_arch: str
    pipeline_size: tuple[int, int]
    pipeline_frames: int
    pipeline_iters: int
    probes_arch: str
    probes_size: tuple[int, int]
    ort_arch: str
    ort_size: tuple[int, int]
    ort_iters: int
    test_timeout_s: int  # pytest-timeout per test
    # OpenMP threads per stage (None: torch's default). CPU mode uses 1: it is a smoke run, and on a
    # shared 2-core machine two OpenMP threads made a tiny training step 5-25x slower than one.
    cpu_threads: int | None = None
    timeouts: dict[str, float] = field(default_factory=dict)
    compile_mode: str | None = None  # torch.compile mode for an extra latency row; None: not attempted

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        data = dict(data)
        for key in ("latency_size", "train_size", "pipeline_size", "probes_size", "ort_size"):
            data[key] = tuple(data[key])
        data["latency_archs"] = tuple(data["latency_archs"])
        return cls(**data)


def gpu_plan() -> Plan:
    return Plan(
        mode="gpu", device="cuda",
        latency_archs=("deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large"), latency_size=(1280, 720),
        latency_warmup_iters=10, latency_iters=50, parity_images=4,
        train_arch="deeplabv3_resnet101", train_size=(1280, 720), train_batch=8, train_amp="bf16", train_warmup=3,
        train_steps=12, train_images=16, train_workers=12,
        check_batch=2, check_amp="fp16", check_steps=4,
        pipeline_arch="deeplabv3_resnet101", pipeline_size=(1280, 720), pipeline_frames=90, pipeline_iters=100,
        # The probes test threading and API use, not speed: a smaller input shortens each cuDNN autotune.
        probes_arch="deeplabv3_mobilenet_v3_large", probes_size=(640, 360),
        # MobileNetV3 rather than ResNet-101: two ResNet-101 ONNX exports alone would take ~15 s (docs/facts.md#h100-baseline)
        ort_arch="deeplabv3_mobilenet_v3_large", ort_size=(1280, 720), ort_iters=50,
        test_timeout_s=40, timeouts=dict(GPU_TIMEOUTS),
    )


def cpu_plan() -> Plan:
    return Plan(
        mode="cpu", device="cpu",
        latency_archs=("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"), latency_size=(96, 64),
        latency_warmup_iters=1, latency_iters=5, parity_images=2,
        train_arch="lraspp_mobilenet_v3_large", train_size=(96, 64), train_batch=4, train_amp="off", train_warmup=1,
        train_steps=2, train_images=8, train_workers=0,
        check_batch=2, check_amp="off", check_steps=2,
        pipeline_arch="lraspp_mobilenet_v3_large", pipeline_size=(160, 96), pipeline_frames=10, pipeline_iters=5,
        probes_arch="lraspp_mobilenet_v3_large", probes_size=(96, 64),
        ort_arch="lraspp_mobilenet_v3_large", ort_size=(96, 64), ort_iters=5,
        test_timeout_s=120, cpu_threads=1, timeouts=dict(CPU_TIMEOUTS),
    )


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
