"""What a run reports while it trains: metrics.jsonl, the progress bar, loss.png, the closing summary.

Only the main process (rank 0) writes. On resume, metrics.jsonl is cut back to the checkpoint's step first,
so the file always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import ProgressCallback, TrainerCallback

METRIC_KEYS = {  # trainer log key -> metrics.jsonl key
    "loss": "loss",
    "eval_loss": "eval_loss",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "trained_tokens": "trained_tokens",
    "tokens_per_s": "tokens_per_s",
    "epoch": "epoch",
}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewind_metrics(path: Path, step: int) -> None:
    """Drop records logged after `step` (they belong to steps that will be trained again)."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


class MetricsFile(TrainerCallback):
    """Appends one JSON line per trainer log: step, loss, eval_loss, lr, grad_norm, trained tokens, tokens/s."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step}
        record.update({out: logs[key] for key, out in METRIC_KEYS.items() if key in logs})
        if len(record) > 2:  # more than step and epoch: a real log line
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class Progress(ProgressCallback):
    """tqdm bar (ETA included) with loss, lr and trained tokens/s as its postfix; eval results on their own line."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """A resumed run's bar starts at its step, so the rate (and the ETA) counts only steps trained now."""
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)
        self.current_step = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if self.training_bar is None:
            if "eval_loss" in logs:
                print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
            return
        if "loss" in logs:
            self.training_bar.set_postfix(
                loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0.0):.2e}",
                tok_s=f"{logs.get('tokens_per_s', 0.0):.0f}", refresh=False,
            )
        if "eval_loss" in logs:
            self.training_bar.write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")


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
    tokens = max((r.get("trained_tokens", 0) for r in metrics), default=0)
    parts.append(f"{tokens:,} trained tokens")
    parts.append(f"{seconds / 60:.1f} min")
    return "done: " + ", ".join(parts)
