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
from pathlib import Path
from typing import Any

from sft.config import GenerateRunConfig, GenerationConfig, ModelConfig, PromptConfig, QuantConfig
from sft.data.prompts import end_of_turn_token, unescape
from sft.data.sources import describe_data
from sft.data.tokenize import token_id
from sft.generate.decode import Decoded, Stopping, beam_decode, decode
from sft.generate.items import Item, describe, plan_batches
from sft.generate.outputs import (
    ALPACA_EVAL, ROWS, SIDECAR, Row, RowWriter, alpaca_eval_rows, check_resumable, library_versions, read_rows, row_key,
)
from sft.generate.sampling import is_greedy
from sft.generate.setup import load_for_inference, resolve_setup
from sft.io import write_json_atomic, write_rows_atomic
from sft.model.load import model_name
from sft.model.quant import device_name, pick_device, weights_dtype
from sft.run.adapter import AdapterSource, adapter_hash


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
    if "source" in rec:
        row["source"] = rec["source"]
    if gen.logprobs:
        row["logprobs"] = [round(x, 6) for x in d.logprobs]
    return row


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
    bar = tqdm(total=todo, unit="prompt", file=sys.stderr, dynamic_ncols=True, mininterval=1.0, disable=not todo)
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
    """Everything a row depends on; a rerun into the same out_dir must match it. dtype and device are the resolved
    ones (not auto): a file begun in bf16 on a GPU is not finished in fp32 on a CPU."""
    inputs = hashlib.sha256(json.dumps([[it.key, it.ids] for it in items]).encode()).hexdigest()
    adapter = None if source is None else {"path": str(source.path), "sha256": adapter_hash(source.path)}
    device = pick_device()
    dtype = str(weights_dtype(model_cfg.dtype, quant, device)).removeprefix("torch.")
    return {"model": model_name(model_cfg), "revision": model_cfg.revision, "dtype": dtype, "device": device_name(device),
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


def run(cfg: GenerateRunConfig, given_data_keys: set[str] | None = None) -> list[Row]:
    """sft-generate. given_data_keys: the data.* keys set on the command line (sft.generate.setup.resolve_setup)."""
    setup = resolve_setup(cfg, given_data_keys)
    ident = identity(setup.model, cfg.quant, setup.source, setup.prompt, cfg.generation, setup.items)
    check_resumable(Path(cfg.out_dir), ident)  # before the model loads: a wrong out_dir fails in a second
    model = load_for_inference(setup, cfg.quant)
    extra = {"data": describe_data(setup.data), "split": cfg.split, "quant": dataclasses.asdict(cfg.quant), "greedy": is_greedy(cfg.generation)}
    rows = generate_into(Path(cfg.out_dir), model, setup.tokenizer, setup.items, ident, extra, setup.name)
    print(f"wrote {len(rows)} rows to {Path(cfg.out_dir) / ROWS}")
    return rows
