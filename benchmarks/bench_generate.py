#!/usr/bin/env python3
"""python benchmarks/bench_generate.py ../shared/data/alpaca_en_demo.json --max-new-tokens 32  -- prints JSON.

On N prompts (Alpaca template) with the embedded SmolLM2 (fp32 on CPU; bf16 with --device cuda), greedy:
1. our batched decoding (sft.generate.decode) at --batch-size, against
2. one prompt at a time through `model.generate` (the loop most inference scripts use), and
3. `model.generate` at the same batch size with left padding;
in generated tokens per second (tokens up to, not counting, the EOS). Then sampled (temperature 1, top-p
0.95, one seed): the fraction of prompts whose sampled text is identical at batch size 1 and --batch-size,
and the fraction of greedy texts equal to model.generate's. Wall and CPU seconds and the load average are
reported beside each figure, since other processes on a shared machine slow the timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import torch

from sft.config import DataConfig, GenerationConfig, ModelConfig, PromptConfig, QuantConfig
from sft.data.load import load_records
from sft.generate.decode import left_pad
from sft.generate.items import build_items
from sft.generate.job import decode_batch, stopping_for
from sft.model.load import load_model, load_tokenizer, resolve_model_path


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def ours(model, tok, items, gen: GenerationConfig, batch_size: int) -> dict[tuple, list[int]]:
    stopping = stopping_for(tok, model, PromptConfig(), gen)
    out = {}
    for i in range(0, len(items), batch_size):
        for item, d in decode_batch(model, items[i : i + batch_size], gen, stopping, tok.pad_token_id):
            out[item.key] = d.tokens
    return out


@torch.inference_mode()
def hf_generate(model, tok, items, max_new_tokens: int, batch_size: int) -> dict[tuple, list[int]]:
    device = next(model.parameters()).device
    out = {}
    for i in range(0, len(items), batch_size):
        batch = items[i : i + batch_size]
        ids, mask, _ = left_pad([it.ids for it in batch], tok.pad_token_id, device)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for item, row in zip(batch, gen[:, ids.shape[1] :].tolist()):
            out[item.key] = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
    return out


def figure(result: dict, wall: float, cpu: float) -> dict[str, float]:
    tokens = sum(len(t) for t in result.values())
    return {"tokens": tokens, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "tokens_per_s": round(tokens / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default="../shared/data/alpaca_en_demo.json")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto: fp32 on CPU, bf16 on GPU")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (1 is steadier on a busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = resolve_model_path(ModelConfig())
    tok = load_tokenizer(ModelConfig(), path=path)
    model = load_model(ModelConfig(dtype=args.dtype), QuantConfig(name="none"), device=args.device, path=path).eval()
    records = load_records(args.data, DataConfig(path=args.data, on_bad_record="skip"), limit=args.n).records
    greedy = GenerationConfig(max_new_tokens=args.max_new_tokens)
    items = build_items(records, PromptConfig(), tok, greedy, 4096, "truncate", args.data)
    items.sort(key=lambda it: (-len(it.ids), it.key))  # as sft-generate plans its batches, for all three
    b = args.batch_size
    for _ in range(2):  # warm-up: oneDNN builds its kernels for new shapes on first use
        ours(model, tok, items[:b], dataclasses.replace(greedy, max_new_tokens=4), b)
        hf_generate(model, tok, items[:b], 4, b)

    ours_b, w1, c1 = timed(lambda: ours(model, tok, items, greedy, b))
    loop, w2, c2 = timed(lambda: hf_generate(model, tok, items, args.max_new_tokens, 1))
    hf_b, w3, c3 = timed(lambda: hf_generate(model, tok, items, args.max_new_tokens, b))
    sampled = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=1)
    s_b, _, _ = timed(lambda: ours(model, tok, items, sampled, b))
    s_1, _, _ = timed(lambda: ours(model, tok, items, sampled, 1))

    f_ours, f_loop, f_hf = figure(ours_b, w1, c1), figure(loop, w2, c2), figure(hf_b, w3, c3)
    report = {
        "device": args.device, "dtype": str(model.dtype), "prompts": len(items), "max_new_tokens": args.max_new_tokens,
        "batch_size": b, "torch_threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "ours_batched": f_ours, "generate_one_at_a_time": f_loop, "generate_batched": f_hf,
        "speedup_vs_one_at_a_time": round(f_ours["tokens_per_s"] / f_loop["tokens_per_s"], 2),
        "ratio_vs_generate_batched": round(f_ours["tokens_per_s"] / f_hf["tokens_per_s"], 2),
        "greedy_identical_to_generate": sum(ours_b[k] == hf_b[k] for k in ours_b) / len(items),
        "sampled_identical_batch_1_vs_batch": sum(s_1[k] == s_b[k] for k in s_b) / len(items),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
