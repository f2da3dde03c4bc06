#!/usr/bin/env python3
"""Two modes; each prints one JSON object.

In-process mode: `python benchmarks/bench_prepare.py ../shared/data/alpaca_en_demo.json`
1. Preprocessing throughput (examples/s, tokens/s) of our pipeline (prompts -> segment tokenization ->
   masking, boundary check included) against the original Alpaca `preprocess` algorithm, re-implemented here:
   tokenize source+target and source one string at a time (return_tensors="pt", padding="longest"), mask the
   first len(source) labels. `tokenize_once_floor` times a bare batch encode of every prompt and answer once:
   no correct pipeline that tokenizes its data can be faster, so it bounds the reachable speedup.
2. Packing efficiency (real tokens / row slots) of our best-fit-decreasing packing at 512/1024/2048/4096
   against padding to the longest example in batches of 8, on the same examples; and how far our row count is
   from the lower bound ceil(tokens / max_seq_len).
3. With --chat N: chat preparation (prompt=chat: segments from the template's render, tokens, masks, the row
   check) of N conversations of 2-3 exchanges made from the records, conversations/s on this one process (wall
   and CPU), the tokenize-once floor (every segment encoded once: the bound on 1 worker), and a sha256 of the
   rows; with --old-repo DIR, the same in a subprocess importing that checkout's sft (same run:
   the ratio holds under load), and whether both give the same rows.
Runs on the embedded SmolLM2 tokenizer (CPU).

Scale mode: `python benchmarks/bench_prepare.py --records N [--chat-records M] [--old-repo DIR] [--num-proc 1,2]
[--source ../shared/data/alpaca_en_demo.json] [--work DIR]`
(or `--records N --dedup-modes none,exact,near --baseline-repo DIR [--eval-fraction 0.01]`: the cost of duplicates
and contamination, each mode against a checkout of the code before them)
Writes N distinct Alpaca records (and M multi-turn chat records, 2-3 exchanges each) built from --source into
.jsonl files, streaming, then runs `python -m sft prepare ... data.packing=true data.max_seq_len=2048 cache=false`
in a subprocess per --num-proc value (and, with --old-repo, that older checkout's single-process preparation of
the alpaca file, for N <= 200,000), each with a fresh SFT_CACHE_DIR. That cache holds only a link to the embedded
GGUF model, de-quantized once beforehand (about 15 s and 1.6 GB that every cold run would otherwise spend before
reading a record), unless --cold-model-cache. Per run: wall seconds, records/s, peak RSS
of the process tree (the sum over the main process and its descendants, sampled every 0.1 s: pages shared by
several processes, such as memory-mapped Arrow files, count once per process) and of its largest process, bytes
of Arrow written, and a sha256 of the rows (input_ids, labels, position_ids as int64), which must be equal
across runs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil
import torch

from sft.config import DataConfig, ModelConfig, PromptConfig
from sft.data.load import load_records
from sft.data.packing import pack_examples, packing_stats
from sft.data.prompts import build_segments, render_prompt
from sft.data.tokenize import IGNORE_INDEX, encode, tokenize_examples
from sft.model.load import load_tokenizer


def alpaca_preprocess(records: list[dict], tokenizer, max_len: int) -> list[dict]:
    """The original Stanford Alpaca algorithm (train.py `preprocess`), re-implemented as the baseline."""
    prompt = PromptConfig()
    sources = [render_prompt(r, prompt, tokenizer) for r in records]
    targets = [f"{r['output']}{tokenizer.eos_token}" for r in records]

    def tokenize_each(strings: list[str]) -> tuple[list[torch.Tensor], list[int]]:
        ids, lens = [], []
        for text in strings:
            t = tokenizer(text, return_tensors="pt", padding="longest", max_length=max_len, truncation=True)
            ids.append(t.input_ids[0])
            lens.append(t.input_ids.ne(tokenizer.pad_token_id).sum().item())
        return ids, lens

    full_ids, _ = tokenize_each([s + t for s, t in zip(sources, targets)])
    _, source_lens = tokenize_each(sources)
    out = []
    for ids, n in zip(full_ids, source_lens):
        labels = copy.deepcopy(ids)
        labels[:n] = IGNORE_INDEX
        out.append({"input_ids": ids, "labels": labels})
    return out


def ours(records: list[dict], tokenizer, max_len: int):
    prompt = PromptConfig()
    segments = [build_segments(r, prompt, tokenizer) for r in records]
    return tokenize_examples(segments, tokenizer, tokenizer.eos_token, max_len)


def full_string_mismatches(records: list[dict], tokenizer) -> int:
    """The boundary check done the slow way (every example re-tokenized whole), to validate ours."""
    prompt, count = PromptConfig(), 0
    for r in records:
        source, target = (s.text for s in build_segments(r, prompt, tokenizer))
        count += encode(tokenizer, [source + target]) != [a + b for a, b in [encode(tokenizer, [source, target])]]
    return count


def chat_records(source: list[dict], n: int) -> Iterator[dict]:
    """n conversations of 2 or 3 user/assistant exchanges, each made of consecutive records of `source`."""
    records = itertools.cycle(source)
    for i in range(n):
        messages = []
        for turn, r in enumerate(itertools.islice(records, 2 + i % 2)):
            question = f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"]
            messages += [{"role": "user", "content": f"(chat {i}, turn {turn}) {question}"},
                         {"role": "assistant", "content": r["output"]}]
        yield {"id": i, "messages": messages}


def chat_throughput(source: str, n: int, repeats: int) -> dict:
    """Conversations/s of chat preparation in this process (best of `repeats`, each from a cold template-layout
    cache when the code has one) and a sha256 of the rows."""
    from sft.data import chat
    from sft.data.prompts import end_of_turn_token

    tokenizer, cfg = load_tokenizer(ModelConfig()), PromptConfig(name="chat")
    eot = end_of_turn_token(cfg, tokenizer)
    records = list(chat_records(json.loads(Path(source).read_text()), n))

    def prepare() -> list[dict]:
        getattr(chat, "_LAYOUTS", {}).clear()  # shapes rendered again in every repeat
        return tokenize_examples([build_segments(r, cfg, tokenizer, eot) for r in records], tokenizer, eot, 2048)[0]

    wall, cpu = timed(prepare, repeats)
    h = hashlib.sha256()
    for ex in prepare():
        for key in ("input_ids", "labels"):
            h.update(np.array([len(ex[key]), *ex[key]], dtype="<i8").tobytes())
    texts = [s.text for r in records for s in build_segments(r, cfg, tokenizer, eot)]
    floor_wall, floor_cpu = timed(lambda: encode(tokenizer, texts), repeats)  # every segment tokenized once, no more
    return {"conversations": n, "conversations_per_s": round(n / wall, 1), "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3), "conversations_per_cpu_s": round(n / cpu, 1),
            "tokenize_once_floor": {"conversations_per_s": round(n / floor_wall, 1),
                                    "conversations_per_cpu_s": round(n / floor_cpu, 1)},
            "rows_sha256": h.hexdigest()}


def chat_benchmark(args: argparse.Namespace) -> dict:
    """Ours, and with --old-repo that checkout's code in a subprocess, on the same conversations."""
    out = {"ours": chat_throughput(args.data, args.chat, args.repeats)}
    if args.old_repo:
        old = Path(args.old_repo).resolve()
        imported_from(old)
        code = (f"import json, runpy; m = runpy.run_path({str(Path(__file__).resolve())!r}); "
                f"print(json.dumps(m['chat_throughput']({str(Path(args.data).resolve())!r}, {args.chat}, {args.repeats})))")
        out["old"] = json.loads(python_output(code, old, PYTHONPATH=str(old)))
        out["speedup_wall"] = round(out["ours"]["conversations_per_s"] / out["old"]["conversations_per_s"], 3)
        out["speedup_cpu"] = round(out["old"]["cpu_s"] / out["ours"]["cpu_s"], 3)
        out["same_rows"] = out["ours"]["rows_sha256"] == out["old"]["rows_sha256"]
    return out


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and CPU seconds (all threads) over `repeats` runs; CPU time is robust to other load."""
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def padded_efficiency(lengths: list[int], batch: int = 8) -> float:
    slots = sum(len(chunk) * max(chunk) for chunk in (lengths[i : i + batch] for i in range(0, len(lengths), batch)))
    return sum(lengths) / slots


def in_process_benchmark(args: argparse.Namespace) -> dict:
    tokenizer = load_tokenizer(ModelConfig())
    records = load_records(args.data, DataConfig(path=args.data)).records
    n = len(records)
    t_base, cpu_base = timed(lambda: alpaca_preprocess(records, tokenizer, 4096), args.repeats)
    t_ours, cpu_ours = timed(lambda: ours(records, tokenizer, 4096), args.repeats)
    texts = [s.text for r in records for s in build_segments(r, PromptConfig(), tokenizer)]
    t_floor, cpu_floor = timed(lambda: encode(tokenizer, texts), args.repeats)  # every token tokenized once
    examples, _, stats = ours(records, tokenizer, 4096)
    tokens = stats.total_tokens
    result = {
        "data": args.data,
        "examples": n,
        "tokens": tokens,
        "boundary_mismatches": stats.boundary_mismatches,
        "boundary_mismatches_full_strings": full_string_mismatches(records, tokenizer),
        "throughput": {
            "alpaca_preprocess": {"examples_per_s": n / t_base, "tokens_per_s": tokens / t_base, "cpu_s": cpu_base},
            "ours": {"examples_per_s": n / t_ours, "tokens_per_s": tokens / t_ours, "cpu_s": cpu_ours},
            "tokenize_once_floor": {"wall_s": t_floor, "cpu_s": cpu_floor, "max_speedup_wall": t_base / t_floor},
            "speedup_wall": t_base / t_ours,
            "speedup_cpu": cpu_base / cpu_ours,
            "load_average_1min": os.getloadavg()[0],
        },
        "packing": {},
    }
    if args.chat:
        result["chat"] = chat_benchmark(args)
    for max_len in (512, 1024, 2048, 4096):
        kept, _, s = ours(records, tokenizer, max_len)
        rows = pack_examples(kept, max_len, seed=0)
        packed = packing_stats(rows, max_len)
        result["packing"][str(max_len)] = {
            "examples": len(kept),
            "rows": packed["rows"],
            "lower_bound_rows": packed["lower_bound_rows"],
            "packed_efficiency": packed["efficiency"],
            "lower_bound_efficiency": s.total_tokens / (packed["lower_bound_rows"] * max_len),
            "padded_batch8_efficiency": padded_efficiency([len(e["input_ids"]) for e in kept]),
        }
    return result




REPO = Path(__file__).resolve().parents[1]
OLD_PATH_MAX_RECORDS = 200_000  # the old code holds every record and example in memory
COLUMNS = ("input_ids", "labels", "position_ids")


def variant(r: dict, i: int, shuffle_from: int | None = None) -> dict:
    """Record i of those cycling through the source records: the instruction made distinct; with shuffle_from
    (the number of source records), from the second pass on, the output's words in a permutation seeded by i, so
    that copies are not near duplicates either (data.dedup=near then removes few: its cost without the saving of
    fewer rows)."""
    out = {**r, "instruction": f"{r['instruction']} (variant {i})"}
    if shuffle_from is not None and i >= shuffle_from:
        words = r["output"].split(" ")
        random.Random(i).shuffle(words)
        out["output"] = " ".join(words)
    return out


def write_alpaca(source: list[dict], n: int, path: Path, shuffle_words: bool = False) -> None:
    """n records cycling through `source` (variant()), one JSON line at a time."""
    with path.open("w") as f:
        for i, r in zip(range(n), itertools.cycle(source)):
            f.write(json.dumps(variant(r, i, len(source) if shuffle_words else None)) + "\n")


def write_chat(source: list[dict], n: int, path: Path) -> None:
    """chat_records, one JSON line at a time."""
    with path.open("w") as f:
        for record in chat_records(source, n):
            f.write(json.dumps({"messages": record["messages"]}) + "\n")


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """(sum, largest) RSS in bytes over `root` and its descendants now."""
    sizes = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.Error:  # exited between listing and reading
            pass
    return sum(sizes), max(sizes, default=0)


def run_prepare(cmd: list[str], cwd: Path, env: dict[str, str], log_dir: Path) -> dict:
    """Run one preparation; wall seconds and peak RSS (tree sum, largest process). Exits showing its stderr
    when it fails."""
    log_dir.mkdir(parents=True)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    with (log_dir / "stdout").open("w") as out, (log_dir / "stderr").open("w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        root, peak_sum, peak_one = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            total, largest = tree_rss(root)
            peak_sum, peak_one = max(peak_sum, total), max(peak_one, largest)
            time.sleep(0.1)
        wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{(log_dir / 'stderr').read_text()}")
    done = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process and its waited-for workers: robust to load
    cpu_s = done.ru_utime + done.ru_stime - cpu.ru_utime - cpu.ru_stime
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu_s, 2), "peak_rss_tree_mb": round(peak_sum / 2**20, 1),
            "peak_rss_largest_process_mb": round(peak_one / 2**20, 1)}


def rows_sha256(dataset_dir: Path) -> tuple[str, dict[str, int]]:
    """sha256 over every row of train then eval, in order: each column's row lengths and values as int64
    little-endian (int32 or int64 storage hash the same); and the rows per split."""
    import datasets

    h, rows = hashlib.sha256(), {}
    splits = datasets.load_from_disk(str(dataset_dir))
    for split in ("train", "eval"):
        if split not in splits:
            continue
        ds = splits[split].select_columns([c for c in COLUMNS if c in splits[split].column_names])
        h.update(f"|{split}|{','.join(ds.column_names)}|".encode())
        for batch in ds.with_format("numpy").iter(batch_size=1000):
            for column in ds.column_names:
                values = batch[column]
                h.update(np.array([len(v) for v in values], dtype="<i8").tobytes())
                h.update(np.concatenate(list(values)).astype("<i8").tobytes())
        rows[split] = len(ds)
    return h.hexdigest(), rows


def arrow_bytes(dataset_dir: Path) -> int:
    return sum(f.stat().st_size for f in dataset_dir.rglob("*.arrow"))


def python_output(code: str, cwd: Path, **env: str) -> str:
    """stdout of `python -c code`; exits showing its stderr when it fails."""
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"failed (exit {done.returncode}): python -c {code!r}\n{done.stderr}")
    return done.stdout


def converted_model(work: Path) -> Path:
    """The embedded GGUF model de-quantized once into work/model-cache; returns its gguf/ directory."""
    cache = work / "model-cache"
    python_output("from sft.config import ModelConfig; from sft.model.load import resolve_model_path as r; "
                  "r(ModelConfig())", REPO, SFT_CACHE_DIR=str(cache))
    return cache / "gguf"


def measured_run(name: str, overrides: list[str], records: int, work: Path, model: Path | None,
                 repo: Path | None = None) -> dict:
    """One `python -m sft prepare` run in its own directory and fresh cache (holding only a link to the converted
    `model`, unless None); this repo's code unless `repo`."""
    run_dir, cache = work / name, Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    if model is not None:
        (cache / "gguf").symlink_to(model, target_is_directory=True)
    env = {**os.environ, "SFT_CACHE_DIR": str(cache)}
    if repo is not None:
        env["PYTHONPATH"] = str(repo)
    cmd = [sys.executable, "-m", "sft", "prepare", *overrides, "data.packing=true", "data.max_seq_len=2048",
           "cache=false", f"out_dir={run_dir / 'out'}", f"hydra.run.dir={run_dir / 'hydra'}"]
    result = run_prepare(cmd, repo or REPO, env, run_dir / "logs")
    result["records_per_s"] = round(records / result["wall_s"], 1)
    result["arrow_bytes"] = arrow_bytes(run_dir / "out" / "dataset")
    result["rows_sha256"], result["rows"] = rows_sha256(run_dir / "out" / "dataset")
    report = json.loads((run_dir / "out" / "report.json").read_text())
    result["total_tokens"] = sum(s["total_tokens"] for s in report["splits"].values())
    found = report.get("duplicates") or {}
    result["duplicates"] = {k: v["duplicates"] for k, v in found.items() if isinstance(v, dict)}
    result["contamination_share"] = {k: round(v["share"], 4) for k, v in
                                     ((report.get("contamination") or {}).get("sets") or {}).items()}
    return result


