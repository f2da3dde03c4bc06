"""What a generation or evaluation runs on, resolved once into one `GenerationSetup`: the adapter, the base it
was trained on, the template, the tokenizer, the records and the prompt budget.

A training run directory fixes the base model and the prompt template, so evaluation uses exactly what
training used; an adapter trained on another base is refused. With split=train|eval it also fixes the data
settings, so the held-out split is the one training drew; with split=eval the records are checked against the
run's held_out.json (sft.data.heldout), so no record it trained on is scored as held out.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.config import DataConfig, messages_need_chat, GenerateRunConfig, GenerationConfig, ModelConfig, PromptConfig, QuantConfig
from sft.data.heldout import check_held_out
from sft.data.load import Record, is_local, load_records
from sft.data.sources import describe_data, resolve_sources
from sft.errors import ConfigError, DataError
from sft.generate.items import Item, build_items
from sft.model.load import load_model, load_tokenizer, model_name, resolve_model_path
from sft.model.lora import keep_one_cpu_kernel
from sft.run.adapter import AdapterSource, find_adapter
from sft.run.rundir import HELD_OUT, RunDir


@dataclass
class ModelSetup:
    source: AdapterSource | None  # the adapter, or None for the base alone
    model: ModelConfig  # the base: the run's own when there is a run
    model_path: str  # what from_pretrained reads
    tokenizer: Any  # the run's own (tokenizer/) when there is one; padding on the left

    @property
    def name(self) -> str:
        """The model as rows and reports name it: the base, plus the adapter's run or directory."""
        return model_name(self.model) + (f"+{self.source.where}" if self.source else "")


@dataclass
class GenerationSetup(ModelSetup):
    prompt: PromptConfig  # the training run's template, else the configured one
    data: DataConfig  # the data settings the records were selected with (data.split_seed: the split's seed)
    records: list[Record]
    items: list[Item]  # one per (record, sample), prompts tokenized and fitted to the context


def resolve_model(adapter: str | None, model: ModelConfig) -> ModelSetup:
    """The adapter, the base it was trained on (a contradicting model.path is refused) and the tokenizer."""
    source = find_adapter(adapter) if adapter else None
    base = base_for(source, model)
    path = resolve_model_path(base)
    tokenizer = load_tokenizer(base, path=tokenizer_dir(source) or path)
    tokenizer.padding_side = "left"
    return ModelSetup(source, base, path, tokenizer)


def resolve_setup(cfg: GenerateRunConfig, given_data_keys: set[str] | None, items: bool = True) -> GenerationSetup:
    """given_data_keys: the data.* keys the command line set ("path" also for a data group), or None to take
    cfg.data as given whole (a config built in Python). items=False: no prompts are built."""
    found = resolve_model(cfg.adapter, cfg.model)
    source = found.source
    data = data_for(source, cfg.data, cfg.split, given_data_keys)
    prompt = prompt_for(source, cfg.prompt)
    problems = messages_need_chat(data, prompt)
    if problems:
        raise ConfigError(problems[0])
    records = select_records(data, cfg.split)
    if cfg.split == "eval" and source is not None and source.run is not None:
        check_records(source.run, data, records)
    limit = context_limit(found.model_path, found.model, cfg.generation, cfg.max_prompt_tokens)
    built = build_items(records, prompt, found.tokenizer, cfg.generation, limit, cfg.long_prompt, describe_data(data)) if items else []
    return GenerationSetup(source, found.model, found.model_path, found.tokenizer, prompt, data, records, built)


def tokenizer_dir(source: AdapterSource | None) -> str | None:
    """The tokenizer the run was trained with (its chat template included), saved in its run directory: an update
    of the base's tokenizer on the Hub must not change the prompts of an old run."""
    saved = source.run.tokenizer if source and source.run else None
    return str(saved) if saved is not None and saved.is_dir() else None


def select_records(data: DataConfig, split: str) -> list[Record]:
    """`all`: every record of data.path; `train`/`eval`: that side of the held-out split, as training made it."""
    sources = resolve_sources(data)
    if split == "all":  # outputs are references
        if len(sources) == 1:
            return load_records(data.path, data, answers=False, limit=data.max_records).records
        return [{**r, "source": s.name} for s in sources
                for r in load_records(s.data.path, s.data, answers=False, limit=s.data.max_records).records]
    from sft.data.prepare import load_splits

    splits, _ = load_splits(data)
    if split not in splits:
        raise DataError(f"split={split}: {describe_data(data)} has no {split} records (set data.eval_path or "
                        "data.eval_fraction, or split=all)")
    return splits[split]


