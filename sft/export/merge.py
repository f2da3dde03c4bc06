"""sft-merge: full-precision base + LoRA adapter -> one standard transformers model directory.

QLoRA trains the adapter against the 4-bit base, but merging into 4-bit weights would round the update away:
the base is loaded de-quantized (full precision; for a .gguf base, its de-quantized safetensors cache), the
adapter is merged into it, and the result is saved with the tokenizer of the run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sft.config import MergeRunConfig, ModelConfig, QuantConfig
from sft.errors import ConfigError
from sft.io import publish_dir
from sft.model.load import load_model, load_tokenizer
from sft.run.rundir import RunDir


def base_and_adapter(run: RunDir, dtype: str = "float32") -> Any:
    """The run's base model in full precision on CPU with its adapter attached (unmerged PeftModel)."""
    from peft import PeftModel

    if not (run.adapter / "adapter_config.json").is_file():
        raise ConfigError(f"run_dir={run.path}: no finished adapter ({run.adapter}/adapter_config.json missing)")
    # the merge runs no attention: sdpa, whatever the run used (flash_attention_2 would need a GPU)
    model_cfg = dataclasses.replace(run.model(), dtype=dtype, attn_implementation="sdpa")
    base = load_model(model_cfg, QuantConfig(name="none"), device="cpu")
    return PeftModel.from_pretrained(base, str(run.adapter)).eval()


def run(cfg: MergeRunConfig) -> Path:
    """sft-merge: the merged model directory, published whole (temporary directory + rename)."""
    run_dir = RunDir(cfg.run_dir)
    target = Path(cfg.out_dir)
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"out_dir={target}: already exists and is not empty")
    merged = base_and_adapter(run_dir).merge_and_unload()  # merged in float32, then stored in cfg.dtype
    if cfg.dtype != "float32":
        import torch

        merged = merged.to(getattr(torch, cfg.dtype))
    merged.config.use_cache = True  # training switched it off; generation wants it
    tokenizer = load_tokenizer(ModelConfig(), path=str(run_dir.tokenizer)) if run_dir.tokenizer.is_dir() else None

    def write(tmp: Path) -> None:
        merged.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    if target.exists():
        target.rmdir()  # empty (checked above)
    publish_dir(target, write, marker="config.json")
    print(f"merged {run_dir.adapter} into its base: {target}")
    return target
