#!/usr/bin/env python3
"""`python benchmarks/bench_packing_copies.py ../shared/data/alpaca_en_demo.json [--passes 2,3] [--max-len 512,1024,2048]`

Packing of an over-sampled source (data.sources[...].epochs = 2 or 3): the mixture repeats every example whole,
pass after pass, and packs the copies best-fit-decreasing (sft.data.mix.packed_rows). Prints one JSON object with,
per row length and number of passes, the rule without keys (the packing before issue 26: copies side by side)
against the rule with keys (each copy in another row): rows, the lower bound ceil(tokens / max_len), packing
efficiency (tokens / row slots), rows holding two copies of one example, and the share of copies packed beside
another copy of their example. Examples: the embedded SmolLM2 tokenizer, Alpaca prompt (CPU, a few seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

from sft.config import DataConfig, ModelConfig, PromptConfig
from sft.data.load import load_records
from sft.data.packing import best_fit_decreasing
from sft.data.prompts import build_segments
from sft.data.tokenize import tokenize_examples
from sft.model.load import load_tokenizer


def measure(lengths: list[int], n: int, bins: list[list[int]], max_len: int, seconds: float) -> dict:
    example = [i % n for i in range(len(lengths))]  # members as the mixture draws them: whole passes in a row
    doubled = [len(b) - len({example[i] for i in b}) for b in bins]
    return {"rows": len(bins), "efficiency": sum(lengths) / (len(bins) * max_len),
            "rows_with_two_copies": sum(d > 0 for d in doubled),
            "copies_beside_a_copy": sum(doubled) / (len(lengths) - n), "seconds": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--passes", default="2,3")
    parser.add_argument("--max-len", default="512,1024,2048")
    args = parser.parse_args()
    tokenizer = load_tokenizer(ModelConfig())
    records = load_records(args.data, DataConfig(path=args.data)).records
    segments = [build_segments(r, PromptConfig(), tokenizer) for r in records]
    out: dict = {"data": args.data, "load_average_1min": os.getloadavg()[0], "packing": {}}
    for max_len in (int(x) for x in args.max_len.split(",")):
        examples, _, _ = tokenize_examples(segments, tokenizer, tokenizer.eos_token, max_len)
        one = [len(e["input_ids"]) for e in examples]
        for passes in (int(x) for x in args.passes.split(",")):
            lengths = one * passes
            found = {}
            for name, keys in (("before", None), ("after", [i % len(one) for i in range(len(lengths))])):
                start = time.perf_counter()
                bins = best_fit_decreasing(lengths, max_len, keys)
                found[name] = measure(lengths, len(one), bins, max_len, time.perf_counter() - start)
            found["lower_bound_rows"] = math.ceil(sum(lengths) / max_len)
            found["efficiency_points_lost"] = 100 * (found["before"]["efficiency"] - found["after"]["efficiency"])
            out["packing"][f"{max_len}x{passes}"] = {"examples": len(lengths), **found}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
