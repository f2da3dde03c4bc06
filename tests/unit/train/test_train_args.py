"""What sft-train hands the transformers Trainer, and what a checkpoint must match to be resumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_llama
from sft.config import QuantConfig, TrainConfig
from sft.errors import ConfigError
from sft.train.trainer import SftTrainer, training_arguments

NONE = QuantConfig(name="none")


@pytest.mark.parametrize("steps, expected", [(0, -1), (-1, -1), (7, 7)])
def test_max_steps_of_zero_or_less_means_epochs(steps: int, expected: int, tmp_path: Path) -> None:
    # transformers trains by epochs only for max_steps < 0; 0 would stop after one step
    args = training_arguments(TrainConfig(max_steps=steps, epochs=2.0), NONE, 0, tmp_path, has_eval=False)
    assert args.max_steps == expected and args.num_train_epochs == 2.0


def test_packed_rows_are_evaluated_one_per_batch(tmp_path: Path) -> None:
    # a packed micro-batch is one flattened row; one data set row per eval batch keeps one loss sum per row,
    # which the evaluation loop needs to drop the rows that even out the ranks' shards
    cfg = TrainConfig(micro_batch_size=4)
    assert training_arguments(cfg, NONE, 0, tmp_path, has_eval=True, packing=True).per_device_eval_batch_size == 1
    assert training_arguments(cfg, NONE, 0, tmp_path, has_eval=True).per_device_eval_batch_size == 4


def test_a_checkpoint_written_by_another_number_of_processes_is_refused(tmp_path: Path) -> None:
    args = training_arguments(TrainConfig(), NONE, 0, tmp_path, has_eval=False)
    trainer = SftTrainer(model=tiny_llama(), args=args, train_dataset=[])
    assert trainer.sft_state() == {"trained_tokens": 0, "world_size": 1, "data": {}}
    with pytest.raises(ConfigError, match=r"checkpoint-8 was written by 2 processes and this run has 1"):
        trainer.restore_sft_state({"trained_tokens": 40, "world_size": 2}, "checkpoint-8")
    trainer.restore_sft_state({"trained_tokens": 40, "world_size": 1})
    assert trainer.trained_tokens == 40
    trainer.restore_sft_state({"trained_tokens": 41})  # checkpoints from before world_size was recorded
    assert trainer.trained_tokens == 41


def test_a_checkpoint_of_other_data_is_refused_naming_the_source(tmp_path: Path) -> None:
    args = training_arguments(TrainConfig(), NONE, 0, tmp_path, has_eval=False)
    trainer = SftTrainer(model=tiny_llama(), args=args, train_dataset=[])
    trainer.data_keys, trainer.data_paths = {"a": "k1", "b": "k2"}, {"a": "a.jsonl", "b": "b.jsonl"}
    assert trainer.sft_state()["data"] == {"a": "k1", "b": "k2"}
    trainer.restore_sft_state({"trained_tokens": 5, "world_size": 1, "data": {"a": "k1", "b": "k2"}})
    with pytest.raises(ConfigError, match=r"data source 'b' \(b.jsonl\) is not the data checkpoint-4 was trained on"):
        trainer.restore_sft_state({"trained_tokens": 5, "world_size": 1, "data": {"a": "k1", "b": "old"}}, "checkpoint-4")
    with pytest.raises(ConfigError, match=r"checkpoint-4 was trained with data source 'c', which this run does not have"):
        trainer.restore_sft_state({"trained_tokens": 5, "world_size": 1, "data": {"c": "k3"}}, "checkpoint-4")
