"""CLI commands: data (``synth``: synthetic drone data in the Kaggle AeroScapes layout)."""

from __future__ import annotations

from pathlib import Path

import typer

from dronseg_edge.cli.app import app
from dronseg_edge.cli.outputs import check_out_dir, echo
from dronseg_edge.dataset_layout import CSV_FILES, IMAGE_DIR, MASK_DIR, TEST_MASK_DIR
from dronseg_edge.sizes import format_size, parse_size


@app.command(help="Make synthetic drone images and class masks in the Kaggle AeroScapes layout, plus a flight video.")
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write into (created if missing; must be empty unless --force)."),
    images: int = typer.Option(60, "--images", help="Still images in all (train + test)."),
    size: str = typer.Option("1280x720", "--size", help="Image and video size, WIDTHxHEIGHT."),
    video_frames: int = typer.Option(90, "--video-frames", help="Frames of the flight video.mp4; 0 writes no video."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same data set."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of images listed in test.csv (their masks go to test_masks/)."),
    fps: float = typer.Option(30.0, "--fps", help="Frame rate of video.mp4."),
    force: bool = typer.Option(False, "--force/--no-force", help="Write into a non-empty folder, replacing an earlier synthetic data set there."),
) -> None:
    from dronseg_edge.data.synthetic import synthesize

    check_out_dir(out_dir, "OUT_DIR")
    result = synthesize(out_dir, images=images, size=parse_size(size), video_frames=video_frames, seed=seed,
                        test_fraction=test_fraction, fps=fps, force=force, progress=True)
    root = result.root
    echo(f"wrote {len(result.train_ids) + len(result.test_ids)} images ({len(result.train_ids)} train, "
               f"{len(result.test_ids)} test) of {format_size(result.size)} to {root} (seed {seed})")
    echo(f"  images   {root / IMAGE_DIR}/*.jpg")
    echo(f"  masks    {root / MASK_DIR}/*.png (train), {root / TEST_MASK_DIR}/*.png (test ground truth)")
    echo(f"  csvs     {', '.join(str(root / name) for name in CSV_FILES)}")
    if result.video is not None:
        echo(f"  video    {result.video} ({result.video_frames} frames, {result.fps:g} fps), "
                   f"masks {result.video_masks}/*.png")
    else:
        echo("  video    none (--video-frames 0)")
    echo("class shares of train pixels:")
    for name, share in result.class_shares.items():
        echo(f"  {name:<13} {100 * share:6.2f}%")
