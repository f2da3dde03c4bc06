"""The end of a run: loss.png and the one-line summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_loss(metrics: list[dict[str, Any]], out: Path) -> None:
    """loss.png: train and eval loss against optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("eval_loss", "o-")):
        points = [(r["step"], r[key]) for r in metrics if key in r and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points), style, label="train" if key == "loss" else "eval", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per trained token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def summary_line(metrics: list[dict[str, Any]], seconds: float) -> str:
    train = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if "eval_loss" in r]
    parts = [f"{train[-1]['step'] if train else 0} steps"]
    if train:
        parts.append(f"train loss {train[0]['loss']:.4f} -> {train[-1]['loss']:.4f}")
    if len(evals) > 1:
        parts.append(f"eval loss {evals[0]['eval_loss']:.4f} (step {evals[0]['step']}) -> "
                     f"{evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})")
    elif evals:
        parts.append(f"eval loss {evals[0]['eval_loss']:.4f} (step {evals[0]['step']})")
    if evals and any(k.startswith("eval_loss/") for k in evals[-1]):
        parts.append("per source " + ", ".join(f"{k.removeprefix('eval_loss/')} {v:.4f}" for k, v in evals[-1].items()
                                               if k.startswith("eval_loss/")))
    tokens = max((r.get("trained_tokens", 0) for r in metrics), default=0)
    parts.append(f"{tokens:,} trained tokens")
    parts.append(f"{seconds / 60:.1f} min")
    return "done: " + ", ".join(parts)
