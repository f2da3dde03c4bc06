"""The checkpoints of a run directory: `checkpoints/checkpoint-N/` once complete, `checkpoints/.tmp-*` while
being written (sft.train.checkpoint writes them; this module only lists, rotates and reads them)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STAGING_PREFIX = ".tmp-"
SFT_STATE = "sft_state.json"  # what the HF trainer state does not carry (trained token count, world size)


def complete_checkpoints(root: Path) -> list[Path]:
    """Renamed (hence complete) checkpoints under `root`, oldest step first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def rotate(root: Path, keep: int) -> None:
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def remove_staging(root: Path) -> None:
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(STAGING_PREFIX):
                shutil.rmtree(child, ignore_errors=True)


def read_sft_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / SFT_STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])
