"""data.path or data.sources -> the sources of a run, each with its own complete data settings.

`data.path` is the one-source case. In a mixture every source names its file and may set its own format, field
names, held-out split and record limit; what it leaves null comes from data.*. Each source is read, tokenized and
cached on its own (sft.data.build), so changing a weight or adding a source re-tokenizes nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sft.config import DataConfig, resource_path
from sft.data.readers import saved_eval_split
from sft.errors import ConfigError
from sft.schemas import ShareGPTConfig, SourceConfig

# the settings a source may set for itself (null: the data.* value)
OWN = ("format", "instruction_field", "input_field", "output_field", "messages_field", "tools_field", "sharegpt",
       "hub_config", "split", "max_records", "eval_path", "eval_fraction")


@dataclass(frozen=True)
class Source:
    name: str
    data: DataConfig  # this source's complete settings: path, eval_path, format, fields, limits (no sources)
    weight: float | None = None
    epochs: float | None = None


def default_name(path: str) -> str:
    """The file stem, or the last part of a Hub name or directory (`org/dataset` -> `dataset`)."""
    p = Path(path)
    return p.stem if p.suffix else path.rstrip("/").split("/")[-1]


def is_bundled_demo(data: DataConfig) -> bool:
    return data.path == resource_path("demo_train.jsonl")


def resolve_sources(data: DataConfig) -> list[Source]:
    """The run's sources, in the order given. With data.sources, data.path must be unset (the default data group's
    bundled demo file gives way to them)."""
    if not data.sources:
        if not data.path:
            raise ConfigError("data.path: give a data file or Hub dataset (or a mixture in data.sources)")
        return [Source(default_name(data.path), with_saved_eval(dataclasses.replace(data, sources=[])))]
    if data.path and not is_bundled_demo(data):
        raise ConfigError(f"data.path={data.path} and data.sources are both set: put the file in data.sources "
                          "(or drop data.sources)")
    if data.eval_path and not is_bundled_demo(data):
        raise ConfigError(f"data.eval_path={data.eval_path} with data.sources: give each source its own eval_path")
    base = dataclasses.replace(data, path=None, eval_path=None, sources=[])
    out, seen = [], {}
    for i, src in enumerate(data.sources):
        if isinstance(src, dict):  # built in plain Python from a dict
            src = SourceConfig(**src)
        if isinstance(src.sharegpt, dict):
            src = dataclasses.replace(src, sharegpt=ShareGPTConfig(**src.sharegpt))
        name = src.name or default_name(src.path)
        if name in seen:
            raise ConfigError(f"data.sources[{i}] and data.sources[{seen[name]}] are both named {name!r}: give one "
                              f"of them another name (data.sources[{i}].name=...)")
        seen[name] = i
        own = {k: getattr(src, k) for k in OWN if getattr(src, k) is not None}
        data_of_source = with_saved_eval(dataclasses.replace(base, path=src.path, **own))
        out.append(Source(name, data_of_source, src.weight, src.epochs))
    return out


def with_saved_eval(data: DataConfig) -> DataConfig:
    """A DatasetDict directory (save_to_disk) read for its train split holds out its eval or validation split,
    unless the source holds out records its own way (eval_path, eval_fraction)."""
    if data.path and not data.eval_path and not data.eval_fraction:
        held_out = saved_eval_split(data.path, data.split)
        if held_out:
            return dataclasses.replace(data, eval_path=held_out)
    return data


def describe_data(data: DataConfig) -> str:
    """How messages name the data: data.path, or the files of data.sources."""
    if not data.sources:
        return str(data.path)
    return "data.sources (" + ", ".join(source.path for source in data.sources) + ")"
