"""sft-train as a user runs it (subprocess), on a tiny Llama saved to disk with the char tokenizer."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, run_sft, write_jsonl

EXIT_PREEMPTED = 75
WORDS = ["red", "blue", "green", "tea", "sky", "moon", "cat", "dog"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: Any) -> Path:
    rows = [{"instruction": f"say {WORDS[i % 8]}", "input": "", "output": WORDS[(i * 3) % 8]} for i in range(32)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def tiny_overrides(tiny_dir: Path, data_file: Path, *extra: str) -> list[str]:
    return [
        f"model.path={tiny_dir}", "quant=none", "prompt=custom", f"data.path={data_file}", "data.eval_path=null",
        "data.eval_fraction=0.25", "data.max_seq_len=64", "data.packing=true", "train.micro_batch_size=2",
        "train.grad_accum=2", "train.max_steps=4", "train.save_steps=2", "train.lr=1e-3", *extra,
    ]


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_a_complete_run_dir_and_never_overwrites_it(tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = tiny_overrides(tiny_dir, data_file, f"out_dir={out}")
    done = run_sft("train", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    # the trained-positions head was checked against the model's own loss on the first micro-batch
    assert re.search(r"loss check on the first micro-batch: trained-positions head \S+, the model's own \S+: equal",
                     done.stdout), done.stdout[-2000:]
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json",
                 "config.yaml", "report.json", "metrics.jsonl", "loss.png", "finished.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["prompt"]["name"] == "custom" and config["model"]["path"] == str(tiny_dir)
    assert config["train"]["lr"] == 1e-3 and config["quant"]["name"] == "none" and config["seed"] == 0
    logged = metrics(out)
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in logged if "eval_loss" in r] == [0, 4]  # before and after training
    assert all(r["trained_tokens"] > 0 and r["lr"] >= 0 and "grad_norm" in r for r in logged if "loss" in r)
    assert "done: 4 steps" in done.stdout

    again = run_sft("train", *args)
    assert again.returncode == 0 and "already finished" in again.stdout
    changed = run_sft("train", *args, "train.lr=2e-3", "lora.r=4")
    assert changed.returncode == 1
    assert "train.lr" in changed.stderr and "lora.r" in changed.stderr and "Traceback" not in changed.stderr

    # killed while finishing, after the last checkpoint: the rerun finishes the run and trains no step past max_steps
    # (before the final eval: its line is gone too)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    (out / "finished.json").unlink()
    shutil.rmtree(out / "adapter")
    before_final_eval = [r for r in logged if not ("eval_loss" in r and r["step"] == 4)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in before_final_eval))
    finishing = run_sft("train", *args)
    assert finishing.returncode == 0, finishing.stderr[-3000:]
    assert "holds the last step" in finishing.stdout and "done: 4 steps" in finishing.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert [r for r in metrics(out) if "loss" in r] == [r for r in logged if "loss" in r]  # no step trained again
    assert [r["step"] for r in metrics(out) if "eval_loss" in r] == [0, 4]  # the final eval, once
    again_adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter.keys() == again_adapter.keys()
    assert all(torch.equal(adapter[k], again_adapter[k]) for k in adapter)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), out / "adapter")
    trained_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b)  # B starts at 0: training moved it


def wait_for(predicate: Any, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the condition was met"
        assert time.time() < end, "timed out waiting"
        time.sleep(0.1)


def test_sigterm_saves_at_the_next_step_and_exits_75_then_the_rerun_resumes(
    tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = tiny_overrides(tiny_dir, data_file, f"out_dir={out}", "train.max_steps=16", "train.save_steps=1000",
                          "train.logging_steps=5")
    proc = subprocess.Popen([sys.executable, "-m", "sft", "train", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / "metrics.jsonl").is_file() and any("loss" in r for r in metrics(out)), proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert "SIGTERM" in stdout and not (out / "finished.json").exists()
    saved = [p.name for p in (out / "checkpoints").iterdir()]
    assert len(saved) == 1 and saved[0].startswith("checkpoint-")
    stopped = int(saved[0].split("-")[1])
    assert 1 <= stopped < 16

    resumed = run_sft("train", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / saved[0]}" in resumed.stdout
    # logged every 5 steps, at the preemption checkpoint and at the end: each window once, none lost
    assert [r["step"] for r in metrics(out) if "loss" in r] == sorted({5, 10, 15, 16, stopped})


def test_bad_input_is_one_message_and_exit_1(tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    missing = run_sft("train", *tiny_overrides(tiny_dir, data_file, f"out_dir={tmp_path / 'a'}"),
                      f"data.path={tmp_path / 'nope.jsonl'}")
    assert missing.returncode == 1 and "nope.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    invalid = run_sft("train", *tiny_overrides(tiny_dir, data_file, f"out_dir={tmp_path / 'b'}"),
                      "train.lr=0", "lora.r=0", "quant=nf5")
    assert invalid.returncode == 1 and "Traceback" not in invalid.stderr
    assert "quant" in invalid.stderr


def test_invalid_values_are_all_named(tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    invalid = run_sft("train", *tiny_overrides(tiny_dir, data_file, f"out_dir={tmp_path / 'b'}"), "train.lr=0", "lora.r=0")
    assert invalid.returncode == 1 and "Traceback" not in invalid.stderr
    assert "train.lr=0" in invalid.stderr and "lora.r=0" in invalid.stderr


def test_sweep_runs_each_point_in_its_own_directory(tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_sft("train", "-m", *tiny_overrides(tiny_dir, data_file, "train.max_steps=2"),
                   "train.lr=1e-4,2e-4", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if (p / "finished.json").is_file())
    assert len(runs) == 2
    lrs = sorted(yaml.safe_load((p / "config.yaml").read_text())["train"]["lr"] for p in runs)
    assert lrs == [1e-4, 2e-4]


def test_a_wrong_setting_found_at_start_up_is_one_message_and_the_corrected_rerun_starts_over(
    tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = tiny_overrides(tiny_dir, data_file, f"out_dir={out}", "train.max_steps=2")
    wrong = run_sft("train", *args, "lora.target_modules=[qproj]")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr, wrong.stderr[-3000:]
    assert "lora.target_modules=['qproj']" in wrong.stderr and "q_proj" in wrong.stderr  # names what exists
    assert (out / "config.yaml").is_file() and not (out / "checkpoints").exists()
    fixed = run_sft("train", *args, "lora.target_modules=[q_proj,v_proj]")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "starting over with the changed settings (lora.target_modules)" in fixed.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2]


def test_a_model_path_that_is_not_a_model_is_one_message(data_file: Path, tmp_path: Path) -> None:
    from conftest import make_char_tokenizer

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    tokenizer_only = tmp_path / "tokenizer-only"
    make_char_tokenizer().save_pretrained(tokenizer_only)
    for path, message in ((not_gguf, "cannot load it as a GGUF model"), (tokenizer_only, "cannot load the model")):
        done = run_sft("train", f"model.path={path}", "quant=none", f"data.path={data_file}", "prompt=custom",
                       "data.max_seq_len=64", f"out_dir={tmp_path / 'run'}", "train.max_steps=1")
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert f"model.path={path}" in done.stderr and message in done.stderr


def test_logs_at_every_checkpoint_and_at_the_last_step_whatever_logging_steps(
    tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = run_sft("train", *tiny_overrides(tiny_dir, data_file, f"out_dir={out}", "train.max_steps=3",
                                            "train.save_steps=2", "train.logging_steps=5"))
    assert done.returncode == 0, done.stderr[-3000:]
    # windows end at checkpoints, so a run resumed from checkpoint-2 logs the same losses as this one
    assert [r["step"] for r in metrics(out) if "loss" in r] == [2, 3]
    assert "done: 3 steps" in done.stdout


def test_a_mixture_trains_to_the_shares_asked_with_an_eval_loss_per_source_and_refuses_to_resume_on_changed_data(
        tiny_dir: Path, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"say {w} {i}", "output": w} for i, w in enumerate(WORDS * 6)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"spell {w}", "input": "x", "output": " ".join(w)} for w in WORDS * 2])
    out = tmp_path / "run"
    sources = f"data.sources=[{{path:{a},weight:3,eval_fraction:0.2}},{{path:{b},weight:1,eval_fraction:0.2}}]"
    args = [*tiny_overrides(tiny_dir, a, f"out_dir={out}", "train.eval_steps=2"), "data.path=null", sources]
    done = run_sft("train", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())["sources"]
    assert [s["mixture"]["share_asked"] for s in report.values()] == [0.75, 0.25]
    assert all(abs(s["mixture"]["share_of_examples"] - s["mixture"]["share_asked"]) < 0.01 for s in report.values())
    evals = [r for r in metrics(out) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all({"eval_loss/a", "eval_loss/b"} <= set(r) for r in evals)
    assert evals[0]["eval_loss/a"] != evals[0]["eval_loss/b"]
    assert re.search(r"step 2: eval loss [\d.]+ \(a [\d.]+, b [\d.]+\)", done.stdout), done.stdout[-2000:]

    (out / "finished.json").unlink()  # as if killed after its last checkpoint
    with b.open("a") as f:
        f.write(json.dumps({"instruction": "spell new", "output": "n e w"}) + "\n")
    again = run_sft("train", *args)
    assert again.returncode == 1
    assert f"data source 'b' ({b}) is not the data" in again.stderr and "Traceback" not in again.stderr


def test_a_run_directory_from_before_split_seed_resumes_with_the_split_its_seed_drew(
        tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    """A run made when `seed` drew the held-out split (no data.split_seed in its config.yaml, no held_out.json),
    stopped after checkpoint-2: the same command resumes it on the same rows (the checkpoint's data keys match),
    records the split it drew, and stays such a run, so the command resumes it again."""
    out = tmp_path / "run"
    first = run_sft("train", *tiny_overrides(tiny_dir, data_file, f"out_dir={out}", "seed=3", "data.split_seed=3"))
    assert first.returncode == 0, first.stderr[-3000:]
    held_out = json.loads((out / "held_out.json").read_text())
    assert held_out["sources"]["train"]["split_seed"] == 3 and held_out["sources"]["train"]["records"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["data"]["split_seed"]  # as sft wrote it before data.split_seed
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("finished.json", "held_out.json"):
        (out / name).unlink()
    shutil.rmtree(out / "adapter")
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    resumed = run_sft("train", *tiny_overrides(tiny_dir, data_file, f"out_dir={out}", "seed=3"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "its held-out split stays the one seed=3 drew" in resumed.stdout
    assert f"resuming from {out / 'checkpoints' / 'checkpoint-2'}" in resumed.stdout
    assert json.loads((out / "held_out.json").read_text()) == held_out
    assert "split_seed" not in yaml.safe_load((out / "config.yaml").read_text())["data"]
    again = run_sft("train", *tiny_overrides(tiny_dir, data_file, f"out_dir={out}", "seed=3"))
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-3000:]
