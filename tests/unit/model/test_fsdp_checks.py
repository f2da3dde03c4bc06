"""train.fsdp=true: what is refused at start-up (one message), and the optimizer `auto` picks under it."""

from __future__ import annotations

import pytest

from sft.config import QuantConfig
from sft.errors import ConfigError
from sft.model.fsdp import check_fsdp
from sft.train.trainer import pick_optimizer

NF4 = QuantConfig(name="nf4", quant_storage="float32")


def test_a_tested_setup_passes_and_every_refusal_is_in_one_message() -> None:
    check_fsdp(NF4, "cpu", 2, "auto")
    check_fsdp(NF4, "cpu", 2, "adamw_torch")
    with pytest.raises(ConfigError) as found:
        check_fsdp(QuantConfig(name="nf4"), "cpu", 1, "paged_adamw_8bit", resuming=True)
    message = str(found.value)
    assert "this run has 1" in message and "quant.quant_storage=float32" in message
    assert "train.optim=paged_adamw_8bit: only torch's AdamW has run on sharded parameters" in message
    assert "train.fsdp=true runs do not resume" in message


@pytest.mark.parametrize("optim", ["paged_adamw_8bit", "adamw_bnb_8bit", "paged_lion_32bit", "sgd"])
def test_optimizers_never_run_on_shards_are_refused(optim: str) -> None:
    with pytest.raises(ConfigError, match=f"train.optim={optim}"):
        check_fsdp(NF4, "cpu", 2, optim)


def test_auto_is_torchs_adamw_under_fsdp_on_a_gpu_too() -> None:
    assert pick_optimizer("auto", "cuda") == "paged_adamw_8bit"
    assert pick_optimizer("auto", "cuda", fsdp=True) == "adamw_torch"
    assert pick_optimizer("auto", "cpu") == "adamw_torch"
    assert pick_optimizer("paged_adamw_8bit", "cuda", fsdp=True) == "paged_adamw_8bit"  # check_fsdp refuses it
