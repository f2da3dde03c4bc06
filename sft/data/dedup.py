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
from pathlib import Path
from typing import Any

import numpy as np

from sft.data.load import Record
from sft.data.sources import Source

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


class Pool:
    """Every member's examples as one array (in member order), with where each comes from."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.order = np.concatenate([m.order for m in members])
        self.where = np.concatenate([np.full(len(m.hashes), i, dtype=np.int64) for i, m in enumerate(members)])
        self.rows = np.concatenate([np.arange(len(m.hashes), dtype=np.int64) for m in members])
        names = sorted({m.source for m in members})
        self.source_of = np.array([names.index(m.source) for m in members], dtype=np.int64)

    def masks(self, dup: np.ndarray) -> list[np.ndarray]:
        return [dup[self.where == i] for i in range(len(self.members))]

    def report(self, dup: np.ndarray, leader: np.ndarray) -> dict[str, Any]:
        """Counts within a source and across sources, and the first few pairs (source, split, record of the kept
        one and of the duplicate)."""
        across = dup & (self.source_of[self.where[leader]] != self.source_of[self.where])
        candidates = np.flatnonzero(dup)
        shown = candidates[np.argsort(self.order[candidates], kind="stable")][:EXAMPLES]
        examples = [{"kept": describe(self.members, self.where[leader[k]], self.rows[leader[k]]),
                     "duplicate": describe(self.members, self.where[k], self.rows[k])} for k in shown]
        return {"duplicates": int(dup.sum()), "within_sources": int(dup.sum() - across.sum()),
                "across_sources": int(across.sum()), "examples": examples}


NOTHING = {"duplicates": 0, "within_sources": 0, "across_sources": 0, "examples": []}


def exact_duplicates(members: list[Member]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Per member, a bool mask of its duplicates (not the first of their normalised text), and the report."""
    if not members:
        return [], dict(NOTHING)
    pool = Pool(members)
    first, leader = first_of_groups(np.concatenate([m.hashes for m in members]), pool.order)
    return pool.masks(~first), pool.report(~first, leader)


def near_duplicates(members: list[Member], bands: list[np.ndarray], exact: list[np.ndarray]
                    ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Per member, a bool mask of its near-duplicates that are not exact ones (an earlier example shares one of
    its LSH bands), and the report; `bands` holds each member's (examples, BANDS) keys, `exact` its exact masks.
    One band at a time: the memory is one key per example, twice."""
    if not members:
        return [], dict(NOTHING)
    pool = Pool(members)
    near = np.zeros(len(pool.order), dtype=bool)
    leader = np.arange(len(pool.order), dtype=np.int64)
    for b in range(BANDS):
        first, lead = first_of_groups(np.concatenate([k[:, b] for k in bands]), pool.order)
        new = ~first & ~near
        leader[new] = lead[new]
        near |= ~first
    near &= ~np.concatenate(exact)
    return pool.masks(near), pool.report(near, leader)


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


# --- near-duplicates ------------------------------------------------------------------------------------------
# MinHash over 5-grams of words, 64 hash functions in 8 bands of 8: two records are near-duplicates when one band
# of their signatures is equal, which for texts of Jaccard similarity J happens with probability 1 - (1 - J^8)^8:
# 0.99 at J=0.9, 0.77 at 0.8, 0.36 at 0.7, 0.03 at 0.5. Written with numpy over a whole chunk (datasketch's
# MinHash takes about 1.5 ms a record here, 30 times this; its LSH index keeps Python objects per key and band).
SHINGLE = 5  # words per shingle
BANDS, ROWS = 8, 8  # bands x rows = hash functions
_MUL = np.random.default_rng(20261202).integers(1, 2**63, size=(BANDS, ROWS), dtype=np.uint64) | np.uint64(1)
_ADD = np.random.default_rng(20261203).integers(0, 2**63, size=(BANDS, ROWS), dtype=np.uint64)


def near_keys(texts: list[str]) -> np.ndarray:
    """(len(texts), BANDS) uint64: each text's LSH band keys. A text of fewer than SHINGLE words has one shingle, all
    its words; an empty one has keys of its own (it matches nothing)."""
    from sft.data.contamination import word_hashes

    return near_keys_of(*word_hashes(texts))


def near_keys_of(hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """near_keys() of texts whose words word_hashes() gave (`hashes`, and `counts` words per text)."""
    from sft.data.contamination import P as _P, mix as _mix

    if not len(counts):
        return np.zeros((0, BANDS), np.uint64)
    n = np.maximum(counts - SHINGLE + 1, 1)  # shingles per text
    first_word = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    owner = np.repeat(np.arange(len(counts)), n)
    start = first_word[owner] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    width = np.minimum(counts[owner], SHINGLE)
    keys = np.empty((len(counts), BANDS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        shingle = np.zeros(len(start), dtype=np.uint64)
        padded = np.concatenate([hashes, np.zeros(SHINGLE, np.uint64)])
        for k in range(SHINGLE):
            shingle = np.where(k < width, shingle * _P + padded[start + k], shingle)
        shingle = _mix(shingle)
        offsets = np.cumsum(n) - n
        for b in range(BANDS):
            minima = np.minimum.reduceat((shingle[:, None] * _MUL[b] + _ADD[b]) >> np.uint64(32), offsets, axis=0)
            band = np.zeros(len(counts), dtype=np.uint64)
            for r in range(ROWS):
                band = band * _P + minima[:, r]
            keys[:, b] = _mix(band + np.uint64(b))
    empty = counts == 0
    keys[empty] = _mix(np.arange(BANDS, dtype=np.uint64)[None, :] + np.uint64(2**40) * np.flatnonzero(empty)[:, None].astype(np.uint64) + np.uint64(7))
    return keys


def deduplicate(mode: str, sources: list[Source], entries: list[Path], trains: list[Any], evals: list[Any]
                ) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """The duplicates among every source's examples (their entries' files hold the keys), and the splits without them unless mode=none;
    near-duplicates with mode=near (their MinHash keys are made only then)."""
    members, slots = [], []
    for i, (source, pair) in enumerate(zip(sources, zip(trains, evals))):
        for split, part in zip(("train", "eval"), pair):
            if part is not None and len(part.lengths):
                held_file = split == "eval" and bool(source.data.eval_path)  # its own file: after the training file
                members.append(Member(source.name, split, order_of(part.records, (i << 40) | (held_file << 39)),
                                      part.records, part.hashes))
                slots.append((i, split))
    masks, exact = exact_duplicates(members)
    report = {"mode": mode, "exact": exact}
    if mode == "near":
        bands = [np.load(entries[i] / f"{split}.bands.npy") for i, split in slots]
        near, report["near"] = near_duplicates(members, bands, masks)
        masks = [a | b for a, b in zip(masks, near)]
    if mode == "none":
        return trains, evals, report
    kept = {"train": list(trains), "eval": list(evals)}
    for (i, split), mask in zip(slots, masks):
        kept[split][i] = KeptSplit(kept[split][i], ~mask)
    return kept["train"], kept["eval"], report
