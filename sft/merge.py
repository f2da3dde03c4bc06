"""sft-merge: full-precision base + LoRA adapter -> one standard transformers model directory.

QLoRA trains the adapter against the 4-bit base, but merging into 4-bit weights would round the update away:
the base is loaded de-quantized (full precision; for a .gguf base, its de-quantized safetensors cache), the
adapter is merged into it, and the result is saved with the tokenizer of the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sft.config import MergeRunConfig, ModelConfig, QuantConfig
from sft.errors import ConfigError
from sft.model import load_model, load_tokenizer
from sft.rundir import read_run_config


def base_and_adapter(run_dir: Path, dtype: str = "float32") -> Any:
    """The run's base model in full precision on CPU with its adapter attached (unmerged PeftModel)."""
    from peft import PeftModel

    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"run_dir={run_dir}: no finished adapter ({adapter}/adapter_config.json missing)")
    model_cfg = ModelConfig(**read_run_config(run_dir)["model"])
    model_cfg.dtype = dtype
    model_cfg.attn_implementation = "sdpa"  # the merge runs no attention; flash_attention_2 would need a GPU
    base = load_model(model_cfg, QuantConfig(name="none"), device="cpu")
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def merge(cfg: MergeRunConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    target = Path(cfg.out_dir)
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"out_dir={target}: already exists and is not empty")
    merged = base_and_adapter(run_dir).merge_and_unload()  # merged in float32, then stored in cfg.dtype
    if cfg.dtype != "float32":
        import torch

        merged = merged.to(getattr(torch, cfg.dtype))
    merged.config.use_cache = True  # training switched it off; generation wants it
    tokenizer_dir = run_dir / "tokenizer"
    tokenizer = load_tokenizer(ModelConfig(), path=str(tokenizer_dir)) if tokenizer_dir.is_dir() else None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        merged.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"merged {run_dir / 'adapter'} into its base: {target}")
    return target
