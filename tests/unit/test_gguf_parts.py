"""scripts/gpu/gguf_parts.py: the embedded GGUF travels to the GPU machine in parts; joined, it is the same
bytes, and a missing or different part stops the join with the part named, nothing written."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu" / "gguf_parts.py"
spec = importlib.util.spec_from_file_location("gguf_parts", SCRIPT)
gguf_parts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gguf_parts)


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(1_000_003))
    return path


def test_part_sizes_fill_the_last_call_and_spread_the_rest() -> None:
    assert gguf_parts.part_sizes(100, 60, 40) == [60, 40]
    assert gguf_parts.part_sizes(100, 30, 20) == [27, 27, 26, 20]
    assert gguf_parts.part_sizes(10, 30, 20) == [10]
    with pytest.raises(ValueError):
        gguf_parts.part_sizes(10, 30, 0)


def test_split_then_join_gives_the_same_bytes(blob: Path, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    manifest = gguf_parts.split(blob, out, first_room=400_000, last_room=150_000)
    sizes = [p["bytes"] for p in manifest["parts"]]
    assert sizes[-1] == 150_000 and max(sizes[:-1]) <= 400_000 and sum(sizes) == blob.stat().st_size
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i}" for i in range(1, len(sizes) + 1)]
    joined = gguf_parts.join(out, tmp_path / "device" / "model.gguf")
    assert joined.read_bytes() == blob.read_bytes()


def test_a_missing_or_different_part_stops_the_join_and_writes_nothing(blob: Path, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    gguf_parts.split(blob, out, first_room=600_000, last_room=500_000)
    target = tmp_path / "device" / "model.gguf"
    (out / "part-2").write_bytes(b"x" + (out / "part-2").read_bytes()[1:])
    with pytest.raises(gguf_parts.PartError, match="part-2: not the part"):
        gguf_parts.join(out, target)
    (out / "part-1").unlink()
    with pytest.raises(gguf_parts.PartError, match="part-1: missing"):
        gguf_parts.join(out, target)
    assert not target.exists() and not (target.parent.exists() and any(target.parent.iterdir()))


def test_cli_split_prints_the_calls_and_join_fails_cleanly(blob: Path, tmp_path: Path) -> None:
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(80)]))
    out = tmp_path / ".gguf"
    run = lambda *a: subprocess.run([sys.executable, str(SCRIPT), *a], capture_output=True, text=True)  # noqa: E731
    split = run("split", "--src", str(blob), "--out", str(out), "--wheels", str(tmp_path / "none"), "--data", str(data))
    assert split.returncode == 0, split.stderr
    assert "1 parts" in split.stdout and "bash scripts/gpu/issue19.sh" in split.stdout
    assert len(json.loads((out / "prompts.json").read_text())) == 64
    target = tmp_path / "joined.gguf"
    assert run("join", "--dir", str(out), str(target)).returncode == 0
    assert target.read_bytes() == blob.read_bytes()
    (out / "part-1").unlink()
    target.unlink()
    failed = run("join", "--dir", str(out), str(target))
    assert failed.returncode == 3 and failed.stderr.startswith("error: ") and "part-1: missing" in failed.stderr
    assert "Traceback" not in failed.stderr and not target.exists()
