#!/usr/bin/env python3
"""Peak memory and time of reading each input format: `python benchmarks/bench_formats.py --records N
[--prepare-records M [--dedup-modes none,near] [--eval-fraction F]]
[--formats jsonl,json,csv,parquet,disk,hub,sharegpt] [--work DIR]`; prints one JSON object.

Writes N distinct Alpaca records made from --source (as bench_prepare.py does) in each format, a batch at a
time: JSONL, a JSON list, CSV, Parquet (row groups of 10,000 records), a directory written by datasets' save_to_disk,
a directory laid out as a Hub dataset repository holds Parquet (`data/train-0000i-of-00004.parquet`), which
sft reads through `datasets.load_dataset(..., streaming=True)` as it reads a Hub dataset, and ShareGPT
conversations (human/gpt, one exchange per record) as a JSON list, as the public ShareGPT dumps are.
Then, per format, in a subprocess each:
1. `read`: every record read and validated by sft.data.load.iter_records (what sft-prepare's main process does
   before tokenizing), wall seconds and peak RSS (process tree, sampled every 0.1 s, bench_prepare.run_prepare).
2. with --prepare-records M: `python -m sft prepare ... data.max_records=M data.packing=true
   data.max_seq_len=2048 cache=false` on the same file (reading stops after M records), wall, peak RSS and a
   sha256 of the rows; the four Alpaca containers must give the same rows. With --dedup-modes, one such run per
   data.dedup mode (and --eval-fraction held out, so the contamination scan runs against it): CPU seconds of the
   process tree, duplicates and contamination found, each mode's wall and CPU time over the first mode's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import REPO, converted_model, measured_run, run_prepare, variant  # noqa: E402

FORMATS = ("jsonl", "json", "csv", "parquet", "disk", "hub", "sharegpt")
ROW_GROUP = 10_000
HUB_SHARDS = 4  # the Parquet files of the Hub-style directory
READ = """
import sys
from sft.config import DataConfig
from sft.data.load import LoadResult, iter_records
path, fmt = sys.argv[1], sys.argv[2]
found = LoadResult(records=[], source=path)
n = sum(1 for _ in iter_records(path, DataConfig(path=path, format=fmt), found))
print(n, found.bad)
"""


def alpaca(source: list[dict], n: int, shuffle_words: bool = False) -> Iterator[dict]:
    for i, r in zip(range(n), itertools.cycle(source)):
        yield variant(r, i, len(source) if shuffle_words else None)


def sharegpt(source: list[dict], n: int, shuffle_words: bool = False) -> Iterator[dict]:
    for r in alpaca(source, n, shuffle_words):
        question = f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"]
        yield {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": r["output"]}]}


def write_json_list(rows: Iterator[dict], path: Path) -> None:
    with path.open("w") as f:
        f.write("[\n")
        for i, row in enumerate(rows):
            f.write((",\n" if i else "") + json.dumps(row, ensure_ascii=False))
        f.write("\n]\n")


def write_parquet(rows: Iterator[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    while batch := list(itertools.islice(rows, ROW_GROUP)):
        table = pa.Table.from_pylist(batch)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
    writer.close()


def write_all(source: list[dict], n: int, work: Path, formats: list[str],
              shuffle_words: bool = False) -> dict[str, tuple[Path, str]]:
    """format -> (path, data.format)"""
    out = {}
    if "jsonl" in formats:
        with (work / "alpaca.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in alpaca(source, n, shuffle_words))
        out["jsonl"] = (work / "alpaca.jsonl", "alpaca")
    if "json" in formats:
        write_json_list(alpaca(source, n, shuffle_words), work / "alpaca.json")
        out["json"] = (work / "alpaca.json", "alpaca")
    if "csv" in formats:
        import csv

        with (work / "alpaca.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["instruction", "input", "output"])
            writer.writeheader()
            writer.writerows(alpaca(source, n, shuffle_words))
        out["csv"] = (work / "alpaca.csv", "alpaca")
    if "parquet" in formats or "disk" in formats:
        write_parquet(alpaca(source, n, shuffle_words), work / "alpaca.parquet")
        out["parquet"] = (work / "alpaca.parquet", "alpaca")
    if "disk" in formats:
        import datasets

        ds = datasets.Dataset.from_parquet(str(work / "alpaca.parquet"), cache_dir=str(work / "hf-cache"))
        ds.save_to_disk(str(work / "alpaca_disk"))
        out["disk"] = (work / "alpaca_disk", "alpaca")
    if "hub" in formats:  # the same records in HUB_SHARDS files, as `push_to_hub` lays them out
        data, rows = work / "alpaca_hub" / "data", alpaca(source, n, shuffle_words)
        data.mkdir(parents=True, exist_ok=True)
        for i in range(HUB_SHARDS):
            shard = data / f"train-{i:05d}-of-{HUB_SHARDS:05d}.parquet"
            write_parquet(itertools.islice(rows, -(-n // HUB_SHARDS)), shard)
        out["hub"] = (work / "alpaca_hub", "alpaca")
    if "sharegpt" in formats:
        write_json_list(sharegpt(source, n, shuffle_words), work / "sharegpt.json")
        out["sharegpt"] = (work / "sharegpt.json", "sharegpt")
    return {k: v for k, v in out.items() if k in formats}


def run_name(fmt: str, mode: str | None) -> str:
    """A preparation's key in the output: the format, and its data.dedup mode when --dedup-modes gives one."""
    return fmt if mode is None else f"{fmt}-dedup_{mode}"


