"""Small objects of a synthetic drone scene: people, bikes, cars, animals, boats, drones.

Each is built in metres, then enlarged where needed so that it covers at least a few pixels
even in tiny renders (``per_px`` = world units per screen pixel where it stands).
"""

from __future__ import annotations

import math

import numpy as np

from dronseg_edge.data.synthetic import geometry as geo
from dronseg_edge.data.synthetic.landscape import SceneContext, pick
from dronseg_edge.data.synthetic.scene import Item, Part, ScreenItem

PERSON, BIKE, CAR, DRONE, BOAT, ANIMAL = 1, 2, 3, 4, 5, 6
CLOTHES = [(200, 40, 40), (40, 60, 150), (230, 230, 225), (30, 30, 35), (220, 180, 40), (60, 120, 70), (150, 150, 155)]
CAR_PAINT = [(235, 235, 232), (25, 25, 28), (170, 172, 176), (160, 30, 30), (35, 60, 130), (110, 110, 115)]


def _grow(ctx: SceneContext, visible_m: float, per_px: float, min_px: float = 3.0) -> float:
    """Units per metre for an object whose smallest visible side is ``visible_m`` metres."""
    return max(ctx.ppm, min_px * per_px / visible_m)


def person_parts(ctx: SceneContext, per_px: float) -> list[Part]:
    rng, unit = ctx.rng, _grow(ctx, 0.45, per_px)
    clothes = ctx.material(PERSON, pick(ctx, CLOTHES), 2, 4, jitter=15)
    legs = ctx.material(PERSON, pick(ctx, [(40, 45, 70), (30, 30, 32), (120, 110, 90)]), 2, 3)
    hair = ctx.material(PERSON, pick(ctx, [(40, 30, 25), (90, 65, 40), (20, 20, 20), (170, 140, 90)]), 1, 2)
    height = rng.uniform(1.55, 1.9) * unit
    return [Part(geo.ellipse((0, 0), 0.3 * unit, 0.5 * unit, points=10), clothes, 0.8 * height, 0.0, legs),
            Part(geo.ellipse((0, 0), 0.28 * unit, 0.5 * unit, points=10), clothes, 0.85 * height, 0.5 * height, clothes),
            Part(geo.ellipse((0.02 * unit, 0), 0.22 * unit, 0.2 * unit, points=8), hair, height, 0.85 * height, hair)]


def people(ctx: SceneContext, count: int) -> None:
    """``count`` people (class 1), often in small groups, walking slowly in random directions."""
    rng, placed = ctx.rng, 0
    while placed < count:
        (centre,), (per_px,) = ctx.sample(1)
        group = min(count - placed, int(rng.integers(1, 5)))
        for _ in range(group):
            spot = centre + rng.normal(0, ctx.metres(1.5), 2)
            if not ctx.is_free(spot, ctx.metres(0.3), road=False, water=True):
                continue
            heading = rng.uniform(0, 2 * math.pi)
            path = np.array([spot, spot + ctx.metres(40) * np.array([math.cos(heading), math.sin(heading)])])
            ctx.item(Item(person_parts(ctx, per_px), path, speed=ctx.metres(rng.uniform(0.5, 1.0) * 1.4)))
        placed += group


def bikes(ctx: SceneContext, count: int) -> None:
    """Bicycles (class 2) with a rider (class 1) on most, ridden along roads where there are roads."""
    rng = ctx.rng
    for _ in range(count):
        (spot,), (per_px,) = ctx.sample(1)
        unit = _grow(ctx, 0.9, per_px)
        thin = max(0.12 * unit, 1.3 * per_px)
        frame = ctx.material(BIKE, pick(ctx, [(30, 30, 35), (180, 30, 30), (40, 70, 160), (200, 200, 200)]), 2, 2)
        tyre = ctx.material(BIKE, (25, 25, 25), 1, 2)
        parts = [*(Part(geo.rect((x * unit, 0), 0.7 * unit, thin), tyre, 0.7 * unit, 0.0, tyre) for x in (0.55, -0.55)),
                 Part(geo.rect((0, 0), 1.1 * unit, thin), frame, 0.9 * unit, 0.3 * unit, frame),
                 Part(geo.rect((0.5 * unit, 0), thin, 0.6 * unit), frame, 1.0 * unit, 0.8 * unit, frame)]
        path, speed, lateral, heading = np.array([spot]), 0.0, 0.0, rng.uniform(0, 2 * math.pi)
        ridden = rng.random() < 0.8
        if ridden:
            if ctx.roads and rng.random() < 0.7:
                path, width = ctx.roads[int(rng.integers(len(ctx.roads)))]
                lateral = width * rng.uniform(0.25, 0.42) * rng.choice([-1, 1])
            else:
                path = np.array([spot, spot + ctx.metres(60) * np.array([math.cos(heading), math.sin(heading)])])
            heading, speed = 0.0, ctx.metres(rng.uniform(3, 6))
        s0 = _nearest_arc(path, spot)
        for body in [parts] + ([person_parts(ctx, per_px)] if ridden else []):  # the bike, then its rider
            ctx.item(Item(body, path, heading, s0, speed, lateral))


