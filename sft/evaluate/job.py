"""`sft-eval`: the held-out split scored before (base) and after (base + adapter) training.

    sft-eval adapter=outputs/my-run out_dir=eval/my-run

With a training run directory the held-out records are the run's own, checked against its held_out.json
(sft.generate.setup, sft.data.heldout): records it did not hold out are refused, never scored as held out.
For each model it writes a resumable generation run (`<out_dir>/base/`, `<out_dir>/adapter/`) and scores
it with exact match, token F1 and ROUGE-L (sft.evaluate.metrics), and computes the loss and perplexity of the
references (sft.evaluate.reference). The table goes to stdout as markdown and to `<out_dir>/eval.json`,
`eval.md` and `eval.html` (every example, with diffs against the reference: sft.evaluate.html).
With a training run directory, the records scored are first checked for contamination (13-grams of words shared
with the run's training records, sft.data.contamination): printed, and in eval.json and the trackers.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from sft.config import DataConfig, EvalRunConfig
from sft.data.contamination import contamination_lines, eval_contamination, tracker_figures
from sft.data.sources import describe_data
from sft.errors import ConfigError, DataError
from sft.evaluate.html import eval_page
from sft.evaluate.metrics import score_rows
from sft.evaluate.reference import reference_loss
from sft.evaluate.report import markdown_table, variants
from sft.generate.items import describe
from sft.generate.job import generate_into, identity
from sft.generate.outputs import check_resumable
from sft.generate.setup import GenerationSetup, load_for_inference, resolve_setup
from sft.io import write_json_atomic, write_text_atomic
from sft.model.load import model_name
from sft.run.adapter import AdapterSource


def evaluate_variant(cfg: EvalRunConfig, name: str, src: AdapterSource | None, model: Any, setup: GenerationSetup,
                     ident: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One model's figures, and its generation rows (none with generate=false)."""
    use_base = src is None and setup.source is not None
    with model.disable_adapter() if use_base else contextlib.nullcontext():
        result: dict[str, Any] = {"model": model_name(setup.model) + (f" + {src.path}" if src else "")}
        rows: list[dict[str, Any]] = []
        if cfg.generate:
            rows = generate_into(Path(cfg.out_dir) / name, model, setup.tokenizer, setup.items, ident,
                                 {"data": describe_data(setup.data), "split": cfg.split}, result["model"])
            result.update(score_rows(rows))
        result.update(reference_loss(model, setup.tokenizer, setup.records, setup.prompt, setup.data, cfg.loss_batch_size))
        by_source = result.pop("by_source", None)
        if by_source:  # a mixture's records: the same figures for each source
            result["sources"] = {source: {**(score_rows([r for r in rows if r.get("source") == source]) if cfg.generate else {}),
                                          **loss} for source, loss in by_source.items()}
    return result, rows


def warn_data_drift(source: AdapterSource | None, data: DataConfig) -> None:
    trained = source.run.data() if source and source.run else None
    if trained is None:
        return
    ours = (data.path, data.eval_path, data.eval_fraction, data.sources)
    theirs = (trained.path, trained.eval_path, trained.eval_fraction, trained.sources)
    if theirs != ours:
        print(f"note: the run held out {theirs[1] or f'eval_fraction={theirs[2]}'} of {describe_data(trained)}; "
              f"evaluating on {ours[1] or f'eval_fraction={ours[2]}'} of {describe_data(data)}", file=sys.stderr)


