"""`sft-generate`: records -> prompts (the training template) -> seeded batched decoding -> generations.jsonl.

    sft-generate adapter=outputs/run1 generation=sampled generation.seed=11 out_dir=gen/run1

Every (example, sample) is one item with its own seed; items are decoded in batches of prompts of similar
length (less padding), and each row is appended to the output file as soon as it finishes. The texts do not
depend on the batch size or order, so a rerun after an interruption only decodes what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.adapter import AdapterSource, adapter_hash, base_for, data_for, find_adapter, load_for_inference, prompt_for
from sft.config import DataConfig, GenerateRunConfig, GenerationConfig, ModelConfig, PromptConfig, QuantConfig
from sft.data.load import Record, load_records
from sft.data.prompts import end_of_turn_token, render_prompt, unescape
from sft.data.tokenize import special_prefix, token_id
from sft.decode import Decoded, Stopping, beam_decode, decode
from sft.errors import ConfigError, DataError
from sft.model import model_name, resolve_model_path
from sft.outputs import (
    ALPACA_EVAL, ROWS, SIDECAR, Row, RowWriter, alpaca_eval_rows, check_resumable, library_versions, read_rows, row_key,
    write_json_atomic, write_rows_atomic,
)
from sft.sampling import derive_seed, is_greedy


@dataclass
class Item:
    record: Record
    sample: int
    seed: int  # this item's generator seed
    prompt: str
    ids: list[int]

    @property
    def key(self) -> tuple[int, int]:
        return self.record["id"], self.sample


def select_records(data: DataConfig, split: str, seed: int) -> list[Record]:
    """`all`: every record of data.path; `train`/`eval`: that side of the held-out split, as training made it."""
    if split == "all":
        return load_records(data.path, data, answers=False).records  # outputs, when present, are references
    from sft.data.prepare import load_splits

    splits, _ = load_splits(data, seed)
    if split not in splits:
        raise DataError(f"split={split}: {data.path} has no {split} records (set data.eval_path or data.eval_fraction, or split=all)")
    return splits[split]


def prompt_ids(text: str, tokenizer: Any, prefix: list[int]) -> list[int]:
    """The prompt's ids exactly as training tokenized the source: one BOS (if the model uses one), never two."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if not prefix or ids[: len(prefix)] == prefix else prefix + ids


def fit_prompt(ids: list[int], limit: int, prefix: list[int], policy: str, where: str) -> list[int]:
    if len(ids) <= limit:
        return ids
    if policy == "error":
        raise DataError(f"{where}: prompt has {len(ids)} tokens, more than the {limit} allowed (max_prompt_tokens, or long_prompt=truncate)")
    print(f"warning: {where}: prompt cut from the left, {len(ids)} -> {limit} tokens", file=sys.stderr)
    head = len(prefix) if prefix and ids[: len(prefix)] == prefix else 0
    return ids[:head] + ids[len(ids) - limit + head :]


def build_items(records: list[Record], prompt: PromptConfig, tokenizer: Any, gen: GenerationConfig, limit: int, policy: str, source: str) -> list[Item]:
    if not records:
        raise DataError(f"{source}: no prompts to generate from")
    prefix = special_prefix(tokenizer)
    items = []
    for record in records:
        text = render_prompt(record, prompt, tokenizer)
        ids = fit_prompt(prompt_ids(text, tokenizer, prefix), limit, prefix, policy, f"{source}: record {record['id']}")
        for s in range(gen.num_return_sequences):
            items.append(Item(record, s, derive_seed(gen.seed, record["id"], s), text, ids))
    return items


def plan_batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Longest prompts first (memory problems show at once), similar lengths together (little padding)."""
    ordered = sorted(items, key=lambda it: (-len(it.ids), it.key))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def stopping_for(tokenizer: Any, model: Any, prompt: PromptConfig, gen: GenerationConfig) -> Stopping:
    ids = {tokenizer.eos_token_id, token_id(tokenizer, end_of_turn_token(prompt, tokenizer))}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(eos if isinstance(eos, list) else [eos])
    decode_text = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    return Stopping(sorted(i for i in ids if i is not None), [unescape(s) for s in gen.stop], decode_text)


def to_row(item: Item, d: Decoded, gen: GenerationConfig, tokenizer: Any) -> Row:
    text = d.text if d.text is not None else tokenizer.decode(d.tokens, skip_special_tokens=True)
    rec = item.record
    instruction, inp, reference = describe(rec)
    row: Row = {"id": rec["id"], "sample": item.sample, "instruction": instruction, "input": inp, "prompt": item.prompt,
                "output": (item.prompt + text) if gen.echo else text, "reference": reference, "seed": gen.seed,
                "sample_seed": item.seed, "finish_reason": d.finish_reason, "generated_tokens": len(d.tokens),
                "prompt_tokens": len(item.ids)}
    if gen.logprobs:
        row["logprobs"] = [round(x, 6) for x in d.logprobs]
    return row


def describe(rec: Record) -> tuple[str, str, str | None]:
    """(instruction, input, reference) of an Alpaca record, or of a chat's last user turn and answer."""
    if "messages" not in rec:
        return rec["instruction"], rec["input"], rec.get("output")
    msgs = rec["messages"]
    last_user = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
    answer = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else None
    return last_user, "", answer


def decode_batch(model: Any, batch: list[Item], gen: GenerationConfig, stopping: Stopping, pad_id: int) -> list[tuple[Item, Decoded]]:
    prompts = [it.ids for it in batch]
    if gen.num_beams > 1:
        done = beam_decode(model, prompts, gen, stopping, pad_id)
    else:
        done = decode(model, prompts, [it.seed for it in batch], gen, stopping, pad_id)
    return [(batch[d.index], d) for d in done]