def dedup_benchmark(args: argparse.Namespace, alpaca: Path, work: Path, model: Path | None) -> dict:
    """The same preparation (first --num-proc value, --eval-fraction held out, so contamination is checked against
    it) by the --baseline-repo checkout (before duplicates and contamination), then here with each data.dedup mode:
    wall and CPU seconds (the process and its workers) and peak RSS, and each over the baseline's (CPU time is
    the figure to read on a loaded machine)."""
    common = ["data=alpaca", f"data.path={alpaca}", f"data.num_proc={args.num_proc.split(',')[0]}",
              f"data.eval_fraction={args.eval_fraction}"]
    runs = {}
    if args.baseline_repo:
        repo = Path(args.baseline_repo).resolve()
        runs["baseline"] = {"imported_from": imported_from(repo), **measured_run("dedup-baseline", common,
                                                                                 args.records, work, model, repo=repo)}
    for mode in args.dedup_modes.split(","):
        runs[f"dedup_{mode}"] = measured_run(f"dedup-{mode}", common + [f"data.dedup={mode}"], args.records, work, model)
    out: dict = {"records": args.records, "eval_fraction": args.eval_fraction, "runs": runs}
    if "baseline" in runs:
        for measure in ("wall_s", "cpu_s"):
            out[f"{measure}_over_baseline"] = {k: round(r[measure] / runs["baseline"][measure], 3)
                                               for k, r in runs.items() if k != "baseline"}
    return out


