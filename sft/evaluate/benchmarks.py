"""`sft-bench`: standard benchmarks (MMLU, GSM8K, ARC, HellaSwag, IFEval, ... or your own tasks) through
lm-evaluation-harness, on the base and on base + adapter, as one before/after table.

    sft-bench adapter=outputs/my-run benchmark.tasks=[arc_easy,gsm8k] benchmark.num_fewshot=0 out_dir=bench/my-run

The model is resolved as sft-eval resolves it (the run's base, its saved tokenizer and chat template; another
base is refused) and loaded once with our dtype and quantization; lm-eval's HF wrapper runs the tasks on it,
with the adapter switched off for the base column. Written to out_dir: benchmarks.json (lm-eval's results per
model, its version and every task's version and config), benchmarks.md (the table), and with
benchmark.log_samples every example under samples/<model>/<task>.jsonl.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from sft.config import BenchmarkConfig, BenchRunConfig, resource_path
from sft.data.contamination import contamination_lines, run_contamination
from sft.errors import ConfigError
from sft.evaluate.report import variants
from sft.generate.setup import ModelSetup, load_for_inference, resolve_model
from sft.io import write_json_atomic, write_rows_atomic, write_text_atomic


def task_manager(bench: BenchmarkConfig) -> Any:
    """lm-eval's task index with benchmark.include_path added; unknown task names are one error, before any model
    loads."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("sft-bench needs lm-evaluation-harness: pip install 'sft[bench]' (or lm-eval)") from None
    include = None
    if bench.include_path is not None:
        include = Path(bench.include_path).expanduser()
        if not include.is_dir():
            raise ConfigError(f"benchmark.include_path={bench.include_path}: directory not found")
    manager = TaskManager(verbosity="ERROR", include_path=str(include) if include else None)
    known = set(manager.all_tasks)
    unknown = [t for t in bench.tasks if t not in known]
    if unknown:
        where = f" or in {include}" if include else " (your own tasks: benchmark.include_path=DIR)"
        raise ConfigError(f"benchmark.tasks: no lm-eval task named {', '.join(unknown)}{where}; "
                          "`lm-eval ls tasks` lists them")
    return manager


def check_task_data(bench: BenchmarkConfig, manager: Any) -> None:
    """Load every task and its data set now, before the model: a Hub task offline or a task whose data file is
    missing is one error naming the task, not a traceback after the model has loaded. The data stays in the
    datasets cache, so lm-eval's own load later reads it from there."""
    import logging
    import os

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    for task in bench.tasks:
        try:
            manager.load([task])
        except Exception as e:  # noqa: BLE001 -- datasets and lm-eval raise many kinds; each is one line here
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = ""
            if isinstance(e, FileNotFoundError):
                hint = f" (a task's relative data_files are read from the working directory, {os.getcwd()})"
            elif isinstance(e, ConnectionError):
                hint = (" (offline: use a local task, e.g. the Alpaca one sft ships: "
                        f"{resource_path('lm_eval_tasks')}, see the README's sft-bench section)")
            raise ConfigError(f"benchmark.tasks: task {task}: its data could not be loaded: {reason}{hint}") from None


def evaluate_tasks(model: Any, setup: ModelSetup, bench: BenchmarkConfig, manager: Any) -> dict[str, Any]:
    """lm-eval's full result for one model (samples included when asked)."""
    import logging

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-request INFO lines would bury the table
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)  # "model passed as an object": on purpose
    lm = HFLM(pretrained=model, tokenizer=setup.tokenizer, batch_size=bench.batch_size)
    return lm_eval.simple_evaluate(
        model=lm, tasks=list(bench.tasks), num_fewshot=bench.num_fewshot, limit=bench.limit, task_manager=manager,
        log_samples=bench.log_samples, apply_chat_template=bench.apply_chat_template, random_seed=bench.seed,
        numpy_random_seed=bench.seed, torch_random_seed=bench.seed, fewshot_random_seed=bench.seed,
    )


