"""What the Trainer is told around its step loop: stop at the next step on preemption, log at every checkpoint,
and report (metrics.jsonl, the progress bar). Only the main process (rank 0) writes; on resume, metrics.jsonl
is first cut back to the checkpoint's step (RunDir.rewind_metrics), so it reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import ProgressCallback, TrainerCallback

from sft.train.checkpoint import Preemption

METRIC_KEYS = {  # trainer log key -> metrics.jsonl key
    "loss": "loss",
    "eval_loss": "eval_loss",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "trained_tokens": "trained_tokens",
    "tokens_per_s": "tokens_per_s",
    "epoch": "epoch",
}



class StopOnPreemption(TrainerCallback):
    """At each optimizer step boundary: if a signal arrived (on any rank), save a checkpoint and stop. At the
    last step the run finishes instead (final eval, adapter/): there is nothing left to resume."""

    def __init__(self, preemption: Preemption) -> None:
        self.preemption = preemption
        self.stopped_at: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self.preemption.arm()  # the step loop starts: a signal now waits for the next step boundary
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if self.preemption.agreed() and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class LogAtCheckpoints(TrainerCallback):
    """Also log at every checkpoint and at the last step, whatever train.logging_steps says: a resumed run then
    averages its logged losses over the same windows as an uninterrupted one, and the run's end is recorded.
    Must run after the callbacks that decide the saves (the Trainer's flow callback, StopOnPreemption)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
        return control


class MetricsFile(TrainerCallback):
    """Appends one JSON line per trainer log: step, loss, eval_loss, lr, grad_norm, trained tokens, tokens/s."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step}
        record.update({out: logs[key] for key, out in METRIC_KEYS.items() if key in logs})
        record.update({key: value for key, value in logs.items() if key.startswith("eval_loss/")})  # per source
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
                print(eval_line(state.global_step, logs))
            return
        if "loss" in logs:
            self.training_bar.set_postfix(
                loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0.0):.2e}",
                tok_s=f"{logs.get('tokens_per_s', 0.0):.0f}", refresh=False,
            )
        if "eval_loss" in logs:
            self.training_bar.write(eval_line(state.global_step, logs))


def eval_line(step: int, logs: dict[str, Any]) -> str:
    """`step 10: eval loss 1.2345 (alpaca 1.1000, chats 1.4000)`: the overall loss, then each source's."""
    per_source = ", ".join(f"{k.removeprefix('eval_loss/')} {v:.4f}" for k, v in logs.items() if k.startswith("eval_loss/"))
    return f"step {step}: eval loss {logs['eval_loss']:.4f}" + (f" ({per_source})" if per_source else "")


class TrackerLogs(TrainerCallback):
    """Sends every trainer log to the run's trackers (W&B, MLflow, trackio: sft.run.trackers), rank 0 only.

    After a restart each tracker run is first given what it lacks of the steps up to the checkpoint the run resumes
    from (`earlier`: metrics.jsonl's rows from before the restart; a kill can keep a tracker's last points from
    reaching it, and those steps are not trained again). The steps trained again that a tracker already holds are
    not sent twice (the same figures: resuming is bitwise)."""

    def __init__(self, trackers: list[Any], earlier: list[dict[str, Any]] | None = None) -> None:
        self.trackers = []
        for tracker in trackers:
            held = tracker.last_step()
            for row in earlier or []:
                if row.get("step", -1) > held:
                    self._send(tracker, row, row["step"])
            self.trackers.append((tracker, max([held] + [r["step"] for r in earlier or []])))

    @staticmethod
    def _send(tracker: Any, logs: dict[str, Any], step: int) -> None:
        from sft.run.trackers import metric_name

        metrics = {metric_name(k): v for k, v in logs.items() if isinstance(v, (int, float)) and metric_name(k)}
        if metrics:
            tracker.log(metrics, step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        for tracker, held in self.trackers:
            if state.global_step > held:
                self._send(tracker, logs, state.global_step)
