"""Run directory judgement, checkpoint discovery and preemption flags (no model)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sft.checkpoint import Preemption, complete_checkpoints, latest_checkpoint, remove_staging, rotate
from sft.config import TrainRunConfig
from sft.errors import ConfigError
from sft.rundir import CONFIG, FINISHED, differing_keys, mark_finished, run_config, run_status


def config(**train: object) -> dict:
    cfg = TrainRunConfig(out_dir="/runs/a")
    cfg.data.path = "train.jsonl"
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return run_config(cfg)


def test_run_config_keeps_the_keys_evaluation_reads() -> None:
    assert {"model", "data", "prompt", "quant", "lora", "train", "seed"} <= set(config())
    assert config()["prompt"]["name"] == "alpaca"


def test_differing_keys_name_each_change_and_ignore_out_dir() -> None:
    old, new = config(), config(lr=1e-3)
    new["lora"]["r"] = 8
    new["out_dir"] = "/elsewhere"
    diff = differing_keys(old, new)
    assert [d.split(":")[0] for d in diff] == ["lora.r", "train.lr"]
    assert differing_keys(old, config()) == []


def test_run_status_new_resume_finished_and_conflict(tmp_path: Path) -> None:
    import yaml

    assert run_status(tmp_path, config()) == "new"
    (tmp_path / CONFIG).write_text(yaml.safe_dump(config()))
    assert run_status(tmp_path, config()) == "resume"
    mark_finished(tmp_path, {"global_step": 3})
    assert (tmp_path / FINISHED).is_file()
    assert run_status(tmp_path, config()) == "finished"
    with pytest.raises(ConfigError, match=r"train\.max_steps: -1 in the run, 7 now"):
        run_status(tmp_path, config(max_steps=7))


def test_a_run_that_stopped_before_its_first_checkpoint_may_restart_with_other_settings(tmp_path: Path) -> None:
    import yaml

    (tmp_path / CONFIG).write_text(yaml.safe_dump(config(micro_batch_size=8)))  # e.g. out of memory at step 1
    assert run_status(tmp_path, config(micro_batch_size=4)) == "restart"
    assert run_status(tmp_path, config(micro_batch_size=8)) == "resume"
    make_checkpoint(tmp_path / "checkpoints", ".tmp-checkpoint-2")  # a half-written checkpoint keeps nothing
    assert run_status(tmp_path, config(micro_batch_size=4)) == "restart"
    make_checkpoint(tmp_path / "checkpoints", "checkpoint-2")  # trained steps are kept: never overwritten
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: 8 in the run, 4 now"):
        run_status(tmp_path, config(micro_batch_size=4))


def test_out_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        run_status(tmp_path / "file", config())


def make_checkpoint(root: Path, name: str, complete: bool = True) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_latest_checkpoint_never_picks_staging_or_incomplete_directories(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    make_checkpoint(tmp_path, "checkpoint-2")
    make_checkpoint(tmp_path, "checkpoint-10")
    make_checkpoint(tmp_path, ".tmp-checkpoint-12")  # a save killed before its rename
    make_checkpoint(tmp_path, "checkpoint-11", complete=False)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # numeric order, not string order
    remove_staging(tmp_path)
    assert not (tmp_path / ".tmp-checkpoint-12").exists()
    rotate(tmp_path, keep=1)
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-10"]


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
    from sft.metrics_log import summary_line

    logged = [{"step": 0, "eval_loss": 2.5}, {"step": 1, "loss": 2.0, "trained_tokens": 10},
              {"step": 2, "loss": 1.0, "trained_tokens": 20}, {"step": 2, "eval_loss": 1.25}]
    line = summary_line(logged, 90)
    assert line == ("done: 2 steps, train loss 2.0000 -> 1.0000, eval loss 2.5000 (step 0) -> 1.2500 (step 2), "
                    "20 trained tokens, 1.5 min")
    assert "eval loss 1.2500 (step 2), " in summary_line(logged[1:], 90)  # no eval before training
