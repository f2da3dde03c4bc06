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
from typing import Hashable, TypedDict

import numpy as np

from sft.data.tokenize import IGNORE_INDEX, Example


class PackedRow(TypedDict):
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


class _Bins:
    """Bins being filled: their items, the keys they hold (only when some items share one: `tracked`), the room
    left in each, and the bins with room sorted by it (the first that fits is the best fit)."""

    def __init__(self, capacity: int, items: int, tracked: bool = True) -> None:
        self.capacity, self.tracked = capacity, tracked
        self.items: list[list[int]] = []
        self.keys: list[set[Hashable]] = []
        self.room: list[int] = []
        self.free: list[tuple[int, int]] = []  # (room left, bin index) of the bins with room left
        self.where = [-1] * items  # item -> its bin

    def best_fit(self, n: int, key: Hashable) -> tuple[int | None, list[int]]:
        """The fullest bin with room for n that does not hold `key` (None if there is none), and the fuller bins
        with room for n that were skipped because they hold it (at most copies - 1 of them)."""
        skipped = []
        for at in range(bisect.bisect_left(self.free, (n, -1)), len(self.free)):
            b = self.free[at][1]
            if not self.tracked or key not in self.keys[b]:
                return b, skipped
            skipped.append(b)
        return None, skipped

    def open(self) -> int:
        self.items.append([])
        if self.tracked:
            self.keys.append(set())
        self.room.append(0)
        self._set_room(len(self.items) - 1, self.capacity)
        return len(self.items) - 1

    def put(self, item: int, n: int, key: Hashable, b: int) -> None:
        self.items[b].append(item)
        if self.tracked:
            self.keys[b].add(key)
        self.where[item] = b
        self._set_room(b, self.room[b] - n)

    def take(self, item: int, n: int, key: Hashable) -> int:
        b = self.where[item]
        self.items[b].remove(item)
        self.keys[b].discard(key)
        self._set_room(b, self.room[b] + n)
        return b

    def _set_room(self, b: int, room: int) -> None:
        if self.room[b] > 0:
            self.free.pop(bisect.bisect_left(self.free, (self.room[b], b)))
        self.room[b] = room
        if room > 0:
            bisect.insort(self.free, (room, b))


def best_fit_decreasing(lengths: list[int], capacity: int, keys: list[Hashable] | None = None) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity`; longest first, each into the fullest bin
    it still fits (ties to the older bin). Deterministic: equal lengths keep their input order.

    keys: which example each item is (the copies of an over-sampled example share one). No bin gets two items of
    one key: copies have equal lengths, so the best fit of a copy is often the bin its original just went into. A
    copy takes the best fit among the bins without its key; when only bins with its key have room, it trades
    places with an item already packed (see _trade), and opens a new bin only when no trade is possible."""
    if any(n > capacity for n in lengths):
        raise ValueError("an example is longer than the packing capacity")
    tracked = keys is not None  # None: every item is its own key, and no bin needs to know which it holds
    bins = _Bins(capacity, len(lengths), tracked)
    placed: list[int] = []  # in packing order: decreasing lengths (kept for _trade, so only with keys)
    # longest first, equal lengths in input order (a stable sort; numpy's keeps no tuple per item)
    for i in np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist():
        key = keys[i] if keys is not None else i
        best, fitting = bins.best_fit(lengths[i], key)
        if best is not None:
            bins.put(i, lengths[i], key, best)
        elif not (tracked and _trade(bins, i, fitting, placed, lengths, keys)):  # type: ignore[arg-type]
            bins.put(i, lengths[i], key, bins.open())
        if tracked:
            placed.append(i)
    return bins.items


def _trade(bins: _Bins, i: int, fitting: list[int], placed: list[int], lengths: list[int],
           keys: list[Hashable]) -> bool:
    """Item i fits only in bins that hold its key (`fitting`): move a packed item j, at least as long as i, from
    another bin into one of them, and put i in j's place. The bins stay within capacity and their number does
    not grow. The most recently packed items are the shortest, so the search goes backwards and stops at the
    first item too long for every fitting bin."""
    widest = max((bins.room[b] for b in fitting), default=0)
    for j in reversed(placed):
        if lengths[j] > widest:
            return False
        here = bins.where[j]
        if keys[i] in bins.keys[here]:
            continue
        for b in fitting:
            if b != here and lengths[j] <= bins.room[b] and keys[j] not in bins.keys[b]:
                bins.put(i, lengths[i], keys[i], bins.take(j, lengths[j], keys[j]))
                bins.put(j, lengths[j], keys[j], b)
                return True
    return False


def concat_examples(examples: list[Example]) -> PackedRow:
    row: PackedRow = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        row["input_ids"] += ex["input_ids"]
        row["labels"] += [IGNORE_INDEX] + ex["labels"][1:]
        row["position_ids"] += list(range(len(ex["input_ids"])))
    return row


def pack_examples(examples: list[Example], max_seq_len: int, seed: int,
                  keys: list[Hashable] | None = None) -> list[PackedRow]:
    """Pack whole examples into rows of at most max_seq_len tokens, rows in a seeded random order; examples of
    one key (copies of one example) in different rows (see best_fit_decreasing)."""
    bins = best_fit_decreasing([len(ex["input_ids"]) for ex in examples], max_seq_len, keys)
    random.Random(seed).shuffle(bins)
    return [concat_examples([examples[i] for i in sorted(b)]) for b in bins]


def packing_stats(rows: list[PackedRow], max_seq_len: int) -> dict[str, float | int]:
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {
        "rows": len(rows),
        "lower_bound_rows": math.ceil(tokens / max_seq_len),
        "efficiency": tokens / (len(rows) * max_seq_len) if rows else 0.0,
    }
