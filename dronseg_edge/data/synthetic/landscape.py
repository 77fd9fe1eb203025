"""Static scenery of a synthetic drone scene: terrain, water, roads, buildings, trees, obstacles.

Sizes are drawn in metres and converted with the scene's ground resolution (``ppm`` world units
per metre); placements are sampled where the cameras look, so little is generated off screen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dronseg_edge.data.synthetic import geometry as geo
from dronseg_edge.data.synthetic.camera import Camera
from dronseg_edge.data.synthetic.scene import Item, Material, Part, World

BACKGROUND, OBSTACLE, CONSTRUCTION, VEGETATION, ROAD = 0, 7, 8, 9, 10

# Past this many materials a new one of a class already present shares the nearest of its colours: a scene
# holds 256 (scene.World), and a long flight has more objects than that, the sky still to come.
SHARED_FROM = 240


@dataclass
class SceneContext:
    """What the generators share while one world is built."""

    world: World
    rng: np.random.Generator
    cameras: list[Camera]
    ppm: float
    bounds: tuple[float, float, float, float]
    roads: list[tuple[np.ndarray, float]] = field(default_factory=list)  # centreline, width (units)
    waters: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)  # polygon, axis, half width
    blockers: list[tuple[np.ndarray, float]] = field(default_factory=list)  # centre, radius
    road_layer: int | None = None  # index of the first road in world.ground (rivers go under roads)

    def metres(self, value: float) -> float:
        return value * self.ppm

    def material(self, cls: int, rgb, coarse: float = 0.0, fine: float = 0.0, jitter: float = 10.0) -> int:
        """Add a material whose colour is ``rgb`` jittered by about ``jitter`` levels."""
        # Mostly brightness variation, a little hue: natural surfaces vary in shade more than in tint.
        tone = 1.0 + self.rng.normal(0, jitter / 100)
        colour = np.clip(np.asarray(rgb, dtype=np.float64) * tone + self.rng.normal(0, jitter * 0.3, 3), 0, 255)
        same = [i for i, m in enumerate(self.world.materials) if m.cls == cls]
        if len(self.world.materials) >= SHARED_FROM and same:  # a long flight's many objects: share a colour
            return min(same, key=lambda i: float(np.abs(np.subtract(self.world.materials[i].rgb, colour)).sum()))
        return self.world.add_material(Material(cls, tuple(float(c) for c in colour), coarse, fine))

    def sample(self, count: int, margin: float = 0.06, camera: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``count`` world points seen by the cameras, and world units per screen pixel at each."""
        seen = []
        for _ in range(count):
            cam = self.cameras[camera if camera is not None else int(self.rng.integers(len(self.cameras)))]
            seen.append((cam.sample_ground(self.rng, 1, margin), cam))
        return (np.asarray([point[0] for point, _ in seen]).reshape(-1, 2),
                np.asarray([1.0 / max(float(cam.scale_at(point)[0]), 1e-6) for point, cam in seen]))

    def is_free(self, point, radius: float, road: bool = True, water: bool = True) -> bool:
        point = np.asarray(point, dtype=np.float64)
        return not (any(np.hypot(*(point - centre)) < r + radius for centre, r in self.blockers)
                    or road and any(geo.distance_to_line(point, line)[0] < width / 2 + radius for line, width in self.roads)
                    or water and any(geo.distance_to_line(point, axis)[0] < half + radius for _, axis, half in self.waters))

    def on_screen(self, point, margin: float = 0.05) -> bool:
        """Whether the first camera shows ``point``, ``margin`` (fraction of the size) inside its edges."""
        (width, height), (u, v) = self.cameras[0].size, self.cameras[0].project(np.asarray(point, dtype=np.float64))[0]
        top = max(self.cameras[0].horizon_px, 0.0)
        return margin * width <= u <= (1 - margin) * width and top + margin * height <= v <= (1 - margin) * height

    def clearance(self, point) -> float:
        """Distance from ``point`` to the nearest road edge (sidewalks included) or blocker."""
        point = np.asarray(point, dtype=np.float64)
        gaps = [float(np.hypot(*(point - centre))) - r for centre, r in self.blockers]
        gaps += [float(geo.distance_to_line(point, line)[0]) - width / 2 - self.metres(4) for line, width in self.roads]
        return min(gaps, default=math.inf)

    def ground(self, material: int, poly: np.ndarray) -> None:
        self.world.ground.append((material, poly))

    def item(self, item: Item, block: float = 0.0) -> None:
        self.world.items.append(item)
        if block > 0:
            self.blockers.append((np.asarray(item.path[0], dtype=np.float64), block))

    def view_size(self) -> float:
        """Typical extent of one view in world units (geometric mean of the first footprint's sides)."""
        corners = self.cameras[0].footprint()
        (ax, ay), (bx, by) = corners[2] - corners[0], corners[3] - corners[1]
        return math.sqrt(abs(ax * by - ay * bx) / 2)


