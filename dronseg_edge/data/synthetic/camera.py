"""A drone camera over a flat world: a homography from world units to screen pixels.

The ground is a plane; the camera sees a trapezoid of it (a rectangle when looking straight
down). Mapping that trapezoid onto the screen rectangle below the horizon is a true
perspective view of a plane, so roads converge and far objects shrink without a 3-D renderer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import cv2
import numpy as np


@dataclass(frozen=True)
class Camera:
    """One view. World units are arbitrary; ``zoom`` is screen pixels per unit at the near edge.

    ``position`` is the world point at the bottom centre of the screen, ``heading`` (radians) the
    world direction that points up the screen. ``spread`` = far-edge width / near-edge width (1 =
    nadir), ``squash`` = ground foreshortening at the near edge (1 = nadir, smaller = more
    oblique). ``horizon`` is the screen row (fraction of the height) where the ground ends: > 0
    shows sky above it, < 0 puts the far edge above the screen. ``roll`` tilts the screen (radians).
    """

    size: tuple[int, int]
    position: tuple[float, float]
    heading: float = 0.0
    zoom: float = 1.0
    spread: float = 1.0
    squash: float = 1.0
    horizon: float = 0.0
    roll: float = 0.0

    @property
    def horizon_px(self) -> float:
        return self.horizon * self.size[1]

    @property
    def tilt(self) -> float:
        """Screen height of a 1-unit vertical post relative to a 1-unit ground step across the view."""
        return math.sqrt(max(0.0, 1.0 - self.squash**2))

    @cached_property
    def _axes(self) -> tuple[np.ndarray, np.ndarray]:
        forward = np.array([math.sin(self.heading), -math.cos(self.heading)])
        right = np.array([math.cos(self.heading), math.sin(self.heading)])
        return forward, right

    @cached_property
    def roll_matrix(self) -> np.ndarray:
        """3x3 screen rotation by ``roll`` about the screen centre."""
        width, height = self.size
        rot = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), math.degrees(self.roll), 1.0)
        return np.vstack([rot, [0.0, 0.0, 1.0]])

    @cached_property
    def _unrolled(self) -> np.ndarray:
        width, height = self.size
        near = width / self.zoom
        depth = self.spread * (height - self.horizon_px) / (self.squash * self.zoom)
        forward, right = self._axes
        origin, far = np.asarray(self.position, dtype=np.float64), self.spread * near / 2.0
        corners = ((-near / 2, 0), (near / 2, 0), (far, depth), (-far, depth))  # (lateral, ahead)
        src = np.float32([origin + lateral * right + ahead * forward for lateral, ahead in corners])
        dst = np.float32([[0, height], [width, height], [width, self.horizon_px], [0, self.horizon_px]])
        return cv2.getPerspectiveTransform(src, dst)

    @cached_property
    def homography(self) -> np.ndarray:
        """3x3 float64 matrix mapping world (x, y, 1) to screen (u, v, w), with w > 0 in view."""
        matrix = self.roll_matrix @ self._unrolled
        return -matrix if matrix[2] @ np.array([*self.position, 1.0]) < 0 else matrix

    @cached_property
    def near_plane(self) -> np.ndarray:
        """(a, b, c): world points with a*x + b*y + c > 0 lie in front of the camera, well below
        the screen bottom included; polygons are clipped to it so nothing wraps through infinity."""
        row = self.homography[2]
        w_near = float(row @ np.array([*self.position, 1.0]))
        return np.array([row[0], row[1], row[2] - 0.25 * w_near]) / w_near

    @cached_property
    def up(self) -> np.ndarray:
        """Unit screen vector pointing up (toward the horizon), (2,)."""
        return self.roll_matrix[:2, :2] @ np.array([0.0, -1.0])

    def project(self, points: np.ndarray) -> np.ndarray:
        """World (N, 2) -> screen pixels (N, 2), float64."""
        return transform(self.homography, points, floor=1e-9)

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """Screen pixels (N, 2) on the ground -> world (N, 2)."""
        return transform(np.linalg.inv(self.homography), pixels)

    def scale_at(self, points: np.ndarray) -> np.ndarray:
        """Screen pixels per world unit (square root of the local area ratio) at world points (N, 2)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        base = self.project(pts)
        du, dv = self.project(pts + [1.0, 0.0]) - base, self.project(pts + [0.0, 1.0]) - base
        return np.sqrt(np.abs(du[:, 0] * dv[:, 1] - du[:, 1] * dv[:, 0]))

    def lateral_scale(self, points: np.ndarray) -> np.ndarray:
        """Screen pixels per world unit along the screen's horizontal at world points (N, 2)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.linalg.norm(self.project(pts + self._axes[1]) - self.project(pts), axis=1)

    def footprint(self) -> np.ndarray:
        """World corners (4, 2) of the ground the screen shows (sky excluded)."""
        width, height = self.size
        unrolled = transform(np.linalg.inv(self.roll_matrix), [[0, 0], [width, 0], [width, height], [0, height]])
        unrolled[:, 1] = np.maximum(unrolled[:, 1], self.horizon_px + 1e-3)
        return transform(np.linalg.inv(self._unrolled), unrolled)

    def sample_ground(self, rng: np.random.Generator, count: int, margin: float = 0.08) -> np.ndarray:
        """``count`` random world points (N, 2) that appear on screen, away from its edges."""
        width, height = self.size
        top = max(self.horizon_px, 0.0) + margin * height
        u = rng.uniform(margin * width, (1 - margin) * width, count)
        v = rng.uniform(top, (1 - margin) * height, count)
        return self.unproject(transform(self.roll_matrix, np.stack([u, v], axis=1)))


def transform(matrix: np.ndarray, points, floor: float | None = None) -> np.ndarray:
    """Points (N, 2) through the 3x3 projective ``matrix`` -> (N, 2) float64; ``floor`` bounds w from below."""
    hom = np.asarray(points, dtype=np.float64).reshape(-1, 2) @ matrix[:, :2].T + matrix[:, 2]
    return hom[:, :2] / (hom[:, 2:3] if floor is None else np.maximum(hom[:, 2:3], floor))


def clip_to_halfplane(poly: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman against one half-plane ``a*x + b*y + c >= 0``; poly (N, 2) -> (M, 2)."""
    side = poly @ plane[:2] + plane[2]
    if np.all(side >= 0):
        return poly
    if np.all(side < 0):
        return poly[:0]
    out = []
    for i in range(len(poly)):
        j = (i + 1) % len(poly)
        if side[i] >= 0:
            out.append(poly[i])
        if (side[i] >= 0) != (side[j] >= 0):
            t = side[i] / (side[i] - side[j])
            out.append(poly[i] + t * (poly[j] - poly[i]))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


