"""RunDir: what it writes is what later commands read, how a rerun is judged, which checkpoints count (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft.config import TrainRunConfig
from sft.errors import ConfigError
from sft.run.checkpoints import complete_checkpoints, latest_checkpoint, remove_staging, rotate
from sft.run.rundir import FINISHED, RunDir, describe_differences, run_config


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
    diff = describe_differences(old, new)
    assert [d.split(":")[0] for d in diff] == ["lora.r", "train.lr"]
    assert describe_differences(old, config()) == []


def test_a_setting_added_after_the_run_was_made_counts_only_away_from_its_default() -> None:
    old = config()
    del old["data"]["mix_by"], old["data"]["sources"], old["train"]["report_to"]  # a run from before they existed
    assert describe_differences(old, config()) == []
    new = config()
    new["data"]["mix_by"] = "tokens"
    new["train"]["report_to"] = ["wandb"]  # where metrics go: never a difference
    assert describe_differences(old, new) == ["data.mix_by: '<absent>' in the run, 'tokens' now"]


def test_run_status_new_resume_finished_and_conflict(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.status(config()) == "new"
    run.write_config(config())
    assert run.status(config()) == "resume"
    assert RunDir(tmp_path).config == config()  # what a later command reads is what was written
    run.mark_finished({"global_step": 3})
    assert (tmp_path / FINISHED).is_file()
    assert run.status(config()) == "finished"
    with pytest.raises(ConfigError, match=r"train\.max_steps: -1 in the run, 7 now"):
        run.status(config(max_steps=7))


def test_a_run_that_stopped_before_its_first_checkpoint_may_restart_with_other_settings(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_config(config(micro_batch_size=8))  # e.g. out of memory at step 1
    assert run.status(config(micro_batch_size=4)) == "restart"
    assert run.changed_keys(config(micro_batch_size=4)) == ["train.micro_batch_size"]
    assert run.status(config(micro_batch_size=8)) == "resume"
    make_checkpoint(run.checkpoints, ".tmp-checkpoint-2")  # a half-written checkpoint keeps nothing
    assert run.status(config(micro_batch_size=4)) == "restart"
    make_checkpoint(run.checkpoints, "checkpoint-2")  # trained steps are kept: never overwritten
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: 8 in the run, 4 now"):
        run.status(config(micro_batch_size=4))


def test_out_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        RunDir(tmp_path / "file").status(config())


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


def test_a_run_from_before_split_seed_resumes_with_the_split_its_seed_drew(tmp_path: Path) -> None:
    """Its config.yaml has no data.split_seed: its held-out split (and the cache keys its checkpoints name) came
    from `seed`. The same command resumes it, again and again; another split seed is a difference."""
    old = run_config(TrainRunConfig(out_dir=str(tmp_path), seed=3))
    del old["data"]["split_seed"]
    run = RunDir(tmp_path)
    run.write_config(old)
    make_checkpoint(run.checkpoints, "checkpoint-2")
    assert run.data().split_seed == 3  # what sft-eval re-derives the split with
    cfg = run.keep_split(TrainRunConfig(out_dir=str(tmp_path), seed=3))
    assert cfg.data.split_seed == 3
    assert run.status(run.as_written(cfg)) == "resume"
    run.write_config(run.as_written(cfg))  # what the resumed run writes: still a run whose split is its seed's
    again = RunDir(tmp_path)
    assert again.predates_split_seed and again.status(again.as_written(again.keep_split(
        TrainRunConfig(out_dir=str(tmp_path), seed=3)))) == "resume"
    other = TrainRunConfig(out_dir=str(tmp_path), seed=3)
    other.data.split_seed = 5
    with pytest.raises(ConfigError, match=r"data\.split_seed: '<absent>' in the run, 5 now"):
        again.status(again.as_written(again.keep_split(other)))


def test_a_new_run_records_the_default_split_seed_not_its_seed(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    cfg = run.keep_split(TrainRunConfig(out_dir=str(tmp_path), seed=3))
    assert cfg.data.split_seed == 0  # the default: not the seed
    run.write_config(run.as_written(cfg))
    assert run.config["data"]["split_seed"] == 0 and run.data().split_seed == 0
