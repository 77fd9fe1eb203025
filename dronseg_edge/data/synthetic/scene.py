"""A synthetic drone scene and its rendering to an image plus an exactly matching class mask.

Everything in a scene is a polygon. A view rasterises the projected polygons once into a
*material* map (uint8, no anti-aliasing); the class mask is a lookup of that map and the image
is coloured from it, so every mask pixel is the class of the shape drawn at that pixel. Blur,
lighting and compression only act on the image afterwards, as a real camera would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from dronseg_edge.data.synthetic import geometry as geo
from dronseg_edge.data.synthetic.camera import Camera, clip_to_halfplane, transform

SKY = 11
_SHIFT = 3  # fillPoly sub-pixel bits: vertices keep 1/8 px precision
_SCALE = float(1 << _SHIFT)


@dataclass(frozen=True)
class Material:
    """A surface: its class, RGB colour (0..255) and texture strengths (colour levels, coarse and fine)."""

    cls: int
    rgb: tuple[float, float, float]
    coarse: float = 0.0
    fine: float = 0.0


@dataclass
class Part:
    """One polygon of an object in its local frame (x forward, y left), drawn at height ``z``.

    With ``side`` >= 0 the part is a prism from ``z0`` to ``z`` whose walls (seen in oblique views)
    use material ``side``; otherwise it is a flat shape floating at ``z``.
    """

    poly: np.ndarray
    material: int
    z: float = 0.0
    z0: float = 0.0
    side: int = -1


@dataclass
class Item:
    """An object standing on the ground; it moves along ``path`` (world (N, 2)) at ``speed`` units/s.

    A one-point path means the object stays put, facing ``heading`` (radians). ``lateral``
    offsets it to the left of the path (lanes); movement ping-pongs between the path's ends.
    """

    parts: list[Part]
    path: np.ndarray
    heading: float = 0.0
    s0: float = 0.0
    speed: float = 0.0
    lateral: float = 0.0

    def pose(self, t: float) -> tuple[np.ndarray, float]:
        """World position (2,) and facing angle (radians) at time ``t`` seconds."""
        if len(self.path) < 2:
            return self.path[0], self.heading
        seg = np.diff(self.path, axis=0)
        lengths = np.hypot(seg[:, 0], seg[:, 1])
        ends = np.cumsum(lengths)
        total = float(lengths.sum())
        s = (self.s0 + self.speed * t) % (2 * total)
        forward = s <= total
        s = s if forward else 2 * total - s
        index = min(int(np.searchsorted(ends, s)), len(seg) - 1)
        frac = (s - float(ends[index] - lengths[index])) / max(lengths[index], 1e-9)
        direction = seg[index] / max(lengths[index], 1e-9)
        normal = np.array([direction[1], -direction[0]])
        point = self.path[index] + frac * seg[index] + self.lateral * normal
        angle = math.atan2(direction[1], direction[0]) + self.heading
        return point, angle if forward else angle + math.pi

    def place(self, point: np.ndarray, angle: float) -> list[np.ndarray]:
        """The parts' polygons in world units with the object at ``point`` facing ``angle``."""
        return [geo.rotate(part.poly, angle) + point for part in self.parts]


@dataclass
class ScreenItem:
    """A flying object drawn in screen space (drones): parts in pixels around (0, 0).

    ``position`` and ``velocity`` are fractions of the screen (per second); ``spin`` is rad/s.
    """

    parts: list[tuple[int, np.ndarray]]
    position: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0
    spin: float = 0.0

    def screen_polys(self, size: tuple[int, int], t: float) -> list[tuple[int, np.ndarray]]:
        x = (self.position[0] + self.velocity[0] * t) * size[0]
        y = (self.position[1] + self.velocity[1] * t) * size[1]
        return [(material, geo.rotate(poly, self.angle + self.spin * t) + [x, y]) for material, poly in self.parts]