def _nearest_arc(path: np.ndarray, point) -> float:
    return float(geo.arc_lengths(path)[int(np.argmin(np.hypot(*(path - point).T)))]) if len(path) > 1 else 0.0


def car_parts(ctx: SceneContext, per_px: float) -> list[Part]:
    rng, unit = ctx.rng, _grow(ctx, 1.8, per_px, 4.0)
    length, width, paint_rgb = rng.uniform(3.8, 4.9) * unit, rng.uniform(1.7, 1.95) * unit, pick(ctx, CAR_PAINT)
    paint = ctx.material(CAR, paint_rgb, 1, 2, jitter=8)
    side = ctx.material(CAR, np.asarray(paint_rgb) * 0.75, 1, 2, jitter=4)
    glass = ctx.material(CAR, (35, 40, 48), 1, 1, jitter=4)
    height = rng.uniform(1.4, 1.7) * unit
    return [Part(geo.rect((0, 0), length, width), paint, 0.6 * height, 0.0, side),
            Part(geo.rect((-0.05 * length, 0), 0.55 * length, 0.92 * width), glass, height, 0.6 * height, glass),
            Part(geo.rect((-0.1 * length, 0), 0.3 * length, 0.85 * width), paint, height)]


def cars(ctx: SceneContext, count: int, stalls: list[tuple[np.ndarray, float]]) -> None:
    """Cars (class 3): driving in lanes along the roads, or parked in stalls.

    Cars in one lane share its speed and start a few car lengths apart, so they never overlap.
    """
    rng = ctx.rng
    lanes: dict[tuple[int, int], tuple[float, list[float]]] = {}
    for _ in range(count):
        if stalls and rng.random() < 0.4:
            spot, angle = stalls.pop(int(rng.integers(len(stalls))))
            per_px = 1.0 / max(float(ctx.cameras[0].scale_at(spot)[0]), 1e-6)
            ctx.item(Item(car_parts(ctx, per_px), np.array([spot]), angle))
            continue
        if not ctx.roads:
            return
        road = int(rng.integers(len(ctx.roads)))
        (line, width), side = ctx.roads[road], int(rng.choice([-1, 1]))
        speed, taken = lanes.setdefault((road, side), (ctx.metres(rng.uniform(4, 14)) * -side, []))
        (near,), (per_px,) = ctx.sample(1)
        s0 = _nearest_arc(line, near)
        if not ctx.is_free(geo.point_on(line, s0)[0], 0.0, road=False):
            continue  # that stretch of road is under a pond
        parts = car_parts(ctx, per_px)
        length = float(np.ptp(parts[0].poly[:, 0]))
        if any(abs(s0 - other) < 1.6 * length for other in taken):
            continue
        taken.append(s0)
        ctx.item(Item(parts, line, 0.0, s0, speed, side * width * 0.25))


def animals(ctx: SceneContext, count: int) -> None:
    """A herd (class 6): cows, horses or sheep grazing, away from roads and water."""
    rng = ctx.rng
    kind = int(rng.integers(3))
    length_m, width_m, height_m = [(2.2, 0.8, 1.4), (2.3, 0.7, 1.6), (1.2, 0.6, 0.8)][kind]
    coats = [[(120, 80, 50), (30, 28, 26), (230, 225, 215)], [(110, 70, 40), (60, 40, 25)], [(225, 220, 205)]][kind]
    for _ in range(20):  # a pasture: somewhere off the roads, water and buildings
        (centre,), (per_px,) = ctx.sample(1, margin=0.15)
        if ctx.is_free(centre, ctx.metres(length_m)):
            break
    unit = _grow(ctx, width_m, per_px)
    for _ in range(count):
        spot = centre + rng.normal(0, ctx.metres(5), 2)
        if not ctx.is_free(spot, length_m * unit / 2):
            spot = centre + rng.normal(0, ctx.metres(1), 2)
        coat = ctx.material(ANIMAL, pick(ctx, coats), 2, 5, jitter=10)
        head = ctx.material(ANIMAL, np.asarray(pick(ctx, coats)) * 0.8, 2, 4, jitter=6)
        parts = [Part(geo.ellipse((0, 0), length_m * unit, width_m * unit, points=12), coat, height_m * unit, 0.0, coat),
                 Part(geo.ellipse((0.55 * length_m * unit, 0), 0.35 * length_m * unit, 0.45 * width_m * unit, points=8),
                      head, height_m * unit, 0.5 * height_m * unit, head)]
        heading = rng.uniform(0, 2 * math.pi)
        path = np.array([spot, spot + ctx.metres(10) * np.array([math.cos(heading), math.sin(heading)])])
        ctx.item(Item(parts, path, speed=ctx.metres(rng.uniform(0.0, 0.3))))