def check_records(run: RunDir, data: DataConfig, records: list[Record]) -> None:
    """Held-out records of a run's own files must be ones it recorded as held out; a run from before runs recorded
    them is evaluated as before, with a note: refusing it would leave no way to evaluate it at all."""
    sources = resolve_sources(data)
    recorded = run.held_out()
    if recorded is not None:
        for note in check_held_out(recorded, run.path, sources, records):
            print(note, file=sys.stderr)
        return
    trained = run.data()
    files = {(s.data.path, s.data.eval_path) for s in resolve_sources(trained)} if trained is not None else set()
    if any((s.data.path, s.data.eval_path) in files for s in sources):
        print(f"note: {run.path} has no {HELD_OUT} (it was trained before runs recorded their held-out records): "
              "its held-out split is drawn again from its config.yaml by today's code, which gives other records "
              "than training held out if the split rule changed since (it did on 2026-12-01)", file=sys.stderr)


def context_limit(model_path: str, model_cfg: ModelConfig, gen: GenerationConfig, max_prompt_tokens: int | None) -> int:
    """The most prompt tokens that leave room for max_new_tokens in the model's context."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    context = getattr(config, "max_position_embeddings", None) or 1 << 30
    if gen.max_new_tokens >= context:
        raise ConfigError(f"generation.max_new_tokens={gen.max_new_tokens}: the model's context is {context} tokens, "
                          "which must hold the prompt and the new tokens")
    return min(max_prompt_tokens or context, context - gen.max_new_tokens)


def same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.parent.name == pb.parent.name == "gguf" and pa.name == pb.name:
        return True  # the same cached GGUF conversion (its name hashes the source file) under another cache root
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return pa.name == pb.name and bool(pa.name)  # e.g. a cached conversion whose cache root is gone


def base_for(source: AdapterSource | None, model: ModelConfig) -> ModelConfig:
    """The base model to load: the run's own when the user left model.path unset; a contradiction is refused."""
    if source is None:
        return model
    if source.run is not None:
        trained = source.run.model()
        if model.path is not None and trained.path != model.path and not same_model(str(trained.path), model.path):
            raise ConfigError(
                f"adapter={source.run.path} was trained on base {model_name(trained)}, "
                f"but model.path={model.path}: drop model.path or use an adapter trained on it"
            )
        model = dataclasses.replace(trained, dtype=model.dtype, attn_implementation=model.attn_implementation)
    if source.base:
        resolved = resolve_model_path(model)
        if not (same_model(source.base, resolved) or (model.path and same_model(source.base, model.path))):
            raise ConfigError(
                f"adapter={source.path} was trained on base {source.base}, "
                f"but the base model is {model_name(model)} ({resolved})"
            )
    return model


def prompt_for(source: AdapterSource | None, prompt: PromptConfig) -> PromptConfig:
    """The template of the training run (never drifts); the configured one for a bare adapter or a base."""
    trained = source.run.prompt() if source and source.run else None
    if trained is None:
        return prompt
    if trained != prompt:
        print(f"note: using the training run's template prompt.name={trained.name} (from {source.run.config_file})")  # type: ignore[union-attr]
    return trained


def data_for(source: AdapterSource | None, data: DataConfig, split: str, given: set[str] | None) -> DataConfig:
    """Records for split=train|eval with a training run directory: the run's own data settings (config.yaml), so
    the held-out split is the one training drew, with the data.* keys given on the command line on top. Another
    data.path (or data group) means other data: then `data` as given. Anything else: `data`."""
    run = source.run if source else None
    trained = run.data() if run else None
    if split not in ("train", "eval") or trained is None or given is None or {"path", "sources"} & given:
        return data
    names = {f.name for f in dataclasses.fields(DataConfig)}
    ours = dataclasses.replace(trained, **{k: getattr(data, k) for k in given if k in names})
    files = [(f"data.{k}", getattr(ours, k)) for k in ("path", "eval_path")] if not ours.sources else [
        (f"data.sources[{i}].{k}", getattr(s, k)) for i, s in enumerate(ours.sources) for k in ("path", "eval_path")]
    for key, value in files:
        if value and is_local(value) and not Path(value).exists():
            raise ConfigError(f"{key}={value} (from {run.config_file}) is not found from here "  # type: ignore[union-attr]
                              f"({Path.cwd()}): give data.path and data.eval_path of the held-out records")
    if ours != data:
        held_out = ours.eval_path or f"eval_fraction={ours.eval_fraction}"
        what = f"{ours.path}, held out {held_out}" if not ours.sources else f"{describe_data(ours)}, each source's held-out records"
        print(f"note: split={split} of the training run's data: {what} (from "
              f"{run.config_file}; data.path=... chooses other records)")  # type: ignore[union-attr]
    return ours


def load_for_inference(setup: ModelSetup, quant: QuantConfig) -> Any:
    """Base (optionally 4/8-bit) in eval mode, with the adapter attached when there is one."""
    model = load_model(setup.model, quant, path=setup.model_path)
    keep_one_cpu_kernel(model)  # the numerics training evaluated with: sft-eval's loss is the run's eval_loss
    model.requires_grad_(False)  # nothing is trained here; a frozen head is what the trained-positions loss needs
    if setup.source is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(setup.source.path), is_trainable=False)
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"adapter={setup.source.path}: cannot load onto {model_name(setup.model)} ({e})") from None
    return model.eval()
