"""The data pipeline in one call: sources -> records -> prompts -> masked tokens -> mixture -> [packed] rows + report.

Each source is tokenized and cached on its own (sft.data.build, keyed by its files' bytes and its own settings);
the mixture (sft.data.mix) is drawn from those and cached under a key of the source keys, the weights, the packing
settings and the seed. Rows are Arrow files that every process memory-maps: no process holds them all.

Two seeds: data.split_seed draws the held-out split (a source's entry and key depend on it, not on `seed`), and
`seed` draws the mixture and the packed row order. A seed sweep so keeps one partition and one tokenized entry
per source. Each source entry also holds held_out.json: the id and content hash of every held-out record.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sft
from sft.config import DataConfig, PrepareRunConfig, PromptConfig
from sft.data.build import ROWS_FORMAT, build_source, cores, open_split, source_key
from sft.data.chat import chat_template
from sft.data.contamination import prepared_contamination
from sft.data.dedup import deduplicate
from sft.data.heldout import HELD_OUT, held_out_file, source_held_out, write_held_out
from sft.data.load import Record
from sft.data.mix import PACKING_RULE, draw, mixture_report, write_eval, write_train
from sft.data.plots import distributions, row_lengths
from sft.data.prompts import end_of_turn_token
from sft.data.sources import Source, resolve_sources
from sft.data.tokenize import TokenizeStats
from sft.errors import DataError
from sft.io import build_once, cache_root, publish_dir, write_json_atomic

SPLITS = ("train", "eval")


@dataclass
class Prepared:
    datasets: Any  # datasets.DatasetDict with "train" and, when held out, "eval" (with a `source` column)
    report: dict[str, Any]
    held_out: dict[str, Any] = field(default_factory=dict)  # what held_out.json holds (sft.data.heldout)


def load_splits(data: DataConfig) -> tuple[dict[str, list[Record]], dict[str, Any]]:
    """Validated records per split, of every source in order, as preparation splits them (seeded by
    data.split_seed; data.max_records cuts each split of each source after the split), and what loading them found."""
    from sft.data.splits import Records

    splits: dict[str, list[Record]] = {"train": [], "eval": []}
    found: dict[str, Any] = {"records_read": 0, "bad_records": 0, "bad_examples": []}
    sources = resolve_sources(data)
    for source in sources:
        forced: dict[int, str] | None = {}
        while forced is not None:
            records = Records(source.data, source.data.split_seed, forced)
            got: dict[str, list[Record]] = {"train": [], "eval": []}
            for split, _, chunk in records.chunks():
                got[split] += chunk
            forced = records.fix_up()
        for split in splits:
            # in a mixture each record names its source: ids (positions in a file) repeat across sources
            splits[split] += [{**r, "source": source.name} for r in got[split]] if len(sources) > 1 else got[split]
        found["records_read"] += records.read
        found["bad_records"] += records.found.bad
        found["bad_examples"] = (found["bad_examples"] + records.found.bad_examples)[:5]
    return {k: v for k, v in splits.items() if v}, found


def split_report(stats: TokenizeStats) -> dict[str, Any]:
    return {
        "examples": stats.examples,
        "kept": stats.kept,
        "dropped": dict(stats.dropped),
        "truncated": stats.truncated,
        "total_tokens": stats.total_tokens,
        "trained_tokens": stats.trained_tokens,
        "boundary_mismatches": stats.boundary_mismatches,
        "eos_trained": {"ok": stats.eos_untrained == 0, "examples_without": stats.eos_untrained},
        "double_bos": stats.double_bos,
        "render_mismatches": stats.dropped.get("render_mismatch", 0),
        "render_unverified": stats.unverified,
        "trained_tokens_by_part": dict(stats.trained_by_part),
        "turns_trained": {str(k): v for k, v in sorted(stats.turns_trained.items())},
    }


def template_report(prompt: PromptConfig, tokenizer: Any, eot: str) -> dict[str, Any]:
    """What the report says of the template: its name, the end-of-turn token, and for chat the template's hash."""
    out: dict[str, Any] = {"name": prompt.name, "end_of_turn": eot}
    if prompt.name == "chat":
        out["chat_template_sha256"] = hashlib.sha256(chat_template(prompt, tokenizer).encode()).hexdigest()[:16]
    return out


_TEMPORARY: list[str] = []


def _scratch() -> Path:
    """A directory for data prepared with cache=false, removed when the process exits."""
    if not _TEMPORARY:
        _TEMPORARY.append(tempfile.mkdtemp(prefix="sft-data-"))
        atexit.register(shutil.rmtree, _TEMPORARY[0], True)
    return Path(_TEMPORARY[0])


