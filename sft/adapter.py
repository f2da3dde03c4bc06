"""Where an adapter comes from, which base and template it was trained with, and loading base + adapter.

`adapter=DIR` is either a PEFT adapter directory (adapter_config.json) or a training run directory
(`adapter/` plus the resolved `config.yaml`). A run directory also fixes the base model and the prompt
template, so evaluation uses exactly what training used. An adapter trained on another base is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.config import DataConfig, ModelConfig, PromptConfig, QuantConfig
from sft.data.load import is_local
from sft.errors import ConfigError
from sft.model import load_model, model_name, resolve_model_path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass
class AdapterSource:
    path: Path  # the directory holding adapter_config.json
    run_dir: Path | None  # the training run directory, when given one
    run_config: dict[str, Any] | None  # its config.yaml, resolved
    base: str | None  # base_model_name_or_path recorded by PEFT


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)  # type: ignore[return-value]
    except Exception as e:  # a damaged file is the user's to fix
        raise ConfigError(f"adapter={run_dir}: cannot read config.yaml ({e})") from None


def find_adapter(path: str) -> AdapterSource:
    """Resolve `adapter=` to an adapter directory, reading the run's config.yaml when there is one."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"adapter={path}: directory not found")
    if (root / "adapter_config.json").is_file():
        adapter, run_dir = root, (root.parent if (root.parent / "config.yaml").is_file() and root.name == "adapter" else None)
    elif (root / "adapter" / "adapter_config.json").is_file():
        adapter, run_dir = root / "adapter", root
    else:
        raise ConfigError(f"adapter={path}: no adapter_config.json in it or in {root / 'adapter'}")
    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        run_dir = None
    try:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"adapter={path}: unreadable adapter_config.json ({e})") from None
    run_config = _read_run_config(run_dir) if run_dir is not None else None
    return AdapterSource(adapter, run_dir, run_config, base)


def adapter_hash(adapter: Path) -> str:
    """sha256 over the adapter's config and weights, so a row says exactly which adapter wrote it."""
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        f = adapter / name
        if f.is_file():
            h.update(name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _same_model(a: str, b: str) -> bool:
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
    if source.run_config is not None:
        trained = ModelConfig(**{k: v for k, v in (source.run_config.get("model") or {}).items() if k in _fields(ModelConfig)})
        if model.path is not None and trained.path != model.path and not _same_model(str(trained.path), model.path):
            raise ConfigError(
                f"adapter={source.run_dir} was trained on base {model_name(trained)}, "
                f"but model.path={model.path}: drop model.path or use an adapter trained on it"
            )
        model = dataclasses.replace(trained, dtype=model.dtype, attn_implementation=model.attn_implementation)
    if source.base:
        resolved = resolve_model_path(model)
        if not (_same_model(source.base, resolved) or (model.path and _same_model(source.base, model.path))):
            raise ConfigError(
                f"adapter={source.path} was trained on base {source.base}, "
                f"but the base model is {model_name(model)} ({resolved})"
            )
    return model


def prompt_for(source: AdapterSource | None, prompt: PromptConfig) -> PromptConfig:
    """The template of the training run (never drifts); the configured one for a bare adapter or a base."""
    if source is None or source.run_config is None or "prompt" not in source.run_config:
        return prompt
    trained = PromptConfig(**{k: v for k, v in source.run_config["prompt"].items() if k in _fields(PromptConfig)})
    if trained != prompt:
        print(f"note: using the training run's template prompt.name={trained.name} (from {source.run_dir}/config.yaml)")
    return trained


def data_keys_set_by_user() -> set[str] | None:
    """The data.* keys the command line set ("path" also when it chose a data group), or None when no Hydra
    command runs (a config built in Python is taken as given whole)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "data" or key.startswith("data@"):
            keys.add("path")
        elif key.startswith("data."):
            keys.add(key.removeprefix("data.").split(".")[0])
    return keys


def data_for(source: AdapterSource | None, data: DataConfig, split: str) -> DataConfig:
    """Records for split=train|eval with a training run directory: the run's own data settings (config.yaml), so
    the held-out split is the one training drew, with the data.* keys given on the command line on top. Another
    data.path (or data group) means other data: then `data` as given. Anything else: `data`."""
    trained = (source.run_config or {}).get("data") if source else None
    given = data_keys_set_by_user()
    if split not in ("train", "eval") or not trained or given is None or "path" in given:
        return data
    ours = DataConfig(**{k: v for k, v in trained.items() if k in _fields(DataConfig)})
    ours = dataclasses.replace(ours, **{k: getattr(data, k) for k in given if k in _fields(DataConfig)})
    for key in ("path", "eval_path"):
        value = getattr(ours, key)
        if value and is_local(value) and not Path(value).exists():
            raise ConfigError(f"data.{key}={value} (from {source.run_dir}/config.yaml) is not found from here "
                              f"({Path.cwd()}): give data.path and data.eval_path of the held-out records")
    if ours != data:
        held_out = ours.eval_path or f"eval_fraction={ours.eval_fraction}"
        print(f"note: split={split} of the training run's data: {ours.path}, held out {held_out} (from "
              f"{source.run_dir}/config.yaml; data.path=... chooses other records)")
    return ours


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def load_for_inference(model_cfg: ModelConfig, quant: QuantConfig, source: AdapterSource | None) -> Any:
    """Base (optionally 4/8-bit) in eval mode, with the adapter attached when there is one."""
    model = load_model(model_cfg, quant)
    if source is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(source.path), is_trainable=False)
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"adapter={source.path}: cannot load onto {model_name(model_cfg)} ({e})") from None
    return model.eval()
