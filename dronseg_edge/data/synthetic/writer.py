"""Synthetic drone data in the exact Kaggle AeroScapes layout, plus a flight video with masks.

Layout written under ROOT::

    imgs/imgs/{ImageID}.jpg        all images (JPEG, quality 90)
    masks/masks/{ImageID}.png      class indices 0..11, train images only (Kaggle hides test masks)
    train.csv, test.csv            one ``ImageID`` column
    sampleSubmission.csv           ``ImageID,EncodedPixels``, a row per ``{ImageID}_{class}``
    test_masks/{ImageID}.png       ground truth of the test images, for local scoring
    video.mp4                      mp4v flight over one scene; video_masks/{frame:06d}.png (0-based)
    synth.json                     the parameters and class shares of this data set

IDs follow AeroScapes' ``{sequence:06d}_{frame:03d}``: a sequence is 1-3 views of one scene
from a drifting drone, and the train/test split keeps sequences whole where it can.
Every file goes to a temporary name first; the CSVs are written last.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from dronseg_edge.atomic import (atomic_path, ensure_writable_dir, low_space, short_write_failure, write_csv_atomic,
                                 write_json_atomic)
from dronseg_edge.classes import CLASS_NAMES, NUM_CLASSES
from dronseg_edge.data.synthetic.camera import flight, moved, random_view
from dronseg_edge.data.synthetic.objects import CAR, DRONE, PERSON
from dronseg_edge.data.synthetic.scene import render_view
from dronseg_edge.data.synthetic.worlds import FREQUENT, RARE, SKY, build_world
from dronseg_edge.dataset_layout import CSV_FILES, IMAGE_DIR, MASK_DIR, SUBMISSION_CSV, TEST_CSV, TEST_MASK_DIR, TRAIN_CSV
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import native_name
from dronseg_edge.option_fields import whole
from dronseg_edge.pictures import write_image
from dronseg_edge.sizes import format_size

VIDEO_NAME = "video.mp4"
VIDEO_MASK_DIR = Path("video_masks")
SECONDS_BETWEEN_VIEWS = 1.5
_STILL_NAME = re.compile(r"^\d{6}_\d{3}\.(jpg|png)$")
_FRAME_NAME = re.compile(r"^\d{6}\.png$")


@dataclass
class SynthResult:
    """What ``synthesize`` wrote. ``class_shares`` maps class name -> share of train mask pixels."""

    root: Path
    train_ids: list[str]
    test_ids: list[str]
    video: Path | None
    video_masks: Path | None
    class_shares: dict[str, float]
    size: tuple[int, int] = (0, 0)
    fps: float = 0.0
    video_frames: int = 0


def _check_options(images: int, size: tuple[int, int], video_frames: int, seed: int, test_fraction: float, fps: float) -> None:
    whole(images, "--images", hint=" (e.g. --images 60)", most=999_999)
    width, height = size
    if not (32 <= width <= 8192 and 32 <= height <= 8192):
        raise DronsegError(f"--size {format_size(size)} is out of range: each side must be 32..8192 pixels (e.g. 1280x720)")
    if video_frames < 0:
        raise DronsegError(f"--video-frames {video_frames} is negative: give 0 (no video) or more frames (e.g. 90)")
    if video_frames > 0 and (width % 2 or height % 2):
        raise DronsegError(f"--size {format_size(size)}: the mp4v video needs an even width and height "
                           f"(e.g. {format_size((width - width % 2, height - height % 2))}), or pass --video-frames 0")
    if seed < 0:
        raise DronsegError(f"--seed {seed} is negative: give a seed >= 0")
    if not 0.0 <= test_fraction < 1.0:
        raise DronsegError(f"--test-fraction {test_fraction} is out of range: give 0 <= F < 1 (e.g. 0.2)")
    if not 1.0 <= fps <= 240.0:  # 0.001: OpenCV writes no MP4, and its error said to install another OpenCV
        raise DronsegError(f"--fps {fps} is out of range: give 1 <= fps <= 240 (e.g. 30)")


def _prepare_root(root: Path, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise DronsegError(f"output folder {root} is a file: choose a folder path")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise DronsegError(f"output folder {root} is not empty: choose a new folder, or pass --force to write into it")
    # --force replaces an earlier synthetic set, never a real one (same ID pattern, no synth.json) nor
    # another file of a name synth writes (a flight's video.mp4, a real set's CSVs or masks).
    theirs = [] if (root / "synth.json").is_file() else [
        path for path in (root / name for name in (IMAGE_DIR, MASK_DIR, TEST_MASK_DIR, VIDEO_MASK_DIR, VIDEO_NAME,
                                                   *CSV_FILES))
        if path.is_file() or (path.is_dir() and any(path.iterdir()))]
    if theirs:
        raise DronsegError(f"--force would replace {theirs[0]}, which `dronseg-edge synth` did not make (no "
                           f"{root / 'synth.json'}): choose another output folder")
    ensure_writable_dir(root)
    for name in CSV_FILES:
        (root / name).unlink(missing_ok=True)  # a data set without its CSVs reads as unfinished
    # synth.json first, marking the folder as synth's before any image, so that `synth --force` can redo
    # a run cut short (Ctrl-C, a full disk); its full contents come at the end.
    write_json_atomic(root / "synth.json", {"generator": "dronseg-edge synth", "finished": False})


def plan_sequences(images: int, seed: int) -> list[int]:
    """Frame counts of the sequences (1-3 views each) that add up to ``images``."""
    rng = np.random.default_rng([seed, 0])
    lengths: list[int] = []
    while sum(lengths) < images:
        lengths.append(int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25])))
    lengths[-1] -= sum(lengths) - images
    return lengths


def split_ids(lengths: list[int], test_fraction: float, seed: int) -> set[str]:
    """Test IDs: whole sequences at random until the test share is reached (the last may be split).

    The first sequences carry the rota of rare classes, so they go to test last: a small train
    set keeps every class.
    """
    total = sum(lengths)
    wanted = min(int(round(total * test_fraction)), total - 1)
    if test_fraction > 0 and total >= 2:
        wanted = max(wanted, 1)
    rng = np.random.default_rng([seed, 4])
    test: set[str] = set()
    first = min(max(len(RARE), len(FREQUENT)), len(lengths))
    order = np.concatenate([first + rng.permutation(len(lengths) - first), rng.permutation(first)])
    for seq in order:
        take = min(lengths[seq], wanted - len(test))
        if take <= 0:
            break
        test.update(image_id(int(seq), frame) for frame in range(take))
    return test


def image_id(sequence: int, frame: int) -> str:
    """AeroScapes-style ID for 0-based sequence and frame indices, e.g. (0, 0) -> '000001_001'."""
    return f"{sequence + 1:06d}_{frame + 1:03d}"


def _render_stills(root: Path, lengths: list[int], test_ids: set[str], size: tuple[int, int], seed: int,
                   tick: Callable[[], None]) -> np.ndarray:
    """Write every still image and mask; return the train pixel counts per class (NUM_CLASSES,)."""
    counts = np.zeros(NUM_CLASSES, np.int64)
    order = np.random.default_rng([seed, 5]).permutation(len(RARE))
    order_frequent = np.random.default_rng([seed, 7]).permutation(len(FREQUENT))
    for seq, length in enumerate(lengths):
        rng = np.random.default_rng([seed, 1, seq])
        rare = RARE[order[seq % len(RARE)]]  # rotas, so even a dozen images show every class
        frequent = FREQUENT[order_frequent[seq % len(FREQUENT)]]
        cameras = [random_view(rng, size, "sky" if rare == SKY else ("nadir" if rng.random() < 0.45 else "oblique"))]
        while len(cameras) < length:
            cameras.append(moved(cameras[-1], rng))
        world = build_world(rng, cameras, forced=frozenset({rare, frequent}))
        for frame, camera in enumerate(cameras):
            image, mask = render_view(world, camera, frame * SECONDS_BETWEEN_VIEWS, np.random.default_rng([seed, 3, seq, frame]))
            ident = image_id(seq, frame)
            write_image(root / IMAGE_DIR / f"{ident}.jpg", image)
            write_image(root / (TEST_MASK_DIR if ident in test_ids else MASK_DIR) / f"{ident}.png", mask)
            if ident not in test_ids:
                counts += np.bincount(mask.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
            tick()
    return counts


def _render_video(root: Path, frames: int, size: tuple[int, int], fps: float, seed: int, tick: Callable[[], None]) -> Path:
    """Write video.mp4 (mp4v) and its per-frame masks; the video goes to a temporary name first."""
    rng = np.random.default_rng([seed, 2])
    cameras = flight(rng, size, str(rng.choice(["oblique", "nadir", "sky"], p=[0.5, 0.3, 0.2])), frames, fps)
    guides = cameras[:: max(1, frames // 8)] + [cameras[-1]]
    world = build_world(rng, guides, forced=frozenset({CAR, PERSON, DRONE}),
                        theme=str(rng.choice(["urban", "suburban"])), video=True)
    final = root / VIDEO_NAME
    with atomic_path(final, suffix=".mp4") as tmp:  # OpenCV picks the container from the file name
        writer = cv2.VideoWriter(native_name(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
        if not writer.isOpened():
            raise DronsegError(f"OpenCV cannot write an mp4v video to {tmp.parent}: install opencv-python-headless "
                               "with FFmpeg, or pass --video-frames 0")
        try:
            for index, camera in enumerate(cameras):
                image, mask = render_view(world, camera, index / fps, np.random.default_rng([seed, 6, index]))
                writer.write(image)
                write_image(root / VIDEO_MASK_DIR / f"{index:06d}.png", mask)
                tick()
        finally:
            writer.release()
        _check_video(tmp, frames, size, final)
    return final


def _check_video(path: Path, frames: int, size: tuple[int, int], final: Path) -> None:
    capture = cv2.VideoCapture(native_name(path))
    got = tuple(int(capture.get(p)) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    if got != (frames, *size) and low_space(path.parent):
        # OpenCV's writer fails silently: a short video on a nearly full disk is the disk's fault.
        raise short_write_failure(final, "OpenCV wrote a short video")
    if got != (frames, *size):
        raise DronsegError(f"the video written to {path} has {got[0]} frames of {got[1]}x{got[2]}, expected "
                           f"{frames} of {format_size(size)}: this OpenCV build cannot write mp4v; pass --video-frames 0")


def _remove_stale(root: Path, train: set[str], test: set[str], frames: int) -> None:
    """After --force: drop synthetic files of an earlier run that the new CSVs do not describe."""
    keep = {IMAGE_DIR: train | test, MASK_DIR: train, TEST_MASK_DIR: test}
    for folder, ids in keep.items():
        for path in (root / folder).glob("*"):
            if _STILL_NAME.match(path.name) and path.stem not in ids:
                path.unlink()
    for path in (root / VIDEO_MASK_DIR).glob("*"):
        if _FRAME_NAME.match(path.name) and int(path.stem) >= frames:
            path.unlink()
    if frames == 0:
        (root / VIDEO_NAME).unlink(missing_ok=True)
    for folder in (TEST_MASK_DIR, VIDEO_MASK_DIR):  # left empty (no test images, no video): a fresh set has none
        with contextlib.suppress(OSError):
            (root / folder).rmdir()


def synthesize(out_dir: Path, images: int = 60, size: tuple[int, int] = (1280, 720), video_frames: int = 90,
               seed: int = 0, test_fraction: float = 0.2, fps: float = 30.0, force: bool = False,
               progress: bool = False) -> SynthResult:
    """Write a synthetic AeroScapes-layout data set of ``images`` images of ``size`` (W, H) pixels
    under ``out_dir``, plus a ``video_frames``-frame video at ``fps`` (none when 0).

    Deterministic per ``seed``: the same call gives byte-identical masks and CSVs (and images on
    the same OpenCV build). Raises DronsegError for bad options or a non-empty ``out_dir``
    without ``force``.
    """
    size = (int(size[0]), int(size[1]))
    _check_options(images, size, video_frames, seed, test_fraction, fps)
    root = Path(out_dir)
    if video_frames:
        native_name(root)  # a name OpenCV cannot take is refused before any image is written
    _prepare_root(root, force)
    lengths = plan_sequences(images, seed)
    test = split_ids(lengths, test_fraction, seed)
    ids = [image_id(seq, frame) for seq, length in enumerate(lengths) for frame in range(length)]
    train_ids, test_ids = [i for i in ids if i not in test], [i for i in ids if i in test]

    from tqdm import tqdm

    with tqdm(total=images + video_frames, desc="synth", unit="img", disable=None if progress else True) as bar:
        counts = _render_stills(root, lengths, test, size, seed, bar.update)
        video = _render_video(root, video_frames, size, fps, seed, bar.update) if video_frames else None
    if force:
        _remove_stale(root, set(train_ids), set(test_ids), video_frames)

    shares = {name: float(c) / max(int(counts.sum()), 1) for name, c in zip(CLASS_NAMES, counts)}
    write_json_atomic(root / "synth.json", {"generator": "dronseg-edge synth", "finished": True, "seed": seed,
                                            "size": list(size), "images": images,
                                            "train": len(train_ids), "test": len(test_ids), "video_frames": video_frames,
                                            "fps": fps, "class_shares": shares})
    write_csv_atomic(root / TRAIN_CSV, [["ImageID"], *([i] for i in train_ids)])
    write_csv_atomic(root / TEST_CSV, [["ImageID"], *([i] for i in test_ids)])
    write_csv_atomic(root / SUBMISSION_CSV, [["ImageID", "EncodedPixels"],
                                             *([f"{i}_{c}", ""] for i in test_ids for c in range(NUM_CLASSES))])
    return SynthResult(root, train_ids, test_ids, video, (root / VIDEO_MASK_DIR) if video else None, shares,
                       size, float(fps), video_frames)
