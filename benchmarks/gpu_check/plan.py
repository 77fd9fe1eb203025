"""What each stage runs, what each of its items is estimated to cost, and the budget of the whole call.

GPU mode has 295 s for everything after the machine's start (the issue's 300 s, 5 s kept for the
summary), wheel setup included. Items are planned by estimated cost: every stage is a list of items
(``ESTIMATES``, seconds on an H100/H200 after the stage's own start, ``STARTUP_S``), correctness first
(env, tests, probes), then speed (latency, pipeline, train), then the optional ort-cuda. The
orchestrator starts a stage only when its start and first item still fit in what is left of the
budget (else: skipped, with the reason) and caps its timeout at what is left; a stage starts an item
only when the item's estimate fits in its own budget (else: "not run", with the reason). So the call
ends inside the budget, and what did not fit says so instead of being killed halfway.

The GPU estimates are not measurements yet (no GPU was lent to the work that set them): they come
from docs/facts.md section 4 (an H100: ResNet-101 fp32 54 ms and fp16 graph 7.8 ms per 720p frame,
training 39 img/s, cold cuDNN autotuning 5-15 s per model and precision, the CLI's cold start 10-15 s).
Every stage records each item's seconds next to its estimate (figure ``items``), and the summary
shows both, so the first GPU run recalibrates them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

STAGES = ("env", "tests", "probes", "latency", "pipeline", "train", "ort-cuda")
KINDS = {"env": "correctness", "tests": "correctness", "probes": "correctness", "latency": "speed",
         "pipeline": "speed", "train": "speed", "ort-cuda": "optional"}

BUDGET_S = {"gpu": 295.0, "cpu": 1500.0}  # the whole call after the machine's start, wheel setup included
STARTUP_S = {"gpu": 6.0, "cpu": 10.0}  # a stage process: Python, torch import, CUDA context
WHEELS_S = {"gpu": 25.0, "cpu": 60.0}  # installing staged wheels (a timeout of its own, in the budget)

# Seconds per item after the stage's start. "ARCH: *" covers every row of that architecture, "*"
# any other item of the stage. Item names are the ones the stages report.
GPU_ESTIMATES = {
    "env": {"describe": 4},
    # Each run: pytest's start, collection, the session fixtures it needs (a tiny CPU-trained model).
    "tests": {"pytest -m gpu: cuda_runtime, CUDA graphs": 15, "pytest -m gpu: the rest": 40},
    "probes": {"checkpoint": 3, "capture_then_replay_in_another_thread": 8, "two_segmenters_capturing_at_once": 10,
               "predict_equals_stream": 5, "inference_mode_mixed": 5},
    "latency": {"scenes": 2, "deeplabv3_resnet101: pytorch fp32 (no TF32)": 9, "deeplabv3_resnet101: *": 6,
                "deeplabv3_mobilenet_v3_large: pytorch fp32 (no TF32)": 5, "deeplabv3_mobilenet_v3_large: *": 4, "*": 6},
    "pipeline": {"measure": 18, "dronseg-edge infer": 15},
    "train": {"throughput": 20, "fp16 check": 10},
    "ort-cuda": {"fp32 graph=True": 10, "fp16 graph=True": 8, "fp32 graph=False": 5, "fp16 graph=False": 5},
}
# CPU mode (tiny models, one thread, a busy 2-core machine): generous, so nothing is skipped there.
CPU_ESTIMATES = {
    "env": {"describe": 5},
    "tests": {"pytest -m gpu: cuda_runtime, CUDA graphs": 40, "pytest -m gpu: the rest": 120},
    "probes": {"*": 15},
    "latency": {"*": 8},
    "pipeline": {"measure": 40, "dronseg-edge infer": 25},
    "train": {"throughput": 40, "fp16 check": 25},
    "ort-cuda": {"*": 15},
}
ITEMS = {  # the items each stage plans, in the order it runs them (for the printed plan and its total)
    "env": ("describe",),
    "tests": ("pytest -m gpu: cuda_runtime, CUDA graphs", "pytest -m gpu: the rest"),
    "probes": ("checkpoint", "capture_then_replay_in_another_thread", "two_segmenters_capturing_at_once",
               "predict_equals_stream", "inference_mode_mixed"),
    "pipeline": ("measure", "dronseg-edge infer"),
    "train": ("throughput", "fp16 check"),
    "ort-cuda": ("fp32 graph=True", "fp16 graph=True", "fp32 graph=False", "fp16 graph=False"),
}
COMPILE_S = 450.0  # a --latency-compile row (raise the budget with --timeout-scale to let it run)
TIMEOUT_FACTOR = 1.5  # a stage's timeout: its start and items at 1.5x their estimates (the budget caps it anyway)

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
    estimates: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> item -> seconds
    budget_s: float = 0.0  # the whole call
    startup_s: float = 0.0  # a stage process's start

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def estimate(self, stage: str, item: str) -> float:
        """Seconds ``item`` of ``stage`` is expected to take: its own entry, else its architecture's
        ("ARCH: *"), else the stage's "*", else 5."""
        table = self.estimates.get(stage, {})
        if "torch.compile(" in item:  # minutes: 421 s for ResNet-101 on the H100 (docs/facts.md section 4)
            return float(table.get("torch.compile", COMPILE_S))
        for key in (item, item.split(":")[0] + ": *", "*"):
            if key in table:
                return float(table[key])
        return 5.0

    def items(self, stage: str) -> list[str]:
        """The items ``stage`` plans, in order (latency: one per architecture and row)."""
        if stage == "latency":
            from benchmarks.gpu_check.latency_rows import row_items

            return ["scenes", *row_items(self.latency_archs, self.compile_mode)]
        return list(ITEMS[stage])

    def stage_estimate(self, stage: str) -> float:
        """The stage's start plus all its items."""
        return self.startup_s + sum(self.estimate(stage, item) for item in self.items(stage))

    def first_item(self, stage: str) -> float:
        """The least a stage needs to do anything: its start and its first item."""
        return self.startup_s + self.estimate(stage, self.items(stage)[0])

    def to_dict(self) -> dict:
        return asdict(self)

    def with_estimates(self, estimates: dict, budget_s: float, startup_s: float, wheels_s: float) -> "Plan":
        """This plan with its estimates, budget and the timeouts they give (TIMEOUT_FACTOR)."""
        plan = replace(self, estimates={k: dict(v) for k, v in estimates.items()}, budget_s=budget_s, startup_s=startup_s)
        timeouts = {"wheels": wheels_s}
        timeouts.update({stage: round(startup_s + TIMEOUT_FACTOR * (plan.stage_estimate(stage) - startup_s) + 5)
                         for stage in STAGES})
        return replace(plan, timeouts=timeouts)

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
        test_timeout_s=40,
    ).with_estimates(GPU_ESTIMATES, BUDGET_S["gpu"], STARTUP_S["gpu"], WHEELS_S["gpu"])


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
        test_timeout_s=120, cpu_threads=1,
    ).with_estimates(CPU_ESTIMATES, BUDGET_S["cpu"], STARTUP_S["cpu"], WHEELS_S["cpu"])


