"""The run directory: the one reader and writer of what sft-train leaves, and how a rerun into it is judged.

    out_dir/
      config.yaml        the resolved config (model, data, prompt, quant, lora, train, seed): evaluation reads it
      report.json        the data report of sft-prepare
      report.html        the same drawn: its summary, lengths per source, packed rows' fill, mixture shares
      held_out.json      the held-out records it trained without: per source, ids and content hashes (sft.data.heldout)
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
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from sft.config import DataConfig, ModelConfig, PromptConfig, TrainRunConfig
from sft.schemas import SourceConfig
from sft.errors import ConfigError
from sft.io import differing_keys, flatten, write_json_atomic, write_text_atomic
from sft.run.checkpoints import latest_checkpoint

CONFIG = "config.yaml"
FINISHED = "finished.json"
REPORT = "report.json"
REPORT_HTML = "report.html"  # the data report drawn: lengths, packed rows' fill, mixture shares
METRICS = "metrics.jsonl"
HELD_OUT = "held_out.json"  # written by sft.data.heldout (imported when needed: it pulls in the data pipeline)
# Keys that do not change what is trained: a rerun may set them differently.
# settings that change nothing trained: where outputs and metrics go, how many workers tokenize (the same rows)
NOT_COMPARED = ("out_dir", "debug", "cache", "inspect", "inspect_html", "data.num_proc", "train.report_to",
                "train.project", "train.run_name")
Section = TypeVar("Section")


def run_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, as written to config.yaml."""
    return dataclasses.asdict(cfg)


def describe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per differing key that changes what is trained: its value in the run and now."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} in the run, {b.get(k, '<absent>')!r} now" for k in compared(old, new)]


