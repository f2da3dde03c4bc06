"""sft-train under torchrun: 2 CPU processes (gloo DDP) on a tiny Llama, QLoRA included.

Only rank 0 writes the run directory; 2 processes x micro-batch b follow the same loss curve as 1 process x
micro-batch b x accumulation 2 (the same rows reach each optimizer step, split across ranks instead of
across micro-batches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, write_jsonl

pytestmark = pytest.mark.slow
WORDS = ["red", "blue", "green", "tea", "sky", "moon", "cat", "dog", "sun", "rain"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: Any) -> Path:
    # Answers of different lengths, so micro-batches hold different numbers of trained tokens and a
    # mean of per-rank means would differ from the mean over the step's tokens.
    rows = [{"instruction": f"say {WORDS[i % 10]}", "input": "",
             "output": " ".join(WORDS[(i * 3 + k) % 10] for k in range(1 + i % 4))} for i in range(48)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def overrides(tiny_dir: Path, data_file: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.path={tiny_dir}", "prompt=custom", f"data.path={data_file}", "data.eval_path=null",
        "data.eval_fraction=0.125", "data.max_seq_len=64", "train.max_steps=4", "train.save_steps=2",
        "train.lr=1e-3", "train.warmup_ratio=0", "train.scheduler=constant", "lora.dropout=0", f"out_dir={out}",
        *extra,
    ]


def torchrun(nproc: int, args: list[str], **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **env_vars}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "sft", "train", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len({r["step"] for r in train}) == len(train), "a step was logged twice (more than one rank wrote)"
    return {r["step"]: r["loss"] for r in train}


def eval_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}


def test_two_processes_qlora_rank0_writes_a_complete_run(tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    done = torchrun(2, overrides(tiny_dir, data_file, out, "quant=nf4", "train.micro_batch_size=2", "train.grad_accum=1"),
                    SFT_CACHE_DIR=str(tmp_path / "cold-cache"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    # one preparation on the node: rank 0 tokenizes into the cold cache, rank 1 waits and memory-maps the entry
    assert done.stdout.count("tokenizing data source 'train'") == 1, done.stdout
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml", "report.json",
                 "metrics.jsonl", "loss.png", "finished.json", "tokenizer/tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))  # ...<time>.<host>.<pid>.<n>
    assert events and len({e.name.split(".")[-2] for e in events}) == 1  # written by one process: rank 0
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert done.stdout.count("done: 4 steps") == 1  # the summary line comes from rank 0 only
    # RNG state of every rank is checkpointed, so a resumed DDP run continues each rank's stream.
    assert (out / "checkpoints" / "checkpoint-4" / "rng_state_1.pth").is_file()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), out / "adapter")
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("setting", [["quant=none"], ["quant=nf4"], ["quant=none", "data.packing=true"]], ids=str)
def test_two_processes_follow_the_loss_curve_of_one_process_with_accumulation(
    tiny_dir: Path, data_file: Path, tmp_path: Path, setting: list[str]
) -> None:
    common = [*setting, "train.micro_batch_size=2"]
    ddp = torchrun(2, overrides(tiny_dir, data_file, tmp_path / "ddp", *common, "train.grad_accum=1"))
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-4000:]
    one = torchrun(1, overrides(tiny_dir, data_file, tmp_path / "one", *common, "train.grad_accum=2"))
    assert one.returncode == 0, (one.stdout + one.stderr)[-4000:]
    ddp_loss, one_loss = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert sorted(ddp_loss) == sorted(one_loss) == [1, 2, 3, 4]
    assert ddp_loss == pytest.approx(one_loss, rel=1e-3, abs=1e-4)
    assert len(set(one_loss.values())) > 1  # the curve moves: a constant would match trivially
    # eval: 6 held-out rows (or 3 packed ones) over 2 ranks -- a rank's repeat of the first rows, which evens out
    # the shards, is dropped
    ddp_eval, one_eval = eval_losses(tmp_path / "ddp"), eval_losses(tmp_path / "one")
    assert sorted(ddp_eval) == sorted(one_eval) == [0, 4]
    assert ddp_eval == pytest.approx(one_eval, rel=1e-4)
