"""Stage probes: the ways real programs use the inference API that unit tests rarely do.

- graph capture in one thread, replay in another (a server thread pool);
- two Segmenters capturing their CUDA graphs at the same moment in two threads;
- ``predict`` and ``stream`` giving identical masks for the same frames;
- ``segmenter.backend.infer(batch)`` called outside ``torch.inference_mode()`` after the Segmenter
  used the backend inside it (an inference tensor made there cannot be written outside).

Each probe reports passed/failed/skipped with what it saw; one failing does not stop the others.
"""

from __future__ import annotations

import threading
import traceback

import numpy as np
import torch

from benchmarks.gpu_check import fixtures
from benchmarks.gpu_check.report import StageContext, run_stage
from dronseg_edge.pipeline import Segmenter
from dronseg_edge.runtime.host import preprocess_host
from dronseg_edge.runtime.registry import load_backend

MIN_AGREEMENT = 0.999  # graph replay and eager run the same kernels: a near-tie pixel or two at most


def frames(size: tuple[int, int], count: int) -> list[np.ndarray]:
    """Deterministic BGR frames at the model's input size (no resizing: masks compare pixel for pixel)."""
    width, height = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    # Blocky noise with some structure, so class maps hold more than one class.
    return [np.ascontiguousarray(np.roll(np.kron(base, np.ones((8, 8, 1), np.uint8)), 5 * i, axis=1)[:height, :width])
            for i in range(count)]


def in_threads(*targets) -> list:
    """Run each callable in its own thread, started together; returns their results (exceptions re-raised)."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)

    def runner(i, fn):
        barrier.wait()
        try:
            results[i] = fn()
        except BaseException as exc:  # handed to the caller
            results[i] = exc

    threads = [threading.Thread(target=runner, args=(i, fn)) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def model_input(frame: np.ndarray, info, device) -> torch.Tensor:
    """The model's normalised input for one frame (the host pre-processing), on ``device``."""
    return torch.from_numpy(preprocess_host([frame], info)).to(device)


