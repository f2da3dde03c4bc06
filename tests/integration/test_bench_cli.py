"""`sft-bench` through lm-evaluation-harness, offline: local tasks (one generation task with a regex filter, one
multiple-choice task) on the embedded SmolLM2, the base against an adapter trained on the task's format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import local_lm_eval_tasks, run_sft


pytest.importorskip("lm_eval", reason="sft-bench needs lm-eval (pip install '.[bench]', done by scripts/setup.sh)")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: Any) -> Path:
    return local_lm_eval_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: Any) -> Path:
    """The quickstart's training (+experiment=cpu_demo), shortened: 8 steps teach the demo's JSON format."""
    run = tmp_path_factory.mktemp("quickstart") / "run"
    proc = run_sft("train", "+experiment=cpu_demo", "train.max_steps=8", "train.save_steps=100", "data.eval_path=null",
                   f"out_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_an_adapter_trained_on_the_format_beats_the_base(tasks: Path, quickstart_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = run_sft("bench", f"adapter={quickstart_run}", "benchmark.tasks=[sft_demo_json,sft_demo_sentiment]",
                   f"benchmark.include_path={tasks}", "benchmark.limit=10", "benchmark.log_samples=true", f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| task | metric | base | adapter | change | stderr |" in proc.stdout
    report = json.loads((out / "benchmarks.json").read_text())
    results = {name: r["results"] for name, r in report["results"].items()}
    base, tuned = results["base"]["sft_demo_json"], results["adapter"]["sft_demo_json"]
    assert base["exact_match,json"] < 0.2 < 0.6 <= tuned["exact_match,json"]  # the base does not know the format
    assert results["adapter"]["sft_demo_sentiment"]["acc,none"] >= 0.8
    assert report["lm_eval_version"] and report["results"]["adapter"]["versions"]["sft_demo_json"] == 1.0
    samples = (out / "samples" / "adapter" / "sft_demo_json.jsonl").read_text().splitlines()
    assert len(samples) == 10 and json.loads(samples[0])["doc"]["product"]
    assert (out / "benchmarks.md").read_text().startswith("| task | metric | base | adapter |")


def test_mistakes_are_one_message_before_any_model_loads(tasks: Path, tmp_path: Path) -> None:
    for args, message in (
        (["benchmark.tasks=[no_such_task]", f"benchmark.include_path={tasks}"], "no lm-eval task named no_such_task"),
        (["benchmark.tasks=[sft_demo_json]", f"benchmark.include_path={tmp_path / 'missing'}"], "directory not found"),
        (["benchmark.tasks=[]"], "benchmark.tasks: give at least one task"),
    ):
        proc = run_sft("bench", *args, f"out_dir={tmp_path / 'out'}")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert message in proc.stderr
        assert not (tmp_path / "out").exists()


def test_a_sweep_over_adapters_gives_one_row_per_adapter(tasks: Path, tiny_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapters = []
    for seed in (1, 2):
        import torch

        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.save_pretrained(tmp_path / f"adapter{seed}")
        adapters.append(str(tmp_path / f"adapter{seed}"))
    sweep = tmp_path / "sweep"
    proc = run_sft("bench", "-m", f"adapter={','.join(adapters)}", f"model.path={tiny_dir}",
                   "benchmark.tasks=[sft_demo_sentiment]", f"benchmark.include_path={tasks}", "benchmark.limit=4",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (sweep / "benchmarks.md").read_text().splitlines()
    assert lines[0] == "| model | sft_demo_sentiment acc |"
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]] == ["base", *adapters]
    assert all(len(json.loads((sweep / str(n) / "benchmarks.json").read_text())["results"]) == 2 for n in (0, 1))
