"""What a new user trips on (issue 28), run as a user runs the commands: the console scripts, from a working
directory outside the repo. Each case fails fast (before a model loads) or runs the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def sft(command: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    return subprocess.run([str(BIN / f"sft-{command}"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(("override", "meant"), [
    ("train.lerning_rate=1", "train.lr"), ("+train.lerning_rate=1", "train.lr"),
    ("+data.max_lenght=64", "data.max_seq_len"), ("learning_rate=1e-4", "train.lr"), ("+num_epochs=3", "train.epochs"),
])
def test_an_unknown_key_is_one_error_naming_the_real_key(tmp_path: Path, override: str, meant: str) -> None:
    done = sft("train", override, "data.path=absent.jsonl", f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    key = override.lstrip("+").split("=")[0]
    assert done.stderr.startswith(f"error: unknown config key:\n  {key}: no such setting; did you mean {meant}?")
    assert "Traceback" not in done.stderr and "+train" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: no run dir, no outputs/


def test_a_dict_valued_setting_takes_new_keys(tmp_path: Path) -> None:
    done = sft("train", "+prompt.template_kwargs.enable_thinking=false", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "template_kwargs:\n    enable_thinking: false" in done.stdout
