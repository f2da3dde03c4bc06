"""train.kernels (sft/model/kernels.py): Liger's RoPE, RMSNorm and SwiGLU patched into the base before LoRA, its
cross-entropy left off; a run that cannot use them stops before the model loads with one message."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from conftest import tiny_llama
from sft.errors import ConfigError
from sft.model.kernels import apply_kernels, check_kernels


def fake_liger(monkeypatch: Any) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    root, sub = types.ModuleType("liger_kernel"), types.ModuleType("liger_kernel.transformers")
    sub._apply_liger_kernel_to_instance = lambda **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "liger_kernel", root)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", sub)
    return calls


def test_none_is_a_no_op_anywhere() -> None:
    check_kernels("none", "cpu")
    assert apply_kernels(tiny_llama(), "none") is None


def test_liger_on_cpu_or_without_the_package_is_one_error(monkeypatch: Any) -> None:
    with pytest.raises(ConfigError, match=r"train.kernels=liger: .*Triton GPU kernels.*cpu.*train.kernels=none"):
        check_kernels("liger", "cpu")
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # not installed
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(ConfigError, match=r"needs the liger-kernel package.*sft\[liger\]"):
        check_kernels("liger", "cuda")


def test_liger_patches_rope_norm_and_mlp_of_the_base_but_not_the_loss(monkeypatch: Any) -> None:
    calls = fake_liger(monkeypatch)
    model = tiny_llama()
    line = apply_kernels(model, "liger")
    assert calls == [{"model": model, "rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                      "fused_linear_cross_entropy": False}]
    assert "llama" in line


def test_sft_train_applies_the_kernels_to_the_base_before_lora(monkeypatch: Any, tiny_dir: Any) -> None:
    import sft.train.job as job
    from sft.config import LoraConfig, ModelConfig, QuantConfig, TrainConfig, TrainRunConfig

    seen = []
    monkeypatch.setattr(job, "apply_kernels", lambda model, name: seen.append((type(model).__name__, name)) or None)
    cfg = TrainRunConfig(model=ModelConfig(path=str(tiny_dir)), quant=QuantConfig(name="none"),
                         lora=LoraConfig(r=2), train=TrainConfig(kernels="liger"))
    model = job.build_model(cfg, "cpu")
    assert seen == [("LlamaForCausalLM", "liger")] and type(model).__name__.startswith("Peft")


def test_an_unknown_kernel_name_is_a_config_problem() -> None:
    from sft.config import TrainConfig

    assert any("train.kernels" in p for p in TrainConfig(kernels="tritonish").problems("train"))
