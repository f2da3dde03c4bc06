"""sft.keys: unknown keys are found in overrides and composed configs, each with the real key it most likely meant."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from sft.cli import typed
from sft.config import BenchRunConfig, TrainRunConfig
from sft.errors import ConfigError
from sft.keys import nearest, unknown_override_keys


@pytest.mark.parametrize(("typo", "meant"), [
    ("train.lerning_rate", "train.lr"), ("learning_rate", "train.lr"), ("train.num_train_epochs", "train.epochs"),
    ("gradient_accumulation_steps", "train.grad_accum"), ("data.max_lenght", "data.max_seq_len"),
    ("lora.rank", "lora.r"), ("output_dir", "out_dir"), ("data.pakcing", "data.packing"),
    ("train.warmup_ration", "train.warmup_ratio"),
])
def test_the_nearest_real_key(typo: str, meant: str) -> None:
    assert nearest(TrainRunConfig, typo) == meant


def test_only_keys_the_schema_lacks_are_reported() -> None:
    overrides = ["train.lr=1", "+train.lerning_rate=1", "data=alpaca", "+experiment=cpu_demo", "hydra.run.dir=x",
                 "hydra/launcher=slurm", "prompt.template_kwargs.enable_thinking=false", "~data.eval_path",
                 "model.path.sub=1", "foo=1"]
    assert unknown_override_keys(TrainRunConfig, overrides, {"data", "experiment"}) == [
        "train.lerning_rate", "model.path.sub", "foo"]
    assert unknown_override_keys(BenchRunConfig, ["benchmark.taks=[a]"], set()) == ["benchmark.taks"]


def test_a_key_appended_with_plus_is_refused_when_the_config_becomes_typed() -> None:
    with initialize_config_module(config_module="sft.conf", version_base="1.3"):
        cfg = compose("train", overrides=["+train.lerning_rate=1", "+prompt.template_kwargs.x=1", "out_dir=/tmp/unused"])
    with pytest.raises(ConfigError, match=r"train.lerning_rate: no such setting; did you mean train.lr\?") as err:
        typed(cfg)
    assert "template_kwargs" not in str(err.value)
