"""Where an adapter comes from: `adapter=DIR` is a PEFT adapter directory (adapter_config.json) or a training run
directory (`adapter/` plus the resolved `config.yaml`, read through RunDir)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sft.errors import ConfigError
from sft.run.rundir import RunDir

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass
class AdapterSource:
    path: Path  # the directory holding adapter_config.json
    run: RunDir | None  # the training run directory, when given one (or the adapter/ of one)
    base: str | None  # base_model_name_or_path recorded by PEFT

    @property
    def where(self) -> Path:
        """The directory the user named: the run's when there is one, else the adapter's."""
        return self.run.path if self.run is not None else self.path


def find_adapter(path: str) -> AdapterSource:
    """Resolve `adapter=` to an adapter directory and, when it belongs to one, its training run."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"adapter={path}: directory not found")
    if (root / "adapter_config.json").is_file():
        adapter, run = root, (RunDir(root.parent) if root.name == "adapter" else None)
    elif (root / "adapter" / "adapter_config.json").is_file():
        adapter, run = root / "adapter", RunDir(root)
    else:
        raise ConfigError(f"adapter={path}: no adapter_config.json in it or in {root / 'adapter'}")
    if run is not None and not run.has_config:
        run = None
    try:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"adapter={path}: unreadable adapter_config.json ({e})") from None
    if run is not None:
        _ = run.config  # read now: a damaged config.yaml fails before anything loads
    return AdapterSource(adapter, run, base)


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
