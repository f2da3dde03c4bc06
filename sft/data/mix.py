"""Prepared sources -> the run's rows: the examples each source gives the mixture, then rows written to Arrow.

How many examples a source gives:
- with a weight: its share of the weighted sources' budget, `data.mix_size` examples (data.mix_by=examples) or
  tokens (data.mix_by=tokens), by default as many as those sources hold together. A share above the source's
  size repeats it whole, then draws the rest; a share below draws a seeded subset (seeded by `seed` and the
  source's name, so one source's draw does not move when another is added);
- with `epochs` (or neither): that many passes over it (1 by default), independent of the weights.
Held-out examples are never drawn: every source's eval split is evaluated whole, on its own (eval_loss/<name>).

Rows are written a batch at a time from the sources' token files, read an example at a time; packing needs only
the lengths.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sft.data.build import SourceSplit
from sft.data.packing import best_fit_decreasing
from sft.data.sources import Source
from sft.data.tokenize import IGNORE_INDEX
from sft.errors import DataError

ROWS_PER_BATCH = 1000
# in the mixture's cache key: a change of the packing rule gives the same examples in other rows
# (2: the copies of an over-sampled example go to different rows)
PACKING_RULE = 2


def source_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")])


def largest_remainder(exact: list[float], total: int) -> list[int]:
    """Integers summing to `total` (the rounded sum of `exact`), each the floor or ceiling of its exact share."""
    floors = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (floors[i] - exact[i], i))
    for i in order[: max(total - sum(floors), 0)]:
        floors[i] += 1
    return floors


def take_examples(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` example indices of a source of n: whole passes, then a seeded subset (in source order)."""
    full, rest = divmod(count, n) if n else (0, 0)
    return np.concatenate([np.tile(np.arange(n), full), np.sort(rng.permutation(n)[:rest])]).astype(np.int64)


