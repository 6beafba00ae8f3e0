"""Evaluation pictures: MaskIoU calibration and precision-recall curves, as PNG (matplotlib,
Agg backend, no display needed).

    calibration_plot(predicted, true, "eval_calibration.png")
    pr_curves_plot(table.curves, "eval_pr.png")
"""

from __future__ import annotations

import numpy as np

from msrcnn.evaluation.calibration import calibration_summary


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def calibration_plot(predicted: np.ndarray, true: np.ndarray, path: str, title: str = "") -> None:
    """Scatter of predicted MaskIoU vs the true IoU of each detection's mask with its best
    ground truth, the y = x line, and Pearson r in the title."""
    plt = pyplot()
    summary = calibration_summary(np.asarray(predicted), np.asarray(true))
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    n = len(predicted)
    ax.scatter(
        true,
        predicted,
        s=6 if n > 500 else 12,
        alpha=0.35 if n > 500 else 0.7,
        color="#1f77b4",
        edgecolors="none",
    )
    ax.plot([0, 1], [0, 1], color="#444444", linewidth=1, linestyle="--", label="y = x")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("true IoU of the mask with the best ground truth of its class")
    ax.set_ylabel("predicted MaskIoU")
    r = summary.get("pearson_r")
    stats = f"Pearson r = {r:.3f}" if r is not None else "Pearson r undefined"
    ax.set_title((title + "\n" if title else "") + f"{stats}, {n} detections", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pr_curves_plot(curves: dict[str, dict[str, list[float]]], path: str, title: str = "") -> None:
    """Precision-recall at IoU 0.5 and 0.75 (mean over classes), one line per table row
    (e.g. segm ranked by class score vs by mask score)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=120, sharey=True)
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    for ax, key in zip(axes, ("precision@0.5", "precision@0.75"), strict=True):
        for colour, (label, curve) in zip(colours, curves.items(), strict=False):
            recall, precision = np.asarray(curve["recall"]), np.asarray(curve[key])
            ap = float(precision.mean())
            ax.plot(recall, precision, color=colour, linewidth=1.6, label=f"{label} (AP {ap:.3f})")
        ax.set_title(f"IoU {key.split('@')[1]}", fontsize=10)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("precision (mean over classes)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