def compared(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The differing keys that count. A setting added to sft after the run was made is absent from its config.yaml:
    at its default it does what the run did (a default never changes what an older run trained), so it counts
    only when set to something else."""
    defaults, a, b = flatten(run_config(TrainRunConfig())), flatten(old), flatten(new)
    return [k for k in differing_keys(old, new, ignore=NOT_COMPARED)
            if not (k not in a and k in defaults and b.get(k) == defaults[k])]


class RunDir:
    """A training run directory, written by sft-train and read by every later command."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_file = self.path / CONFIG
        self.adapter = self.path / "adapter"
        self.tokenizer = self.path / "tokenizer"
        self.checkpoints = self.path / "checkpoints"
        self.metrics_file = self.path / METRICS
        self.tensorboard = self.path / "tensorboard"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def has_config(self) -> bool:
        return self.config_file.is_file()

    @property
    def is_finished(self) -> bool:
        return (self.path / FINISHED).is_file()

    # --- reading ---------------------------------------------------------------------------------------------
    @cached_property
    def config(self) -> dict[str, Any]:
        """config.yaml as plain data; a missing or damaged file is one error naming it."""
        if not self.has_config:
            raise ConfigError(f"{self.path}: not a training run directory (no {CONFIG})")
        try:
            config = yaml.safe_load(self.config_file.read_text())
        except (OSError, yaml.YAMLError) as e:  # a damaged file is the user's to fix
            raise ConfigError(f"{self.config_file}: cannot read it ({e})") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{self.config_file}: not a run's config (a mapping of settings)")
        return config

    def section(self, key: str, schema: type[Section]) -> Section | None:
        """One section of the run's config as its schema (keys the schema no longer has are left out)."""
        values = self.config.get(key)
        if not isinstance(values, dict):
            return None
        names = {f.name for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
        return schema(**{k: v for k, v in values.items() if k in names})

    def model(self) -> ModelConfig:
        model = self.section("model", ModelConfig)
        return model if model is not None else ModelConfig()

    def prompt(self) -> PromptConfig | None:
        return self.section("prompt", PromptConfig)

    @property
    def predates_split_seed(self) -> bool:
        """Made before data.split_seed existed: its held-out split was drawn with `seed`."""
        data = self.config.get("data")
        return isinstance(data, dict) and "split_seed" not in data

    def data(self) -> DataConfig | None:
        """The run's data settings; split_seed is the seed its held-out split was drawn with, also for an old run."""
        data = self.section("data", DataConfig)
        if data is not None and self.predates_split_seed:
            data.split_seed = self.seed(data.split_seed)
        if data is not None and data.sources:
            names = {f.name for f in dataclasses.fields(SourceConfig)}
            data.sources = [SourceConfig(**{k: v for k, v in s.items() if k in names}) for s in data.sources]
        return data

    def seed(self, default: int) -> int:
        return self.config.get("seed", default)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoints)

    def held_out(self) -> dict[str, Any] | None:
        """held_out.json, or None for a run from before runs recorded it (or one that never began training)."""
        path = self.path / HELD_OUT
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:  # a damaged file is the user's to fix
            raise ConfigError(f"{path}: cannot read it ({e})") from None

    # --- judging a rerun ---------------------------------------------------------------------------------------
    def status(self, wanted: dict[str, Any]) -> Literal["new", "resume", "finished", "restart"]:
        """new: nothing there yet; resume: the same config, unfinished; finished: the same config, complete;
        restart: a different config, but the run there stopped before its first checkpoint (a crash or a wrong
        setting at start-up: nothing trained is kept, so the corrected command may start over in it).
        A different config for a run with a checkpoint or a finished run is an error naming every differing key:
        a run is never silently overwritten."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"out_dir={self.path}: exists and is not a directory")
        if not self.has_config:
            return "new"
        diff = describe_differences(self.config, wanted)
        if diff and not self.is_finished and self.latest_checkpoint() is None:
            return "restart"
        if diff:
            raise ConfigError(
                f"out_dir={self.path} holds a run with a different config; use a new out_dir or the same settings:\n  "
                + "\n  ".join(diff)
            )
        return "finished" if self.is_finished else "resume"

    def changed_keys(self, wanted: dict[str, Any]) -> list[str]:
        return compared(self.config, wanted)

    def keep_split(self, cfg: TrainRunConfig) -> TrainRunConfig:
        """cfg, for a rerun into a run from before data.split_seed with the same seed and data.split_seed left at
        its default: with the split that run drew (data.split_seed = its seed), and so the cache keys its
        checkpoints name, so it resumes. Anything else: cfg as given."""
        default = DataConfig().split_seed
        if not (self.has_config and self.predates_split_seed) or cfg.seed != self.seed(default) \
                or cfg.data.split_seed != default:
            return cfg
        if cfg.seed != default:
            print(f"note: {self.path} was made before data.split_seed: its held-out split stays the one "
                  f"seed={cfg.seed} drew (data.split_seed={cfg.seed})")
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split_seed=cfg.seed))

    def as_written(self, cfg: TrainRunConfig) -> dict[str, Any]:
        """run_config(cfg) as this directory records it: a run from before data.split_seed, rerun with the split it
        drew (data.split_seed == seed), keeps no data.split_seed, so it stays one whose split is its seed's and the
        same command can resume it again."""
        config = run_config(cfg)
        if self.has_config and self.predates_split_seed and cfg.data.split_seed == cfg.seed:
            del config["data"]["split_seed"]
        return config

    # --- writing (rank 0) --------------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, yaml.safe_dump(config, sort_keys=False))
        self.__dict__.pop("config", None)

    def begin(self, config: dict[str, Any], report: dict[str, Any], tokenizer: Any) -> None:
        """report.json (and report.html, its plots), tokenizer/, then config.yaml: it marks the run as begun."""
        from sft.data.inspect_html import report_page

        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / REPORT, report)
        if "distributions" in report:  # a report of prepared data (sft.data.plots), not one of another version
            write_text_atomic(self.path / REPORT_HTML, report_page(report, f"sft-train: the data of {self.path.name}"))
        tokenizer.save_pretrained(str(self.tokenizer))
        self.write_config(config)

    def rewind_metrics(self, step: int) -> None:
        """Drop records logged after `step` (they belong to steps that will be trained again)."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        write_text_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def record_held_out(self, held_out: dict[str, Any], resumed: bool) -> None:
        """held_out.json when training starts from step 0; a resume (its data checked against the checkpoint's)
        keeps the record of the split it trained with, or writes it for a run from before runs recorded one."""
        from sft.data.heldout import write_held_out

        if not resumed or not (self.path / HELD_OUT).is_file():
            write_held_out(self.path / HELD_OUT, held_out)

    def forget_held_out(self) -> None:
        """Before training starts over (a new or restarted run): a new split will be recorded."""
        (self.path / HELD_OUT).unlink(missing_ok=True)

    def mark_finished(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / FINISHED, summary)
