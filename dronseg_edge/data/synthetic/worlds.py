"""Compose whole synthetic worlds: pick a theme, lay out scenery and objects, light the scene.

The per-theme counts are tuned so that a data set's class pixel shares land near AeroScapes'
(vegetation, road and background dominate; persons, cars and obstacles are a few tenths of a
percent; bikes, drones, boats and animals less), while ``forced`` classes guarantee that rare
classes appear in small data sets.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dronseg_edge.data.synthetic import landscape, objects
from dronseg_edge.data.synthetic.camera import Camera
from dronseg_edge.data.synthetic.landscape import CONSTRUCTION, VEGETATION, SceneContext
from dronseg_edge.data.synthetic.scene import SKY, Lighting, Material, World

THEMES = {
    # roads: (probabilities of 0..3 roads), width range m; then counts (low, high) per view
    "urban": dict(p=0.25, roads=(0.0, 0.35, 0.45, 0.2), width=(8, 18), parking=0.5, buildings=(1, 5),
                  trees=(0, 8), poles=(1, 5), fences=(0, 1), barriers=(0, 3), people=(0.9, 6, 24),
                  cars=(0.55, 1, 4), bikes=(0.5, 1, 2), water=0.02, herd=0.0),
    "suburban": dict(p=0.35, roads=(0.1, 0.55, 0.35, 0.0), width=(7, 13), parking=0.2, buildings=(0, 3),
                     trees=(4, 16), poles=(0, 3), fences=(0, 1), barriers=(0, 1), people=(0.85, 3, 16),
                     cars=(0.35, 1, 3), bikes=(0.4, 1, 2), water=0.05, herd=0.02),
    "rural": dict(p=0.3, roads=(0.3, 0.6, 0.1, 0.0), width=(4, 8), parking=0.0, buildings=(0, 2),
                  trees=(3, 20), poles=(0, 2), fences=(0, 2), barriers=(0, 1), people=(0.6, 2, 10),
                  cars=(0.15, 1, 2), bikes=(0.25, 1, 1), water=0.12, herd=0.1),
    "park": dict(p=0.1, roads=(0.3, 0.7, 0.0, 0.0), width=(3, 6), parking=0.0, buildings=(0, 1),
                 trees=(6, 20), poles=(0, 2), fences=(0, 1), barriers=(0, 1), people=(0.9, 4, 18),
                 cars=(0.0, 0, 0), bikes=(0.4, 1, 2), water=0.6, herd=0.0),
}
# Still sequences take turns forcing one class of each rota, so a dozen images show all 12 classes.
RARE = (SKY, objects.BOAT, objects.DRONE, objects.ANIMAL)
FREQUENT = (objects.CAR, objects.BIKE, CONSTRUCTION)
MAX_FLIGHT_SCALE = 4.0


def _counts(rng: np.random.Generator, low: int, high: int, scale: float) -> int:
    return int(round(rng.integers(low, high + 1) * scale))


def _maybe(rng: np.random.Generator, spec: tuple, scale: float) -> int:
    p, low, high = spec
    return _counts(rng, low, high, scale) if rng.random() < p else 0


def build_world(rng: np.random.Generator, cameras: list[Camera], forced: frozenset[int] = frozenset(),
                theme: str | None = None, video: bool = False) -> World:
    """A world seen by ``cameras`` (their footprints bound it); ``forced`` classes are always placed.

    ``video`` adds what a flight should show: a road along the path with moving cars, walking
    people and a drone.
    """
    size = cameras[0].size
    if theme is None:
        names = list(THEMES)
        theme = names[int(rng.choice(len(names), p=[THEMES[n]["p"] for n in names]))]
    spec = THEMES[theme]
    world = World(materials=[], base_material=0)
    corners = np.concatenate([cam.footprint() for cam in cameras])
    ctx = SceneContext(world, rng, cameras, ppm=rng.uniform(25, 52) * size[0] / 1280, bounds=(0, 0, 0, 0))
    margin = 0.1 * ctx.view_size()
    ctx.bounds = (corners[:, 0].min() - margin, corners[:, 1].min() - margin,
                  corners[:, 0].max() + margin, corners[:, 1].max() + margin)
    # A flight sees more ground than one view: scale the object counts with the distance flown, up to
    # MAX_FLIGHT_SCALE (a scene holds 256 materials; a longer flight's ground is more sparsely filled).
    travelled = float(np.hypot(*np.subtract(cameras[-1].position, cameras[0].position)))
    scale = min(1.0 + travelled / ctx.view_size(), MAX_FLIGHT_SCALE) if video else 1.0
    _light(ctx, cameras)

    landscape.terrain(ctx, theme)
    road_count = max(int(rng.choice(4, p=spec["roads"])), int(video or objects.CAR in forced))
    landscape.roads(ctx, road_count, spec["width"], along=cameras[0].heading - math.pi / 2 if video else None)
    stalls = landscape.parking(ctx) if rng.random() < spec["parking"] else []
    if objects.BOAT in forced or rng.random() < spec["water"]:
        landscape.water(ctx, river=objects.BOAT not in forced and rng.random() < 0.5, need_pond=objects.BOAT in forced)
    landscape.buildings(ctx, max(_counts(rng, *spec["buildings"], scale), int(CONSTRUCTION in forced)))
    landscape.trees(ctx, _counts(rng, *spec["trees"], scale))
    landscape.obstacles(ctx, _counts(rng, *spec["poles"], scale), _counts(rng, *spec["fences"], scale),
                        _counts(rng, *spec["barriers"], scale))

    objects.cars(ctx, max(_maybe(rng, spec["cars"], scale), 4 if video else int(objects.CAR in forced)), stalls)
    objects.bikes(ctx, max(_maybe(rng, spec["bikes"], scale), int(objects.BIKE in forced)))
    objects.people(ctx, max(_maybe(rng, spec["people"], scale), 4 if video else int(objects.PERSON in forced)))
    if rng.random() < spec["herd"]:
        objects.animals(ctx, int(rng.integers(3, 11)))
    elif objects.ANIMAL in forced:
        objects.animals(ctx, int(rng.integers(1, 3)))
    if ctx.waters and (objects.BOAT in forced or rng.random() < 0.15):
        objects.boats(ctx, 1, small=True) if objects.BOAT in forced else objects.boats(ctx, int(rng.integers(1, 4)))

    has_sky = any(cam.horizon > 0 for cam in cameras)
    if has_sky:
        _sky(ctx)
    if video or objects.DRONE in forced or rng.random() < 0.03:
        objects.drone(ctx, size, has_sky and rng.random() < 0.7, min(cam.horizon for cam in cameras))
    _noise(ctx)
    return world


def _light(ctx: SceneContext, cameras: list[Camera]) -> None:
    rng = ctx.rng
    warmth, level, oblique = rng.normal(0, 0.05), rng.uniform(0.82, 1.18), any(cam.spread > 1 for cam in cameras)
    ctx.world.light = Lighting(  # BGR gains: warm light lifts red, cuts blue
        gain=(level * (1 - warmth), level, level * (1 + warmth)), contrast=rng.uniform(0.85, 1.15),
        offset=rng.uniform(-10, 10), shadow=rng.uniform(0.2, 0.55), haze_rgb=tuple(rng.uniform(185, 225, 3) * [0.97, 0.99, 1.03]),
        haze=rng.uniform(0.05, 0.4) if oblique else 0.0,
        blur=rng.uniform(0.3, 0.9) * min(1.0, cameras[0].size[0] / 640) if rng.random() < 0.6 else 0.0,
        grain=rng.uniform(1.0, 4.0))
    azimuth, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.0)
    ctx.world.sun = (length * math.cos(azimuth), length * math.sin(azimuth))


def _sky(ctx: SceneContext) -> None:
    """Sky (class 11), a distant tree line and skyline buildings along the horizon, clouds."""
    rng, world = ctx.rng, ctx.world
    blue = np.array([150, 190, 230]) if rng.random() < 0.7 else np.array([195, 200, 210])
    world.sky_material = world.add_material(Material(SKY, tuple(float(c) for c in blue + rng.normal(0, 8, 3))))
    world.clouds = rng.standard_normal((3, 7)).astype(np.float32) if rng.random() < 0.6 else None
    if rng.random() < 0.85:
        xs = np.linspace(-0.05, 1.05, 60)
        tops = np.clip(0.012 + np.convolve(rng.uniform(0, 0.05, 64), np.ones(5) / 5, "valid"), 0.004, None)
        line = np.concatenate([np.stack([xs, tops[:60]], 1), [[1.05, -0.01], [-0.05, -0.01]]])
        world.skyline.append((ctx.material(VEGETATION, (70, 95, 75), 0, 6), line))
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.5 else 0):
        x, w, h = rng.uniform(0, 0.95), rng.uniform(0.02, 0.08), rng.uniform(0.02, 0.07)
        box = np.array([[x, -0.01], [x + w, -0.01], [x + w, h], [x, h]])
        world.skyline.append((ctx.material(CONSTRUCTION, (150, 150, 155), 0, 4), box))


def _noise(ctx: SceneContext) -> None:
    """World-anchored texture: channel 0 coarse patches, channel 1 fine grain, unit variance."""
    rng, (x0, y0, x1, y1) = ctx.rng, ctx.bounds
    cell = max(1.0, ctx.metres(0.15), max(x1 - x0, y1 - y0) / 1500)  # the grid is at most 1500 px a side
    width, height = int((x1 - x0) / cell) + 2, int((y1 - y0) / cell) + 2
    coarse_shape = (max(2, height // 24), max(2, width // 24))
    coarse = cv2.resize(rng.standard_normal(coarse_shape).astype(np.float32), (width, height),
                        interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 0.8)
    coarse /= max(float(coarse.std()), 1e-6)
    fine /= max(float(fine.std()), 1e-6)
    ctx.world.noise = np.ascontiguousarray(np.stack([coarse, fine], axis=2))
    ctx.world.noise_to_world = np.array([[cell, 0, x0], [0, cell, y0], [0, 0, 1]], dtype=np.float64)
