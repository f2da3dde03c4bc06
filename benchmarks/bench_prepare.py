#!/usr/bin/env python3
"""python benchmarks/bench_prepare.py ../shared/data/alpaca_en_demo.json  -- prints JSON figures.

1. Preprocessing throughput (examples/s, tokens/s) of our pipeline (prompts -> segment tokenization ->
   masking, boundary check included) against the original Alpaca `preprocess` algorithm, re-implemented here:
   tokenize source+target and source one string at a time (return_tensors="pt", padding="longest"), mask the
   first len(source) labels. `tokenize_once_floor` times a bare batch encode of every prompt and answer once:
   no correct pipeline that tokenizes its data can be faster, so it bounds the reachable speedup.
2. Packing efficiency (real tokens / row slots) of our best-fit-decreasing packing at 512/1024/2048/4096
   against padding to the longest example in batches of 8, on the same examples; and how far our row count is
   from the lower bound ceil(tokens / max_seq_len).
Runs on the embedded SmolLM2 tokenizer (CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch

from sft.config import DataConfig, ModelConfig, PromptConfig
from sft.data.load import load_records
from sft.data.packing import pack_examples, packing_stats
from sft.data.prompts import build_segments, render_prompt
from sft.data.tokenize import IGNORE_INDEX, encode, tokenize_examples
from sft.model.load import load_tokenizer


def alpaca_preprocess(records: list[dict], tokenizer, max_len: int) -> list[dict]:
    """The original Stanford Alpaca algorithm (train.py `preprocess`), re-implemented as the baseline."""
    prompt = PromptConfig()
    sources = [render_prompt(r, prompt, tokenizer) for r in records]
    targets = [f"{r['output']}{tokenizer.eos_token}" for r in records]

    def tokenize_each(strings: list[str]) -> tuple[list[torch.Tensor], list[int]]:
        ids, lens = [], []
        for text in strings:
            t = tokenizer(text, return_tensors="pt", padding="longest", max_length=max_len, truncation=True)
            ids.append(t.input_ids[0])
            lens.append(t.input_ids.ne(tokenizer.pad_token_id).sum().item())
        return ids, lens

    full_ids, _ = tokenize_each([s + t for s, t in zip(sources, targets)])
    _, source_lens = tokenize_each(sources)
    out = []
    for ids, n in zip(full_ids, source_lens):
        labels = copy.deepcopy(ids)
        labels[:n] = IGNORE_INDEX
        out.append({"input_ids": ids, "labels": labels})
    return out


def ours(records: list[dict], tokenizer, max_len: int):
    prompt = PromptConfig()
    segments = [build_segments(r, prompt, tokenizer) for r in records]
    return tokenize_examples(segments, tokenizer, tokenizer.eos_token, max_len)


def full_string_mismatches(records: list[dict], tokenizer) -> int:
    """The boundary check done the slow way (every example re-tokenized whole), to validate ours."""
    prompt, count = PromptConfig(), 0
    for r in records:
        source, target = (s.text for s in build_segments(r, prompt, tokenizer))
        count += encode(tokenizer, [source + target]) != [a + b for a, b in [encode(tokenizer, [source, target])]]
    return count


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and CPU seconds (all threads) over `repeats` runs; CPU time is robust to other load."""
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def padded_efficiency(lengths: list[int], batch: int = 8) -> float:
    slots = sum(len(chunk) * max(chunk) for chunk in (lengths[i : i + batch] for i in range(0, len(lengths), batch)))
    return sum(lengths) / slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="Alpaca-format JSON file (e.g. ../shared/data/alpaca_en_demo.json)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer = load_tokenizer(ModelConfig())
    records = load_records(args.data, DataConfig(path=args.data)).records
    n = len(records)
    t_base, cpu_base = timed(lambda: alpaca_preprocess(records, tokenizer, 4096), args.repeats)
    t_ours, cpu_ours = timed(lambda: ours(records, tokenizer, 4096), args.repeats)
    texts = [s.text for r in records for s in build_segments(r, PromptConfig(), tokenizer)]
    t_floor, cpu_floor = timed(lambda: encode(tokenizer, texts), args.repeats)  # every token tokenized once
    examples, _, stats = ours(records, tokenizer, 4096)
    tokens = stats.total_tokens
    result = {
        "data": args.data,
        "examples": n,
        "tokens": tokens,
        "boundary_mismatches": stats.boundary_mismatches,
        "boundary_mismatches_full_strings": full_string_mismatches(records, tokenizer),
        "throughput": {
            "alpaca_preprocess": {"examples_per_s": n / t_base, "tokens_per_s": tokens / t_base, "cpu_s": cpu_base},
            "ours": {"examples_per_s": n / t_ours, "tokens_per_s": tokens / t_ours, "cpu_s": cpu_ours},
            "tokenize_once_floor": {"wall_s": t_floor, "cpu_s": cpu_floor, "max_speedup_wall": t_base / t_floor},
            "speedup_wall": t_base / t_ours,
            "speedup_cpu": cpu_base / cpu_ours,
            "load_average_1min": os.getloadavg()[0],
        },
        "packing": {},
    }
    for max_len in (512, 1024, 2048, 4096):
        kept, _, s = ours(records, tokenizer, max_len)
        rows = pack_examples(kept, max_len, seed=0)
        packed = packing_stats(rows, max_len)
        result["packing"][str(max_len)] = {
            "examples": len(kept),
            "rows": packed["rows"],
            "lower_bound_rows": packed["lower_bound_rows"],
            "packed_efficiency": packed["efficiency"],
            "lower_bound_efficiency": s.total_tokens / (packed["lower_bound_rows"] * max_len),
            "padded_batch8_efficiency": padded_efficiency([len(e["input_ids"]) for e in kept]),
        }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
