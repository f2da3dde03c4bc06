"""Contamination: the share of evaluation items that share a 13-gram of words with the training records (the GPT-3
paper's method, as lm-eval's decontamination applies it: lower-cased words, punctuation dropped).

The evaluation side is small and known first: each source's held-out records (what sft-eval scores unless given
other data; sft-eval checks whatever records it scores itself, eval_contamination), and the documents of lm-eval tasks (data.contamination_tasks, loaded by lm-eval itself, offline from
local files as sft-bench loads them). Their n-grams are one sorted array; the training n-grams then stream past it,
a block at a time, and only those found in it are kept: memory is that of the evaluation side, never of the
training data. sft-prepare's training n-grams are hashed by its tokenizing workers as they tokenize, and kept in
each source's cache entry (sft.data.build: 8 bytes per n-gram, about one per word), so the records are read once;
sft-eval and sft-bench read the run's training records again (scan_training). An item with fewer than 13 words
has no 13-gram: it is counted as too short, not as clean. An n-gram found in more than 10 items of one evaluation
set (a shared instruction) is left out (our choice).

Words and n-grams are hashed by numpy over a chunk's bytes (sft.data.dedup's MinHash uses the same words).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sft.config import DataConfig
from sft.data.sources import Source
from sft.errors import ConfigError

N = 13  # words per n-gram (GPT-3, lm-eval)
_WORD_BYTE = np.zeros(256, dtype=np.int8)  # the bytes words are made of: ASCII letters, digits, _, and UTF-8 >= 128
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD_BYTE[_c] = 1
_WORD_BYTE[128:] = 1
_TABLE = np.random.default_rng(13).integers(0, 2**64 - 1, size=(64, 256), dtype=np.uint64, endpoint=True)
EXAMPLES = 3  # contaminated items quoted per evaluation set
TEMPLATE = 10  # an n-gram in more items of one evaluation set than this is its template, not counted
METHOD = {"ngram": N, "template": TEMPLATE, "version": 1}  # in the cache key of a report: bump when counting changes
TEXTS_AT_ONCE = 256  # texts word_hashes() cuts at once: its scratch memory
P = np.uint64(0x100000001B3)  # the polynomial hashes' multiplier (odd: invertible mod 2^64)


def mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64's): nearby inputs give unrelated outputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every word of every text hashed to uint64 (the same in every process), and each text's word count. A word is
    a run of letters, digits, _ and non-ASCII characters, lower-cased: the whole chunk is cut and hashed
    by numpy over its UTF-8 bytes, with no Python step per word: a word's hash is the sum of a random table's entry
    for each (place in the word, byte), summed by prefix sums (places past 63 share the last row). About 26 bytes
    of scratch per byte of text: TEXTS_AT_ONCE texts at a time."""
    if len(texts) > TEXTS_AT_ONCE:
        parts = [word_hashes(texts[i:i + TEXTS_AT_ONCE]) for i in range(0, len(texts), TEXTS_AT_ONCE)]
        return np.concatenate([h for h, _ in parts]), np.concatenate([c for _, c in parts])
    data = np.frombuffer("\x00".join(t.replace("\x00", " ") for t in texts).lower().encode(), dtype=np.uint8)
    edges = np.diff(_WORD_BYTE[data], prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    counts = np.bincount(np.searchsorted(np.flatnonzero(data == 0), starts), minlength=len(texts))[:len(texts)]
    if not len(starts):
        return np.zeros(0, np.uint64), counts.astype(np.int64)
    marks = np.zeros(len(data), dtype=np.int32)
    marks[starts] = starts
    position = np.arange(len(data), dtype=np.int32)
    position -= np.maximum.accumulate(marks)
    np.minimum(position, _TABLE.shape[0] - 1, out=position)  # the byte's place in its word
    prefix = np.zeros(len(data) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(_TABLE[position, data], dtype=np.uint64, out=prefix[1:])
        hashes = mix(prefix[ends] - prefix[starts] + (ends - starts).astype(np.uint64))
    return hashes, counts.astype(np.int64)


def ngrams(texts: list[str], n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Every n-gram of words of every text, hashed to uint64, and the index of the text each comes from."""
    return grams_of(*word_hashes(texts), n)


def grams_of(flat: np.ndarray, lengths: np.ndarray, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """ngrams() of texts whose words word_hashes() gave (`flat`, and `lengths` words per text)."""
    m = len(flat) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    with np.errstate(over="ignore"):
        acc = flat[:m].copy()
        for k in range(1, n):
            acc *= P
            acc += flat[k:k + m]
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    inside = owner[:m] == owner[n - 1:]  # no n-gram across two texts
    return acc[inside], owner[:m][inside]


def without_template(grams: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The n-grams of an evaluation set less those in more than TEMPLATE of its items: text every item repeats (an
    instruction, a prompt's frame) is the set's template, and a training set that repeats it too would otherwise
    make every item look contaminated."""
    pairs = np.unique(np.stack([grams, owner.astype(np.uint64)]), axis=1)
    values, items = np.unique(pairs[0], return_counts=True)
    keep = ~np.isin(grams, values[items > TEMPLATE])
    return grams[keep], owner[keep]


class Contamination:
    """The evaluation sets' n-grams, then training n-grams checked against them: a table of flags indexed by a
    hash's top bits (about 16 slots per evaluation n-gram, at most 2^24) lets through the few training n-grams
    that may be one of them, which only then are looked up exactly, so a training n-gram costs one lookup in a
    table of a few MB instead of a binary search."""

    def __init__(self, sets: dict[str, list[str]]) -> None:
        self.sets = sets
        self.grams = {name: without_template(*ngrams(items)) for name, items in sets.items()}
        parts = [g for g, _ in self.grams.values()]
        self.keys = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        bits = int(np.clip(np.ceil(np.log2(max(len(self.keys), 1) * 16)), 12, 24))
        self.shift = np.uint64(64 - bits)
        self.maybe = np.zeros(1 << bits, dtype=bool)
        self.maybe[self.keys >> self.shift] = True
        self.found: list[np.ndarray] = []
        self.scanned = 0

    def scan(self, texts: list[str]) -> None:
        """Training texts: their n-grams checked, the texts counted."""
        self.scanned += len(texts)
        if len(self.keys) and texts:
            self.check(ngrams(texts)[0])

    def check(self, grams: np.ndarray) -> None:
        """Training n-grams (uint64 hashes, as ngrams() makes them): those that are evaluation n-grams are kept."""
        if not len(self.keys) or not len(grams):
            return
        candidates = grams[self.maybe[grams >> self.shift]]
        at = np.minimum(np.searchsorted(self.keys, candidates), len(self.keys) - 1)
        hits = candidates[self.keys[at] == candidates]
        if len(hits):
            self.found.append(np.unique(hits))

    def report(self) -> dict[str, Any]:
        found = np.unique(np.concatenate(self.found)) if self.found else np.zeros(0, np.uint64)
        out: dict[str, Any] = {"ngram": N, "training_records_scanned": self.scanned, "sets": {}}
        for name, items in self.sets.items():
            grams, owner = self.grams[name]
            hit = np.unique(owner[np.isin(grams, found)])
            checked = len(np.unique(owner))
            out["sets"][name] = {
                "items": len(items), "too_short": len(items) - checked, "contaminated": len(hit),
                "share": len(hit) / checked if checked else 0.0,
                "examples": [{"item": int(i), "text": items[int(i)][:160]} for i in hit[:EXAMPLES]],
            }
        return out


def scan_training(found: Contamination, sources: list[Any]) -> dict[str, Any]:
    """`found` with the training side of every source (sft.data.sources.Source) streamed past it, each split by
    its own data.split_seed as preparation splits it: its report."""
    from sft.data.dedup import record_text
    from sft.data.splits import Records

    for source in sources:
        if source.weight == 0:  # read and reported, never trained
            continue
        for split, _, chunk in Records(source.data, source.data.split_seed).chunks():
            if split == "train":
                found.scan([record_text(r) for r in chunk])
    return found.report()


def run_contamination(source: Any, tasks: list[str], include_path: str | None) -> dict[str, Any] | None:
    """sft-bench's figures: its tasks' documents against the training records of the run it evaluates (None
    without a run directory, whose config names the data)."""
    return _against_run(source, lambda: task_items(tasks, include_path))


def eval_contamination(source: Any, records: list[Any], name: str) -> dict[str, Any] | None:
    """sft-eval's figures: the records it scores (its own data: the run's held-out split, or any other file it is
    given) against the training records of the run it evaluates, keyed `sft-eval:<name>` (None without a run
    directory)."""
    from sft.data.dedup import record_text

    return _against_run(source, lambda: {f"sft-eval:{name}": [record_text(r) for r in records]})


def _against_run(source: Any, sets: Any) -> dict[str, Any] | None:
    """sets() (called only with a run directory: the lm-eval import waits until then) against that run's training
    records, split as the run split them."""
    from sft.data.sources import resolve_sources

    data = source.run.data() if source is not None and source.run is not None else None
    if data is None:
        return None
    return scan_training(Contamination(sets()), resolve_sources(data))


def tracker_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The data report's duplicates and contamination as flat figures for a tracker run's config."""
    out: dict[str, Any] = {}
    for kind, found in (report.get("duplicates") or {}).items():
        if isinstance(found, dict):
            out[f"duplicates/{kind}"] = found["duplicates"]
    for name, s in ((report.get("contamination") or {}).get("sets") or {}).items():
        out[f"contamination/{name}"] = round(s["share"], 4)
    return out


def scan_entries(found: Contamination, sources: list[Source], entries: list[Path], reports: list[dict[str, Any]]
                 ) -> dict[str, Any]:
    """`found` with the training n-grams of every source's entry (sft.data.build writes them beside the tokens,
    as its workers tokenize: the records are not read twice), a block at a time: its report."""
    from sft.data.build import GRAMS

    for source, entry, report in zip(sources, entries, reports):
        if source.weight == 0:  # read and reported, never trained
            continue
        found.scanned += report["splits"].get("train", {}).get("examples", 0)
        with open(entry / GRAMS, "rb") as f:
            while len(block := np.fromfile(f, dtype=np.uint64, count=1 << 20)):
                found.check(block)
    return found.report()


def prepared_contamination(data: DataConfig, sources: list[Source], entries: list[Path], reports: list[dict[str, Any]],
                           key: str, use_cache: bool) -> dict[str, Any] | None:
    """sft-prepare's figures: the training records against every source's held-out records and the
    lm-eval tasks named in data.contamination_tasks (None when there is nothing to check); cached under the
    mixture and the evaluation items' text."""
    import hashlib

    from sft.data.build import HELD_OUT_TEXTS
    from sft.io import cache_root, write_json_atomic

    sets = {}
    for source, entry in zip(sources, entries):
        lines = (entry / HELD_OUT_TEXTS).read_text(encoding="utf-8").splitlines()
        if lines:
            sets[f"held-out:{source.name}"] = [json.loads(line) for line in lines]
    sets.update(task_items(data.contamination_tasks, data.contamination_include_path))
    if not sets:
        return None
    digest = hashlib.sha256(json.dumps([key, METHOD, sets], sort_keys=True).encode()).hexdigest()[:24]
    cached = cache_root() / "datasets" / f"contamination-{digest}.json"
    if use_cache and cached.is_file():
        return json.loads(cached.read_text())
    report = scan_entries(Contamination(sets), sources, entries, reports)
    if use_cache:
        write_json_atomic(cached, report)
    return report


def task_items(tasks: Iterable[str], include_path: str | None) -> dict[str, list[str]]:
    """Each lm-eval task's evaluation documents as text (its prompt and its target), through lm-eval's own task
    loading; keyed `lm-eval:<task>` (a group gives its tasks)."""
    tasks = list(tasks)
    if not tasks:
        return {}
    try:
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise ConfigError("data.contamination_tasks needs lm-evaluation-harness: pip install 'sft[bench]'") from None
    manager = TaskManager(verbosity="ERROR", include_path=include_path)
    unknown = [t for t in tasks if t not in set(manager.all_tasks)]
    if unknown:
        raise ConfigError(f"data.contamination_tasks: no lm-eval task named {', '.join(unknown)}"
                          + (f" or in {include_path}" if include_path else " (your own: data.contamination_include_path=DIR)"))
    out: dict[str, list[str]] = {}
    # lm-eval 0.4.10+: load() gives the leaf tasks flat; before, get_task_dict's nested groups
    loaded = manager.load(tasks)["tasks"] if hasattr(manager, "load") else get_task_dict(tasks, manager)
    for name, task in _leaves(loaded):
        out[f"lm-eval:{name}"] = [item_text(task, doc) for doc in task.eval_docs]
    return out


def _leaves(tree: dict) -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield getattr(value.config, "task", None) or str(key), value


def item_text(task: Any, doc: dict) -> str:
    """What the model is shown and asked for: the prompt, and the target (a choice's text, not its index)."""
    text, target = task.doc_to_text(doc), task.doc_to_target(doc)
    if isinstance(target, int) and task.config.doc_to_choice is not None:
        choices = task.doc_to_choice(doc)
        target = choices[target] if 0 <= target < len(choices) else ""
    if isinstance(target, list):
        target = " ".join(map(str, target))
    return f"{text} {target}"


def contamination_lines(report: dict[str, Any] | None) -> list[str]:
    if not report or not report.get("sets"):
        return []
    lines = [f"contamination ({report['ngram']}-grams of words shared with {report['training_records_scanned']} "
             "training records):"]
    for name, s in report["sets"].items():
        short = f", {s['too_short']} too short to check" if s["too_short"] else ""
        lines.append(f"  {name}: {s['contaminated']} of {s['items'] - s['too_short']} items ({s['share']:.2%}){short}")
        lines += [f"    item {e['item']}: {e['text']!r}" for e in s["examples"]]
    return lines
