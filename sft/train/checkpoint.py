"""Checkpoints that are complete or absent, and preemption that ends in one.

A checkpoint is written into `checkpoints/.tmp-checkpoint-N/` and renamed to `checkpoints/checkpoint-N/` once
everything (adapter, optimizer, scheduler, RNG states of every rank, trainer state) is on disk, so a process
killed mid-write leaves only a `.tmp-*` directory, which is never resumed from and is removed on the next save.

SIGTERM and SIGUSR1 (what Slurm sends before preemption or the time limit) set a flag; at the next optimizer
step boundary the trainer saves a checkpoint, stops, and the command exits with EXIT_PREEMPTED. Before the first
step there is nothing to save: a signal then ends the command at once, with the same exit status.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from sft.run.checkpoints import SFT_STATE, STAGING_PREFIX, rotate

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; rerunning the same command resumes


class AtomicCheckpointMixin:
    """For a transformers Trainer subclass: every checkpoint goes through a staging directory and a rename.
    `sft_state()` (defined by the subclass) is saved next to the trainer state."""

    _staging: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging if self._staging is not None else super()._get_output_dir(trial)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        args: Any = self.args  # type: ignore[attr-defined]
        step = self.state.global_step  # type: ignore[attr-defined]
        root = Path(args.output_dir)
        staging = root / f"{STAGING_PREFIX}checkpoint-{step}"
        if args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self._barrier()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]  # writes staging/checkpoint-N
        finally:
            self._staging = None
        self._barrier()  # every rank has written its RNG state
        if args.should_save:
            written = staging / f"checkpoint-{step}"
            (written / SFT_STATE).write_text(json.dumps(self.sft_state()) + "\n")  # type: ignore[attr-defined]
            final = root / written.name
            if final.exists():  # same step saved again (e.g. preemption right after a periodic save)
                shutil.rmtree(final)
            os.replace(written, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate(root, args.save_total_limit)
        self._barrier()

    def _barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


class PreemptedBeforeTraining(BaseException):
    """A signal arrived before the first step (data preparation, model load, the first evaluation): nothing is
    trained yet, so the run ends at once instead of at a step boundary that may be minutes away."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class Preemption:
    """SIGTERM/SIGUSR1 handling of a training run. Before training starts, a signal ends the run at once
    (PreemptedBeforeTraining: Slurm's KillWait is short, and set-up can take minutes); once armed, when the
    step loop starts, it only sets a flag the trainer checks at step boundaries (all ranks agree). `uninstall`
    puts the previous handlers back."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.requested = False
        self.armed = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for name in self.SIGNALS:
            if hasattr(signal, name):
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)

    def arm(self) -> None:
        """From now on a signal waits for the next step boundary (where a checkpoint is saved)."""
        self.armed = True

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if not self.armed:
            raise PreemptedBeforeTraining(self.signal_name)

    def agreed(self) -> bool:
        """True on every rank as soon as any rank got a signal (one all-reduce per step when distributed)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
