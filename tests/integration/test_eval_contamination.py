"""sft-eval checks the records it scores against the training records of the run it evaluates: planted copies of
training text are counted exactly, items too short for a 13-gram are set apart, and the figures are printed and
in eval.json. Run as users run it: the console scripts, from a directory outside the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_jsonl

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def words(tag: str, n: int) -> str:
    """n words no other tag shares: no 13-gram in common with any other text."""
    return " ".join(f"{tag}w{k}" for k in range(n))


TRAIN = [{"instruction": f"Describe item {i}.", "input": "", "output": words(f"t{i}", 20)} for i in range(12)]
# 3 items carry 15 words of a training output, 2 are too short to hold a 13-gram, 5 are clean
PLANTED = ([{"instruction": f"Question {i}.", "input": "", "output": "my answer " + words(f"t{i}", 20).split(" ", 3)[3]}
            for i in (2, 5, 9)]
           + [{"instruction": "Short.", "input": "", "output": f"yes {i}"} for i in range(2)]
           + [{"instruction": f"Clean {i}.", "input": "", "output": words(f"e{i}", 20)} for i in range(5)])


def sft(command: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    return subprocess.run([str(BIN / f"sft-{command}"), *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def run(tiny_dir: Path, tmp_path_factory: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-contamination")
    data = write_jsonl(root / "train.jsonl", TRAIN)
    proc = sft("train", f"model.path={tiny_dir}", "quant=nf4", "prompt=custom", f"data.path={data}",
               "data.eval_path=null", "data.eval_fraction=0", "data.max_seq_len=256", "train.micro_batch_size=4",
               "train.grad_accum=1", "train.max_steps=1", "train.eval_at_start=false", f"out_dir={root / 'run'}",
               cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "run": root / "run"}


def test_sft_eval_counts_its_planted_records_found_in_the_training_data(run: dict[str, Path]) -> None:
    planted = write_jsonl(run["root"] / "planted.jsonl", PLANTED)
    out = run["root"] / "eval"
    proc = sft("eval", f"adapter={run['run']}", "split=all", f"data.path={planted}", "generate=false",
               "compare_base=false", f"out_dir={out}", cwd=run["root"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((out / "eval.json").read_text())["contamination"]
    assert found["ngram"] == 13 and found["training_records_scanned"] == len(TRAIN)
    (name, s), = found["sets"].items()
    assert name.startswith("sft-eval:") and "planted.jsonl" in name
    assert (s["items"], s["too_short"], s["contaminated"]) == (10, 2, 3)
    assert s["share"] == pytest.approx(3 / 8)
    assert [e["item"] for e in s["examples"]] == [0, 1, 2]  # the planted copies, first in the file
    assert f"{name}: 3 of 8 items (37.50%), 2 too short to check" in proc.stdout


def test_sft_eval_of_clean_records_finds_nothing(run: dict[str, Path]) -> None:
    clean = write_jsonl(run["root"] / "clean.jsonl", PLANTED[3:])
    out = run["root"] / "eval-clean"
    proc = sft("eval", f"adapter={run['run']}", "split=all", f"data.path={clean}", "generate=false",
               "compare_base=false", f"out_dir={out}", cwd=run["root"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (s,) = json.loads((out / "eval.json").read_text())["contamination"]["sets"].values()
    assert (s["items"], s["too_short"], s["contaminated"]) == (7, 2, 0)


def test_sft_eval_still_evaluates_when_the_runs_training_data_is_gone(run: dict[str, Path]) -> None:
    planted = write_jsonl(run["root"] / "planted-2.jsonl", PLANTED)
    train = run["root"] / "train.jsonl"
    train.rename(run["root"] / "moved.jsonl")
    try:
        proc = sft("eval", f"adapter={run['run']}", "split=all", f"data.path={planted}", "generate=false",
                   "compare_base=false", f"out_dir={run['root'] / 'eval-gone'}", cwd=run["root"])
    finally:
        (run["root"] / "moved.jsonl").rename(train)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: contamination not checked: the run's training data cannot be read" in proc.stderr
    report = json.loads((run["root"] / "eval-gone" / "eval.json").read_text())
    assert report["contamination"] is None and report["results"]["adapter"]["examples"] == len(PLANTED)