@dataclass
class Lighting:
    """Per-scene camera response: BGR gains, contrast, brightness offset, shadow darkness (0..1),
    haze colour (RGB) and strength at the far edge, blur sigma (px) and sensor grain (levels)."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    offset: float = 0.0
    shadow: float = 0.4
    haze_rgb: tuple[float, float, float] = (200.0, 205.0, 210.0)
    haze: float = 0.0
    blur: float = 0.0
    grain: float = 2.0


@dataclass
class World:
    """Everything in one scene. ``noise`` (h, w, 2) float32 is world-anchored texture (coarse, fine)
    and ``noise_to_world`` the 3x3 map from its pixel grid to world units."""

    materials: list[Material]
    base_material: int
    ground: list[tuple[int, np.ndarray]] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    flyers: list[ScreenItem] = field(default_factory=list)
    skyline: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (x/W, y/H above horizon)
    sky_material: int = -1
    clouds: np.ndarray | None = None
    sun: tuple[float, float] = (0.5, 0.3)  # shadow offset per unit of height
    light: Lighting = field(default_factory=Lighting)
    noise: np.ndarray | None = None
    noise_to_world: np.ndarray = field(default_factory=lambda: np.eye(3))

    def add_material(self, material: Material) -> int:
        self.materials.append(material)
        return len(self.materials) - 1


def _project_polys(camera: Camera, polys: list[np.ndarray]) -> list[np.ndarray | None]:
    """World polygons -> screen polygons, clipped in front of the camera (None where nothing is left)."""
    if not polys:
        return []
    plane = camera.near_plane
    polys = [p if np.all(p @ plane[:2] + plane[2] >= 0) else clip_to_halfplane(p, plane) for p in polys]
    sizes = [len(p) for p in polys]
    flat = camera.project(np.concatenate(polys)) if sum(sizes) else np.zeros((0, 2))
    return [poly if len(poly) >= 3 else None for poly in np.split(flat, np.cumsum(sizes)[:-1])]


def _fill(canvas: np.ndarray, poly: np.ndarray, value: int) -> None:
    # One polygon per call: fillPoly given several contours XORs their overlaps.
    cv2.fillPoly(canvas, [np.round(poly * _SCALE).astype(np.int32)], int(value), cv2.LINE_8, _SHIFT)


def _paint(mat: np.ndarray, shade: np.ndarray, poly: np.ndarray, material: int) -> None:
    """Draw ``material`` over ``poly``: what stands on top is never in the ground's shadow."""
    _fill(mat, poly, material)
    _fill(shade, poly, 0)


def _hull(points: np.ndarray) -> np.ndarray:
    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)