def boats(ctx: SceneContext, count: int, small: bool = False) -> None:
    """Boats (class 5) on the scene's first water (there is one), drifting along a river or across a pond
    (``small``: dinghies)."""
    rng = ctx.rng
    _, axis, half = ctx.waters[0]
    for _ in range(count):
        per_px = 1.0 / max(float(ctx.cameras[0].scale_at(axis[len(axis) // 2])[0]), 1e-6)
        unit = _grow(ctx, 1.6, per_px)
        length_m, beam_m = (rng.uniform(2.0, 3.2), rng.uniform(0.9, 1.3)) if small else (rng.uniform(3.5, 9.0), rng.uniform(1.5, 2.8))
        length, beam = length_m * unit, min(beam_m * unit, 1.6 * half)
        hull_rgb = pick(ctx, [(235, 235, 230), (180, 40, 40), (40, 70, 140), (200, 170, 60)])
        hull = ctx.material(BOAT, hull_rgb, 1, 3)
        side = ctx.material(BOAT, np.asarray(hull_rgb) * 0.7, 1, 2)
        deck = ctx.material(BOAT, pick(ctx, [(150, 120, 80), (200, 200, 200), (90, 90, 95)]), 2, 3)
        outline = np.array([[0.5, 0], [0.3, 0.5], [-0.5, 0.45], [-0.5, -0.45], [0.3, -0.5]]) * [length, beam]
        parts = [Part(outline, hull, ctx.metres(0.8), 0.0, side),
                 Part(geo.rect((-0.1 * length, 0), 0.35 * length, 0.6 * beam), deck, ctx.metres(1.6), ctx.metres(0.8), deck)]
        lateral = rng.uniform(-0.4, 0.4) * max(half - beam, 0)
        if len(axis) > 2:
            for _ in range(20):  # on open water, not under a road that crosses or follows the river
                (near,), _ = ctx.sample(1, margin=0.2, camera=0)
                s0 = _nearest_arc(axis, near)
                if ctx.is_free(geo.point_on(axis, s0)[0], length / 2 + ctx.metres(4), water=False):
                    ctx.item(Item(parts, axis, 0.0, s0, ctx.metres(rng.uniform(0.5, 3)), lateral))
                    break
        else:
            for _ in range(20):  # the pond may be half off screen: moor the boat in the visible part
                spot = axis[0] + rng.normal(0, 0.35 * half, 2)
                if ctx.on_screen(spot):
                    break
            ctx.item(Item(parts, np.array([spot]), rng.uniform(0, 2 * math.pi)))


def drone(ctx: SceneContext, size: tuple[int, int], in_sky: bool, sky_bottom: float) -> None:
    """A quadcopter (class 4) as an X with rotor discs, flying in screen space (sky or over ground)."""
    rng, (width, height) = ctx.rng, size
    span = max(rng.uniform(25, 75) * width / 1280, 8.0)
    arm = max(0.1 * span, 1.4)
    body = ctx.material(DRONE, pick(ctx, [(40, 40, 45), (230, 230, 230), (120, 120, 125)]), 0, 2)
    rotor = ctx.material(DRONE, (170, 170, 175), 0, 3, jitter=6)
    parts = [(body, geo.rect((0, 0), span * 0.8, arm, angle)) for angle in (math.pi / 4, -math.pi / 4)]
    parts += [(rotor, geo.ellipse(0.4 * span * np.array([math.cos(a), math.sin(a)]), 0.34 * span, 0.34 * span, points=10))
              for a in (math.pi / 4, 3 * math.pi / 4, -math.pi / 4, -3 * math.pi / 4)]
    parts.append((body, geo.rect((0, 0), 0.3 * span, 0.24 * span)))
    margin = span / min(width, height)
    if in_sky:
        top, bottom = min(0.05 + margin, sky_bottom), max(sky_bottom - margin, 0.05 + margin)
    else:
        top, bottom = 0.1 + margin, 0.9 - margin
    position = (rng.uniform(0.1 + margin, 0.9 - margin), rng.uniform(top, max(top, bottom)))
    speed, heading = rng.uniform(0.03, 0.1), rng.uniform(0, 2 * math.pi)
    velocity = (speed * math.cos(heading), speed * math.sin(heading) * (0.3 if in_sky else 1.0))
    ctx.world.flyers.append(ScreenItem(parts, position, velocity, rng.uniform(0, math.pi), rng.normal(0, 0.3)))
