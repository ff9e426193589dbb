"""PNG figures of a deployment: target, achieved and error maps, error histogram, accuracy per
stage. matplotlib with the Agg backend (no screen needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, TwoSlopeNorm


def conductance_maps(
    target: np.ndarray, achieved: np.ndarray, window: tuple[float, float], path: Path
) -> Path:
    """Target and achieved conductance (log colour, S) and signed error normalised to the
    window, (G - G_target) / (G_on - G_off), side by side; unused cells (NaN target) blank."""
    used = np.isfinite(target)
    error = np.where(used, (achieved - target) / (window[1] - window[0]), np.nan)
    shown = np.where(used, achieved, np.nan)
    low = max(float(np.nanmin(np.where(used, np.minimum(target, achieved), np.nan))), 1e-12)
    high = float(np.nanmax(np.where(used, np.maximum(target, achieved), np.nan)))
    norm = LogNorm(vmin=low, vmax=max(high, low * 1.01))
    # colour limit at the 99th percentile: a few stuck cells would wash out the rest
    limit = max(float(np.nanpercentile(np.abs(error), 99)), 1e-6)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    for axis, data, title, colour_norm, cmap, label in (
        (axes[0], target, "target G", norm, "viridis", "S"),
        (axes[1], shown, "achieved G (read back)", norm, "viridis", "S"),
        (
            axes[2],
            error,
            "error (G - G_target) / window",
            TwoSlopeNorm(0.0, -limit, limit),
            "RdBu_r",
            "fraction of window",
        ),
    ):
        image = axis.imshow(data, norm=colour_norm, cmap=cmap, interpolation="nearest")
        axis.set_title(title)
        axis.set_xlabel("bit line (column)")
        axis.set_ylabel("word line (row)")
        figure.colorbar(image, ax=axis, label=label)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def error_histogram(target: np.ndarray, achieved: np.ndarray, tolerance: float, path: Path) -> Path:
    """Histogram of the relative error (G - G_target) / G_target of the used cells, with the
    tolerance band marked."""
    used = np.isfinite(target) & (target > 0)
    relative = (achieved[used] - target[used]) / target[used]
    figure, axis = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    clipped = np.clip(relative * 100, -50, 50)
    axis.hist(clipped, bins=80, color="#3b6ea5")
    for sign in (-1, 1):
        axis.axvline(sign * tolerance * 100, color="#c0392b", linestyle="--", linewidth=1)
    inside = float(np.mean(np.abs(relative) <= tolerance)) if relative.size else float("nan")
    axis.set_title(
        f"relative mapping error, all {relative.size} cells (stuck included); {inside:.1%} "
        f"within ±{tolerance:.0%}"
    )
    axis.set_xlabel("(G - G_target) / G_target (%), clipped to ±50 %")
    axis.set_ylabel("cells")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def accuracy_per_stage(accuracies: Mapping[str, float], path: Path) -> Path:
    """Bar chart of test accuracy (%) at every stage, values written on the bars."""
    names = list(accuracies)
    values = [100 * accuracies[name] for name in names]
    figure, axis = plt.subplots(figsize=(max(6.4, 1.5 * len(names)), 4.2), constrained_layout=True)
    bars = axis.bar(range(len(names)), values, color="#3b6ea5")
    for bar, value in zip(bars, values, strict=True):
        axis.text(
            bar.get_x() + bar.get_width() / 2, value + 0.5, f"{value:.1f}", ha="center", va="bottom"
        )
    axis.set_xticks(range(len(names)), names, rotation=15, ha="right")
    axis.set_ylim(0, 105)
    axis.set_ylabel("test accuracy (%)")
    axis.set_title("accuracy at every stage")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
