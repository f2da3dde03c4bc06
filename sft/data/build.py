"""One source -> its tokenized examples on disk, in bounded memory, with worker processes.

The main process reads and validates records one at a time, decides each record's side of the held-out split
(sft.data.splits) and hands chunks of splits.CHUNK records to `num_proc` worker processes, which build the
segments and tokenize them (sft.data.tokenize). Chunks come back in order and are appended to flat int32 files
(`<split>.ids`, `<split>.labels`) with each example's length, trained tokens and record id beside them, so no
process holds all tokens, and the result is the same, bit for bit, whatever the number of workers.

A source entry lives in the cache under its own key (its files' bytes and its own settings, never the weights of a
mixture), so a changed mixture reuses every source it keeps.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import sft
from sft.config import DataConfig, PromptConfig
from sft.data.chat import ChatError
from sft.data.contamination import grams_of, word_hashes
from sft.data.dedup import exact_hash, near_keys_of, record_text
from sft.data.load import Record, count_rows, local_files
from sft.data.prompts import build_segments, render_prompt
from sft.data.sources import Source
from sft.data.splits import Records
from sft.data.tokenize import IGNORE_INDEX, TokenizeStats, tokenize_examples
from sft.errors import DataError

HELD_OUT_TEXTS = "eval.texts.jsonl"  # in a source entry: its held-out records' texts
GRAMS = "train.grams"  # in a source entry: the 13-gram hashes of its training examples (sft.data.contamination)
BAR_FROM = 20_000  # records: shorter preparations show no progress bar

# Bump when the rows made from the same inputs change (2: one-pass template filling, so an instruction that
# contains "{input}" is kept as written; 3: \n, \t, \r, \\ in custom templates read as escapes; 4: the held-out
# split decided per record from its content, max_records applied after it; 5: record text tokenized without
# special-token parsing, chat turns located in one render, SentencePiece segments tokenized as in the whole text;
# 6: each source prepared on its own, int32 token files, mixtures drawn from them; 7: each example's text hash
# beside its tokens, for sft.data.dedup; 8: the training examples' 13-gram hashes beside them, for
# sft.data.contamination).
ROWS_FORMAT = 8


def _file_digest(path: str, h: Any) -> None:
    with open(Path(path).expanduser(), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()


# the data settings the tokenized examples of a source do not depend on (they shape the mixture or the rows)
NOT_IN_SOURCE_KEY = ("sources", "mix_by", "mix_size", "num_proc", "packing", "dedup",
                     "contamination_tasks", "contamination_include_path",
                     "split_seed")  # split_seed: in the key as `seed=` below, as before it had its own setting


def source_key(data: DataConfig, prompt: PromptConfig, tokenizer: Any, seed: int) -> str:
    """The cache key of one source's examples: its files' bytes, its settings, the template, the tokenizer, the
    seed of the held-out split (data.split_seed) and the rows' format."""
    h = hashlib.sha256()
    for path in (data.path, data.eval_path):
        for file in local_files(path) if path else []:  # a directory (save_to_disk, data files): all its files
            h.update(f"|{file}|".encode())
            _file_digest(str(file), h)
        h.update(f"|{path}|".encode())  # hub datasets: keyed by name, split and subset below
    settings = {k: v for k, v in dataclasses.asdict(data).items() if k not in NOT_IN_SOURCE_KEY}
    h.update(json.dumps(settings, sort_keys=True).encode())
    sample = {"id": 0, "instruction": "{instruction}", "input": "{input}", "output": ""}
    templates = [render_prompt(sample, prompt, tokenizer), render_prompt({**sample, "input": ""}, prompt, tokenizer)]
    h.update(json.dumps([dataclasses.asdict(prompt), templates], sort_keys=True).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"|seed={seed}|version={sft.__version__}|rows={ROWS_FORMAT}|near={data.dedup == 'near'}".encode())
    return h.hexdigest()[:24]


@dataclass
class Chunk:
    """What a worker gives back for one chunk of one split."""

    ids: np.ndarray  # int32, every kept example's input_ids one after another
    labels: np.ndarray  # int32, the same positions
    lengths: np.ndarray  # int32 per kept example
    trained: np.ndarray  # int32 per kept example: trained tokens
    records: np.ndarray  # int64 per kept example: the record id (position in its file)
    hashes: np.ndarray  # int64 per kept example: its normalised text's hash (sft.data.dedup)
    bands: np.ndarray  # uint64 (kept examples, dedup.BANDS): MinHash LSH keys, with data.dedup=near only (else no column)
    grams: np.ndarray  # uint64: the 13-gram hashes of every example given to the tokenizer (training chunks only)
    stats: TokenizeStats
    problems: list[str] = field(default_factory=list)  # bad records, in record order


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Any, prompt: PromptConfig, data: DataConfig, eot: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # each worker is one core's worth already
    _WORKER.update(tokenizer=tokenizer, prompt=prompt, data=data, eot=eot)


