"""`sft-eval`: the held-out split scored before (base) and after (base + adapter) training.

    sft-eval adapter=outputs/my-run out_dir=eval/my-run

For each model it writes a resumable generation run (`<out_dir>/base/`, `<out_dir>/adapter/`) and scores
it with exact match, token F1 and ROUGE-L, and computes the loss and perplexity of the references: the
mean cross-entropy over the answer tokens and their end-of-turn, masked exactly as training masks them.
The table goes to stdout as markdown and to `<out_dir>/eval.json` and `eval.md`.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import torch

from sft.adapter import AdapterSource, base_for, data_for, find_adapter, load_for_inference, prompt_for
from sft.config import DataConfig, EvalRunConfig, PromptConfig
from sft.data.collate import PaddedCollator
from sft.data.load import Record
from sft.data.prompts import build_segments, end_of_turn_token
from sft.data.tokenize import IGNORE_INDEX, tokenize_examples
from sft.errors import DataError
from sft.generate import build_items, context_limit, describe, generate_into, identity, select_records
from sft.metrics import score_rows
from sft.model import load_tokenizer, model_name, resolve_model_path
from sft.outputs import check_resumable, write_json_atomic

METRICS = ("exact_match", "token_f1", "rouge_l", "loss", "perplexity")


@torch.inference_mode()
def reference_loss(model: Any, tokenizer: Any, records: list[Record], prompt: PromptConfig, data: DataConfig, batch_size: int) -> dict[str, Any]:
    """Token-weighted mean loss of the references (the trained positions of sft.data's masking) and exp of it."""
    segments = [build_segments(r, prompt, tokenizer) for r in records]
    examples, _, _ = tokenize_examples(segments, tokenizer, end_of_turn_token(prompt, tokenizer), data.max_seq_len, data.truncation)
    if not examples:
        raise DataError(f"{data.path}: no held-out example fits data.max_seq_len={data.max_seq_len}")
    collate = PaddedCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        total += float(losses)
        tokens += int((labels != IGNORE_INDEX).sum())
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "examples": len(examples), "tokens": tokens}


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    head = ["metric", *names] + (["change"] if len(names) == 2 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric in METRICS:
        values = [results[n].get(metric) for n in names]
        if all(v is None for v in values):
            continue
        cells = ["-" if v is None else f"{v:.4f}" for v in values]
        if len(names) == 2:
            cells.append("-" if None in values else f"{values[1] - values[0]:+.4f}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def variants(cfg: EvalRunConfig, source: AdapterSource | None) -> list[tuple[str, AdapterSource | None]]:
    if source is None:
        return [("base", None)]
    return ([("base", None)] if cfg.compare_base else []) + [("adapter", source)]


def evaluate_variant(cfg: EvalRunConfig, name: str, src: AdapterSource | None, model: Any, tokenizer: Any, setup: dict[str, Any]) -> dict[str, Any]:
    use_base = src is None and setup["source"] is not None
    with model.disable_adapter() if use_base else contextlib.nullcontext():
        result: dict[str, Any] = {"model": model_name(setup["model_cfg"]) + (f" + {src.path}" if src else "")}
        if cfg.generate:
            rows = generate_into(Path(cfg.out_dir) / name, model, tokenizer, setup["items"], setup["idents"][name],
                                 {"data": cfg.data.path, "split": cfg.split}, result["model"])
            result.update(score_rows(rows))
        loss = reference_loss(model, tokenizer, setup["records"], setup["prompt"], cfg.data, cfg.loss_batch_size)
        result.update(loss)
    return result


def warn_data_drift(source: AdapterSource | None, data: DataConfig) -> None:
    trained = ((source.run_config or {}).get("data") or {}) if source else {}
    ours = (data.path, data.eval_path, data.eval_fraction)
    theirs = (trained.get("path"), trained.get("eval_path"), trained.get("eval_fraction"))
    if trained and theirs != ours:
        print(f"note: the run held out {theirs[1] or f'eval_fraction={theirs[2]}'} of {theirs[0]}; "
              f"evaluating on {ours[1] or f'eval_fraction={ours[2]}'} of {ours[0]}", file=sys.stderr)


def run_eval(cfg: EvalRunConfig) -> dict[str, Any]:
    source = find_adapter(cfg.adapter) if cfg.adapter else None
    cfg.data = data_for(source, cfg.data, cfg.split)
    warn_data_drift(source, cfg.data)
    model_cfg = base_for(source, cfg.model)
    prompt = prompt_for(source, cfg.prompt)
    path = resolve_model_path(model_cfg)
    tokenizer = load_tokenizer(model_cfg, path=path)
    seed = (source.run_config or {}).get("seed", cfg.seed) if source else cfg.seed
    records = select_records(cfg.data, cfg.split, seed)
    missing = next((r for r in records if describe(r)[2] is None), None)
    if missing is not None:  # only split=all reads prompt-only records; scores and loss need the answer
        raise DataError(f"{cfg.data.path}: record {missing['id']}: field {cfg.data.output_field!r}: missing "
                        "(sft-eval compares against references; sft-generate takes prompts alone)")
    limit = context_limit(path, model_cfg, cfg.generation, cfg.max_prompt_tokens)
    items = build_items(records, prompt, tokenizer, cfg.generation, limit, cfg.long_prompt, cfg.data.path) if cfg.generate else []
    idents = {name: identity(model_cfg, cfg.quant, src, prompt, cfg.generation, items) for name, src in variants(cfg, source)}
    if cfg.generate:
        for name in idents:  # a wrong out_dir fails before the model loads
            check_resumable(Path(cfg.out_dir) / name, idents[name])
    model = load_for_inference(model_cfg, cfg.quant, source)
    setup = {"source": source, "model_cfg": model_cfg, "items": items, "idents": idents, "records": records, "prompt": prompt}
    results = {name: evaluate_variant(cfg, name, src, model, tokenizer, setup) for name, src in variants(cfg, source)}
    table = markdown_table(results)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"split": cfg.split, "data": cfg.data.path, "eval_path": cfg.data.eval_path, "template": prompt.name,
              "adapter": str(source.path) if source else None, "results": results, "table": table}
    write_json_atomic(out / "eval.json", report)
    (out / "eval.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out / 'eval.json'}")
    return report
