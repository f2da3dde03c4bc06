"""The run directory: what a run writes besides checkpoints, and how a rerun into it is judged.

    out_dir/
      config.yaml        the resolved config (model, data, prompt, quant, lora, train, seed): evaluation reads it
      report.json        the data report of sft-prepare
      tokenizer/         the tokenizer the data was prepared with
      adapter/           PEFT adapter (adapter_config.json, adapter_model.safetensors), written at the end
      metrics.jsonl      one line per log: step, loss, eval_loss, lr, grad_norm, trained_tokens, tokens_per_s
      tensorboard/       TensorBoard events
      loss.png           train and eval loss against step, written at the end
      checkpoints/       checkpoint-N/ (complete ones only; the newest N are kept)
      finished.json      present once the run is complete: a rerun says so and exits 0
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml

from sft.checkpoint import latest_checkpoint
from sft.errors import ConfigError

CONFIG = "config.yaml"
FINISHED = "finished.json"
# Keys that do not change what is trained: a rerun may set them differently.
NOT_COMPARED = {"out_dir", "debug", "cache", "inspect"}


def run_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, as written to config.yaml."""
    return dataclasses.asdict(cfg)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in NOT_COMPARED and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k, '<absent>')!r} in the run, {b.get(k, '<absent>')!r} now" for k in keys]


def run_status(out_dir: Path, wanted: dict[str, Any]) -> Literal["new", "resume", "finished", "restart"]:
    """new: nothing there yet; resume: the same config, unfinished; finished: the same config, complete;
    restart: a different config, but the run there stopped before its first checkpoint (a crash or a wrong
    setting at start-up: nothing trained is kept, so the corrected command may start over in it).
    A different config for a run with a checkpoint or a finished run is an error naming every differing key:
    a run is never silently overwritten."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir={out_dir}: exists and is not a directory")
    path = out_dir / CONFIG
    if not path.is_file():
        return "new"
    old = yaml.safe_load(path.read_text()) or {}
    diff = differing_keys(old, wanted)
    finished = (out_dir / FINISHED).is_file()
    if diff and not finished and latest_checkpoint(out_dir / "checkpoints") is None:
        return "restart"
    if diff:
        raise ConfigError(
            f"out_dir={out_dir} holds a run with a different config; use a new out_dir or the same settings:\n  "
            + "\n  ".join(diff)
        )
    return "finished" if finished else "resume"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_run_files(out_dir: Path, config: dict[str, Any], report: dict[str, Any], tokenizer: Any) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    _write_atomic(out_dir / CONFIG, yaml.safe_dump(config, sort_keys=False))  # last: it marks the run as begun


def mark_finished(out_dir: Path, summary: dict[str, Any]) -> None:
    _write_atomic(out_dir / FINISHED, json.dumps(summary, indent=2) + "\n")


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a training run directory (no {CONFIG})")
    return yaml.safe_load(path.read_text())