def take_tokens(lengths: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """Example indices whose tokens come closest to `target`: whole passes, then a seeded prefix of a permutation."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, np.int64)
    full = int(target // total)
    rest = target - full * total
    order = rng.permutation(len(lengths))
    cum = np.cumsum(lengths[order])
    k = int(np.searchsorted(cum, rest))  # cum[k - 1] < rest <= cum[k]: take k or k + 1, whichever is nearer
    if k < len(cum) and (k == 0 or cum[k] - rest < rest - cum[k - 1]):
        k += 1
    return np.concatenate([np.tile(np.arange(len(lengths)), full), np.sort(order[:k])]).astype(np.int64)


def draw(sources: list[Source], trains: list[SourceSplit | None], mix_by: str, mix_size: int | None,
         seed: int) -> tuple[list[np.ndarray], list[float | None]]:
    """Per source, the indices of its training examples in the mixture, and the share of the mixture asked of it
    (None for sources drawn by epochs)."""
    sizes = [len(t.lengths) if t is not None else 0 for t in trains]
    tokens = [int(t.lengths.sum()) if t is not None else 0 for t in trains]
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    for i, s in enumerate(sources):
        if not sizes[i] and (s.weight is None or s.weight > 0):
            raise DataError(f"data source {s.name!r} ({s.data.path}): no training example left (give it weight 0 "
                            "to keep it for evaluation only)")
    picks: list[np.ndarray] = [np.zeros(0, np.int64)] * len(sources)
    for i, s in enumerate(sources):
        if s.weight is None:
            count = round((s.epochs if s.epochs is not None else 1.0) * sizes[i])
            picks[i] = take_examples(sizes[i], count, source_rng(seed, s.name))
    asked: list[float | None] = [None] * len(sources)
    total_weight = sum(sources[i].weight for i in weighted)  # type: ignore[misc]
    if total_weight:
        pool = sizes if mix_by == "examples" else tokens
        budget = mix_size if mix_size is not None else sum(pool[i] for i in weighted)
        exact = [budget * sources[i].weight / total_weight for i in weighted]  # type: ignore[operator]
        if mix_by == "examples":
            for i, count in zip(weighted, largest_remainder(exact, round(sum(exact)))):
                picks[i] = take_examples(sizes[i], count, source_rng(seed, sources[i].name))
        else:
            for i, target in zip(weighted, exact):
                picks[i] = take_tokens(trains[i].lengths, target, source_rng(seed, sources[i].name))  # type: ignore[union-attr]
        measure = [len(p) for p in picks] if mix_by == "examples" else [
            int(trains[i].lengths[p].sum()) if trains[i] is not None else 0 for i, p in enumerate(picks)]  # type: ignore[union-attr]
        fixed = sum(m for i, m in enumerate(measure) if i not in weighted)
        whole = fixed + sum(exact)
        for i, x in zip(weighted, exact):
            asked[i] = x / whole if whole else 0.0
    return picks, asked


def mixture_report(sources: list[Source], trains: list[SourceSplit | None], picks: list[np.ndarray],
                   asked: list[float | None], mix_by: str) -> dict[str, dict[str, Any]]:
    drawn = [len(p) for p in picks]
    tokens = [int(t.lengths[p].sum()) if t is not None else 0 for t, p in zip(trains, picks)]
    trained = [int(t.trained[p].sum()) if t is not None else 0 for t, p in zip(trains, picks)]
    out = {}
    for i, s in enumerate(sources):
        out[s.name] = {
            "weight": s.weight, "epochs": s.epochs, "drawn": drawn[i], "tokens": tokens[i], "trained_tokens": trained[i],
            "share_asked": asked[i],
            "share_of_examples": drawn[i] / sum(drawn) if sum(drawn) else 0.0,
            "share_of_tokens": tokens[i] / sum(tokens) if sum(tokens) else 0.0,
            "passes": drawn[i] / len(t.lengths) if (t := trains[i]) is not None and len(t.lengths) else 0.0,
        }
    return out


class RowsWriter:
    """Rows appended a batch at a time to one Arrow file that `datasets.Dataset.from_file` memory-maps."""

    def __init__(self, path: Path, packed: bool, with_source: bool) -> None:
        import datasets
        from datasets.arrow_writer import ArrowWriter

        columns = ["input_ids", "labels"] + (["position_ids"] if packed else [])
        features = {c: datasets.Sequence(datasets.Value("int32")) for c in columns}
        if with_source:
            features["source"] = datasets.Value("int16")
        self.columns, self.with_source = columns, with_source
        self.writer = ArrowWriter(features=datasets.Features(features), path=str(path))
        self.batch: list[tuple[list[np.ndarray], int]] = []
        self.rows = self.tokens = 0

    def add(self, parts: list[np.ndarray], source: int = 0) -> None:
        self.batch.append((parts, source))
        if len(self.batch) >= ROWS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if not self.batch:
            return
        lengths = np.array([len(parts[0]) for parts, _ in self.batch], dtype=np.int64)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        arrays = [pa.ListArray.from_arrays(offsets, pa.array(np.concatenate([p[c] for p, _ in self.batch]).astype(np.int32)))
                  for c in range(len(self.columns))]
        names = list(self.columns)
        if self.with_source:
            arrays.append(pa.array(np.array([s for _, s in self.batch], dtype=np.int16)))
            names.append("source")
        self.writer.write_table(pa.Table.from_arrays(arrays, names=names))
        self.rows += len(self.batch)
        self.tokens += int(lengths.sum())
        self.batch = []

    def close(self) -> None:
        self.flush()
        self.writer.finalize()
        self.writer.close()


def packed_rows(splits: list[SourceSplit], which: np.ndarray, index: np.ndarray, max_seq_len: int, seed: int
                ) -> Iterator[list[np.ndarray]]:
    """Whole examples (example index[j] of splits[which[j]]) packed best-fit-decreasing into rows, rows in a
    seeded order: each example's first label masked (it is not predicted from the example before it), positions
    restarting at 0. The copies of an example (a source over-sampled: epochs > 1, or a weight above its size) go
    to different rows. The examples are numpy arrays, not a Python object each: at 1M examples that is 0.1 GB."""
    lengths = np.zeros(len(index), dtype=np.int64)
    for s, split in enumerate(splits):
        at = which == s
        lengths[at] = split.lengths[index[at]]
    keys = (which.astype(np.int64) << 32) | index.astype(np.int64)
    repeated = len(np.unique(keys)) < len(keys)
    bins = best_fit_decreasing(lengths.tolist(), max_seq_len, keys=keys.tolist() if repeated else None)
    random.Random(seed).shuffle(bins)
    for b in bins:
        ids, labels, positions = [], [], []
        for j in sorted(b):
            x, y = splits[which[j]].example(int(index[j]))
            y = y.copy()
            y[0] = IGNORE_INDEX
            ids.append(x)
            labels.append(y)
            positions.append(np.arange(len(x), dtype=np.int32))
        yield [np.concatenate(ids), np.concatenate(labels), np.concatenate(positions)]


def write_train(path: Path, trains: list[SourceSplit | None], picks: list[np.ndarray], packing: bool, max_seq_len: int,
                seed: int) -> dict[str, Any]:
    writer = RowsWriter(path, packing, with_source=False)
    if packing:
        which = np.repeat(np.arange(len(picks)), [len(p) for p in picks])
        index = np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)
        for row in packed_rows(trains, which, index, max_seq_len, seed):  # type: ignore[arg-type]
            writer.add(row)
    else:
        for i, p in enumerate(picks):
            for k in p:
                writer.add(list(trains[i].example(int(k))))  # type: ignore[union-attr]
    writer.close()
    return _packing(writer, max_seq_len) if packing else {}


def write_eval(path: Path, evals: list[SourceSplit | None], packing: bool, max_seq_len: int, seed: int) -> dict[str, Any]:
    """Every held-out example of every source, each row from one source (its index in the `source` column), so the
    loss can be reported per source."""
    writer = RowsWriter(path, packing, with_source=True)
    for i, split in enumerate(evals):
        if split is None or not len(split.lengths):
            continue
        if packing:
            n = len(split.lengths)
            for row in packed_rows([split], np.zeros(n, np.int64), np.arange(n, dtype=np.int64), max_seq_len, seed):
                writer.add(row, i)
        else:
            for k in range(len(split.lengths)):
                writer.add(list(split.example(k)), i)
    writer.close()
    return _packing(writer, max_seq_len) if packing else {}


def _packing(writer: RowsWriter, max_seq_len: int) -> dict[str, Any]:
    return {"rows": writer.rows, "lower_bound_rows": math.ceil(writer.tokens / max_seq_len),
            "efficiency": writer.tokens / (writer.rows * max_seq_len) if writer.rows else 0.0}