GRASS = [(85, 125, 55), (100, 140, 62), (120, 135, 70), (150, 145, 92), (70, 105, 48)]
SOIL = [(140, 112, 82), (165, 140, 105), (190, 178, 145), (150, 146, 136), (120, 100, 80)]
PAVEMENT = [(165, 160, 152), (150, 148, 142), (185, 178, 165)]
ASPHALT = [(82, 85, 90), (100, 100, 102), (70, 72, 76), (140, 138, 132)]
ROOFS = [(165, 82, 62), (120, 120, 126), (72, 72, 78), (132, 98, 72), (200, 200, 194), (95, 110, 120)]
WALLS = [(205, 195, 175), (180, 176, 166), (150, 118, 98), (220, 218, 210)]


def pick(ctx: SceneContext, colours: list) -> tuple:
    return colours[int(ctx.rng.integers(len(colours)))]


def terrain(ctx: SceneContext, theme: str) -> None:
    """Base cover plus field, soil and pavement patches, all ground level (classes 0 and 9)."""
    rng, view = ctx.rng, ctx.view_size()
    if theme == "urban":
        ctx.world.base_material = ctx.material(BACKGROUND, pick(ctx, PAVEMENT), 6, 8)
        mix = [(VEGETATION, GRASS, 0.45), (BACKGROUND, SOIL, 0.25), (BACKGROUND, PAVEMENT, 0.3)]
        count = rng.integers(2, 6)
    else:
        base_veg = rng.random() < (0.9 if theme == "rural" else 0.8)
        cls, colours = (VEGETATION, GRASS) if base_veg else (BACKGROUND, SOIL)
        ctx.world.base_material = ctx.material(cls, pick(ctx, colours), 16, 11)
        mix = [(VEGETATION, GRASS, 0.45), (BACKGROUND, SOIL, 0.4), (BACKGROUND, PAVEMENT, 0.15)]
        count = rng.integers(2, 7)
    points, _ = ctx.sample(int(count * len(ctx.cameras) ** 0.5), margin=-0.2)
    for centre in points:
        cls, colours, _ = mix[int(rng.choice(len(mix), p=[m[2] for m in mix]))]
        material = ctx.material(cls, pick(ctx, colours), rng.uniform(8, 20), rng.uniform(6, 14))
        size, angle = view * rng.uniform(0.15, 0.55), rng.uniform(0, math.pi)
        if rng.random() < 0.5:
            field_poly = geo.rect(centre, size * rng.uniform(1, 2), size, angle)
            ctx.ground(material, field_poly)
            if cls == VEGETATION and rng.random() < 0.5:  # crop rows across the field
                length, spacing = np.hypot(*(field_poly[0] - field_poly[1])), max(ctx.metres(rng.uniform(0.8, 2.0)), 2.0)
                rows = ctx.material(VEGETATION, (70, 100, 45), 10, 8)
                across = np.array([math.cos(angle + math.pi / 2), math.sin(angle + math.pi / 2)])
                for offset in np.arange(-size / 2 + spacing / 2, size / 2, spacing)[:150]:
                    ctx.ground(rows, geo.rect(np.asarray(centre) + across * offset, length, spacing * 0.45, angle))
        else:
            ctx.ground(material, geo.blob(rng, centre, size / 2, 0.3, stretch=rng.uniform(1, 2), angle=angle))


