"""`sft-bench` through lm-evaluation-harness, offline: local tasks (one generation task with a regex filter, one
multiple-choice task) on the embedded SmolLM2, the base against an adapter trained on the task's format. And the
training benchmark of real architectures (benchmarks/bench_train_arch.py): its shapes, and its CPU smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, local_lm_eval_tasks, run_sft


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


def bench_train_arch() -> Any:
    import importlib.util

    path = REPO / "benchmarks" / "bench_train_arch.py"
    spec = importlib.util.spec_from_file_location("bench_train_arch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_arch_benchmark_builds_the_published_llama_shapes() -> None:
    """Parameters counted on the meta device (nothing allocated): Meta's 8.03B and 1.24B (tied embeddings)."""
    bench = bench_train_arch()
    big, small = bench.arch_config("llama-3.1-8b"), bench.arch_config("llama-3.2-1b")
    assert bench.parameter_count(big) == 8_030_261_248
    assert bench.parameter_count(small) == 1_235_814_400
    assert (big.hidden_size, big.num_hidden_layers, big.intermediate_size, big.tie_word_embeddings) == (4096, 32, 14336, False)
    assert (small.hidden_size, small.num_hidden_layers, small.intermediate_size, small.tie_word_embeddings) == (2048, 16, 8192, True)
    for config, factor in ((big, 8.0), (small, 32.0)):
        assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (32, 8, 128256)
        assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["factor"] == factor
        assert config.rope_parameters["rope_theta"] == 500000.0
    peaks = {"NVIDIA H200": 989.4, "NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100": None,
             "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA L40S": 362.0, "NVIDIA L40": 181.0, "NVIDIA GeForce RTX 4090": None}
    assert {name: bench.gpu_peak_tflops(name) for name in peaks} == peaks  # a bare H100 may be SXM or PCIe: no guess


def test_the_arch_benchmark_smoke_mode_times_three_stacks_on_the_same_tokens(tmp_path: Path) -> None:
    """--smoke: the GPU benchmark's code path on a 2-layer Llama-3.2-1B shape, rows of 256 tokens, 2 steps."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train_arch.py"), "--arch", "llama-3.2-1b",
                           "--smoke", "--peak-tflops", "1", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["shape"]["num_hidden_layers"] == 2 and report["shape"]["tie_word_embeddings"]
    assert set(report["stacks"]) == {"ours", "trl", "hf"}
    for name, stack in report["stacks"].items():
        for key in ("trained_tokens_per_s", "model_tflops_per_s", "mfu", "peak_memory_mib", "trained_tokens"):
            assert stack[key] > 0, (name, key, stack)
        assert stack["optimizer_steps"] >= 2 and stack["from_step_2"]["trained_tokens_per_s"] > 0
    assert report["stacks"]["ours"]["attention"] == "sdpa_varlen" and report["stacks"]["trl"]["attention"] == "sdpa"
    assert report["same_trained_tokens"]  # one epoch over the same examples: nothing dropped or truncated
    assert report["ours_vs_trl"] > 0 and report["ours_vs_hf"] > 0
    assert list(tmp_path.iterdir()) == []  # the random model's directory is removed
