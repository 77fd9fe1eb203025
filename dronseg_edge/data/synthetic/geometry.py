"""Polygon helpers for the synthetic scenes. Points are (N, 2) float64 arrays, angles radians."""

from __future__ import annotations

import math

import numpy as np


def rect(center, length: float, width: float, angle: float = 0.0) -> np.ndarray:
    """Rectangle (4, 2): ``length`` along ``angle``, ``width`` across it."""
    half = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64) * [length / 2, width / 2]
    return rotate(half, angle) + np.asarray(center, dtype=np.float64)


def ellipse(center, length: float, width: float, points: int = 16) -> np.ndarray:
    """Ellipse (points, 2) with full axes ``length`` (along x) and ``width``."""
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    local = np.stack([np.cos(theta) * length / 2, np.sin(theta) * width / 2], axis=1)
    return local + np.asarray(center, dtype=np.float64)


def blob(rng: np.random.Generator, center, radius: float, roughness: float = 0.25, points: int = 24,
         stretch: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """Irregular closed shape around ``center`` with mean ``radius`` (smoothly varying radius)."""
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    wobble = sum(rng.normal(0, roughness / h) * np.cos(h * theta + rng.uniform(0, 2 * math.pi)) for h in (2, 3, 5))
    r = radius * np.clip(1.0 + wobble, 0.35, 1.8)
    local = np.stack([np.cos(theta) * r * stretch, np.sin(theta) * r], axis=1)
    return rotate(local, angle) + np.asarray(center, dtype=np.float64)


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray(points, dtype=np.float64) @ np.array([[c, s], [-s, c]])


def curve(rng: np.random.Generator, anchor, heading: float, step: float, bounds, wiggle: float) -> np.ndarray:
    """A smooth polyline through ``anchor`` that runs both ways until it leaves ``bounds``.

    ``bounds`` = (x0, y0, x1, y1); ``wiggle`` is the heading change per step (radians, std).
    """
    x0, y0, x1, y1 = bounds
    halves = []
    for direction in (0.0, math.pi):
        point, angle, turn, pts = np.asarray(anchor, dtype=np.float64), heading + direction, 0.0, []
        for _ in range(4000):
            turn = 0.85 * turn + rng.normal(0, wiggle)
            angle += turn
            point = point + step * np.array([math.cos(angle), math.sin(angle)])
            pts.append(point)
            if not (x0 <= point[0] <= x1 and y0 <= point[1] <= y1):
                break
        halves.append(pts)
    return np.asarray(halves[1][::-1] + [np.asarray(anchor, dtype=np.float64)] + halves[0])


def band(line: np.ndarray, width: float, offset: float = 0.0) -> np.ndarray:
    """Polygon (2N, 2) of a strip ``width`` wide along ``line``, shifted ``offset`` to its left."""
    tangent = np.gradient(line, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    n = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)  # unit left-normals, averaged over adjacent segments
    return np.concatenate([line + n * (offset + width / 2), (line + n * (offset - width / 2))[::-1]])


def arc_lengths(line: np.ndarray) -> np.ndarray:
    """Cumulative length (N,) along a polyline, starting at 0."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(line, axis=0).T))])


def point_on(line: np.ndarray, s: float) -> tuple[np.ndarray, float]:
    """Point (2,) and direction angle at arc length ``s`` along ``line``."""
    lengths = arc_lengths(line)
    s = float(np.clip(s, 0.0, lengths[-1]))
    i = min(int(np.searchsorted(lengths, s, side="right")) - 1, len(line) - 2)
    seg = line[i + 1] - line[i]
    frac = (s - lengths[i]) / max(float(np.hypot(*seg)), 1e-9)
    return line[i] + frac * seg, math.atan2(seg[1], seg[0])


def distance_to_line(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Shortest distance (N,) from points (N, 2) to a polyline (M, 2)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
    a, b = line[:-1][None], line[1:][None]
    ab = b - a
    t = np.clip(((pts - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    closest = a + t[..., None] * ab
    return np.sqrt(((pts - closest) ** 2).sum(-1)).min(axis=1)


def dashes(line: np.ndarray, dash: float, gap: float, width: float) -> list[np.ndarray]:
    """Rectangles (4, 2) of a dashed line along ``line`` (lane markings)."""
    starts = np.arange(gap / 2, arc_lengths(line)[-1] - dash, dash + gap)
    return [rect(point, dash, width, angle) for point, angle in (point_on(line, s + dash / 2) for s in starts)]
