"""Records -> the two sides of the held-out split, decided record by record as they are read.

A record is held out when its draw (sft.data.load.held_out_draw: seed and content) is below the fraction, so its
side does not depend on the other records. At least one record lands on each side: when one side comes out
empty, the record with the lowest draw (or the highest) is moved to it in a second pass. max_records cuts each
side after the split, reading stops once every side it feeds is full. `Records.held_out` keeps the id and a short
content hash of each held-out record as it goes: what a run records of its held-out set (sft.data.heldout).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

from sft.config import DataConfig
from sft.data.load import LoadResult, Record, held_out_draw, iter_records, no_usable_records

CHUNK = 1000  # records per chunk handed on (to a tokenizing worker)
HASH_HEX = 12  # hex digits of a held-out record's content hash: 48 bits tell an edited record from the one held out


def record_hash(record: Record) -> str:
    """A short hash of what a record says (its id, a position, and the source a mixture adds are left out)."""
    content = json.dumps({k: v for k, v in record.items() if k not in ("id", "source")}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()[:HASH_HEX]


class Splitter:
    """The side of each record for one held-out fraction; `forced` moves chosen records (by id) to a side."""

    def __init__(self, fraction: float, seed: int, forced: dict[int, str] | None = None) -> None:
        self.fraction, self.seed, self.forced = fraction, seed, forced or {}
        self.counts = {"train": 0, "eval": 0}
        self.extreme: dict[str, tuple[float, int]] = {}  # train: its lowest draw, eval: its highest (record id)

    def side(self, record: Record) -> str:
        if record["id"] in self.forced:
            return self.forced[record["id"]]
        u = held_out_draw(record, self.seed)
        split = "eval" if u < self.fraction else "train"
        best = self.extreme.get(split)
        if best is None or (u < best[0] if split == "train" else u > best[0]):
            self.extreme[split] = (u, record["id"])
        return split

    def fix_up(self, seen: int) -> dict[int, str] | None:
        """The forced sides of a second pass when a side of `seen` (>= 2) records came out empty, else None."""
        if self.fraction <= 0 or seen < 2:
            return None
        for empty, other in (("eval", "train"), ("train", "eval")):
            if not self.counts[empty] and other in self.extreme:
                return {**self.forced, self.extreme[other][1]: empty}
        return None


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Seeded held-out split of a list: (train, eval). Each record's side is decided by its draw alone, so cutting
    the file short or appending to it moves no record to the other side, and identical records always land on the
    same side. The held-out share is `fraction` on average, not exactly; at least one record stays on each side."""
    if fraction <= 0 or len(records) < 2:
        return records, []
    forced: dict[int, str] | None = {}
    while forced is not None:
        splitter = Splitter(fraction, seed, forced)
        sides = [splitter.side(r) for r in records]
        for side in sides:
            splitter.counts[side] += 1
        forced = splitter.fix_up(len(records))
    return ([r for r, s in zip(records, sides) if s == "train"], [r for r, s in zip(records, sides) if s == "eval"])


class Records:
    """The records of one source by split, read as they go, CHUNK at a time."""

    def __init__(self, data: DataConfig, seed: int, forced: dict[int, str] | None = None) -> None:
        self.data = data
        self.splitter = Splitter(data.eval_fraction if not data.eval_path else 0.0, seed, forced)
        self.found = LoadResult(records=[], source=data.path or "")
        self.read = 0  # records read from the files, good and bad
        self.held_out: list[tuple[int, str]] = []  # (id, record_hash) of every held-out record, in file order

    def chunks(self) -> Iterator[tuple[str, str, list[Record]]]:
        """(split, file, records) in file order."""
        data, limit = self.data, self.data.max_records
        if data.eval_path:
            yield from self._file(data.path, lambda r: "train", limit, ("train",))
            yield from self._file(data.eval_path, lambda r: "eval", limit, ("eval",))
        elif data.eval_fraction <= 0:
            yield from self._file(data.path, lambda r: "train", limit, ("train",))
        else:
            yield from self._file(data.path, self.splitter.side, limit, ("train", "eval"))

    def _file(self, path: str, side: Any, limit: int | None, feeds: tuple[str, ...]
              ) -> Iterator[tuple[str, str, list[Record]]]:
        found = LoadResult(records=[], source=path)
        counts = self.splitter.counts
        pending: dict[str, list[Record]] = {"train": [], "eval": []}
        good = 0
        for record in iter_records(path, self.data, found):
            good += 1
            split = side(record)
            if limit is not None and counts[split] >= limit:
                if all(counts[s] >= limit for s in feeds):
                    break
                continue
            counts[split] += 1
            pending[split].append(record)
            if split == "eval":
                self.held_out.append((record["id"], record_hash(record)))
            if len(pending[split]) >= CHUNK:
                yield split, path, pending[split]
                pending[split] = []
        yield from ((split, path, records) for split, records in pending.items() if records)
        self.read += good + found.bad
        self.found.bad += found.bad
        self.found.bad_examples = (self.found.bad_examples + found.bad_examples)[:5]
        if not good:
            raise no_usable_records(path, found)

    def fix_up(self) -> dict[int, str] | None:
        return self.splitter.fix_up(sum(self.splitter.counts.values()))


def held_out_records(data: DataConfig) -> list[tuple[int, str]]:
    """(id, record_hash) of the held-out records of one source (data without sources), read without tokenizing."""
    forced: dict[int, str] | None = {}
    while forced is not None:
        records = Records(data, data.split_seed, forced)
        for _ in records.chunks():
            pass
        forced = records.fix_up()
    return records.held_out
