"""Plots of a run from its Lightning ``CSVLogger`` metrics (``metrics.csv``); needs the ``plot`` extra.

    from lightning_trepo.tools.plots import plot_training_curves
    plot_training_curves("runs/lightning_trepo/version_0/metrics.csv", "curves.png")
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["read_metrics", "metric_series", "plot_training_curves"]


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a CSVLogger ``metrics.csv`` as dicts of floats (empty cells are left out)."""
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(parsed)
    return rows


def metric_series(rows: list[dict[str, float]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x values, y values) of every row that has both ``key`` and ``x`` (finite)."""
    xs, ys = [], []
    for row in rows:
        if key in row and x in row and math.isfinite(row[key]):
            xs.append(row[x])
            ys.append(row[key])
    return xs, ys


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path, title: str = "",
                         reward_key: str = "reward/total", val_keys: Sequence[str] = ("val/accuracy",),
                         extra_points: dict[str, tuple[float, float]] | None = None, smooth: int = 10) -> Path:
    """PNG with training reward per step (raw and moving average) and validation metrics per step.

    ``extra_points`` adds labelled markers on the validation axis, e.g. ``{"before": (0, 0.31)}``.
    Returns the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
    steps, reward = metric_series(rows, reward_key)
    if steps:
        ax_r.plot(steps, reward, color="tab:blue", alpha=0.25, lw=1, label=f"{reward_key} (per step)")
        ax_r.plot(steps, _smooth(reward, smooth), color="tab:blue", lw=2, label=f"moving mean ({smooth})")
    ax_r.set(xlabel="optimizer step", ylabel="mean reward of the rollout", title="training reward")
    ax_r.grid(alpha=0.3)
    ax_r.legend(loc="lower right", fontsize=8)
    for key in val_keys:
        vs, vy = metric_series(rows, key)
        if vs:
            ax_v.plot(vs, vy, marker="o", lw=2, label=key)
    for label, (x, y) in (extra_points or {}).items():
        ax_v.scatter([x], [y], marker="*", s=140, zorder=5, label=label)
    ax_v.axhline(0.9, color="grey", ls="--", lw=1)
    ax_v.set(xlabel="optimizer step", ylabel="held-out accuracy", title="validation (held-out prompts)", ylim=(0, 1.02))
    ax_v.grid(alpha=0.3)
    ax_v.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
