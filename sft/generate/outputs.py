"""What a generation run writes, and how a rerun picks up where it stopped.

    <out_dir>/generations.jsonl      one row per (example, sample), appended as each finishes
    <out_dir>/generation_config.json model, adapter (path + sha256), template, settings, library versions
    <out_dir>/alpaca_eval.json       [{instruction, output, generator}] for AlpacaEval (sample 0 of each example)

Rows are appended in the order they finish; once all are there the file is rewritten in input order (by
id, then sample), so a finished file does not depend on timing. A rerun with the same settings reads the rows
already there (a line cut short by a kill is dropped) and generates only the missing ones; with other
settings it stops and names the keys that differ.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, TypedDict

from sft.errors import ConfigError
from sft.io import differing_keys

ROWS = "generations.jsonl"
SIDECAR = "generation_config.json"
ALPACA_EVAL = "alpaca_eval.json"
# Settings that change no row in float32 (texts are the same at any batch size): a rerun may use another value.
# In bf16 and fp16 the batch's shape changes the rounding of batched matmuls, so there it must match too.
UNCHECKED = ("generation.batch_size",)


class Row(TypedDict, total=False):
    id: int  # the record's position in the data file
    source: str  # in a mixture: the record's source (its name)
    sample: int  # 0 .. num_return_sequences - 1
    instruction: str
    input: str
    prompt: str
    output: str
    reference: str | None
    seed: int  # generation.seed
    sample_seed: int  # the seed of this row's own generator, derived from (seed, id, sample)
    finish_reason: str  # eos | stop | length
    generated_tokens: int
    prompt_tokens: int
    logprobs: list[float]


def row_key(row: dict[str, Any]) -> tuple:
    """(id, sample), or (source, id, sample) for the records of a mixture (Item.key)."""
    return (row["source"], int(row["id"]), int(row["sample"])) if "source" in row else (int(row["id"]), int(row["sample"]))


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import sft

    return {"sft": sft.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def check_resumable(out_dir: Path, identity: dict[str, Any]) -> bool:
    """True when out_dir holds rows of this very run; an error when it holds another run's."""
    sidecar = out_dir / SIDECAR
    if not sidecar.is_file():
        if (out_dir / ROWS).exists():
            raise ConfigError(f"out_dir={out_dir}: has {ROWS} but no {SIDECAR}; choose a new out_dir")
        return False
    try:
        old = json.loads(sidecar.read_text())["identity"]
    except (OSError, json.JSONDecodeError, KeyError):
        raise ConfigError(f"out_dir={out_dir}: unreadable {SIDECAR}; choose a new out_dir") from None
    keys = differing_keys(old, identity, ignore=UNCHECKED if identity.get("dtype") == "float32" else ())
    if keys:
        raise ConfigError(f"out_dir={out_dir} holds a run with other settings ({', '.join(keys)}); choose a new out_dir")
    return True


def read_rows(path: Path) -> list[Row]:
    """Complete rows of a previous attempt; a trailing line cut short by a kill is removed from the file."""
    if not path.is_file():
        return []
    rows: list[Row] = []
    good_bytes = 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return rows


class RowWriter:
    """Appends rows, flushed and synced one by one, so a kill loses at most the row being written."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")

    def write(self, row: Row) -> None:
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def alpaca_eval_rows(rows: list[Row], generator: str) -> list[dict[str, str]]:
    """AlpacaEval's model_outputs format: the input joins the instruction, as its evaluation set does."""
    out = []
    for row in sorted((r for r in rows if r["sample"] == 0), key=row_key):
        instruction = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        out.append({"instruction": instruction, "output": row["output"], "generator": generator})
    return out
