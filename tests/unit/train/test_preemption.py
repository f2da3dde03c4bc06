"""Preemption flags and the closing summary of a run (no model)."""

from __future__ import annotations

import os
import signal

import pytest

from sft.train.checkpoint import Preemption, PreemptedBeforeTraining


def test_before_the_step_loop_a_signal_ends_at_once_then_it_waits_for_a_step_boundary() -> None:
    before = {s: signal.getsignal(getattr(signal, s)) for s in Preemption.SIGNALS}
    try:
        for name in Preemption.SIGNALS:
            flag = Preemption()
            flag.install()
            with pytest.raises(PreemptedBeforeTraining) as stopped:  # set-up: data preparation, model load
                os.kill(os.getpid(), getattr(signal, name))
            assert stopped.value.signal_name == name
            flag.uninstall()
            flag = Preemption()
            flag.install()
            flag.arm()  # the step loop started
            assert not flag.agreed()
            os.kill(os.getpid(), getattr(signal, name))
            assert flag.agreed() and flag.signal_name == name
            flag.uninstall()
            assert signal.getsignal(getattr(signal, name)) == before[name]  # the handlers from before train()
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
