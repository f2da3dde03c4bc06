"""Duplicates among the prepared examples: exact (after whitespace and case normalisation) and near (MinHash over
word n-grams, LSH bands), within and across sources; data.dedup=none|exact|near removes them.

The tokenizing workers give every kept example an 8-byte hash of its normalised text (and, for near-duplicates,
its LSH band keys), saved beside its tokens in the source entry (sft.data.build), so a source's cache does not
depend on the other sources or on data.dedup. Duplicates are found here, over every source, in one order: the
sources as given, and in each source its records by position (the training file, then its held-out file). The
first of a group is kept, the later ones are removed, from whichever side of the held-out split they fell on:
each record's side is decided by its own content (sft.data.splits), so removing before or after the split keeps
the same records on the same sides. Memory: 8 bytes per example for the exact hashes, 8 per band for near.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from sft.data.load import Record

MODES = ("none", "exact", "near")
EXAMPLES = 5  # duplicate pairs shown in the report


def record_fields(record: Record) -> list[str]:
    """The texts of a record that duplicates compare: its fields, or its turns (role and content) and tools."""
    if "messages" in record:
        turns = [f"{m['role']}: {m.get('reasoning_content', '')} {m['content']} "
                 f"{json.dumps(m['tool_calls'], sort_keys=True) if m.get('tool_calls') else ''}"
                 for m in record["messages"]]
        tools = json.dumps(record["tools"], sort_keys=True) if record.get("tools") else ""
        return turns + [tools]
    return [record.get("instruction", ""), record.get("input", ""), record.get("output", "")]


def record_text(record: Record) -> str:
    return "\n".join(record_fields(record))


def normalize(text: str) -> str:
    """Lower case, runs of whitespace as one space, no leading or trailing space."""
    return " ".join(text.casefold().split())


def exact_hash(record: Record) -> int:
    """8 bytes of BLAKE2b over the normalised fields (kept apart), as a signed int64 (collisions: ~N^2 / 2^65)."""
    digest = hashlib.blake2b("\x1f".join(map(normalize, record_fields(record))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass
class Member:
    """The examples of one source split that take part, in the global order."""

    source: str
    split: str
    order: np.ndarray  # int64 per example: its place in the global order
    records: np.ndarray  # int64 per example: record id
    hashes: np.ndarray  # int64 per example


def order_of(records: np.ndarray, base: int) -> np.ndarray:
    return base + records.astype(np.int64)


def first_of_groups(keys: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each element: whether it is the first (lowest order) with its key, and the position of that first one."""
    idx = np.lexsort((order, keys))
    sorted_keys = keys[idx]
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_first = idx[np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
    first = np.zeros(len(keys), dtype=bool)
    first[idx[starts]] = True
    leader = np.empty(len(keys), dtype=np.int64)
    leader[idx] = group_first
    return first, leader


def exact_duplicates(members: list[Member]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Per member, a bool mask of its duplicates (not the first of their text), and the report: counts within a
    source and across sources, and the first few pairs (source, split, record of the kept one and the duplicate)."""
    if not members:
        return [], {"duplicates": 0, "within_sources": 0, "across_sources": 0, "examples": []}
    keys = np.concatenate([m.hashes for m in members])
    order = np.concatenate([m.order for m in members])
    where = np.concatenate([np.full(len(m.hashes), i, dtype=np.int64) for i, m in enumerate(members)])
    rows = np.concatenate([np.arange(len(m.hashes), dtype=np.int64) for m in members])
    names = sorted({m.source for m in members})
    source_of = np.array([names.index(m.source) for m in members], dtype=np.int64)
    first, leader = first_of_groups(keys, order)
    dup = ~first
    across = dup & (source_of[where[leader]] != source_of[where])
    candidates = np.flatnonzero(dup)
    shown = candidates[np.argsort(order[candidates], kind="stable")][:EXAMPLES]
    examples = [{"kept": describe(members, where[leader[k]], rows[leader[k]]), "duplicate": describe(members, where[k], rows[k])}
                for k in shown]
    masks = [dup[where == i] for i in range(len(members))]
    report = {"duplicates": int(dup.sum()), "within_sources": int(dup.sum() - across.sum()),
              "across_sources": int(across.sum()), "examples": examples}
    return masks, report


def describe(members: list[Member], i: int, row: int) -> dict[str, Any]:
    m = members[int(i)]
    return {"source": m.source, "split": m.split, "record": int(m.records[int(row)])}


class KeptSplit:
    """A source split without its removed examples: the same attributes and example() as sft.data.build.SourceSplit,
    so the mixture draws from it unchanged."""

    def __init__(self, split: Any, keep: np.ndarray) -> None:
        self.split, self.index = split, np.flatnonzero(keep)
        self.lengths, self.trained = split.lengths[self.index], split.trained[self.index]
        self.records = split.records[self.index]

    def example(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.split.example(int(self.index[k]))