def water(ctx: SceneContext, river: bool, need_pond: bool = False) -> None:
    """A pond or a river (class 0, as in AeroScapes) with a muddy bank.

    Called after the roads: a pond keeps clear of them (unless ``need_pond`` and there is no
    room), a river is drawn under them (bridges).
    """
    rng, view = ctx.rng, ctx.view_size()
    candidates, _ = ctx.sample(1 if river else 24, margin=0.12, camera=0)
    room = [ctx.clearance(c) for c in candidates]
    centre, room = candidates[int(np.argmax(room))], max(room)
    # No room between the roads: a needed pond floods one (a boat ramp), else a river passes under them.
    if room < 0.06 * view and not river:
        room, river = (0.15 * view, False) if need_pond else (room, True)
    colour = pick(ctx, [(55, 85, 100), (60, 90, 80), (80, 105, 120)])
    shore, surface = ctx.material(BACKGROUND, (150, 135, 100), 10, 10), ctx.material(BACKGROUND, colour, 6, 2)
    if river:
        width = view * rng.uniform(0.15, 0.35)
        axis = geo.curve(rng, centre, rng.uniform(0, 2 * math.pi), width, _grow(ctx.bounds, width), 0.03)
        at = len(ctx.world.ground) if ctx.road_layer is None else ctx.road_layer
        ctx.world.ground[at:at] = [(shore, geo.band(axis, width * 1.12)), (surface, geo.band(axis, width))]
        if ctx.road_layer is not None:
            ctx.road_layer += 2
        ctx.waters.append((geo.band(axis, width), axis, width / 2))
    else:
        radius = min(view * rng.uniform(0.12, 0.25), room / 1.25)
        poly = geo.blob(rng, centre, radius, 0.15)
        ctx.world.ground += [(shore, geo.blob(rng, centre, radius * 1.1, 0.1)), (surface, poly)]
        ctx.waters.append((poly, np.array([centre, centre + 1e-3]), radius * 0.8))


def _grow(bounds, margin: float):
    x0, y0, x1, y1 = bounds
    return (x0 - margin, y0 - margin, x1 + margin, y1 + margin)


def roads(ctx: SceneContext, count: int, width_m: tuple[float, float], along: float | None = None) -> None:
    """``count`` roads through the view (class 10) with sidewalks and markings.

    ``along`` (radians) makes the first road follow that world direction (the video's camera path).
    """
    rng = ctx.rng
    if ctx.road_layer is None:
        ctx.road_layer = len(ctx.world.ground)
    for index in range(count):
        (anchor,), _ = ctx.sample(1, margin=0.2, camera=0)
        heading = along if (index == 0 and along is not None) else rng.uniform(0, 2 * math.pi)
        width = ctx.metres(rng.uniform(*width_m))
        line = geo.curve(rng, anchor, heading, max(width, 4.0), _grow(ctx.bounds, width), 0.02)
        if rng.random() < 0.5:
            ctx.ground(ctx.material(BACKGROUND, pick(ctx, PAVEMENT), 6, 8),
                       geo.band(line, width + 2 * ctx.metres(rng.uniform(1.5, 3.5))))
        ctx.ground(ctx.material(ROAD, pick(ctx, ASPHALT), 6, 7), geo.band(line, width))
        if width >= ctx.metres(5.0) and rng.random() < 0.8:
            paint = ctx.material(ROAD, pick(ctx, [(230, 230, 225), (225, 195, 70)]), 3, 3, jitter=4)
            stripe = max(ctx.metres(0.15), 0.6)
            ctx.world.ground += [(paint, dash) for dash in geo.dashes(line, ctx.metres(3.0), ctx.metres(rng.uniform(3, 9)), stripe)]
            if rng.random() < 0.6:  # edge lines
                ctx.world.ground += [(paint, geo.band(line, stripe, side * (width / 2 - ctx.metres(0.4)))) for side in (-1, 1)]
        ctx.roads.append((line, width))


