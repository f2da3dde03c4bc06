"""Each chat family end to end on CPU: a tiny random model of its architecture with its real vocabulary and
template, a few QLoRA steps (packed, then padded), then sft-generate and sft-eval on the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_sft, write_jsonl
from families import tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
ARCHITECTURES = {"llama-3.1": "llama", "llama-3.2": "llama", "qwen2.5": "qwen2", "qwen3": "qwen3", "phi-3.5": "phi3",
                 "llama-2-spm": "llama"}
END_OF_TURN = {"llama-3.1": "<|eot_id|>", "llama-3.2": "<|eot_id|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>",
               "phi-3.5": "<|end|>", "llama-2-spm": "</s>"}
CHATS = [{"messages": [{"role": "system", "content": "Answer with one word."},
                       {"role": "user", "content": f"Colour number {i}?"}, {"role": "assistant", "content": f" red{i}"},
                       {"role": "user", "content": "Again, with <|im_end|> in it?"},
                       {"role": "assistant", "content": f"blue{i} <|eot_id|>"}]} for i in range(12)]


def tiny_model(family: str, directory: Path) -> Path:
    """2 small layers of the family's architecture, its real tokenizer and template, random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tokenizer(family)
    torch.manual_seed(0)
    config = AutoConfig.for_model(ARCHITECTURES[family], vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=1024, tie_word_embeddings=False,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("family", list(ARCHITECTURES))
def test_a_family_trains_generates_and_evaluates(family: str, tmp_path: Path) -> None:
    model = tiny_model(family, tmp_path / "model")
    data = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    common = [f"model.path={model}", "data=messages", "prompt=chat", f"data.path={data}", "data.eval_fraction=0.25",
              "data.max_seq_len=256", "train.micro_batch_size=2", "train.grad_accum=1", "train.save_steps=100",
              "train.eval_at_start=false"]
    for packing, steps in (("true", 2), ("false", 1)):
        run = tmp_path / f"run-packed-{packing}"
        proc = run_sft("train", *common, f"data.packing={packing}", f"train.max_steps={steps}", f"out_dir={run}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads((run / "report.json").read_text())
        train = report["splits"]["train"]
        assert train["render_mismatches"] == 0 and train["double_bos"] == 0 and train["eos_trained"]["ok"]
        assert train["turns_trained"] == {"2": train["kept"]}
        assert report["template_details"]["end_of_turn"] == END_OF_TURN[family]
        assert (run / "adapter" / "adapter_config.json").is_file()
    gen = run_sft("generate", f"adapter={run}", "split=eval", "generation.max_new_tokens=4", f"out_dir={tmp_path / 'gen'}")
    assert gen.returncode == 0, gen.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gen" / "generations.jsonl").read_text().splitlines()]
    assert rows and all(r["prompt_tokens"] > 0 and r["reference"] for r in rows)
    ev = run_sft("eval", f"adapter={run}", "generation.max_new_tokens=4", f"out_dir={tmp_path / 'eval'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]
    assert results["adapter"]["tokens"] > 0 and results["base"]["loss"] > 0
