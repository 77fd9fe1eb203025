"""Synthetic drone data: layout, masks, class balance, determinism, video, mask/image agreement."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dronseg_edge.classes import CLASS_NAMES, NUM_CLASSES
from dronseg_edge.data.aeroscapes import dataset_samples, read_ids, validate_samples
from dronseg_edge.data.synthetic import synthesize
from dronseg_edge.data.synthetic.camera import Camera, clip_to_halfplane, random_view
from dronseg_edge.data.synthetic.objects import DRONE
from dronseg_edge.data.synthetic.scene import Item, Lighting, Material, Part, World, render_view
from dronseg_edge.data.synthetic.worlds import build_world
from dronseg_edge.errors import DronsegError

SMALL = dict(images=12, size=(96, 64), video_frames=10, seed=0)
ID = re.compile(r"^\d{6}_\d{3}$")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "data", **SMALL)


@pytest.fixture(scope="module")
def medium_set(tmp_path_factory):
    """40 images at 320x180: big enough for class statistics, about a second to make."""
    return synthesize(tmp_path_factory.mktemp("synth") / "data", images=40, size=(320, 180), video_frames=0, seed=1)


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.asarray(img)


def _all_masks(result) -> dict[str, np.ndarray]:
    masks = {i: _mask(result.root / "masks" / "masks" / f"{i}.png") for i in result.train_ids}
    masks.update({i: _mask(result.root / "test_masks" / f"{i}.png") for i in result.test_ids})
    return masks


def test_kaggle_layout_and_csvs(small_set):
    root = small_set.root
    ids = small_set.train_ids + small_set.test_ids
    assert len(ids) == 12 and len(set(ids)) == 12 and all(ID.match(i) for i in ids)
    assert len(small_set.test_ids) == 2  # round(12 * 0.2)
    assert sorted(p.stem for p in (root / "imgs" / "imgs").glob("*.jpg")) == sorted(ids)
    assert sorted(p.stem for p in (root / "masks" / "masks").glob("*.png")) == sorted(small_set.train_ids)
    assert sorted(p.stem for p in (root / "test_masks").glob("*.png")) == sorted(small_set.test_ids)
    assert (root / "train.csv").read_text().splitlines() == ["ImageID", *small_set.train_ids]
    assert (root / "test.csv").read_text().splitlines() == ["ImageID", *small_set.test_ids]
    with open(root / "sampleSubmission.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ImageID", "EncodedPixels"]
    assert rows[1:] == [[f"{i}_{c}", ""] for i in small_set.test_ids for c in range(NUM_CLASSES)]
    assert not list(root.rglob("*.tmp"))
    # The project's own reader accepts it as the Kaggle layout.
    assert read_ids(root / "train.csv") == small_set.train_ids
    samples = dataset_samples(root, "train")
    stats = validate_samples(samples)
    assert stats.sizes == [(96, 64)] * len(samples)
    assert [s.image_id for s in dataset_samples(root, "test")] == small_set.test_ids


def test_masks_are_single_channel_class_indices_at_image_size(small_set):
    for image_id, mask in _all_masks(small_set).items():
        image = cv2.imread(str(small_set.root / "imgs" / "imgs" / f"{image_id}.jpg"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 96, 3)
        assert mask.shape == (64, 96) and mask.dtype == np.uint8
        assert mask.max() < NUM_CLASSES


def test_every_class_appears_in_a_modest_data_set(tmp_path):
    for seed in (0, 7):
        result = synthesize(tmp_path / f"s{seed}", images=30, size=(160, 96), video_frames=0, seed=seed)
        present = np.zeros(NUM_CLASSES, bool)
        for mask in _all_masks(result).values():
            present[np.unique(mask)] = True
        missing = [CLASS_NAMES[c] for c in np.flatnonzero(~present)]
        assert not missing, f"seed {seed}: classes never drawn: {missing}"


def test_class_imbalance_is_like_aeroscapes(medium_set):
    shares = medium_set.class_shares
    assert sum(shares.values()) == pytest.approx(1.0)
    big = [shares[n] for n in ("vegetation", "road", "background")]
    assert min(big) > 0.10 and sum(big) > 0.75, shares
    for name in ("person", "bike", "car", "drone", "boat", "animal", "obstacle"):
        assert 0 < shares[name] < 0.02, (name, shares)
    assert 0.01 < shares["construction"] < 0.12 and 0.01 < shares["sky"] < 0.15, shares
    # Small but frequent: people stand in most images and cover a few percent at most in any.
    masks = list(_all_masks(medium_set).values())
    person = np.array([(m == CLASS_NAMES.index("person")).mean() for m in masks])
    assert (person > 0).mean() > 0.5 and person.max() < 0.05


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(images=6, size=(96, 64), video_frames=3)
    first = synthesize(tmp_path / "a", seed=3, **kwargs).root
    again = synthesize(tmp_path / "b", seed=3, **kwargs).root
    other = synthesize(tmp_path / "c", seed=4, **kwargs).root
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.suffix != ".mp4")
    assert len(files) == 6 + 6 + 3 + 4  # images, masks, video masks, 3 CSVs + synth.json
    for rel in files:
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel
    masks = sorted((first / "masks" / "masks").glob("*.png"))
    assert any(not (other / "masks" / "masks" / m.name).is_file()
               or m.read_bytes() != (other / "masks" / "masks" / m.name).read_bytes() for m in masks)


def test_video_opens_with_requested_frames_size_fps_and_masks(small_set):
    assert small_set.video == small_set.root / "video.mp4"
    capture = cv2.VideoCapture(str(small_set.video))
    try:
        assert capture.isOpened()
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    assert len(frames) == 10 and all(f.shape == (64, 96, 3) for f in frames)
    names = sorted(p.name for p in small_set.video_masks.glob("*.png"))
    assert names == [f"{i:06d}.png" for i in range(10)]
    masks = [_mask(small_set.video_masks / n) for n in names]
    assert all(m.shape == (64, 96) and m.max() < NUM_CLASSES for m in masks)
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])  # the camera and the objects move
    for wanted in ("car", "person", "drone"):
        assert any((m == CLASS_NAMES.index(wanted)).any() for m in masks), wanted


def _explained_variance(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of the image's colour variance explained by the mask's classes (1 = flat regions)."""
    pixels = image.reshape(-1, 3).astype(np.float64)
    labels = mask.ravel()
    total = ((pixels - pixels.mean(0)) ** 2).sum()
    within = sum(((pixels[labels == c] - pixels[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels))
    return 1.0 - within / total


def test_masks_line_up_with_the_written_images(medium_set):
    # A mask shifted by a few pixels explains the image's colours worse than the real one: mask
    # and picture come from the same polygons. (Not in quite every image: a concrete road beside
    # pale pavement is as ambiguous in these scenes as in real ones.)
    root = medium_set.root
    aligned, shifted = [], []
    for image_id, mask in _all_masks(medium_set).items():
        image = cv2.imread(str(root / "imgs" / "imgs" / f"{image_id}.jpg"))
        aligned.append(_explained_variance(image, mask))
        shifted.append(_explained_variance(image, np.roll(mask, (4, 4), axis=(0, 1))))
    aligned, shifted = np.array(aligned), np.array(shifted)
    assert (aligned > shifted).mean() >= 0.9 and (aligned - shifted).mean() > 0.05
    masks = _all_masks(medium_set)
    images = {i: cv2.imread(str(root / "imgs" / "imgs" / f"{i}.jpg")) for i in masks}

    def mean_bgr(name):
        cls = CLASS_NAMES.index(name)
        return np.concatenate([images[i][m == cls] for i, m in masks.items()]).mean(0)

    veg, road, sky = mean_bgr("vegetation"), mean_bgr("road"), mean_bgr("sky")
    assert veg[1] > veg[0] and veg[1] > veg[2]  # vegetation is green
    assert sky[0] > sky[2] and sky.sum() > road.sum() + 100  # sky is blue and bright, roads are grey


def test_every_pixel_has_the_class_of_the_shape_drawn_there():
    # With texture, lighting and blur off, each pixel's colour is its material's colour:
    # the colour must then name the same class as the mask, everywhere.
    rng = np.random.default_rng(5)
    camera = random_view(rng, (240, 160), "oblique")
    world = build_world(rng, [camera], forced=frozenset({5, 6}))
    world.noise, world.light = None, Lighting(shadow=0.0, grain=0.0, blur=0.0, haze=0.0)
    image, mask = render_view(world, camera, 0.0, rng)
    by_colour: dict[tuple, set] = {}
    for m in world.materials:
        by_colour.setdefault(tuple(np.clip(np.asarray(m.rgb[::-1], np.float32), 0, 255).astype(np.uint8)), set()).add(m.cls)
    colours = [tuple(c) for c in image.reshape(-1, 3)]
    checked = 0
    for colour, cls in zip(colours, mask.ravel()):
        owners = by_colour.get(colour, set())
        if len(owners) == 1:
            assert owners == {int(cls)}
            checked += 1
    assert checked > 0.95 * mask.size
    assert len(np.unique(mask)) >= 4


def test_hand_built_scene_renders_exactly():
    world = World([Material(0, (100, 100, 100)), Material(9, (40, 160, 40)), Material(3, (200, 30, 30))], 0)
    world.ground.append((1, np.array([[10, 10], [50, 10], [50, 40], [10, 40]], dtype=float)))
    world.items.append(Item([Part(np.array([[-5, -3], [5, -3], [5, 3], [-5, 3]], dtype=float), 2, z=2.0)],
                            np.array([[70.0, 30.0]])))
    world.light = Lighting(shadow=0.0, grain=0.0, blur=0.0)
    image, mask = render_view(world, Camera((96, 64), (48.0, 64.0)), 0.0, np.random.default_rng(0))
    assert (mask[10:40, 10:50] == 9).all() and (mask[:, 52:60] == 0).all()
    assert (mask[28:32, 66:74] == 3).all()
    assert (image[mask == 9] == (40, 160, 40)).all()  # BGR of (40, 160, 40)
    assert (image[mask == 3] == (30, 30, 200)).all()
    assert (image[mask == 0] == (100, 100, 100)).all()


def test_a_drone_in_a_view_without_sky_flies_over_the_ground():
    top_down = Camera((160, 96), (0.0, 0.0))  # no horizon
    world = build_world(np.random.default_rng(0), [top_down], forced=frozenset({DRONE}))
    [drone] = world.flyers
    assert 0.1 < drone.position[1] < 0.9  # of the view's height: not in a sky band at its top


def test_camera_projection_round_trips_and_clips():
    camera = Camera((160, 96), (0.0, 0.0), heading=0.4, spread=2.0, squash=0.6, horizon=0.2, roll=0.03)
    pixels = np.array([[5.0, 90.0], [80.0, 40.0], [150.0, 25.0]])
    assert np.allclose(camera.project(camera.unproject(pixels)), pixels, atol=1e-6)
    near, far = camera.scale_at(camera.unproject(pixels[:1])), camera.scale_at(camera.unproject(pixels[2:]))
    assert near > 1.5 * far  # perspective: the far ground is smaller on screen
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    assert len(clip_to_halfplane(square, np.array([1.0, 0.0, 0.0]))) == 4
    assert np.allclose(clip_to_halfplane(square, np.array([1.0, 0.0, 0.0]))[:, 0].min(), 0.0)
    assert len(clip_to_halfplane(square, np.array([1.0, 0.0, 5.0]))) == 4
    assert len(clip_to_halfplane(square, np.array([1.0, 0.0, -5.0]))) == 0


def test_refuses_non_empty_folder_and_force_replaces_an_old_set(tmp_path):
    root = tmp_path / "data"
    synthesize(root, images=8, size=(96, 64), video_frames=4)
    with pytest.raises(DronsegError, match=r"not empty.*--force") as info:
        synthesize(root, images=5, size=(96, 64), video_frames=0)
    assert str(root) in str(info.value)
    result = synthesize(root, images=5, size=(96, 64), video_frames=0, seed=2, test_fraction=0, force=True)
    assert sorted(p.stem for p in (root / "imgs" / "imgs").iterdir()) == sorted(result.train_ids + result.test_ids)
    assert sorted(p.stem for p in (root / "masks" / "masks").iterdir()) == sorted(result.train_ids)
    # As a fresh set's: no video.mp4, and no empty video_masks/ or test_masks/ left from the first
    assert sorted(p.name for p in root.iterdir()) == ["imgs", "masks", "sampleSubmission.csv", "synth.json", "test.csv",
                                                      "train.csv"]
    assert result.video is None and result.video_masks is None


@pytest.mark.parametrize("name", ["imgs/imgs/000001_001.jpg", "video.mp4", "train.csv", "masks/masks/000001_001.png"])
def test_force_never_overwrites_a_real_data_set(tmp_path, name):
    """`synth FLIGHT --force` replaced the user's own video.mp4 (or a real set's train.csv) with synthetic ones, exit 0."""
    root = tmp_path / "aeroscapes"
    real = root / name
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_bytes(b"not synthetic")
    with pytest.raises(DronsegError, match=rf"replace {re.escape(str(root))}/\S+, which .* did not make"):
        synthesize(root, images=3, size=(96, 64), video_frames=2, force=True)
    assert real.read_bytes() == b"not synthetic"


def test_a_file_at_the_output_path_is_refused_and_kept(tmp_path):
    (tmp_path / "data").write_bytes(b"mine")
    with pytest.raises(DronsegError, match="output folder .*data is a file: choose a folder path"):
        synthesize(tmp_path / "data", images=3, size=(96, 64), video_frames=0, force=True)
    assert (tmp_path / "data").read_bytes() == b"mine"


@pytest.mark.parametrize("options, fragment", [
    (dict(images=0), "--images 0"),
    (dict(images=True), "--images True must be a whole number"),  # was taken as 1 image
    (dict(size=(5, 5)), "--size 5x5 is out of range: each side must be 32..8192 pixels"),
    (dict(test_fraction=1.5), "--test-fraction 1.5"),
    (dict(video_frames=-1), "--video-frames -1"),
    (dict(fps=0.0), "--fps 0"),
    (dict(fps=0.001), "--fps 0.001 is out of range: give 1 <= fps <= 240"),
    (dict(size=(97, 64)), "even width"),
    (dict(seed=-1), "--seed -1"),
])
def test_bad_options_raise_before_writing(tmp_path, options, fragment):
    kwargs = dict(images=4, size=(96, 64), video_frames=2) | options
    with pytest.raises(DronsegError, match=re.escape(fragment)):
        synthesize(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_interrupted_run_leaves_no_partial_files_or_csvs(tmp_path, monkeypatch):
    import dronseg_edge.data.synthetic.writer as writer

    calls = {"n": 0}
    real = writer.render_view

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "render_view", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthesize(tmp_path / "out", images=8, size=(96, 64), video_frames=0)
    root = tmp_path / "out"
    assert len(list((root / "imgs" / "imgs").glob("*.jpg"))) == 4
    assert not list(root.rglob("*.csv")) and not list(root.rglob("*.tmp")) and not list(root.rglob(".*"))


def test_objects_keep_the_scenes_scale_at_any_image_size(tmp_path):
    """The same seed at 3x the size shows the same ground: objects cover ~9x the pixels (as a 4K camera
    at the same altitude sees them), not the same few pixels on a wider view."""
    areas = {}
    for width, height in ((640, 360), (1920, 1080)):
        root = synthesize(tmp_path / f"{width}", images=4, size=(width, height), video_frames=0, seed=3,
                          test_fraction=0.0).root
        masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((root / "masks/masks").glob("*.png"))]
        areas[width] = np.array([[(m == c).sum() for c in (1, 3)] for m in masks], np.float64)  # person, car
    present = areas[640] > 0
    assert present.sum() >= 3
    ratio = areas[1920][present] / areas[640][present]
    assert np.all((ratio > 6.0) & (ratio < 12.0)), ratio  # 9 give or take the edge pixels; never ~1


def test_a_long_flights_objects_share_colours_within_a_scenes_256_materials():
    # synth --video-frames 1800 (a minute at 30 fps) made more materials than a scene holds: a traceback
    from dronseg_edge.data.synthetic.landscape import SHARED_FROM, SceneContext

    world = World(materials=[Material(9, (90.0, 130.0, 60.0))], base_material=0)
    ctx = SceneContext(world, np.random.default_rng(0), [], ppm=1.0, bounds=(0, 0, 1, 1))
    made = [ctx.material(9 if i % 2 else 10, (100, 140, 62)) for i in range(400)]
    assert len(world.materials) == SHARED_FROM  # then each class shares its nearest colour
    assert all(world.materials[i].cls == (9 if n % 2 else 10) for n, i in enumerate(made))
    world.add_material(Material(11, (120.0, 170.0, 230.0)))  # room left for the sky


def test_a_relative_folder_with_a_colon_gets_its_video(tmp_path, monkeypatch):
    # FFmpeg read "2026-12-07T12:30:05_data/.video.mp4" as a protocol: "install opencv-python-headless with FFmpeg"
    monkeypatch.chdir(tmp_path)
    result = synthesize(Path("2026-12-07T12:30:05_data"), images=4, size=(64, 48), video_frames=3, seed=0)
    assert cv2.VideoCapture(str(tmp_path / "2026-12-07T12:30:05_data" / "video.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 3
    assert result.video is not None


@pytest.mark.parametrize("opens, low, message", [
    (False, False, "OpenCV cannot write an mp4v video to .*: install opencv-python-headless with FFmpeg"),
    (True, False, r"the video written to .* has \S+ frames of \S+, expected 2 of 96x64: this OpenCV build cannot write mp4v"),
    (True, True, r"cannot write .*video.mp4: the write stopped short \(OpenCV wrote a short video"),
])
def test_a_video_opencv_cannot_write_is_refused_and_none_is_left(tmp_path, monkeypatch, opens, low, message):
    from dronseg_edge.data.synthetic import writer

    class Writer:  # an OpenCV build without a working mp4v encoder: writes nothing, or cannot open at all
        def __init__(self, *_args):
            pass

        isOpened, write, release = (lambda _self: opens), (lambda _self, _image: None), (lambda _self: None)

    monkeypatch.setattr(writer.cv2, "VideoWriter", Writer)
    monkeypatch.setattr(writer, "low_space", lambda _path: low)  # a nearly full disk: its own error
    with pytest.raises(DronsegError, match=message):
        synthesize(tmp_path / "data", images=2, size=(96, 64), video_frames=2)
    assert not (tmp_path / "data" / "video.mp4").exists()