def agreement(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = torch.as_tensor(a).cpu(), torch.as_tensor(b).cpu()
    return float((a == b).float().mean())


def capture_then_replay_elsewhere(ckpt, device, size) -> dict:
    shots = frames(size, 2)
    with load_backend(ckpt, device, precision="fp16", cuda_graph=False) as eager:
        info = eager.info
        xs = [model_input(f, info, device) for f in shots]
        expected = [eager.infer(x).argmax(1).cpu() for x in xs]
    graphed = load_backend(ckpt, device, precision="fp16", cuda_graph=True)
    try:
        (first,) = in_threads(lambda: graphed.infer(xs[0]).cpu())  # captures in thread A
        (replays,) = in_threads(lambda: [graphed.infer(x).cpu() for x in xs])  # replays in thread B
        graph = bool(getattr(graphed, "cuda_graph", False))
    finally:
        graphed.deactivate()
    agree = [agreement(r.argmax(1), e) for r, e in zip(replays, expected)]
    same_as_capture = bool(torch.equal(first, replays[0]))
    reads_new_input = not torch.equal(replays[0], replays[1])  # logits, not masks: a random model may predict one class
    ok = graph and min(agree) >= MIN_AGREEMENT and same_as_capture and reads_new_input
    return {"status": "passed" if ok else "failed", "graph_used": graph, "agreement_with_eager": agree,
            "replay_equals_capture": same_as_capture, "replay_reads_new_input": reads_new_input,
            "detail": "captured in one thread, replayed two inputs in another; compared with eager fp16"}


def two_segmenters_at_once(ckpt, device, size) -> dict:
    shots = frames(size, 3)
    with Segmenter(ckpt, device=device, half=True, cuda_graph=False) as eager:
        expected = [eager.predict(f).mask for f in shots]
    segs = [Segmenter(ckpt, device=device, half=True, cuda_graph=True) for _ in range(2)]
    try:
        results = in_threads(*[lambda s=s: [s.predict(f).mask for f in shots] for s in segs])
        providers = [s.backend.provider for s in segs]
    finally:
        for s in segs:
            s.close()
    agree = [[agreement(m, e) for m, e in zip(masks, expected)] for masks in results]
    ok = all("CUDA graph" in p for p in providers) and min(min(a) for a in agree) >= MIN_AGREEMENT
    return {"status": "passed" if ok else "failed", "providers": providers, "agreement_with_eager": agree,
            "detail": "two Segmenters, each capturing its own graph on its first frame, started together in two threads"}


def predict_equals_stream(ckpt, device, size) -> dict:
    shots = frames(size, 4)
    with Segmenter(ckpt, device=device, half=device.type == "cuda") as seg:
        predicted = [seg.predict(f).mask for f in shots]
        streamed = [r.mask for r in seg.stream(iter(shots))]
        provider = seg.backend.provider
    same = [bool(np.array_equal(p, s)) for p, s in zip(predicted, streamed)]
    ok = len(streamed) == len(shots) and all(same)
    return {"status": "passed" if ok else "failed", "provider": provider, "frames": len(shots),
            "streamed": len(streamed), "identical": same}


def inference_mode_mixed(ckpt, device, size) -> dict:
    (shot,) = frames(size, 1)
    with Segmenter(ckpt, device=device, half=device.type == "cuda") as seg:
        mask = seg.predict(shot).mask  # inside torch.inference_mode (the Segmenter's own)
        assert not torch.is_inference_mode_enabled()
        batch = model_input(shot, seg.info, seg.device)  # a normal tensor, made outside inference mode
        out = seg.backend.infer(batch)
        direct = out.argmax(1)[0] if out.ndim == 4 else out[0]
        again = seg.predict(shot).mask  # and back inside
        provider = seg.backend.provider
    agree = agreement(direct.to(torch.uint8), mask)
    ok = agree >= MIN_AGREEMENT and np.array_equal(mask, again)
    return {"status": "passed" if ok else "failed", "provider": provider, "agreement_with_predict": agree,
            "predict_again_identical": bool(np.array_equal(mask, again)),
            "detail": "Segmenter.predict, then backend.infer outside inference mode, then predict again"}


PROBES = (
    ("capture_then_replay_in_another_thread", capture_then_replay_elsewhere, True),
    ("two_segmenters_capturing_at_once", two_segmenters_at_once, True),
    ("predict_equals_stream", predict_equals_stream, False),
    ("inference_mode_mixed", inference_mode_mixed, False),
)


def body(ctx: StageContext) -> None:
    plan, report = ctx.plan, ctx.report
    device = fixtures.device_for(plan)
    with ctx.timed("checkpoint"):
        ckpt = fixtures.checkpoint(ctx.work, plan.probes_arch, plan.probes_size, device)
    report.figure("settings", {"arch": plan.probes_arch, "size": f"{plan.probes_size[0]}x{plan.probes_size[1]}",
                               "precision": "fp16" if device.type == "cuda" else "fp32"})
    results = {}
    for name, probe, cuda_only in PROBES:
        if cuda_only and device.type != "cuda":
            results[name] = {"status": "skipped", "reason": "no CUDA"}
        elif not ctx.fits(name):
            results[name] = {"status": "not run", "reason": ctx.out_of_time(name)}
        else:
            try:
                with ctx.timed(name):
                    results[name] = probe(ckpt, device, plan.probes_size)
            except Exception as exc:  # the exception is the finding
                traceback.print_exc()
                results[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
            fixtures.release(device)
        print(f"{name}: {results[name]['status']} {results[name].get('reason', '')}", flush=True)
        report.figure("probes", results)
    failed = [n for n, r in results.items() if r["status"] == "failed"]
    if failed:
        report.finish("failed", "failed: " + ", ".join(failed))


if __name__ == "__main__":
    run_stage("probes", body)