def _worker_chunk(task: tuple[str, str, list[Record]]) -> Chunk:
    w = _WORKER
    return tokenize_chunk(task[1], task[2], w["data"], w["prompt"], w["tokenizer"], w["eot"], task[0] == "train")


def tokenize_chunk(where: str, records: list[Record], data: DataConfig, prompt: PromptConfig, tokenizer: Any,
                   eot: str, training: bool = False) -> Chunk:
    """Segments, tokens and masks of a chunk, its examples' hashes for duplicates, and for a `training` chunk the
    13-gram hashes contamination is checked with; records its template cannot cut into turns, and rows whose
    tokens do not give their text, are problems (the main process stops at the first one, or counts them)."""
    problems, kept, segments = [], [], []
    for record in records:
        try:
            segments.append(build_segments(record, prompt, tokenizer, eot))
            kept.append(record)
        except ChatError as e:
            problems.append(f"{where}: record {record['id']}: {e}")
    examples, index, stats = tokenize_examples(segments, tokenizer, eot, data.max_seq_len, data.truncation,
                                               data.train_on_source)
    for k in stats.render_mismatched:
        problems.append(f"{where}: record {kept[k]['id']}: its tokens do not decode to the template's text, or do "
                        "not hold the template's control tokens (the tokenizer changes the text it is given)")
    stats.render_mismatched = []
    lengths = np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int32, count=len(examples))
    total = int(lengths.sum())
    flat = {key: np.fromiter(itertools.chain.from_iterable(e[key] for e in examples), dtype=np.int32, count=total)
            for key in ("input_ids", "labels")}
    starts = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]) if len(lengths) else np.zeros(0, np.int64)
    trained = (np.add.reduceat((flat["labels"] != IGNORE_INDEX).astype(np.int32), starts) if total
               else np.zeros(len(lengths), np.int32)).astype(np.int32)
    near = data.dedup == "near"
    words = word_hashes([record_text(r) for r in kept]) if near or training else None  # once for both
    return Chunk(flat["input_ids"], flat["labels"], lengths, trained,
                 np.array([kept[i]["id"] for i in index], dtype=np.int64),
                 np.array([exact_hash(kept[i]) for i in index], dtype=np.int64),
                 near_keys_of(*words)[np.asarray(index, dtype=np.int64)] if near else np.zeros((len(index), 0), np.uint64),
                 grams_of(*words)[0] if training else np.zeros(0, np.uint64),
                 stats, problems)


def merge_stats(total: TokenizeStats, part: TokenizeStats) -> None:
    for f in dataclasses.fields(TokenizeStats):
        a, b = getattr(total, f.name), getattr(part, f.name)
        if isinstance(a, collections.Counter):
            a.update(b)
        elif isinstance(a, int):
            setattr(total, f.name, a + b)


class SplitWriter:
    """Appends chunks of one split to its files in a source entry."""

    def __init__(self, directory: Path, split: str) -> None:
        self.directory, self.split = directory, split
        self.ids = open(directory / f"{split}.ids", "wb")
        self.labels = open(directory / f"{split}.labels", "wb")
        self.grams = open(directory / GRAMS, "wb") if split == "train" else None
        self.meta: dict[str, list[np.ndarray]] = {"lengths": [], "trained": [], "records": [], "hashes": [], "bands": []}
        self.stats = TokenizeStats()

    def add(self, chunk: Chunk) -> None:
        chunk.ids.tofile(self.ids)
        chunk.labels.tofile(self.labels)
        if self.grams is not None:
            chunk.grams.tofile(self.grams)
        for key in self.meta:
            self.meta[key].append(getattr(chunk, key))
        merge_stats(self.stats, chunk.stats)

    def close(self) -> TokenizeStats:
        self.ids.close()
        self.labels.close()
        if self.grams is not None:
            self.grams.close()
        empty = {"lengths": np.zeros(0, np.int32), "trained": np.zeros(0, np.int32), "records": np.zeros(0, np.int64),
                 "hashes": np.zeros(0, np.int64), "bands": np.zeros((0, 0), np.uint64)}
        for key, parts in self.meta.items():
            save_parts(self.directory / f"{self.split}.{key}.npy", parts or [empty[key]])
        return self.stats


def save_parts(path: Path, parts: list[np.ndarray]) -> None:
    """np.save of np.concatenate(parts), written part by part: no second copy of them in memory (at 1M examples
    with data.dedup=near, 88 MB)."""
    shape = (sum(len(p) for p in parts), *parts[0].shape[1:])
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(parts[0].dtype),
                                                 "fortran_order": False, "shape": shape})
        for part in parts:
            np.ascontiguousarray(part).tofile(f)


