"""PNG plots at the end of training: curves, per-class scores, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dronseg_edge.atomic import atomic_path


def _subplots(*grid: int, figsize: tuple[float, float]):
    """A bare matplotlib Figure and its axes: no pyplot, so no global backend switch and nothing to close."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:  # a full disk: the one-line RuntimeFailure naming ``path``
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Loss and validation scores per epoch."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_score) = _subplots(1, 2, figsize=(11, 4))
    for ax, title, keys in ((ax_loss, "loss", ("train_loss", "val_loss")),
                            (ax_score, "validation", ("val_miou", "val_mdice", "val_competition"))):
        for key in keys:
            ax.plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", label=key)
        ax.set_xlabel("epoch"), ax.set_title(title), ax.legend()
    ax_score.set_ylim(0, 1)
    return _save(fig, path)


def plot_per_class(names: list[str], iou: list[float], dice: list[float], path: Path) -> Path:
    """Per-class IoU and Dice bars (NaN: class absent from both prediction and truth)."""
    x = np.arange(len(names))
    fig, ax = _subplots(figsize=(11, 4))
    ax.bar(x - 0.2, np.nan_to_num(iou), width=0.4, label="IoU")
    ax.bar(x + 0.2, np.nan_to_num(dice), width=0.4, label="Dice")
    ax.set_xticks(x, names, rotation=45, ha="right"), ax.set_ylim(0, 1), ax.legend(), ax.set_title("per-class validation scores")
    return _save(fig, path)


def plot_confusion(names: list[str], confusion: list[list[int]], path: Path) -> Path:
    """Row-normalised confusion matrix (rows: truth, columns: prediction)."""
    matrix = np.asarray(confusion, dtype=np.float64)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = _subplots(figsize=(8, 7))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right"), ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("confusion (row-normalised)")
    for i, j in zip(*np.nonzero(norm >= 0.01)):
        ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)
