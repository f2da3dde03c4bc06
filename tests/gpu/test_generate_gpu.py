"""Generation on CUDA (skipped without it): greedy equals model.generate in bf16, and 4-bit bases generate."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_sft

from sft.config import DataConfig, GenerationConfig, ModelConfig, PromptConfig, QuantConfig, resource_path
from sft.data.load import load_records
from sft.generate.decode import left_pad
from sft.generate.items import build_items
from sft.generate.job import decode_batch, stopping_for
from sft.model.load import load_model

pytestmark = pytest.mark.gpu


def test_greedy_equals_model_generate_in_bf16(smollm2_dir, smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    model = load_model(ModelConfig(dtype="bfloat16"), QuantConfig(name="none"), device="cuda", path=smollm2_dir).eval()
    records = load_records(resource_path("demo_eval.jsonl"), DataConfig(path="x"), limit=16).records
    gen = GenerationConfig(max_new_tokens=24)
    items = build_items(records, PromptConfig(), tok, gen, 2048, "error", "demo")
    ours = {it.key: d.tokens for it, d in decode_batch(model, items, gen, stopping_for(tok, model, PromptConfig(), gen), tok.pad_token_id)}
    ids, mask, _ = left_pad([it.ids for it in items], tok.pad_token_id, "cuda")
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)
    for item, row in zip(items, out[:, ids.shape[1] :].tolist()):
        assert ours[item.key] == (row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_quantized_base_generates(tmp_path, quant) -> None:
    proc = run_sft("generate", f"quant={quant}", "data.max_records=4", "generation.max_new_tokens=8", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["generated_tokens"] > 0 for r in rows)