def parking(ctx: SceneContext) -> list[tuple[np.ndarray, float]]:
    """A parking lot beside the first road (class 10 with stall lines); returns stall poses."""
    if not ctx.roads:
        return []
    rng, (line, width) = ctx.rng, ctx.roads[0]
    point, angle = geo.point_on(line, geo.arc_lengths(line)[-1] * rng.uniform(0.3, 0.7))
    length, depth = ctx.metres(rng.uniform(20, 50)), ctx.metres(rng.uniform(11, 17))
    normal = np.array([-math.sin(angle), math.cos(angle)]) * rng.choice([-1, 1])
    centre = point + normal * (width / 2 + depth / 2)
    ctx.ground(ctx.material(ROAD, pick(ctx, ASPHALT), 6, 7), geo.rect(centre, length, depth, angle))
    paint = ctx.material(ROAD, (225, 225, 220), 3, 3, jitter=4)
    stall, along, stalls = ctx.metres(2.6), np.array([math.cos(angle), math.sin(angle)]), []
    for offset in np.arange(-length / 2 + stall, length / 2, stall):
        ctx.ground(paint, geo.rect(centre + along * offset, max(ctx.metres(0.12), 0.6), depth * 0.4, angle) + normal * depth * 0.25)
        stalls.append((centre + along * (offset - stall / 2) + normal * depth * 0.25, angle + math.pi / 2))
    ctx.blockers.append((centre, 0.5 * min(length, depth)))
    return stalls


def buildings(ctx: SceneContext, count: int) -> None:
    """Houses and halls (class 8): roof polygons with a shaded half, walls in oblique views."""
    rng = ctx.rng
    for centre, _ in zip(*ctx.sample(max(count * 3, 12) if count else 0, margin=-0.05)):
        if count <= 0:
            break
        length, depth = ctx.metres(rng.uniform(7, 22)), ctx.metres(rng.uniform(6, 13))
        if not ctx.is_free(centre, 0.55 * math.hypot(length, depth)):
            continue
        count -= 1
        height, roof_rgb = ctx.metres(rng.uniform(3, 12)), pick(ctx, ROOFS)
        wall, roof = ctx.material(CONSTRUCTION, pick(ctx, WALLS), 4, 4), ctx.material(CONSTRUCTION, roof_rgb, 5, 6)
        lit = ctx.material(CONSTRUCTION, np.clip(np.asarray(roof_rgb) * 1.25 + 10, 0, 255), 5, 6, jitter=3)
        # A gable roof's sunlit half is brighter; a flat roof has a lighter structure on top.
        top = geo.rect((0, depth / 4), length, depth / 2) if rng.random() < 0.65 else geo.rect((0, 0), length * 0.6, depth * 0.5)
        parts = [Part(geo.rect((0, 0), length, depth), roof, height, 0.0, wall), Part(top, lit, height)]
        ctx.item(Item(parts, np.array([centre]), rng.uniform(0, math.pi)), block=0.55 * math.hypot(length, depth))