class SourceSplit:
    """One split of a prepared source: per-example lengths, trained tokens and record ids in memory, the tokens
    read from the files one example at a time (pread: no mapping, so this process's memory does not grow with
    the files, whatever order the examples are read in)."""

    def __init__(self, directory: Path, split: str) -> None:
        meta = {k: np.load(directory / f"{split}.{k}.npy") for k in ("lengths", "trained", "records", "hashes")}
        self.lengths, self.trained, self.records = meta["lengths"], meta["trained"], meta["records"]
        self.hashes = meta["hashes"]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        self._files = {kind: os.open(directory / f"{split}.{kind}", os.O_RDONLY) for kind in ("ids", "labels")}

    def example(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of example k, int32."""
        start, n = int(self.offsets[k]) * 4, int(self.lengths[k]) * 4
        return tuple(np.frombuffer(os.pread(fd, n, start), dtype=np.int32) for fd in self._files.values())  # type: ignore[return-value]

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files = {}

    def __del__(self) -> None:
        if getattr(self, "_files", None):
            self.close()


def open_split(directory: Path, split: str) -> SourceSplit | None:
    return SourceSplit(directory, split) if (directory / f"{split}.lengths.npy").is_file() else None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _progress(total: int | None, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=0, unit=" records", desc=f"preparing {name}", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


def build_source(source: Source, prompt: PromptConfig, tokenizer: Any, eot: str, seed: int, directory: Path,
                 num_proc: int) -> tuple[dict[str, Any], dict[str, TokenizeStats]]:
    """Tokenize one source into `directory` (train and eval files); returns what reading it found (records read,
    bad records) and the tokenization stats of each split."""
    forced: dict[int, str] | None = {}
    while forced is not None:
        records = Records(source.data, seed, forced)
        stats = _tokenize_all(records, source, prompt, tokenizer, eot, directory, num_proc)
        forced = records.fix_up()
    found = {"name": source.name, "path": source.data.path, "eval_path": source.data.eval_path,
             "records_read": records.read, "bad_records": records.found.bad,
             "bad_examples": records.found.bad_examples, "held_out": records.held_out}
    return found, stats


def _tokenize_all(records: Records, source: Source, prompt: PromptConfig, tokenizer: Any, eot: str, directory: Path,
                  num_proc: int) -> dict[str, TokenizeStats]:
    writers = {split: SplitWriter(directory, split) for split in ("train", "eval")}
    total = count_rows(source.data.path) if source.data.path else None
    bar, done, started = None, 0, time.perf_counter()

    def take(split: str, chunk: Chunk, n: int) -> None:
        nonlocal bar, done
        for problem in chunk.problems:
            if source.data.on_bad_record == "error":
                raise DataError(problem)
            records.found.bad += 1
            records.found.bad_examples = (records.found.bad_examples + [problem])[:5]
        writers[split].add(chunk)
        done += n
        if bar is None and done >= BAR_FROM:
            bar = _progress(total, source.name)
            bar.update(done)
        elif bar is not None:
            bar.update(n)
            bar.set_postfix_str(f"{done / (time.perf_counter() - started):,.0f} records/s", refresh=False)

    tasks = _held_out_texts(records.chunks(), directory / HELD_OUT_TEXTS)
    head = []  # a few chunks first: short sources are tokenized here, without starting workers
    for task in tasks:
        head.append(task)
        if len(head) > 2 * num_proc:
            break
    try:
        if num_proc <= 1 or len(head) <= 2 * num_proc:
            for split, where, chunk in _chain(head, tasks):
                take(split, tokenize_chunk(where, chunk, source.data, prompt, tokenizer, eot, split == "train"), len(chunk))
        else:
            _in_workers(_chain(head, tasks), num_proc, (tokenizer, prompt, source.data, eot), take)
    finally:
        if bar is not None:
            bar.close()
        stats = {split: w.close() for split, w in writers.items()}
    return stats


def _held_out_texts(chunks: Iterator[tuple[str, str, list[Record]]], path: Path) -> Iterator[tuple[str, str, list[Record]]]:
    """The chunks, passed on, with the held-out records' texts written to `path` on the way (one JSON string a
    line): what sft.data.contamination checks the training records against, without reading the files again."""
    with open(path, "w", encoding="utf-8") as f:
        for split, where, chunk in chunks:
            if split == "eval":
                f.writelines(json.dumps(record_text(r), ensure_ascii=False) + "\n" for r in chunk)
            yield split, where, chunk


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


def _in_workers(tasks: Iterator[tuple[str, str, list[Record]]], num_proc: int, init: tuple, take: Any) -> None:
    """Chunks through a pool of spawned workers, at most 2 per worker in flight (the reader never runs ahead of
    the tokenizers by more), taken back in order."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(num_proc, initializer=_init_worker, initargs=init)
    try:
        pending: collections.deque = collections.deque()
        for split, where, chunk in tasks:
            pending.append((split, len(chunk), pool.apply_async(_worker_chunk, ((split, where, chunk),))))
            if len(pending) >= 2 * num_proc:
                split_, n, result = pending.popleft()
                take(split_, result.get(), n)
        while pending:
            split_, n, result = pending.popleft()
            take(split_, result.get(), n)
        pool.close()
    finally:
        pool.terminate()
        pool.join()

