"""Directories that appear whole or not at all, also when several processes write the same one at once."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def publish_dir(target: Path, write: Callable[[Path], None], marker: str) -> None:
    """Fill a sibling temporary directory with `write(tmp)`, then rename it to `target`. `marker` is the file
    that makes an entry complete: a process that loses the rename to another keeps the other's entry (the
    same content, since both name it by the same key), and an entry without its marker is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / marker).is_file():  # left by a crash
        shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / marker).is_file():  # not a lost race: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