def trees(ctx: SceneContext, count: int) -> None:
    """Trees (class 9): a crown floating on a trunk, in clumps; shadows fall on the ground."""
    rng = ctx.rng
    dark = ctx.material(VEGETATION, pick(ctx, [(45, 75, 35), (55, 85, 40), (40, 62, 38)]), 10, 18)
    light = ctx.material(VEGETATION, (80, 115, 55), 10, 16)
    trunk = ctx.material(VEGETATION, (90, 70, 50), 2, 2)
    centres, _ = ctx.sample(max(1, count // 3), margin=-0.05)
    for i in range(count):
        centre = centres[i % len(centres)] + rng.normal(0, ctx.metres(6), 2)
        radius = ctx.metres(rng.uniform(1.8, 5.0))
        if not ctx.is_free(centre, radius * 0.5):
            continue
        height = ctx.metres(rng.uniform(4, 12))
        sunward = -np.asarray(ctx.world.sun) / max(np.hypot(*ctx.world.sun), 1e-9) * radius * 0.3
        parts = [Part(geo.rect((0, 0), radius * 0.2, radius * 0.2), trunk, height * 0.4, 0.0, trunk),
                 Part(geo.blob(rng, (0, 0), radius, 0.25, 18), dark, height, height * 0.35, dark),
                 Part(geo.blob(rng, sunward, radius * 0.55, 0.3, 12), light, height)]
        ctx.item(Item(parts, np.array([centre])), block=radius * 0.5)


def obstacles(ctx: SceneContext, poles: int, fences: int, barriers: int) -> None:
    """Class 7: street poles along roads, fences along field edges, barriers and boxes."""
    rng = ctx.rng
    grey = ctx.material(OBSTACLE, pick(ctx, [(110, 110, 112), (70, 70, 72), (150, 140, 120)]), 2, 3)
    for _ in range(poles if ctx.roads else 0):
        line, width = ctx.roads[int(rng.integers(len(ctx.roads)))]
        (near,), (per_px,) = ctx.sample(1)
        s = float(np.argmin(np.hypot(*(line - near).T)))
        point, angle = geo.point_on(line, geo.arc_lengths(line)[int(s)])
        offset = (width / 2 + ctx.metres(rng.uniform(0.8, 2.5))) * rng.choice([-1, 1])
        spot = point + offset * np.array([-math.sin(angle), math.cos(angle)])
        thick, height = max(ctx.metres(0.3), 1.4 * per_px), ctx.metres(rng.uniform(5, 10))
        parts = [Part(geo.rect((0, 0), thick, thick), grey, height, 0.0, grey),
                 Part(geo.rect((0, 0), thick, max(ctx.metres(1.6), 3 * per_px)), grey, height)]
        ctx.item(Item(parts, np.array([spot]), angle), block=thick)
    for _ in range(fences):
        colour = ctx.material(OBSTACLE, pick(ctx, [(120, 95, 70), (160, 160, 160), (220, 220, 215)]), 2, 3)
        (start,), (per_px,) = ctx.sample(1)
        angle, thick = rng.uniform(0, 2 * math.pi), max(ctx.metres(0.12), 1.4 * per_px)
        for _ in range(int(rng.integers(1, 4))):
            length = ctx.metres(rng.uniform(5, 20))
            middle = start + length / 2 * np.array([math.cos(angle), math.sin(angle)])
            if not ctx.is_free(middle, length / 2, road=False):
                break  # fences stop at buildings, trees and water
            height = ctx.metres(rng.uniform(0.9, 1.6))
            rail = geo.rect((0, 0), length, thick)
            # Rails and posts, not a solid wall: oblique views see the ground through a fence.
            parts = [Part(rail, colour, height, height * 0.85, colour), Part(rail, colour, height * 0.5, height * 0.4, colour)]
            for x in np.arange(-length / 2, length / 2 + 1e-6, max(ctx.metres(2.5), 3 * per_px)):
                parts.append(Part(geo.rect((x, 0), thick, thick), colour, height, 0.0, colour))
            ctx.item(Item(parts, np.array([middle]), angle))
            start = start + length * np.array([math.cos(angle), math.sin(angle)])
            angle += rng.choice([-math.pi / 2, math.pi / 2, 0.0])
    for centre, per_px in zip(*ctx.sample(barriers)):
        if not ctx.is_free(centre, ctx.metres(1.5), road=False):
            continue
        colour = ctx.material(OBSTACLE, pick(ctx, [(220, 110, 40), (200, 40, 40), (230, 230, 225), (60, 90, 160)]), 3, 4)
        length = max(ctx.metres(rng.uniform(0.8, 4.0)), 3 * per_px)
        width = max(ctx.metres(rng.uniform(0.4, 1.5)), 2 * per_px)
        part = Part(geo.rect((0, 0), length, width), colour, ctx.metres(rng.uniform(0.8, 2.0)), 0.0, colour)
        ctx.item(Item([part], np.array([centre]), rng.uniform(0, math.pi)), block=length / 2)