def imported_from(repo: Path) -> dict[str, str]:
    """Where a subprocess with PYTHONPATH=repo, cwd=repo imports `sft` (and its Hydra configs) from; exits when
    `sft` is not repo's. An editable install of this repo may still supply `sft.conf` (the repo's conf/)."""
    out = python_output("import sft, sft.conf; print(sft.__file__); print(sft.conf.__file__)", repo,
                        PYTHONPATH=str(repo)).split()
    if not Path(out[0]).is_relative_to(repo):
        sys.exit(f"--old-repo {repo}: the subprocess imports sft from {out[0]}")
    return {"sft": out[0], "sft.conf": out[1]}


def compare(runs: dict[str, dict], num_procs: list[int], records: int) -> dict:
    """Runs, speedups over num_proc=1 and whether every run gave the num_proc=1 rows."""
    out: dict = {"records": records, "runs": runs}
    base = runs.get("new_num_proc_1")
    for k in num_procs:
        if base and k != 1:
            out[f"speedup_{k}_vs_1"] = round(base["wall_s"] / runs[f"new_num_proc_{k}"]["wall_s"], 3)
    hashes = {r["rows_sha256"] for r in runs.values() if "rows_sha256" in r}
    out["same_rows"] = len(hashes) == 1
    return out


def scale_benchmark(args: argparse.Namespace, work: Path) -> dict:
    num_procs = [int(k) for k in args.num_proc.split(",")]
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = json.loads(Path(args.source).read_text())
    model = None if args.cold_model_cache else converted_model(work)
    result: dict = {"cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                    "load_average_start": os.getloadavg(), "work": str(work),
                    "model_conversion_timed": model is None}
    alpaca = work / "alpaca.jsonl"
    write_alpaca(source, args.records, alpaca, args.shuffle_words)
    if args.dedup_modes:
        result["dedup"] = dedup_benchmark(args, alpaca, work, model)
        result["load_average_end"] = os.getloadavg()
        return result
    runs = {f"new_num_proc_{k}": measured_run(f"alpaca-np{k}", ["data=alpaca", f"data.path={alpaca}",
            f"data.num_proc={k}"], args.records, work, model) for k in num_procs}
    if args.old_repo and args.records > OLD_PATH_MAX_RECORDS:
        runs["old_single_process"] = {"skipped": f"more than {OLD_PATH_MAX_RECORDS} records"}
    elif args.old_repo:
        old = Path(args.old_repo).resolve()
        runs["old_single_process"] = {"imported_from": imported_from(old), **measured_run(
            "alpaca-old", ["data=alpaca", f"data.path={alpaca}"], args.records, work, model, repo=old)}
    result["alpaca"] = compare(runs, num_procs, args.records)
    if args.chat_records:
        chat = work / "chat.jsonl"
        write_chat(source, args.chat_records, chat)
        runs = {f"new_num_proc_{k}": measured_run(f"chat-np{k}", ["data=messages", "prompt=chat",
                f"data.path={chat}", f"data.num_proc={k}"], args.chat_records, work, model) for k in num_procs}
        result["chat"] = compare(runs, num_procs, args.chat_records)
    result["load_average_end"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("data", nargs="?", help="in-process mode: an Alpaca-format JSON file")
    parser.add_argument("--repeats", type=int, default=3, help="in-process mode: timing repeats")
    parser.add_argument("--records", type=int, help="scale mode: alpaca records to generate and prepare")
    parser.add_argument("--chat-records", type=int, default=0, help="scale mode: chat records too")
    parser.add_argument("--chat", type=int, default=0, help="in-process mode: chat conversations to prepare too")
    parser.add_argument("--old-repo", help="a checkout of older code to compare (scale mode: its preparation of the "
                        "alpaca file; in-process mode: its chat preparation, with --chat)")
    parser.add_argument("--dedup-modes", help="scale mode: only time these data.dedup modes (e.g. none,exact,near), "
                        "against --baseline-repo")
    parser.add_argument("--baseline-repo", help="scale mode, --dedup-modes: a checkout of the code before them")
    parser.add_argument("--eval-fraction", type=float, default=0.01, help="scale mode, --dedup-modes: held out")
    parser.add_argument("--shuffle-words", action="store_true", help="scale mode: the records after the first pass "
                        "over --source have their output's words shuffled (not near duplicates of each other)")
    parser.add_argument("--num-proc", default="1,2", help="scale mode: data.num_proc values, comma-separated")
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/alpaca_en_demo.json"),
                        help="scale mode: the records to cycle through")
    parser.add_argument("--work", help="scale mode: where data and outputs go and stay (default: a temp dir)")
    parser.add_argument("--cold-model-cache", action="store_true",
                        help="scale mode: each run de-quantizes the embedded GGUF model itself (timed and in the RSS)")
    args = parser.parse_args()
    if (args.data is None) == (args.records is None):
        parser.error("give either DATA (in-process mode) or --records N (scale mode)")
    if args.data:
        result = in_process_benchmark(args)
    elif args.work:
        result = scale_benchmark(args, Path(args.work))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-prepare-") as work:  # data, outputs, model: removed after
            result = scale_benchmark(args, Path(work))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
