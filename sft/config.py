"""Typed config schemas, one per command, registered with Hydra as base_<command>; the settings of each stage
(model, data, prompt, quant, lora, train, generation, benchmark) are in sft.schemas and importable from here.
YAML under conf/ holds only what differs from these defaults.

Hydra composes YAML onto these schemas, so an unknown key or a wrong type fails at start-up with the key
named; sft.cli.validate collects every problem of a whole config (the `problems()` methods) and raises once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from sft.schemas import (  # noqa: F401 -- re-exported: sft.config is where the stages import their settings from
    BenchmarkConfig, DataConfig, GenerationConfig, LoraConfig, ModelConfig, PromptConfig, QuantConfig, TrainConfig,
    at_least, one_of,
)


@dataclass
class PrepareRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    out_dir: str = MISSING  # where dataset/ and report.json are written
    # seeds the mixture's draws and the packed row order (sft-train: also LoRA's init and the data order);
    seed: int = 0  # not the held-out split: data.split_seed does, so a seed sweep keeps one partition
    inspect: int = 0  # print this many examples token by token (masked vs trained)
    inspect_html: bool = False  # also write <out_dir>/inspect.html: those rows (8 when inspect=0), token by token
    cache: bool = True  # reuse processed data cached under the content hash of every input
    debug: bool = False  # show tracebacks for user errors too

    def problems(self, key: str) -> list[str]:
        return messages_need_chat(self.data, self.prompt)


def messages_need_chat(data: DataConfig, prompt: PromptConfig) -> list[str]:
    """Conversations are rendered by a chat template only: no silent switch from the template asked for."""
    formats = [("data.format", data.format)] if not data.sources else [
        (f"data.sources[{i}].format", s.format or data.format) for i, s in enumerate(data.sources)]
    for key, value in formats:
        if value in ("messages", "sharegpt") and prompt.name != "chat":
            return [f"{key}={value} needs prompt=chat (prompt.name={prompt.name!r} fills instruction/input "
                    "templates; conversations are rendered by the model's chat template)"]
    return []


@dataclass
class TrainRunConfig(PrepareRunConfig):
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class MergeRunConfig:
    run_dir: str = MISSING  # training run directory: its config.yaml names the base model, adapter/ the adapter
    out_dir: str = MISSING  # where the merged transformers model directory is written
    dtype: str = "float32"  # dtype of the merged weights: float32 | bfloat16 | float16
    debug: bool = False  # show tracebacks for user errors too

    def problems(self, key: str) -> list[str]:
        return one_of(f"{key}dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class GenerateRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    quant: QuantConfig = field(default_factory=lambda: QuantConfig(name="none"))
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    adapter: str | None = None  # adapter dir or training run dir (its config.yaml fixes base and template); null = base
    out_dir: str = MISSING
    # all: every record of data.path | train | eval: that side of the held-out split (with a run dir: the run's own
    split: str = "all"  # data settings, so the split training drew, with data.* given on top; data.path=... other data)
    max_prompt_tokens: int | None = None  # prompts longer than this (default: context - max_new_tokens) ...
    long_prompt: str = "truncate"  # ... are cut from the left with a warning (truncate) or refused (error)
    debug: bool = False

    def problems(self, key: str) -> list[str]:
        out = one_of(f"{key}long_prompt", self.long_prompt, ("truncate", "error"))
        out += one_of(f"{key}split", self.split, ("all", "train", "eval"))
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            out.append(f"{key}max_prompt_tokens={self.max_prompt_tokens}: must be positive or null")
        return out


@dataclass
class EvalRunConfig(GenerateRunConfig):
    split: str = "eval"  # the held-out split: references are scored against generations and by their loss
    compare_base: bool = True  # with an adapter, also score the base alone: the "before" column of the table
    loss_batch_size: int = 8  # examples per forward pass when computing the references' loss
    generate: bool = True  # false: only loss and perplexity (no generation, no text metrics)
    # log the table and a sample of generations to the training run's own tracker runs (its trackers.json):
    # any of wandb, mlflow, trackio; [] = none
    report_to: list[str] = field(default_factory=list)
    report_samples: int = 20  # generations logged with report_to (each: prompt, reference, base and adapter output)

    def problems(self, key: str) -> list[str]:
        out = super().problems(key) + at_least(self, key, 1, ("loss_batch_size",)) + at_least(self, key, 0, ("report_samples",))
        out += [f"{key}report_to={n!r}: must be one of wandb, mlflow, trackio" for n in self.report_to
                if n not in ("wandb", "mlflow", "trackio")]
        return out


@dataclass
class BenchRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=lambda: QuantConfig(name="none"))
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    adapter: str | None = None  # adapter dir or training run dir (its config.yaml fixes the base, tokenizer/ the tokenizer)
    compare_base: bool = True  # with an adapter, also score the base alone: the "before" column of the table
    out_dir: str = MISSING  # benchmarks.json, benchmarks.md, samples/
    debug: bool = False


def resource_path(name: str) -> str:
    """Absolute path of a file bundled with the package (the demo data): `${sft_resource:demo_train.jsonl}`."""
    return str(Path(__file__).parent / "resources" / name)


def demo_eval_path(path: str | None) -> str | None:
    """`${sft_demo_eval:${.path}}`: the bundled held-out file while data.path is the bundled training file, else
    None (a user's own data.path with the demo group must not be evaluated on the demo's records)."""
    return resource_path("demo_eval.jsonl") if path == resource_path("demo_train.jsonl") else None


SCHEMAS: dict[str, type] = {"prepare": PrepareRunConfig, "train": TrainRunConfig, "merge": MergeRunConfig,
                             "generate": GenerateRunConfig, "eval": EvalRunConfig, "bench": BenchRunConfig}


OUT_DIR_DEFAULT = "${hydra:runtime.output_dir}"  # conf/*.yaml: out_dir is Hydra's run directory unless given


def hydra_run_dir(default: str, *, _root_: Any) -> str:
    """`hydra.run.dir: ${sft_run_dir:outputs/...}`: Hydra's run directory (its .hydra/ and the command's log) is
    out_dir when one is given (command line or config file), so nothing is left in the working directory; else
    `default`, which out_dir then names."""
    node = _root_._get_node("out_dir") if "out_dir" in _root_ else None
    if node is None or node._is_missing() or node._value() == OUT_DIR_DEFAULT:
        return default
    return str(_root_.out_dir)


def help_template(*, _root_: Any) -> str:
    from sft.confhelp import help_template as template  # the schema comments are read only for --help

    return template(_root_=_root_)


def register_configs() -> None:
    for name, resolver in (("sft_resource", resource_path), ("sft_demo_eval", demo_eval_path),
                           ("sft_run_dir", hydra_run_dir), ("sft_help", help_template)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    for command, schema in SCHEMAS.items():
        ConfigStore.instance().store(name=f"base_{command}", node=schema)
