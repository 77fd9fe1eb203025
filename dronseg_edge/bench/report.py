"""Bench output: text and Markdown tables, warnings, and the JSON document (written atomically)."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from dronseg_edge.bench.run import BenchResult
from dronseg_edge.bench.stats import HIGH_CV

SCHEMA = "dronseg-edge-bench/1"
LATENCY_HEADERS = ("model", "backend / provider", "precision", "size", "batch", "graph", "min", "mean", "median",
                   "p90", "p95", "p99", "max", "cv %", "fps")


def now_iso() -> str:
    """The current local time, ISO 8601 with its UTC offset (e.g. 2025-11-24T19:56:03+00:00)."""
    return _dt.datetime.now().astimezone().replace(microsecond=0).isoformat()


def fmt_ms(value: float | None) -> str:
    """Milliseconds with about three significant digits (0.071, 7.83, 54.2, 7512)."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{3 if value < 1 else 2 if value < 10 else 1 if value < 100 else 0}f}"


def fmt_fps(value: float) -> str:
    """Frames per second: 0.040, 7.5, 146."""
    return f"{value:.{3 if value < 1 else 1 if value < 100 else 0}f}"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], markdown: bool = False) -> str:
    """A plain-text table (columns padded, numbers right-aligned) or a GitHub Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    numeric = [bool(cells) and all(row[i] == "-" or _is_number(row[i]) for row in cells) for i in range(len(headers))]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in cells])


def _is_number(text: str) -> bool:
    try:
        return float(text) is not None
    except ValueError:
        return False


def latency_table(results: Sequence[BenchResult], markdown: bool = False) -> str:
    """Latency in ms per model (per batch of ``batch`` frames) and throughput in frames/s."""
    rows = [[r.label, f"{r.backend} / {r.provider}", r.precision, f"{r.input_size[0]}x{r.input_size[1]}", str(r.batch),
             {None: "-", True: "on", False: "off"}[r.cuda_graph],
             *(fmt_ms(getattr(s, f"{key}_ms")) for key in ("min", "mean", "median", "p90", "p95", "p99", "max")),
             f"{100 * s.cv:.1f}", fmt_fps(s.throughput_fps)]
            for r in results for s in [r.measurement.latency]]
    return render_table(LATENCY_HEADERS, rows, markdown=markdown)


def stage_lines(results: Sequence[BenchResult]) -> list[str]:
    """GPU only: median host-to-device, compute and device-to-host times (CUDA events), one line per model."""
    lines = []
    for r in results:
        m = r.measurement
        if m.h2d is None or m.d2h is None:
            continue
        counted = "included in" if m.include_transfers else "excluded from"
        lines.append(f"{r.label}: h2d {fmt_ms(m.h2d.median_ms)} ms, compute {fmt_ms(m.compute.median_ms)} ms, "
                     f"d2h {fmt_ms(m.d2h.median_ms)} ms (medians, {m.timer}; transfers {counted} the latency); "
                     f"host wall {fmt_ms(m.host_wall.median_ms)} ms")
    return lines


def warning_lines(results: Sequence[BenchResult]) -> list[str]:
    """A warning per noisy run (coefficient of variation above HIGH_CV) and each backend note."""
    lines = []
    for r in results:
        s = r.measurement.latency
        if s.cv > HIGH_CV:
            gpu = r.measurement.timer == "cuda-events"
            lines.append(f"warning: {r.label}: latency varies by {100 * s.cv:.1f}% (cv > {100 * HIGH_CV:.0f}%): "
                         "warm up longer (--warmup-s), run more iterations"
                         + (", lock the GPU clocks (nvidia-smi -lgc)" if gpu else "")
                         + " and stop other work on this machine")
        lines += [f"note: {r.label}: {note}" for note in r.notes]
    return lines


def settings_line(settings: dict[str, Any], matrix: bool = False) -> str:
    """One line: what was measured and how (``matrix``: the CUDA graph is set per row, settings' is null)."""
    t = settings["timing"]
    warm = (f"warm-up {t['warmup_s']:g} s" if t["warmup_iters"] is None  # one untimed call always runs
            else f"{max(t['warmup_iters'], 1)} warm-up iteration{'s' * (t['warmup_iters'] > 1)}")
    if t["iters"] is None and t["duration_s"] is None:
        loop = f"at least {t['min_iters']} iterations and {t['min_seconds']:g} s"
    else:
        parts = [f"{t['iters']} iterations" if t["iters"] is not None else "",
                 f"{t['duration_s']:g} s" if t["duration_s"] is not None else ""]
        loop = f"at least {parts[0]} and {parts[1]}" if all(parts) else "".join(parts)
    size = settings.get("size") or "model's own size"
    graph = "per row" if matrix else {None: "backend default", True: "on", False: "off"}[settings.get("cuda_graph")]
    transfers = "included" if t["include_transfers"] else "excluded"
    return (f"settings: device {settings['device']}, size {size}, batch {settings['batch']}, {warm}, {loop}, "
            f"transfers {transfers}, cuda graph {graph}, timer {settings.get('timer', '?')}")


def build_document(system: dict[str, Any], settings: dict[str, Any], results: Sequence[BenchResult] = (),
                   matrix: Sequence[dict[str, Any]] | None = None,
                   failed: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """The JSON document of a run: schema, kind (bench, or matrix with ``matrix`` rows), ISO date, system (device,
    versions), settings, results, and for bench the models that ``failed`` (``{"model": path, "reason": message}``
    each, [] when none; a matrix row carries its own status and reason)."""
    doc: dict[str, Any] = {"schema": SCHEMA, "kind": "bench" if matrix is None else "matrix", "date": now_iso(),
                           "system": system, "settings": settings, "results": [r.to_dict() for r in results]}
    doc.update({"failed": list(failed)} if matrix is None else {"matrix": list(matrix)})
    return doc


def markdown_document(system_lines: Sequence[str], settings: dict[str, Any], table_md: str, title: str = "Latency",
                      matrix: bool = False, failed: Sequence[dict[str, str]] = ()) -> str:
    """A small Markdown page: title, the device/versions/settings as a list, the table, then the models that
    ``failed`` (build_document's entries) as a list."""
    bullets = [f"- {line}" for line in list(system_lines) + [settings_line(settings, matrix)]]
    failures = [f"- {Path(entry['model']).name}: failed ({entry['reason']})" for entry in failed]
    return "\n".join([f"## {title}", "", *bullets, "", table_md, *([""] * bool(failures)), *failures, ""])

