"""Resume is exact: a run killed with SIGKILL after a checkpoint and rerun ends bitwise identical to an
uninterrupted one (embedded SmolLM2-135M, QLoRA nf4, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_sft, sigkill_training_when

STEPS = 3


def overrides(out: Path) -> list[str]:
    return [
        f"out_dir={out}", "quant=nf4", "data.packing=true", "data.max_seq_len=128", "data.max_records=32", "data.eval_path=null", "data.eval_fraction=0.1",
        "train.micro_batch_size=1", "train.grad_accum=2", f"train.max_steps={STEPS}", "train.save_steps=2",
        "train.lr=1e-3", "lora.r=8", "lora.dropout=0.1",  # dropout: the RNG state must be restored too
    ]


def logged(out: Path) -> list[tuple[int, float | None, float | None, float | None]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("eval_loss"), r.get("grad_norm")) for r in rows]


def kill_after_first_checkpoint(out: Path) -> None:
    sigkill_training_when(lambda: (out / "checkpoints" / "checkpoint-2").is_dir(), overrides(out))
    assert not (out / "finished.json").exists(), "killed too late to test resuming"


@pytest.mark.slow
def test_sigkill_and_rerun_matches_an_uninterrupted_run_bitwise(smollm2_dir: str, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    done = run_sft("train", *overrides(straight))
    assert done.returncode == 0, done.stderr[-3000:]

    resumed = tmp_path / "resumed"
    kill_after_first_checkpoint(resumed)
    again = run_sft("train", *overrides(resumed))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout

    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert logged(straight) == logged(resumed)
    assert [s for s, loss, _, _ in logged(straight) if loss is not None] == list(range(1, STEPS + 1))