def prepare_source(source: Source, prompt: PromptConfig, tokenizer: Any, eot: str, use_cache: bool,
                   num_proc: int, several: bool) -> tuple[Path, dict[str, Any]]:
    """One source's entry (cached, or built now) and its report."""
    seed = source.data.split_seed  # the one seed a source's examples depend on: it draws their split
    key = source_key(source.data, prompt, tokenizer, seed)
    entry = (cache_root() / "datasets" / f"src-{key}") if use_cache else _scratch() / f"src-{key}"
    hit = use_cache and (entry / "report.json").is_file()

    def write(tmp: Path) -> None:
        try:
            found, stats = build_source(source, prompt, tokenizer, eot, seed, tmp, num_proc)
        except DataError as e:
            raise DataError(f"data source {source.name!r}: {e}" if several else str(e)) from None
        found["splits"] = {split: split_report(s) for split, s in stats.items() if s.examples}
        write_held_out(tmp / HELD_OUT, found.pop("held_out"))
        write_json_atomic(tmp / "report.json", found)

    def announce() -> None:
        workers = f"{num_proc} worker processes" if num_proc > 1 else "1 process"
        print(f"tokenizing data source {source.name!r} ({source.data.path}; up to {workers})", flush=True)

    if not hit:  # another node may be building it: build_once waits for it, then it is a hit
        hit = not build_once(entry, write, "report.json", announce, reuse=use_cache)
    report = json.loads((entry / "report.json").read_text())
    report["name"] = source.name  # the key leaves out the name: a cached entry may have been built under another
    report["cache"] = {"key": key, "hit": hit}
    return entry, report


def mixture_key(data: DataConfig, sources: list[Source], keys: list[str], seed: int) -> str:
    h = hashlib.sha256(json.dumps({
        "sources": [[s.name, k, s.weight, s.epochs] for s, k in zip(sources, keys)], "mix_by": data.mix_by,
        "mix_size": data.mix_size, "packing": data.packing, "dedup": data.dedup, "max_seq_len": data.max_seq_len,
        "seed": seed, "version": sft.__version__, "rows": ROWS_FORMAT, "packing_rule": PACKING_RULE},
        sort_keys=True).encode())
    return h.hexdigest()[:24]


def merged(reports: list[dict[str, Any]], split: str) -> dict[str, Any] | None:
    """One split's report summed over the sources."""
    parts = [r["splits"][split] for r in reports if split in r["splits"]]
    if not parts:
        return None
    out: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, dict) and key == "eos_trained":
            out[key] = {"ok": all(p[key]["ok"] for p in parts), "examples_without": sum(p[key]["examples_without"] for p in parts)}
        elif isinstance(value, dict):
            total: dict[str, int] = {}
            for p in parts:
                for k, v in p[key].items():
                    total[k] = total.get(k, 0) + v
            out[key] = dict(sorted(total.items())) if key == "turns_trained" else total
        else:
            out[key] = sum(p[key] for p in parts)
    return out


def build_mixture(data: DataConfig, sources: list[Source], entries: list[Path], reports: list[dict[str, Any]],
                  seed: int, directory: Path) -> dict[str, Any]:
    trains = [open_split(e, "train") for e in entries]
    evals = [open_split(e, "eval") for e in entries]
    trains, evals, duplicates = deduplicate(data.dedup, sources, entries, trains, evals)
    picks, asked = draw(sources, trains, data.mix_by, data.mix_size, seed)
    if not sum(len(p) for p in picks):
        dropped = {k: v for r in reports for k, v in r["splits"].get("train", {}).get("dropped", {}).items()}
        raise DataError(f"{data.path or 'data.sources'}: no training example left after tokenization (dropped: {dropped})")
    mix = mixture_report(sources, trains, picks, asked, data.mix_by)
    packing = write_train(directory / "train.arrow", trains, picks, data.packing, data.max_seq_len, seed)
    rows = row_lengths(directory / "train.arrow") if data.packing else None
    out: dict[str, Any] = {"mixture": mix, "packing": {"train": packing}, "duplicates": duplicates,
                           "distributions": distributions([s.name for s in sources], trains, reports, rows, data.max_seq_len)}
    if any(e is not None and len(e.lengths) for e in evals):
        out["packing"]["eval"] = write_eval(directory / "eval.arrow", evals, data.packing, data.max_seq_len, seed)
    return out


