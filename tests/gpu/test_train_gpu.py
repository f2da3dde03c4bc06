"""QLoRA training on CUDA: bf16 compute, paged 8-bit AdamW, 4-bit base (skipped without a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_sft

pytestmark = pytest.mark.gpu


def test_qlora_nf4_bf16_paged_optimizer_trains_and_resumes(smollm2_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [f"out_dir={out}", "+experiment=cpu_demo", "train.max_steps=6", "train.save_steps=3"]
    done = run_sft("train", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0]
    args_bin = torch.load(out / "adapter" / "training_args.bin", weights_only=False)
    assert args_bin.optim == "paged_adamw_8bit" and args_bin.bf16 == torch.cuda.is_bf16_supported()


def test_padded_and_packed_losses_agree_on_gpu_in_bf16(smollm2_dir: str, smollm2_tokenizer: object) -> None:
    from sft.config import LoraConfig, ModelConfig, QuantConfig
    from sft.data.collate import PackedCollator, PaddedCollator
    from sft.model.lora import add_lora
    from sft.model.load import load_model

    quant = QuantConfig(name="nf4")
    model = add_lora(load_model(ModelConfig(), quant, device="cuda"), quant, LoraConfig(dropout=0.0), True).eval()
    rows = []
    for text, answer in (("Name a colour.", " Blue."), ("Two plus two?", " Four, of course."), ("Say hi.", " Hi!")):
        prompt = smollm2_tokenizer(text)["input_ids"]
        target = smollm2_tokenizer(answer, add_special_tokens=False)["input_ids"] + [smollm2_tokenizer.eos_token_id]
        rows.append({"input_ids": prompt + target, "labels": [-100] * len(prompt) + target,
                     "position_ids": list(range(len(prompt) + len(target)))})
    to_cuda = lambda b: {k: v.cuda() if torch.is_tensor(v) else v for k, v in b.items()}  # noqa: E731
    with torch.no_grad():
        padded = model(**to_cuda(PaddedCollator(smollm2_tokenizer.pad_token_id)(rows))).loss
        packed = model(**to_cuda(PackedCollator()(rows))).loss
    torch.testing.assert_close(packed.float(), padded.float(), rtol=2e-2, atol=2e-2)