def run(cfg: EvalRunConfig, given_data_keys: set[str] | None = None) -> dict[str, Any]:
    """sft-eval. given_data_keys: the data.* keys set on the command line (sft.generate.setup.resolve_setup)."""
    from sft.run.trackers import check_installed

    check_installed(cfg.report_to, "report_to")  # before any model loads
    setup = resolve_setup(cfg, given_data_keys, items=cfg.generate)
    if cfg.report_to:
        tracked_run(cfg, setup.source)
    warn_data_drift(setup.source, setup.data)
    missing = next((r for r in setup.records if describe(r)[2] is None), None)
    if missing is not None:  # only split=all reads prompt-only records; scores and loss need the answer
        raise DataError(f"{describe_data(setup.data)}: record {missing['id']}: field {cfg.data.output_field!r}: missing "
                        "(sft-eval compares against references; sft-generate takes prompts alone)")
    try:
        contamination = eval_contamination(setup.source, setup.records, describe_data(setup.data))
    except Exception as e:  # a check, not what sft-eval is for: the run's data may be gone or need the network
        print(f"note: contamination not checked: the run's training data cannot be read ({type(e).__name__}: {e})",
              file=sys.stderr)
        contamination = None
    for line in contamination_lines(contamination):  # the scored records found in the run's training records
        print(line)
    idents = {name: identity(setup.model, cfg.quant, src, setup.prompt, cfg.generation, setup.items)
              for name, src in variants(cfg.compare_base, setup.source)}
    if cfg.generate:
        for name in idents:  # a wrong out_dir fails before the model loads
            check_resumable(Path(cfg.out_dir) / name, idents[name])
    model = load_for_inference(setup, cfg.quant)
    scored = {name: evaluate_variant(cfg, name, src, model, setup, idents[name]) for name, src in variants(cfg.compare_base, setup.source)}
    results = {name: result for name, (result, _) in scored.items()}
    generated = {name: rows for name, (_, rows) in scored.items()}  # the generation rows: eval.html and report_to
    table = markdown_table(results)
    sources = list(next(iter(results.values())).get("sources", {}))
    for source in sources:  # one table per source of a mixture, after the overall one
        table += f"\n\nsource {source}:\n\n" + markdown_table({n: r["sources"][source] for n, r in results.items()})
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"split": cfg.split, "data": describe_data(setup.data), "eval_path": setup.data.eval_path, "template": setup.prompt.name,
              "adapter": str(setup.source.path) if setup.source else None, "results": results, "table": table,
              "contamination": contamination}
    write_json_atomic(out / "eval.json", report)
    write_text_atomic(out / "eval.md", table + "\n")
    write_text_atomic(out / "eval.html", eval_page(report, results, generated))
    print(table)
    print(f"\nwrote {out / 'eval.json'}, eval.md and eval.html")
    if cfg.report_to:
        report_to_trackers(cfg, setup.source, results, generated, contamination)
    return report


def report_to_trackers(cfg: EvalRunConfig, source: AdapterSource | None, results: dict[str, Any],
                       generated: dict[str, list[dict[str, Any]]], contamination: dict[str, Any] | None = None) -> None:
    """The table's figures and the first report_samples generations, into the training run's tracker runs."""
    from sft.run.trackers import attach

    run = tracked_run(cfg, source)
    trackers = attach(run, cfg.report_to, "", "", create=False)
    figures = {f"sft_eval/{variant}/{metric}": value for variant, result in results.items()
               for metric, value in result.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    for share in tracker_figures({"contamination": contamination}).values():  # one set: the records scored
        figures["sft_eval/contamination"] = share
    variants_ = list(generated)
    by_key = {v: {(r.get("source"), r["id"], r["sample"]): r for r in rows} for v, rows in generated.items()}
    first = generated[variants_[-1]][: cfg.report_samples] if variants_ else []
    columns = ["id", "prompt", "reference", *[f"{v} output" for v in variants_]]
    samples = [[r["id"], r["prompt"], r.get("reference"), *[by_key[v].get((r.get("source"), r["id"], r["sample"]), {}).get("output")
                                                         for v in variants_]] for r in first]
    for tracker in trackers:
        tracker.summarize(figures)
        if samples:
            tracker.table("sft_eval/generations", columns, samples)
        tracker.finish()
    print(f"logged to the training run's {', '.join(t.name for t in trackers)} run")


def tracked_run(cfg: EvalRunConfig, source: AdapterSource | None) -> Path:
    """The training run directory whose tracker runs report_to names; checked before any model loads."""
    from sft.run.trackers import read_ids

    run = source.run if source else None
    ids = read_ids(run.path) if run is not None else {}
    missing = [n for n in cfg.report_to if n not in ids]
    if run is None or missing:
        raise ConfigError(f"report_to={cfg.report_to}: adapter={source.path if source else None} has no "
                          f"{', '.join(missing)} run in its trackers.json: train with train.report_to=[...] to log "
                          "its evaluation there")
    return run.path
