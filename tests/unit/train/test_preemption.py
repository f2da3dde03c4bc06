"""Preemption flags and the closing summary of a run (no model)."""

from __future__ import annotations

import os
import signal

from sft.train.checkpoint import Preemption


def test_sigterm_and_sigusr1_set_the_preemption_flag() -> None:
    before = {s: signal.getsignal(getattr(signal, s)) for s in Preemption.SIGNALS}
    try:
        for name in Preemption.SIGNALS:
            flag = Preemption()
            flag.install()
            assert not flag.agreed()
            os.kill(os.getpid(), getattr(signal, name))
            assert flag.agreed() and flag.signal_name == name
    finally:
        for name, handler in before.items():
            signal.signal(getattr(signal, name), handler)


def test_summary_line_shows_before_and_after_only_when_both_exist() -> None:
    from sft.train.report import summary_line

    logged = [{"step": 0, "eval_loss": 2.5}, {"step": 1, "loss": 2.0, "trained_tokens": 10},
              {"step": 2, "loss": 1.0, "trained_tokens": 20}, {"step": 2, "eval_loss": 1.25}]
    line = summary_line(logged, 90)
    assert line == ("done: 2 steps, train loss 2.0000 -> 1.0000, eval loss 2.5000 (step 0) -> 1.2500 (step 2), "
                    "20 trained tokens, 1.5 min")
    assert "eval loss 1.2500 (step 2), " in summary_line(logged[1:], 90)  # no eval before training