def generate_rows(model: Any, tokenizer: Any, items: list[Item], gen: GenerationConfig, stopping: Stopping, writer: RowWriter, done: set) -> int:
    """Decode the items not in `done`, appending each row as it finishes; returns the tokens generated."""
    from tqdm import tqdm

    todo = sum(it.key not in done for it in items)
    bar = tqdm(total=todo, unit="prompt", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    start, tokens = time.perf_counter(), 0
    # The plan of the whole run, so a rerun sees the same batches; a batch cut short is decoded whole again (its
    # missing rows then come out bit for bit as in an uninterrupted run, log-probabilities included).
    for batch in plan_batches(items, gen.batch_size):
        missing = [it for it in batch if it.key not in done]
        if not missing:
            continue
        for item, d in decode_batch(model, batch, gen, stopping, tokenizer.pad_token_id):
            if item.key not in done:
                writer.write(to_row(item, d, gen, tokenizer))
                tokens += len(d.tokens)
        bar.update(len(missing))
        bar.set_postfix(tok_per_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()
    return tokens


def identity(model_cfg: ModelConfig, quant: QuantConfig, source: AdapterSource | None, prompt: PromptConfig, gen: GenerationConfig, items: list[Item]) -> dict[str, Any]:
    """Everything a row depends on; a rerun into the same out_dir must match it."""
    inputs = hashlib.sha256(json.dumps([[it.key, it.ids] for it in items]).encode()).hexdigest()
    adapter = None if source is None else {"path": str(source.path), "sha256": adapter_hash(source.path)}
    return {"model": model_name(model_cfg), "revision": model_cfg.revision, "dtype": model_cfg.dtype,
            "quant": quant.name if quant.name == "none" else dataclasses.asdict(quant), "adapter": adapter,
            "template": dataclasses.asdict(prompt), "generation": dataclasses.asdict(gen), "inputs_sha256": inputs}


def generate_into(out_dir: Path, model: Any, tokenizer: Any, items: list[Item], ident: dict[str, Any], extra: dict[str, Any], generator: str) -> list[Row]:
    """Write (or complete) one generation run in out_dir; returns its rows in input order."""
    gen = GenerationConfig(**ident["generation"])
    resuming = check_resumable(out_dir, ident)
    out_dir.mkdir(parents=True, exist_ok=True)
    sidecar = {"identity": ident, **extra, "versions": library_versions(), "complete": False}
    write_json_atomic(out_dir / SIDECAR, sidecar)
    previous = read_rows(out_dir / ROWS) if resuming else []
    if previous:
        print(f"resuming {out_dir / ROWS}: {len(previous)} of {len(items)} rows already there", file=sys.stderr)
    writer = RowWriter(out_dir / ROWS)
    try:
        prompt_cfg = PromptConfig(**ident["template"])
        stopping = stopping_for(tokenizer, model, prompt_cfg, gen)
        generate_rows(model, tokenizer, items, gen, stopping, writer, {row_key(r) for r in previous})
    finally:
        writer.close()
    rows = sorted(read_rows(out_dir / ROWS), key=row_key)
    write_rows_atomic(out_dir / ROWS, rows)  # finished: input order, whatever order the rows finished in
    write_json_atomic(out_dir / ALPACA_EVAL, alpaca_eval_rows(rows, generator))
    write_json_atomic(out_dir / SIDECAR, {**sidecar, "complete": True, "rows": len(rows)})
    return rows


def context_limit(model_path: str, model_cfg: ModelConfig, gen: GenerationConfig, max_prompt_tokens: int | None) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    context = getattr(config, "max_position_embeddings", None) or 1 << 30
    if gen.max_new_tokens >= context:
        raise ConfigError(f"generation.max_new_tokens={gen.max_new_tokens}: the model's context is {context} tokens, "
                          "which must hold the prompt and the new tokens")
    return min(max_prompt_tokens or context, context - gen.max_new_tokens)


def run_generate(cfg: GenerateRunConfig) -> list[Row]:
    from sft.model import load_tokenizer

    source = find_adapter(cfg.adapter) if cfg.adapter else None
    model_cfg = base_for(source, cfg.model)
    prompt = prompt_for(source, cfg.prompt)
    path = resolve_model_path(model_cfg)
    tokenizer = load_tokenizer(model_cfg, path=path)
    tokenizer.padding_side = "left"
    seed = (source.run_config or {}).get("seed", cfg.seed) if source else cfg.seed
    cfg.data = data_for(source, cfg.data, cfg.split)
    records = select_records(cfg.data, cfg.split, seed)
    limit = context_limit(path, model_cfg, cfg.generation, cfg.max_prompt_tokens)
    items = build_items(records, prompt, tokenizer, cfg.generation, limit, cfg.long_prompt, cfg.data.path)
    ident = identity(model_cfg, cfg.quant, source, prompt, cfg.generation, items)
    check_resumable(Path(cfg.out_dir), ident)  # before the model loads: a wrong out_dir fails in a second
    model = load_for_inference(model_cfg, cfg.quant, source)
    extra = {"data": cfg.data.path, "split": cfg.split, "quant": dataclasses.asdict(cfg.quant), "greedy": is_greedy(cfg.generation)}
    name = model_name(model_cfg) + (f"+{source.run_dir or source.path}" if source else "")
    rows = generate_into(Path(cfg.out_dir), model, tokenizer, items, ident, extra, name)
    print(f"wrote {len(rows)} rows to {Path(cfg.out_dir) / ROWS}")
    return rows