def scores(result: dict[str, Any]) -> dict[tuple[str, str], tuple[float, float | None]]:
    """{(task, metric[,filter]): (value, stderr)} of one lm-eval result (groups included)."""
    out = {}
    for task, metrics in {**result.get("results", {}), **result.get("groups", {})}.items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or "_stderr," in key or key == "sample_len":
                continue
            metric, _, filter_name = key.partition(",")
            name = metric if filter_name in ("", "none") else f"{metric} ({filter_name})"
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            out[(task, name)] = (float(value), float(stderr) if isinstance(stderr, (int, float)) else None)
    return out


def benchmark_table(results: dict[str, dict[str, Any]]) -> str:
    """task | metric | one column per model | change (with two) | stderr (of the last model)."""
    names = list(results)
    table = {name: scores(result) for name, result in results.items()}
    head = ["task", "metric", *names] + (["change"] if len(names) == 2 else []) + ["stderr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, metric in sorted(set().union(*table.values())):
        values = [table[n].get((task, metric), (None, None)) for n in names]
        cells = ["-" if v is None else f"{v:.4f}" for v, _ in values]
        if len(names) == 2:
            a, b = values[0][0], values[1][0]
            cells.append("-" if a is None or b is None else f"{b - a:+.4f}")
        stderr = values[-1][1]
        cells.append("-" if stderr is None else f"{stderr:.4f}")
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_samples(out: Path, name: str, result: dict[str, Any]) -> None:
    for task, samples in result.pop("samples", {}).items():
        (out / "samples" / name).mkdir(parents=True, exist_ok=True)
        write_rows_atomic(out / "samples" / name / f"{task}.jsonl", json.loads(json.dumps(samples, default=str)))


def sweep_table(sweep_dir: Path) -> str:
    """One row per model of a sweep (`-m adapter=A,B,...`): the base once, then each adapter, from the
    benchmarks.json of every job finished so far under sweep_dir."""
    rows: dict[str, dict[tuple[str, str], tuple[float, float | None]]] = {}
    for path in sorted(sweep_dir.glob("*/benchmarks.json")):
        report = json.loads(path.read_text())
        for variant, result in report["results"].items():
            rows.setdefault("base" if variant == "base" else str(report["adapter"]), scores(result))
    columns = sorted(set().union(*rows.values())) if rows else []
    lines = ["| model | " + " | ".join(f"{task} {metric}" for task, metric in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for name, values in rows.items():
        cells = ["-" if c not in values else f"{values[c][0]:.4f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: BenchRunConfig, sweep_dir: Path | None = None) -> dict[str, Any]:
    """sft-bench: the table, and what it is made of, in cfg.out_dir; in a sweep (sweep_dir, from `-m`) also
    <sweep_dir>/benchmarks.md with one row per adapter, rewritten as each job finishes."""
    manager = task_manager(cfg.benchmark)  # a wrong task name fails before the model loads
    check_task_data(cfg.benchmark, manager)  # and so does a task whose data cannot be read
    setup = resolve_model(cfg.adapter, cfg.model)
    contamination = run_contamination(setup.source, list(cfg.benchmark.tasks), cfg.benchmark.include_path)
    for line in contamination_lines(contamination):  # the tasks' documents found in the run's training records
        print(line)
    model = load_for_inference(setup, cfg.quant)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name, src in variants(cfg.compare_base, setup.source):
        use_base = src is None and setup.source is not None
        with model.disable_adapter() if use_base else contextlib.nullcontext():
            results[name] = evaluate_tasks(model, setup, cfg.benchmark, manager)
        write_samples(out, name, results[name])
    table = benchmark_table(results)
    report = {"model": setup.name, "adapter": str(setup.source.path) if setup.source else None, "table": table,
              "benchmark": {k: getattr(cfg.benchmark, k) for k in ("tasks", "num_fewshot", "limit", "seed")},
              "contamination": contamination, "lm_eval_version": results[next(iter(results))].get("lm_eval_version"),
              "results": json.loads(json.dumps(results, default=str))}
    write_json_atomic(out / "benchmarks.json", report)
    write_text_atomic(out / "benchmarks.md", table + "\n")
    if sweep_dir is not None:
        write_text_atomic(sweep_dir / "benchmarks.md", sweep_table(sweep_dir) + "\n")
    print(table)
    print(f"\nwrote {out / 'benchmarks.json'}")
    return report