def read_run(name: str, path: Path, fmt: str, work: Path) -> dict[str, Any]:
    result = run_prepare([sys.executable, "-c", READ, str(path), fmt], REPO, dict(os.environ), work / f"read-{name}")
    records, bad = (work / f"read-{name}" / "stdout").read_text().split()
    return {**result, "records": int(records), "bad": int(bad), "records_per_s": round(int(records) / result["wall_s"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, required=True, help="records written per format")
    parser.add_argument("--prepare-records", type=int, default=0, help="records sft-prepare takes from each file")
    parser.add_argument("--dedup-modes", help="with --prepare-records: one preparation per data.dedup mode, e.g. "
                        "none,near")
    parser.add_argument("--eval-fraction", type=float, default=0.0, help="with --prepare-records: data.eval_fraction "
                        "(held out, so contamination is checked against it)")
    parser.add_argument("--shuffle-words", action="store_true", help="records after the first pass over --source "
                        "have their output's words shuffled (not near duplicates of each other)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/alpaca_en_demo.json"))
    parser.add_argument("--work", help="where data and outputs go and stay (default: a temp dir, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        files = write_all(json.loads(Path(args.source).read_text()), args.records, work, args.formats.split(","),
                          args.shuffle_words)
        result: dict[str, Any] = {"records": args.records, "load_average_start": os.getloadavg(),
                                  "file_mb": {k: round(sum(f.stat().st_size for f in ([p] if p.is_file() else
                                              p.rglob("*"))) / 2**20, 1) for k, (p, _) in files.items()},
                                  "read": {k: read_run(k, p, fmt, work) for k, (p, fmt) in files.items()}}
        if args.prepare_records:
            model, m = converted_model(work), args.prepare_records
            modes = args.dedup_modes.split(",") if args.dedup_modes else [None]
            prepare: dict[str, Any] = {}
            for k, (p, fmt) in files.items():
                chat = ["prompt=chat"] if fmt == "sharegpt" else []
                common = ["data=alpaca", f"data.path={p}", f"data.format={fmt}", *chat, f"data.max_records={m}",
                          *([f"data.eval_fraction={args.eval_fraction}"] if args.eval_fraction else [])]
                for mode in modes:
                    dedup = [f"data.dedup={mode}"] if mode else []
                    prepare[run_name(k, mode)] = measured_run(f"prepare-{run_name(k, mode)}", common + dedup,
                                                 m, work, model)
            # per mode, the rows of every Alpaca container (ShareGPT goes through the chat template: other rows)
            same = all(len({prepare[run_name(k, mode)]["rows_sha256"]
                            for k in files if files[k][1] == "alpaca"}) <= 1 for mode in modes)
            result["prepare"] = {"records": m, "dedup_modes": args.dedup_modes, "eval_fraction": args.eval_fraction,
                                 "runs": prepare, "alpaca_same_rows": same}
            if args.dedup_modes:
                result["prepare"]["over_first_mode"] = {
                    run_name(k, mode): {measure: round(prepare[run_name(k, mode)][measure]
                                                       / prepare[run_name(k, modes[0])][measure], 3)
                                          for measure in ("wall_s", "cpu_s", "peak_rss_tree_mb")}
                    for k in files for mode in modes[1:]}
        result["load_average_end"] = os.getloadavg()
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
