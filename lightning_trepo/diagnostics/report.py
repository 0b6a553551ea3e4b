"""Console table, JSON and PNG of a gradient-variance measurement (``measure-variance``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lightning_trepo.diagnostics.stats import FIGURES, Interval


def space_label(num_params: int, projection_dim: int) -> str:
    """Which space the variances live in (the report states it)."""
    if projection_dim > 0:
        return f"count sketch of the {num_params:,} trainable parameters into {projection_dim:,} coordinates"
    return f"all {num_params:,} trainable parameters"


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


def _cell(iv: Interval) -> str:
    return f"{_fmt(iv.value)} [{_fmt(iv.low)}, {_fmt(iv.high)}]"


def format_table(labels: list[str], summary: dict[str, list[Interval]], header: str, markdown: bool = False) -> str:
    """One row per estimator, sorted by variance x tokens (lowest first), every figure with its interval."""
    cols = ["estimator", "tokens/estimate", "variance", "variance x tokens", "cos(mean, pooled)", "|E g|^2"]
    keys = ["tokens", "variance", "variance_x_tokens", "cosine_to_pooled", "mean_norm2"]
    order = sorted(range(len(labels)), key=lambda i: summary["variance_x_tokens"][i].value)
    rows = [[labels[i]] + [_cell(summary[k][i]) for k in keys] for i in order]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return header + "\n\n" + "\n".join(lines)
    widths = [max(len(c), *(len(r[j]) for r in rows)) for j, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    return header + "\n" + "\n".join(lines)


def as_json(labels: list[str], summary: dict[str, list[Interval]], meta: dict[str, Any]) -> dict[str, Any]:
    """``{meta..., estimators: {label: {figure: {value, low, high}}}}``."""
    est = {label: {name: vars(summary[name][i]) for name in FIGURES} for i, label in enumerate(labels)}
    return {**meta, "estimators": est}


def plot(labels: list[str], summary: dict[str, list[Interval]], path: Path, title: str) -> Path:
    """Two panels: variance and variance x tokens per estimator (log scale when positive), intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(labels) + 2.0))
    for ax, key, name in zip(axes, ("variance", "variance_x_tokens"), ("variance E|g - mean|^2",
                                                                       "variance x tokens per estimate"),
                             strict=True):
        ivs = summary[key]
        ys = list(range(len(labels)))
        xs = [iv.value for iv in ivs]
        err = [[iv.value - iv.low for iv in ivs], [iv.high - iv.value for iv in ivs]]
        ax.errorbar(xs, ys, xerr=err, fmt="o", capsize=3)
        ax.set_yticks(ys, labels)
        if all(iv.low > 0 for iv in ivs):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(True, axis="x", alpha=0.3)
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: Path, stem: str, labels: list[str], summary: dict[str, list[Interval]], header: str,
                 meta: dict[str, Any]) -> list[Path]:
    """``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(format_table(labels, summary, header, markdown=True) + "\n")
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(as_json(labels, summary, meta), indent=2) + "\n")
    png = plot(labels, summary, out_dir / f"{stem}.png", header.splitlines()[0])
    return [md, js, png]