def _rasterise(world: World, camera: Camera, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Material map (H, W) uint8 and shadow map (H, W) uint8 (1 = in shadow) for one view."""
    width, height = camera.size
    mat = np.full((height, width), world.base_material, np.uint8)
    shade = np.zeros((height, width), np.uint8)
    for (material, _), poly in zip(world.ground, _project_polys(camera, [p for _, p in world.ground])):
        if poly is not None:
            _fill(mat, poly, material)

    poses = [item.pose(t) for item in world.items]
    points = np.array([p for p, _ in poses]).reshape(-1, 2)
    posed = [(item, item.place(*pose)) for item, pose in zip(world.items, poses)]
    sun = np.asarray(world.sun)
    shadows = [_hull(np.concatenate([poly, poly + sun * part.z]))
               for item, polys in posed
               for part, poly in zip(item.parts, polys) if part.z > 0]
    for poly in _project_polys(camera, shadows):
        if poly is not None:
            _fill(shade, poly, 1)

    if camera.horizon > 0 and world.sky_material >= 0:
        _draw_sky(world, camera, mat, shade)

    anchors = camera.project(points)
    lift = camera.up * camera.tilt
    lateral = camera.lateral_scale(points)
    for index in np.argsort(-(anchors @ camera.up), kind="stable"):
        item, polys = posed[index]
        shift = lift * lateral[index]
        for part, screen in zip(item.parts, _project_polys(camera, polys)):
            if screen is None:
                continue
            top = screen + shift * part.z
            if part.side >= 0 and part.z > part.z0 and camera.tilt > 0:
                _paint(mat, shade, _hull(np.concatenate([screen + shift * part.z0, top])), part.side)
            _paint(mat, shade, top, part.material)
    for flyer in world.flyers:
        for material, poly in flyer.screen_polys(camera.size, t):
            _paint(mat, shade, poly, material)
    return mat, shade


def _draw_sky(world: World, camera: Camera, mat: np.ndarray, shade: np.ndarray) -> None:
    (width, height), horizon = camera.size, camera.horizon_px
    sky = np.array([[-width, horizon], [2 * width, horizon], [2 * width, -2 * height], [-width, -2 * height]])
    # Shadows cast beyond the far edge must not darken the sky: _paint clears them.
    _paint(mat, shade, transform(camera.roll_matrix, sky), world.sky_material)
    for material, poly in world.skyline:
        outline = np.column_stack([poly[:, 0] * width, horizon - poly[:, 1] * height])
        _paint(mat, shade, transform(camera.roll_matrix, outline), material)


def _lookup_tables(world: World) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class (256,) uint8, BGR colour (1, 256, 3) and texture amplitude (1, 256, 2) float32 per material."""
    rows = np.zeros((256, 6), np.float32)
    rows[:len(world.materials)] = [(m.cls, *m.rgb[::-1], m.coarse, m.fine) for m in world.materials]  # OpenCV is BGR
    return rows[:, 0].astype(np.uint8), rows[None, :, 1:4].copy(), rows[None, :, 4:6].copy()


def render_view(world: World, camera: Camera, t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8 **BGR** and class mask (H, W) uint8 (0..11) of ``world`` at ``t`` seconds through
    ``camera``; ``rng`` only supplies sensor grain, so the mask does not depend on it."""
    width, height = camera.size
    mat, shade = _rasterise(world, camera, t)
    classes, colours, amps = _lookup_tables(world)
    mask = cv2.LUT(mat, classes)
    light = world.light

    # Brightness variation shared by the three channels: texture, grain, sky gradient and clouds.
    lum = np.zeros((height, width), np.float32)
    if world.noise is not None:
        noise = cv2.warpPerspective(world.noise, camera.homography @ world.noise_to_world, (width, height),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        amp = cv2.LUT(cv2.merge([mat, mat]), amps)
        lum = noise[..., 0] * amp[..., 0] + noise[..., 1] * amp[..., 1]
    if light.grain > 0:  # uniform grain with the requested std: much cheaper than Gaussian draws
        lum += (rng.random((height, width), dtype=np.float32) - 0.5) * np.float32(light.grain * 3.464)
    if camera.horizon > 0 and world.sky_material >= 0:
        _sky_light(world, camera, mask, lum)
    factor = (1.0 - light.shadow * shade.astype(np.float32)) if light.shadow > 0 and shade.any() else None

    haze_rows, haze_weight = 0, None
    if light.haze > 0 and camera.spread > 1:
        ground_top = max(camera.horizon_px, 0.0)
        rows = np.arange(height, dtype=np.float32)
        weight = np.clip(1.0 - (rows - ground_top) / (0.6 * (height - ground_top)), 0.0, 1.0) ** 2 * light.haze
        weight[rows < ground_top] = light.haze
        haze_rows = int(np.count_nonzero(weight))  # the weight is zero below some row
        haze_weight = weight[:haze_rows, None]

    channels = []
    for c in range(3):  # per channel: contiguous 2-D arrays are much faster than (H, W, 3) broadcasts
        channel = cv2.LUT(mat, np.ascontiguousarray(colours[0, :, c]))
        channel += lum
        if factor is not None:
            channel *= factor
        if haze_weight is not None:
            top = channel[:haze_rows]
            top += (np.float32(light.haze_rgb[2 - c]) - top) * haze_weight
        channel *= np.float32(light.gain[c] * light.contrast)
        channel += np.float32(light.gain[c] * (128.0 * (1.0 - light.contrast) + light.offset))
        np.clip(channel, 0, 255, out=channel)
        channels.append(channel.astype(np.uint8))
    image = cv2.merge(channels)
    if light.blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), light.blur)
    return image, mask


def _sky_light(world: World, camera: Camera, mask: np.ndarray, lum: np.ndarray) -> None:
    """Add the sky's vertical gradient and clouds to ``lum`` on sky pixels."""
    width, height = camera.size
    rows = int(min(height, math.ceil(camera.horizon_px + abs(math.sin(camera.roll)) * width / 2 + 2)))
    if rows <= 0:
        return
    is_sky = mask[:rows] == SKY
    ramp = np.linspace(-30.0, 25.0, rows, dtype=np.float32)[:, None]  # deeper blue overhead, paler at the horizon
    extra = np.broadcast_to(ramp, (rows, width)).copy()
    if world.clouds is not None:
        clouds = cv2.resize(world.clouds, (width, rows), interpolation=cv2.INTER_CUBIC)
        extra += np.clip(clouds, 0, None) * 45.0
    lum[:rows][is_sky] += extra[is_sky]
