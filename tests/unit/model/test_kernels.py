"""train.kernels (sft/model/kernels.py): Liger's RoPE, RMSNorm and SwiGLU, applied by transformers' public switch
(TrainingArguments use_liger_kernel / liger_kernel_config) to the base inside the PEFT model when training starts,
its cross-entropy left off; a run that cannot use them stops before the model loads with one message."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_llama
from sft.errors import ConfigError
from sft.model.kernels import LIGER_CONFIG, check_kernels, kernel_arguments, kernels_line


def fake_liger(monkeypatch: Any) -> list[dict[str, Any]]:
    """liger-kernel as transformers finds it: installed (>= 0.3.0), its instance patcher recording its calls."""
    import transformers.integrations.liger as hf_liger

    calls: list[dict[str, Any]] = []
    root, sub = types.ModuleType("liger_kernel"), types.ModuleType("liger_kernel.transformers")
    sub._apply_liger_kernel_to_instance = lambda **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "liger_kernel", root)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", sub)
    monkeypatch.setattr(hf_liger, "is_liger_kernel_available", lambda: True)
    return calls


def test_none_is_a_no_op_anywhere() -> None:
    check_kernels("none", "cpu")
    assert kernel_arguments("none") == {} and kernels_line(tiny_llama(), "none") is None


def test_liger_on_cpu_or_without_the_package_is_one_error(monkeypatch: Any) -> None:
    with pytest.raises(ConfigError, match=r"train.kernels=liger: .*Triton GPU kernels.*cpu.*train.kernels=none"):
        check_kernels("liger", "cpu")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)  # not installed
    with pytest.raises(ConfigError, match=r"needs the liger-kernel package.*sft\[liger\]"):
        check_kernels("liger", "cuda")


def test_liger_asks_for_rope_norm_and_mlp_but_not_the_loss(tmp_path: Path) -> None:
    from sft.config import QuantConfig, TrainConfig
    from sft.train.trainer import training_arguments

    assert LIGER_CONFIG == {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                            "fused_linear_cross_entropy": False}
    args = training_arguments(TrainConfig(kernels="liger"), QuantConfig(name="none"), 0, tmp_path, False)
    assert args.use_liger_kernel and args.liger_kernel_config == LIGER_CONFIG
    plain = training_arguments(TrainConfig(), QuantConfig(name="none"), 0, tmp_path, False)
    assert not plain.use_liger_kernel and plain.liger_kernel_config is None
    assert "llama" in kernels_line(tiny_llama(), "liger")


def test_training_applies_them_to_the_base_inside_the_peft_model(monkeypatch: Any, tmp_path: Path) -> None:
    """The hook this relies on: transformers' Trainer.train calls Liger's patcher with the unwrapped base and our
    config when use_liger_kernel is set (fails loudly if transformers stops doing so)."""
    import datasets

    from sft.config import LoraConfig, QuantConfig, TrainConfig
    from sft.data.collate import PackedCollator
    from sft.model.lora import add_lora
    from sft.train.trainer import SftTrainer, training_arguments

    calls = fake_liger(monkeypatch)
    quant = QuantConfig(name="none")
    base = tiny_llama()
    model = add_lora(base, quant, LoraConfig(r=2, dropout=0.0), gradient_checkpointing=False)
    args = training_arguments(TrainConfig(kernels="liger", max_steps=1, grad_accum=1, micro_batch_size=1),
                              quant, 0, tmp_path, False, packing=True)
    args.disable_tqdm = True
    rows = datasets.Dataset.from_list([{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8], "position_ids": [0, 1, 2, 3]}])
    SftTrainer(model=model, args=args, train_dataset=rows, data_collator=PackedCollator()).train()
    assert calls == [{"model": base, **LIGER_CONFIG}]


def test_an_unknown_kernel_name_is_a_config_problem() -> None:
    from sft.config import TrainConfig

    assert any("train.kernels" in p for p in TrainConfig(kernels="tritonish").problems("train"))