# The tilted views' spread, squash and horizon ranges, and the std of their roll.
TILTED = {"oblique": ((1.3, 2.2), (0.55, 0.9), (-0.3, -0.05), 0.025), "sky": ((1.6, 2.6), (0.45, 0.8), (0.12, 0.33), 0.03)}


def random_view(rng: np.random.Generator, size: tuple[int, int], kind: str) -> Camera:
    """A camera at the world origin: ``nadir`` (straight down), ``oblique`` (tilted, no sky) or
    ``sky`` (tilted up to show a horizon)."""
    heading = float(rng.uniform(0, 2 * math.pi))
    if kind == "nadir":
        return Camera(size, (0.0, 0.0), heading)
    *ranges, roll = TILTED[kind]
    return Camera(size, (0.0, 0.0), heading, 1.0, *(float(rng.uniform(*r)) for r in ranges), float(rng.normal(0, roll)))


def moved(camera: Camera, rng: np.random.Generator) -> Camera:
    """The next frame of a still sequence: the drone drifted a little forward and sideways."""
    width, height = camera.size
    forward, right = camera._axes
    step = right * rng.uniform(-0.06, 0.06) * width + forward * rng.uniform(0.02, 0.1) * height
    position = tuple(float(v) for v in np.asarray(camera.position) + step / camera.zoom)
    return replace(camera, position=position, heading=camera.heading + float(rng.normal(0, 0.04)))


def flight(rng: np.random.Generator, size: tuple[int, int], kind: str, frames: int, fps: float) -> list[Camera]:
    """Cameras for ``frames`` video frames: the drone flies forward, weaving, zooming and rolling a little."""
    start = random_view(rng, size, kind)
    speed = rng.uniform(0.15, 0.3) * size[1]  # world units per second
    weave, zoom_phase, roll_phase = rng.uniform(0, 2 * math.pi, 3)
    cameras, position = [], np.asarray(start.position, dtype=np.float64)
    for index in range(frames):
        t = index / fps
        heading = start.heading + 0.12 * math.sin(2 * math.pi * t / 6.0 + weave)
        zoom = 1.0 + 0.05 * math.sin(2 * math.pi * t / 5.0 + zoom_phase)
        roll = start.roll + (0.015 * math.sin(2 * math.pi * t / 4.0 + roll_phase) if kind != "nadir" else 0.0)
        cameras.append(replace(start, position=tuple(float(v) for v in position), heading=heading, zoom=zoom, roll=roll))
        position = position + speed / fps * np.array([math.sin(heading), -math.cos(heading)])
    return cameras
