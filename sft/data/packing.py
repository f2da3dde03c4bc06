"""Whole examples -> padding-free packed rows.

Three examples A (3 tokens), B (2) and C (3) in one row of max_seq_len = 8:

    input_ids     a0  a1  a2 | b0  b1 | c0  c1  c2
    position_ids   0   1   2 |  0   1 |  0   1   2      restart at 0: attention stays inside each example
    labels         .  a1  a2 |  .  b1 |  .  c1  c2      '.' = -100 (plus each example's own masked prompt)

transformers derives a block-diagonal causal mask from position_ids that restart at 0 (with no
attention_mask), so B never attends to A. Its loss shifts labels left by one: label[t] is predicted from
token t-1, so each example's first label is masked and no example is predicted from the one before it.
"""

from __future__ import annotations

import bisect
import math
import random
from typing import TypedDict

from sft.data.tokenize import IGNORE_INDEX, Example


class PackedRow(TypedDict):
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity`; longest first, each into the fullest bin
    it still fits (ties to the older bin). Deterministic: equal lengths keep their input order."""
    if any(n > capacity for n in lengths):
        raise ValueError("an example is longer than the packing capacity")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted: the first that fits is the best fit
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins


def concat_examples(examples: list[Example]) -> PackedRow:
    row: PackedRow = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        row["input_ids"] += ex["input_ids"]
        row["labels"] += [IGNORE_INDEX] + ex["labels"][1:]
        row["position_ids"] += list(range(len(ex["input_ids"])))
    return row


def pack_examples(examples: list[Example], max_seq_len: int, seed: int) -> list[PackedRow]:
    """Pack whole examples into rows of at most max_seq_len tokens, rows in a seeded random order."""
    bins = best_fit_decreasing([len(ex["input_ids"]) for ex in examples], max_seq_len)
    random.Random(seed).shuffle(bins)
    return [concat_examples([examples[i] for i in sorted(b)]) for b in bins]


def packing_stats(rows: list[PackedRow], max_seq_len: int) -> dict[str, float | int]:
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {
        "rows": len(rows),
        "lower_bound_rows": math.ceil(tokens / max_seq_len),
        "efficiency": tokens / (len(rows) * max_seq_len) if rows else 0.0,
    }
