"""What a new user trips on (issue 28), run as a user runs the commands: the console scripts, from a working
directory outside the repo. Each case fails fast (before a model loads) or runs the tiny model."""

from __future__ import annotations

import json
import os
import re
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


def test_a_run_leaves_nothing_in_the_working_directory(tmp_path: Path, tiny_dir: Path) -> None:
    """Hydra's run directory (.hydra/, the command's log) is out_dir, not ./outputs/DATE/TIME."""
    from conftest import write_jsonl

    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"say {i}", "output": str(i)} for i in range(8)])
    done = sft("prepare", f"model.path={tiny_dir}", "data=alpaca", f"data.path={data}", "data.max_seq_len=64",
               f"out_dir={out}", "cache=false", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == []
    assert (out / "report.json").is_file() and (out / ".hydra" / "overrides.yaml").is_file()
    log = (out / "sft-prepare.log").read_text()  # the console's lines, kept in the run directory
    assert "records read: 8  bad: 0" in log and f"wrote {out}/dataset" in log
    assert "records read: 8  bad: 0" in done.stdout  # and still on the console
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "say", "output": "0"}, {"instruction": 3}])
    done = sft("prepare", f"model.path={tiny_dir}", "data=alpaca", f"data.path={bad}", f"out_dir={tmp_path / 'no'}",
               "cache=false", cwd=cwd)
    assert done.returncode == 1 and "bad.jsonl:2: field 'instruction'" in done.stderr
    assert not (tmp_path / "no").exists() and list(cwd.iterdir()) == []  # it printed, then was refused: no out_dir


