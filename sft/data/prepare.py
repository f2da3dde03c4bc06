"""The data pipeline in one call: records -> prompts -> masked tokens -> [packed rows] -> datasets + report.

Processed data is cached under a key that hashes everything the result depends on (data bytes, template,
tokenizer, length and packing settings, seed, package version), so a changed input never reuses a stale cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sft
from sft.config import DataConfig, PrepareRunConfig, PromptConfig
from sft.data.load import Record, is_local, load_records, split_records
from sft.data.packing import pack_examples, packing_stats
from sft.data.chat import ChatError, chat_template
from sft.data.prompts import build_segments, end_of_turn_token, render_prompt
from sft.data.segments import Segment
from sft.data.tokenize import TokenizeStats, tokenize_examples
from sft.errors import DataError
from sft.io import cache_root, publish_dir, write_json_atomic

SPLITS = ("train", "eval")


@dataclass
class Prepared:
    datasets: Any  # datasets.DatasetDict with "train" and, when held out, "eval"
    report: dict[str, Any]


def load_splits(data: DataConfig, seed: int) -> tuple[dict[str, list[Record]], dict[str, Any]]:
    """Validated records per split, and what loading them found (for the report). data.max_records cuts each
    split after the split is made, so the records held out do not depend on it."""
    limit = data.max_records
    split_here = not data.eval_path and data.eval_fraction > 0
    main = load_records(data.path, data, limit=None if split_here else limit)
    found: dict[str, Any] = {"records_read": len(main.records) + main.bad, "bad_records": main.bad}
    if data.eval_path:
        held = load_records(data.eval_path, data, limit=limit)
        found["records_read"] += len(held.records) + held.bad
        found["bad_records"] += held.bad
        splits = {"train": main.records, "eval": held.records}
        bad_examples = main.bad_examples + held.bad_examples
    else:
        train, held_out = split_records(main.records, data.eval_fraction, seed)
        splits = {"train": train[:limit], "eval": held_out[:limit]}
        bad_examples = main.bad_examples
    found["bad_examples"] = bad_examples[:5]
    return {k: v for k, v in splits.items() if v}, found


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


# Bump when the rows made from the same inputs change (2: one-pass template filling, so an instruction that
# contains "{input}" is kept as written; 3: \n, \t, \r, \\ in custom templates read as escapes; 4: the held-out
# split decided per record from its content, max_records applied after it; 5: record text tokenized without
# special-token parsing, chat turns located in one render, SentencePiece segments tokenized as in the whole text).
ROWS_FORMAT = 5


def cache_key(data: DataConfig, prompt: PromptConfig, tokenizer: Any, seed: int) -> str:
    h = hashlib.sha256()
    for path in (data.path, data.eval_path):
        if path and is_local(path) and Path(path).expanduser().is_file():
            _file_digest(path, h)
        h.update(f"|{path}|".encode())  # hub datasets: keyed by name, split and subset below
    h.update(json.dumps(dataclasses.asdict(data), sort_keys=True).encode())
    sample = {"id": 0, "instruction": "{instruction}", "input": "{input}", "output": ""}
    templates = [render_prompt(sample, prompt, tokenizer), render_prompt({**sample, "input": ""}, prompt, tokenizer)]
    h.update(json.dumps([dataclasses.asdict(prompt), templates], sort_keys=True).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"|seed={seed}|version={sft.__version__}|rows={ROWS_FORMAT}".encode())
    return h.hexdigest()[:24]


def _split_report(stats: TokenizeStats, packed: dict[str, Any] | None) -> dict[str, Any]:
    report = {
        "examples": stats.examples,
        "kept": stats.kept,
        "dropped": dict(stats.dropped),
        "truncated": stats.truncated,
        "total_tokens": stats.total_tokens,
        "trained_tokens": stats.trained_tokens,
        "boundary_mismatches": stats.boundary_mismatches,
        "eos_trained": {"ok": stats.eos_untrained == 0, "examples_without": stats.eos_untrained},
        "double_bos": stats.double_bos,
        "render_mismatches": len(stats.render_mismatched),
        "render_unverified": stats.unverified,
        "trained_tokens_by_part": dict(stats.trained_by_part),
        "turns_trained": {str(k): v for k, v in sorted(stats.turns_trained.items())},
    }
    if packed is not None:
        report["packing"] = packed
    return report


def template_report(prompt: PromptConfig, tokenizer: Any, eot: str) -> dict[str, Any]:
    """What the report says of the template: its name, the end-of-turn token, and for chat the template's hash."""
    out: dict[str, Any] = {"name": prompt.name, "end_of_turn": eot}
    if prompt.name == "chat":
        out["chat_template_sha256"] = hashlib.sha256(chat_template(prompt, tokenizer).encode()).hexdigest()[:16]
    return out


