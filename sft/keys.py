"""Unknown config keys: one error naming the nearest real key, with or without `+`.

Hydra refuses `train.lerning_rate=1` with advice to append it (`+train.lerning_rate=1`), and the appended key is
then dropped without a word when the config becomes its schema. Both forms are checked here against the schema
of the command: the command-line overrides before Hydra composes (sft.cli.console), and the composed config
before it becomes typed (sft.cli.typed). Settings whose value is a free dict (prompt.template_kwargs) take any
key below them.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any

from omegaconf import DictConfig

# Other tools' names for our settings (transformers, axolotl, LLaMA-Factory, PEFT), matched on the key's last part.
ALIASES = {
    "learning_rate": "train.lr", "num_epochs": "train.epochs", "num_train_epochs": "train.epochs",
    "epochs": "train.epochs", "batch_size": "train.micro_batch_size", "micro_batch_size": "train.micro_batch_size",
    "per_device_train_batch_size": "train.micro_batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "gradient_accumulation": "train.grad_accum", "lr_scheduler_type": "train.scheduler", "lr_scheduler": "train.scheduler",
    "optimizer": "train.optim", "warmup": "train.warmup_ratio", "max_steps": "train.max_steps",
    "max_seq_length": "data.max_seq_len", "max_length": "data.max_seq_len", "sequence_len": "data.max_seq_len",
    "cutoff_len": "data.max_seq_len", "max_len": "data.max_seq_len", "dataset": "data.path", "data_path": "data.path",
    "sample_packing": "data.packing", "output_dir": "out_dir", "model_name_or_path": "model.path",
    "base_model": "model.path", "model_name": "model.path", "lora_r": "lora.r", "rank": "lora.r",
    "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout", "lora_target_modules": "lora.target_modules",
    "load_in_4bit": "quant.name", "load_in_8bit": "quant.name", "system_prompt": "prompt.system",
    "chat_template": "prompt.chat_template", "template": "prompt.name",
}


@cache
def field_types(schema: type) -> dict[str, Any]:
    """Each field of a dataclass and its (resolved) type."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in fields(schema)}


def is_open(tp: Any) -> bool:
    """A field whose value takes keys of its own choosing (a dict, Any) or is indexed (a list): nothing below it is
    checked."""
    return tp is Any or typing.get_origin(tp) in (dict, list)


def all_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of a schema: sections and settings."""
    out = []
    for name, tp in field_types(schema).items():
        out.append(f"{prefix}{name}")
        if is_dataclass(tp):
            out += all_keys(tp, f"{prefix}{name}.")
    return out


def unknown_prefix(schema: type, key: str) -> str | None:
    """The first part of the dotted key that the schema lacks (as `a.b`), or None when the key exists or lies
    below an open setting."""
    node: Any = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        types = field_types(node)
        if part not in types:
            return ".".join(parts[: i + 1])
        node = types[part]
        if is_open(node) or not is_dataclass(node):
            return None if is_open(node) or i == len(parts) - 1 else ".".join(parts[: i + 2])
    return None


def nearest(schema: type, key: str) -> str | None:
    """The real key the user most likely meant: another tool's name for it (or a misspelling of that name), else
    the closest spelling of its last part, in the same section first, then anywhere."""
    keys = all_keys(schema)
    aliases = {name: target for name, target in ALIASES.items() if target in keys}
    section, _, last = key.lower().rpartition(".")
    siblings = {k.rsplit(".", 1)[-1]: k for k in keys if k.rpartition(".")[0] == section}
    anywhere = {k.rsplit(".", 1)[-1]: k for k in reversed(keys)}  # a name in several sections: the first one
    for pool in (aliases, siblings, anywhere):
        if last in pool:
            return pool[last]
    for pool in ({**aliases, **siblings}, anywhere):
        match = difflib.get_close_matches(last, list(pool), n=1, cutoff=0.6)
        if match:
            return pool[match[0]]
    return None


def unknown_keys_message(schema: type, keys: list[str], command: str) -> str:
    """One message for every unknown key, each with the real key it most likely meant."""
    lines = []
    for key in dict.fromkeys(keys):
        guess = nearest(schema, key)
        lines.append(f"{key}: no such setting" + (f"; did you mean {guess}?" if guess else ""))
    return ("unknown config key:\n  " if len(lines) == 1 else "unknown config keys:\n  ") + "\n  ".join(lines) + (
        f"\n(sft-{command} --help lists every setting)")


def unknown_override_keys(schema: type, overrides: list[str], groups: set[str]) -> list[str]:
    """The dotted keys of command-line overrides (`key=value`, `+key=value`, `++key=value`, `~key`) that the schema
    lacks. Group choices (`data=alpaca`, `+experiment=x`, `hydra/launcher=slurm`) and hydra.* are Hydra's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 -- a malformed override: Hydra's own message says what is wrong
        return []
    out = []
    for o in parsed:
        key = o.key_or_group
        if o.package is not None or "/" in key or key.split(".")[0] == "hydra":
            continue
        if "." not in key and key in groups:
            continue
        bad = unknown_prefix(schema, key)
        if bad is not None:
            out.append(bad)
    return out


def extra_keys(cfg: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """The keys of a composed config that its schema lacks (appended with `+key=value`, or by a config file)."""
    types = field_types(schema)
    out = []
    for name in cfg.keys():
        name = str(name)
        if name not in types:
            if not (prefix == "" and name == "hydra"):
                out.append(f"{prefix}{name}")
            continue
        tp = types[name]
        child = cfg._get_node(name)
        if is_dataclass(tp) and isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            out += extra_keys(child, tp, f"{prefix}{name}.")
    return out