def describe(plan: Plan, selected: set[str] | None = None) -> list[str]:
    """The plan as printed at the start: each stage's kind, items, estimate and timeout, and the total
    against the budget (stages left out by --only are listed as such)."""
    lines = [f"plan ({plan.mode} mode): budget {plan.budget_s:.0f} s for the whole call; estimates per stage "
             f"(its start {plan.startup_s:.0f} s + its items), timeouts capped by the budget left",
             f"  {'stage':<9} {'kind':<12} {'items':>5} {'estimate s':>10} {'timeout s':>9}",
             f"  {'wheels':<9} {'setup':<12} {'':>5} {plan.timeouts['wheels']:>10.0f} {plan.timeouts['wheels']:>9.0f}"]
    total, optional = plan.timeouts["wheels"], 0.0
    for stage in STAGES:
        if selected and stage not in selected and stage != "env":
            lines.append(f"  {stage:<9} not selected (--only)")
            continue
        estimate = plan.stage_estimate(stage)
        if KINDS[stage] == "optional":
            optional += estimate
        else:
            total += estimate
        lines.append(f"  {stage:<9} {KINDS[stage]:<12} {len(plan.items(stage)):>5} {estimate:>10.0f} "
                     f"{plan.timeouts[stage]:>9.0f}")
    line = f"  total estimate {total:.0f} s of {plan.budget_s:.0f} s"
    if optional:
        line += f" ({total + optional:.0f} s with ort-cuda, which runs only where onnxruntime-gpu is at hand)"
    if total + optional > plan.budget_s:
        line += ": what does not fit is skipped, with the reason"
    return lines + [line]


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