def segments_or_bad(records: list[Record], source: str, data: DataConfig, prompt: PromptConfig, tokenizer: Any,
                    eot: str, found: dict[str, Any]) -> tuple[list[Record], list[list[Segment]]]:
    """The records' segments; a conversation its template cannot be cut into turns is a bad record."""
    kept, segments = [], []
    for record in records:
        try:
            segments.append(build_segments(record, prompt, tokenizer, eot))
            kept.append(record)
        except ChatError as e:
            bad_record(f"{source}: record {record['id']}: {e}", data, found)
    return kept, segments


def bad_record(problem: str, data: DataConfig, found: dict[str, Any]) -> None:
    if data.on_bad_record == "error":
        raise DataError(problem)
    found["bad_records"] += 1
    found["bad_examples"] = (found["bad_examples"] + [problem])[:5]


def build(data: DataConfig, prompt: PromptConfig, tokenizer: Any, seed: int) -> Prepared:
    import datasets

    splits, found = load_splits(data, seed)
    eot = end_of_turn_token(prompt, tokenizer)
    report: dict[str, Any] = {"source": data.path, "template": prompt.name, **found, "splits": {}}
    out = {}
    for name, records in splits.items():
        source = data.eval_path if name == "eval" and data.eval_path else data.path
        records, segments = segments_or_bad(records, source, data, prompt, tokenizer, eot, found)
        examples, _, stats = tokenize_examples(
            segments, tokenizer, eot, data.max_seq_len, data.truncation, data.train_on_source
        )
        for k in stats.render_mismatched:
            bad_record(f"{source}: record {records[k]['id']}: its tokens do not decode to the template's text "
                       "(the tokenizer changes the text it is given)", data, found)
        packed = None
        if data.packing and examples:
            rows = pack_examples(examples, data.max_seq_len, seed)
            packed = packing_stats(rows, data.max_seq_len)
            out[name] = datasets.Dataset.from_list(rows)
        else:
            out[name] = datasets.Dataset.from_list(examples)
        report["splits"][name] = _split_report(stats, packed)
    report.update(bad_records=found["bad_records"], bad_examples=found["bad_examples"],
                  template_details=template_report(prompt, tokenizer, eot))
    if "train" not in out or not len(out["train"]):
        dropped = report["splits"].get("train", {}).get("dropped")
        raise DataError(f"{data.path}: no training example left after tokenization (dropped: {dropped})")
    return Prepared(datasets.DatasetDict(out), report)


def _write(prepared: Prepared, directory: Path) -> None:
    prepared.datasets.save_to_disk(str(directory / "dataset"))
    write_json_atomic(directory / "report.json", prepared.report)


def load_prepared(directory: Path) -> Prepared:
    import datasets

    report = json.loads((directory / "report.json").read_text())
    return Prepared(datasets.load_from_disk(str(directory / "dataset")), report)


def prepare(data: DataConfig, prompt: PromptConfig, tokenizer: Any, seed: int, use_cache: bool = True) -> Prepared:
    key = cache_key(data, prompt, tokenizer, seed)
    cached = cache_root() / "datasets" / key
    if use_cache and (cached / "report.json").is_file():
        prepared = load_prepared(cached)
        prepared.report["cache"] = {"key": key, "hit": True}
        return prepared
    prepared = build(data, prompt, tokenizer, seed)
    prepared.report["cache"] = {"key": key, "hit": False}
    if use_cache:
        # every torchrun rank prepares its data: on a cold cache they all publish the same entry at once
        publish_dir(cached, lambda tmp: _write(prepared, tmp), marker="report.json")
    return prepared


def write_prepared(prepared: Prepared, out_dir: str) -> Path:
    """dataset/ and report.json in out_dir, replacing what is there; report.json goes last, so a directory with a
    report always holds a complete dataset."""
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / "report.json").unlink(missing_ok=True)
    shutil.rmtree(target / "dataset", ignore_errors=True)
    publish_dir(target / "dataset", lambda tmp: prepared.datasets.save_to_disk(str(tmp)), marker="dataset_dict.json")
    write_json_atomic(target / "report.json", prepared.report)
    return target


def run(cfg: PrepareRunConfig) -> Prepared:
    """sft-prepare: the rows and their report in cfg.out_dir, with a summary and `inspect` rows on stdout."""
    import datasets

    from sft.data.inspect import render_example, summary_lines
    from sft.model.load import load_tokenizer

    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare(cfg.data, cfg.prompt, tokenizer, cfg.seed, use_cache=cfg.cache)
    out = write_prepared(prepared, cfg.out_dir)
    for line in summary_lines(prepared.report):
        print(line)
    train = prepared.datasets["train"]
    for i in range(min(cfg.inspect, len(train))):
        print(f"\n--- train row {i} ({len(train[i]['input_ids'])} tokens; trained tokens highlighted) ---")
        print(render_example(train[i]["input_ids"], train[i]["labels"], tokenizer, color=None))
    print(f"\nwrote {out / 'dataset'} and {out / 'report.json'}")
    return prepared