def prepare(data: DataConfig, prompt: PromptConfig, tokenizer: Any, seed: int, use_cache: bool = True) -> Prepared:
    import datasets

    sources = resolve_sources(data)
    eot = end_of_turn_token(prompt, tokenizer)
    num_proc = data.num_proc or cores()
    built = [prepare_source(s, prompt, tokenizer, eot, use_cache, num_proc, len(sources) > 1) for s in sources]
    entries, reports = [e for e, _ in built], [r for _, r in built]
    key = mixture_key(data, sources, [r["cache"]["key"] for r in reports], seed)
    entry = (cache_root() / "datasets" / key) if use_cache else _scratch() / key
    hit = use_cache and (entry / "report.json").is_file()
    if not hit:
        hit = not build_once(entry, lambda tmp: write_json_atomic(tmp / "report.json", build_mixture(
            data, sources, entries, reports, seed, tmp)), "report.json", lambda: None, reuse=use_cache)
    mix = json.loads((entry / "report.json").read_text())
    report = assemble_report(data, prompt, tokenizer, eot, sources, reports, mix)
    report["cache"] = {"key": key, "hit": hit}
    report["contamination"] = prepared_contamination(data, sources, entries, reports, key, use_cache)
    splits = {name: datasets.Dataset.from_file(str(entry / f"{name}.arrow"))
              for name in SPLITS if (entry / f"{name}.arrow").is_file()}
    held = {s.name: source_held_out(s, e) for s, e in zip(sources, entries)}
    return Prepared(datasets.DatasetDict(splits), report, held_out_file(sources, held))


def assemble_report(data: DataConfig, prompt: PromptConfig, tokenizer: Any, eot: str, sources: list[Source],
                    reports: list[dict[str, Any]], mix: dict[str, Any]) -> dict[str, Any]:
    bad = [p for r in reports for p in r["bad_examples"]][:5]
    report: dict[str, Any] = {
        "source": data.path if not data.sources else [s.name for s in sources],
        "template": prompt.name,
        "records_read": sum(r["records_read"] for r in reports),
        "bad_records": sum(r["bad_records"] for r in reports),
        "bad_examples": bad,
        "splits": {},
    }
    for split in SPLITS:
        part = merged(reports, split)
        if part is not None:
            report["splits"][split] = part
            if data.packing and split in mix["packing"]:
                part["packing"] = mix["packing"][split]
    report["sources"] = {r["name"]: {**r, "mixture": mix["mixture"][r["name"]]} for r in reports}
    report["mix_by"] = data.mix_by
    report["duplicates"] = mix.get("duplicates")
    report["distributions"] = mix.get("distributions")  # sft.data.plots draws them in inspect.html
    report["template_details"] = template_report(prompt, tokenizer, eot)
    return report


def load_prepared(directory: Path) -> Prepared:
    """What sft-prepare wrote in `directory`: dataset/ and report.json."""
    import datasets

    report = json.loads((directory / "report.json").read_text())
    return Prepared(datasets.load_from_disk(str(directory / "dataset")), report)


def write_prepared(prepared: Prepared, out_dir: str) -> Path:
    """dataset/ and report.json in out_dir, replacing what is there; report.json goes last, so a directory with a
    report always holds a complete dataset."""
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / "report.json").unlink(missing_ok=True)
    (target / HELD_OUT).unlink(missing_ok=True)
    shutil.rmtree(target / "dataset", ignore_errors=True)
    publish_dir(target / "dataset", lambda tmp: save_splits(prepared.datasets, tmp), marker="dataset_dict.json")
    write_held_out(target / HELD_OUT, prepared.held_out)
    write_json_atomic(target / "report.json", prepared.report)
    return target


def save_splits(splits: Any, directory: Path) -> None:
    """What DatasetDict.save_to_disk writes (datasets.load_from_disk reads it), with each split's Arrow file copied
    by the kernel: save_to_disk would read the memory-mapped rows through this process, whose resident memory
    would grow to their size."""
    names = list(splits)
    for name in names:
        ds = splits[name]
        files = ds.cache_files
        if ds._indices is not None or len(files) != 1:  # not one file as prepare() writes it
            ds.save_to_disk(str(directory / name))
            continue
        (directory / name).mkdir(parents=True)
        shutil.copyfile(files[0]["filename"], directory / name / "data-00000-of-00001.arrow")
        ds.info.write_to_directory(str(directory / name))
        state = {key: getattr(ds, key) for key in ("_fingerprint", "_format_columns", "_format_kwargs", "_format_type",
                                                    "_output_all_columns")}
        state.update(_split=None, _data_files=[{"filename": "data-00000-of-00001.arrow"}])
        write_json_atomic(directory / name / "state.json", state)
    write_json_atomic(directory / "dataset_dict.json", {"splits": names})


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
    if cfg.inspect_html:
        from sft.data.inspect_html import inspect_page
        from sft.io import write_text_atomic

        shown = [train[i] for i in range(min(cfg.inspect or 8, len(train)))]
        eot = prepared.report["template_details"]["end_of_turn"]
        write_text_atomic(out / "inspect.html", inspect_page(shown, tokenizer, eot, prepared.report))
        print(f"wrote {out / 'inspect.html'}")
    print(f"\nwrote {out / 'dataset'} and {out / 'report.json'}")
    return prepared