def test_resolved_config_and_help_print_without_a_traceback(tmp_path: Path) -> None:
    resolved = sft("train", "--cfg", "job", "--resolve", f"out_dir={tmp_path / 'mine'}", cwd=tmp_path)
    assert resolved.returncode == 0, resolved.stderr
    assert f"out_dir: {tmp_path / 'mine'}\n" in resolved.stdout
    default = sft("eval", "--cfg", "job", "--resolve", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert re.search(r"^out_dir: outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d$", default.stdout, re.M)
    usage = subprocess.run([sys.executable, "-m", "sft", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: python -m sft {bench,eval,generate,merge,prepare,train}")
    # a reader that stops early: the command ends quietly (SIGPIPE), not with a BrokenPipeError traceback
    piped = subprocess.run(f"'{BIN / 'sft-train'}' --help | head -1", shell=True, cwd=tmp_path, capture_output=True,
                           text=True)
    assert piped.stdout.startswith("sft-train: ") and "Traceback" not in piped.stderr and "Broken" not in piped.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "said"), [
    (["-m", "--cfg", "job"], "error: --multirun and --cfg cannot be given together: one of --run"),
    (["--cfg", "job", "--info"], "error: --cfg and --info cannot be given together"),
    (["--resolve"], "error: --resolve goes with --cfg"),
])
def test_hydra_flags_that_clash_are_one_error(tmp_path: Path, args: list[str], said: str) -> None:
    done = sft("prepare", *args, cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(said), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_help_gives_each_setting_its_schema_comment(tmp_path: Path) -> None:
    done = sft("train", "--help", "train.lr=1e-3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\ntrain:\n  lr: 0.001  # peak learning rate\n" in done.stdout  # the value given, with its comment
    assert "  grad_accum: 4  # micro-batches per optimizer step\n" in done.stdout
    assert "  # Hub id, local directory, or a .gguf file" in done.stdout  # a comment block above its key
    assert "\nseed: 0  # not the held-out split: data.split_seed does, so a seed sweep keeps one partition\n" in done.stdout
    bench = sft("bench", "--help", cwd=tmp_path)
    assert "  tasks: ???  # type: ignore[assignment]" not in bench.stdout
    assert "  include_path: null  # a directory of your own task YAML files" in bench.stdout


def test_a_system_message_the_template_would_ignore_is_one_error(tmp_path: Path) -> None:
    done = sft("train", "prompt.system=Brief", "data.path=absent.jsonl", f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid config:\n  prompt.system: prompt=alpaca has no place for a system message")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_command_leaves_no_out_dir(tmp_path: Path) -> None:
    done = sft("eval", "generation.max_new_tokens=0", f"out_dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("error: invalid config:\n  generation.max_new_tokens=0")
    assert list(tmp_path.iterdir()) == []


def test_a_temperature_without_sampling_is_one_error(tmp_path: Path) -> None:
    done = sft("generate", "generation.temperature=0.9", f"out_dir={tmp_path / 'gen'}", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid config:\n  generation.temperature=0.9 with generation.do_sample=false: "
                                  "greedy decoding ignores it; add generation.do_sample=true")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def shipped_tasks(tmp_path: Path) -> Path:
    """The README's recipe: the Alpaca task sft ships, copied, with held-out records where it reads them."""
    import shutil

    from sft.config import resource_path

    pytest.importorskip("lm_eval", reason="sft-bench needs lm-eval")
    shutil.copytree(resource_path("lm_eval_tasks"), tmp_path / "my_tasks")
    shutil.copy(resource_path("demo_eval.jsonl"), tmp_path / "heldout.jsonl")
    return tmp_path / "my_tasks"


@pytest.mark.slow  # lm-eval indexes its thousands of tasks at every start
def test_bench_tasks_whose_data_cannot_be_read_fail_before_the_model_loads(tmp_path: Path, shipped_tasks: Path) -> None:
    (tmp_path / "heldout.jsonl").unlink()
    out = tmp_path / "bench"
    missing = sft("bench", "model.path=/nonexistent/model", f"benchmark.include_path={shipped_tasks}",
                  "benchmark.tasks=[sft_alpaca]", f"out_dir={out}", cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr[-2000:]
    assert missing.stderr.startswith("error: benchmark.tasks: task sft_alpaca: its data could not be loaded: "
                                     f"Unable to find '{tmp_path / 'heldout.jsonl'}'"), missing.stderr[-2000:]
    offline = sft("bench", "model.path=/nonexistent/model", "benchmark.tasks=[arc_easy]", f"out_dir={out}", cwd=tmp_path)
    assert offline.returncode == 1 and "Traceback" not in offline.stderr, offline.stderr[-2000:]
    assert "task arc_easy: its data could not be loaded: Couldn't reach 'allenai/ai2_arc'" in offline.stderr
    assert "use a local task" in offline.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_shipped_alpaca_task_prompts_as_training_does(tmp_path: Path, shipped_tasks: Path, tiny_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_eval.tasks import TaskManager

    from conftest import make_char_tokenizer
    from sft.config import PromptConfig
    from sft.data.prompts import render_prompt

    monkeypatch.chdir(tmp_path)
    task = TaskManager(include_path=str(shipped_tasks)).load(["sft_alpaca"])["tasks"]["sft_alpaca"]
    tokenizer = make_char_tokenizer()
    for doc in ({"instruction": "Add.", "input": "2 and 3", "output": "5"}, {"instruction": "Say hi.", "input": "", "output": "Hi"}):
        record = {"id": 0, **doc}
        assert task.doc_to_text(doc) == render_prompt(record, PromptConfig(), tokenizer)
    assert task.doc_to_target({"instruction": "x", "output": "5"}) == "5"
    out = tmp_path / "bench"
    done = sft("bench", f"model.path={tiny_dir}", f"benchmark.include_path={shipped_tasks}", "benchmark.tasks=[sft_alpaca]",
               "benchmark.limit=2", f"out_dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exact_match,strip" in json.loads((out / "benchmarks.json").read_text())["results"]["base"]["results"]["sft_alpaca"]


def test_a_new_run_starts_from_an_adapter(tmp_path: Path, tiny_dir: Path) -> None:
    """train.init_adapter=RUN: the new run trains the old run's adapter (at a negligible lr its weights stay those
    of the adapter it started from, where a fresh LoRA starts with B = 0)."""
    import torch
    from safetensors.torch import load_file

    from conftest import write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"say {i}", "output": str(i % 3)} for i in range(16)])
    common = [f"model.path={tiny_dir}", "quant=none", "prompt=custom", f"data.path={data}", "data.eval_path=null",
              "data.max_seq_len=64", "train.micro_batch_size=4", "train.grad_accum=1", "train.save_steps=100",
              "train.report_to=[none]", "lora.r=4", "lora.target_modules=[q_proj,v_proj]", "train.gradient_checkpointing=false"]
    first = sft("train", *common, "train.max_steps=3", "train.lr=1e-2", f"out_dir={tmp_path / 'a'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = sft("train", *common, "train.max_steps=1", "train.lr=1e-12", "train.warmup_ratio=0",
                 f"train.init_adapter={tmp_path / 'a'}", f"out_dir={tmp_path / 'b'}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"starting from the adapter in {tmp_path / 'a' / 'adapter'}" in second.stdout
    a, b = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("a", "b"))
    assert sorted(a) == sorted(b) and any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    wrong = sft("train", *common, "model.path=/elsewhere", f"train.init_adapter={tmp_path / 'a'}",
                f"out_dir={tmp_path / 'c'}", cwd=tmp_path)
    assert wrong.returncode == 1 and "train.init_adapter=" in wrong.stderr and "trained on model.path=" in wrong.stderr


def test_a_finished_run_goes_on_when_given_more_steps(tmp_path: Path, tiny_dir: Path) -> None:
    import json as json_

    from conftest import write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"say {i}", "output": str(i % 3)} for i in range(16)])
    common = [f"model.path={tiny_dir}", "quant=none", "prompt=custom", f"data.path={data}", "data.eval_path=null",
              "data.max_seq_len=64", "train.micro_batch_size=4", "train.grad_accum=1", "train.save_steps=2",
              "train.report_to=[none]", "lora.r=4", "lora.target_modules=[q_proj,v_proj]",
              "train.gradient_checkpointing=false", f"out_dir={tmp_path / 'run'}"]
    first = sft("train", *common, "train.max_steps=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    more = sft("train", *common, "train.max_steps=4", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    assert "the finished run goes on (train.max_steps=4), from its last checkpoint" in more.stdout
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'checkpoint-2'}" in more.stdout
    assert json_.loads((tmp_path / "run" / "finished.json").read_text())["global_step"] == 4
    steps = [json_.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    fewer = sft("train", *common, "train.max_steps=3", cwd=tmp_path)  # fewer steps than trained: refused as before
    assert fewer.returncode == 1 and "train.max_steps: 4 in the run, 3 now" in fewer.stderr
