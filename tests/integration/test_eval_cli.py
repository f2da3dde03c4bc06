"""`sft-eval`: base vs adapter on the held-out split, with reference loss computed as training masks it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_char_tokenizer, run_sft, tiny_llama, write_jsonl, write_run_config

from sft.config import DataConfig, PromptConfig, resource_path
from sft.evaluate.reference import reference_loss

RECORDS = [{"instruction": f"Name item {i}.", "input": "" if i % 2 else "x", "output": f"item {i}"} for i in range(6)]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread in the commands run: on a shared 2-core machine a second one mostly waits."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_run(root: Path, base_path: str | None, base_model) -> Path:
    """A training run directory as sft-train leaves it: adapter/ plus config.yaml."""
    from peft import LoraConfig, get_peft_model

    run = root / "run"
    peft_model = get_peft_model(base_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(run / "adapter")
    data = {"path": resource_path("demo_train.jsonl"), "eval_path": resource_path("demo_eval.jsonl")}
    return write_run_config(run, base_path, data, {"name": "alpaca"})


def table_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("|")]


def test_reference_loss_is_the_mean_over_answer_tokens(tmp_path) -> None:
    model, tok = tiny_llama(vocab_size=128, seed=3), make_char_tokenizer()
    data = DataConfig(path="x", max_seq_len=256)
    records = [{"id": i, **r} for i, r in enumerate(RECORDS)]
    got = reference_loss(model, tok, records, PromptConfig(), data, batch_size=4)
    from sft.data.prompts import build_segments
    from sft.data.tokenize import tokenize_examples

    examples, _, _ = tokenize_examples([build_segments(r, PromptConfig(), tok) for r in records], tok, "</s>", 256)
    total, count = 0.0, 0
    for ex in examples:  # one at a time, unpadded, through the model's own loss
        n = sum(label != -100 for label in ex["labels"][1:])
        with torch.no_grad():
            total += model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss.item() * n
        count += n
    assert got["tokens"] == count == sum(len(r["output"]) + 1 for r in RECORDS)  # answer chars + EOS
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))
    # data.train_on_source: the prompt is trained, so it is scored too, as training scores it
    whole = reference_loss(model, tok, records, PromptConfig(), DataConfig(path="x", max_seq_len=256, train_on_source=True), 4)
    assert whole["tokens"] == sum(len(ex["input_ids"]) - 1 for ex in examples)


def test_base_vs_run_table_on_a_tiny_model(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    tiny_llama(vocab_size=128, seed=0).save_pretrained(base)
    make_char_tokenizer().save_pretrained(base)
    run = make_run(tmp_path, str(base), AutoModelForCausalLM.from_pretrained(base))
    data = write_jsonl(tmp_path / "eval.jsonl", RECORDS)
    out = tmp_path / "eval"
    proc = run_sft("eval", f"adapter={run}", f"data.path={data}", f"data.eval_path={data}", f"out_dir={out}",
                   "generation.max_new_tokens=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evaluating on" in proc.stderr  # the run held out other data: said, not silently ignored
    lines = table_lines(proc.stdout)
    assert lines[0] == "| metric | base | adapter | change |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["exact_match", "token_f1", "rouge_l", "loss", "perplexity"]
    report = json.loads((out / "eval.json").read_text())
    base_r, adapted = report["results"]["base"], report["results"]["adapter"]
    assert base_r["examples"] == adapted["examples"] == 6
    assert adapted["loss"] != base_r["loss"] and adapted["perplexity"] == pytest.approx(math.exp(adapted["loss"]))
    assert all(0.0 <= r[m] <= 1.0 for r in (base_r, adapted) for m in ("exact_match", "token_f1", "rouge_l"))
    assert (out / "base" / "generations.jsonl").is_file() and (out / "adapter" / "generations.jsonl").is_file()
    assert (out / "eval.md").read_text().strip() == "\n".join(lines)


def test_records_without_references_are_one_error(tmp_path) -> None:
    base = tmp_path / "base"
    tiny_llama(vocab_size=128, seed=0).save_pretrained(base)
    make_char_tokenizer().save_pretrained(base)
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    proc = run_sft("eval", f"model.path={base}", f"data.path={data}", "data.eval_path=null", "split=all",
                   f"out_dir={tmp_path / 'eval'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{data}: record 1: field 'output': missing" in proc.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_documented_command_on_the_embedded_model(tmp_path, smollm2_dir) -> None:
    """The README's `sft-eval adapter=RUN_DIR` on the run's held-out file (the demo's), with the embedded SmolLM2;
    data.max_records applies on top of the run's data settings."""
    from transformers import AutoModelForCausalLM

    run = make_run(tmp_path, None, AutoModelForCausalLM.from_pretrained(smollm2_dir))
    proc = run_sft("eval", f"adapter={run}", f"out_dir={tmp_path / 'eval'}", "data.max_records=3",
                   "generation.max_new_tokens=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["eval_path"].endswith("demo_eval.jsonl")
    assert report["results"]["base"]["examples"] == 3 and report["results"]["adapter"]["tokens"] > 0
    assert table_lines(proc.stdout)[0] == "| metric | base | adapter | change |"


def test_the_inference_model_takes_the_trained_positions_head(tiny_dir) -> None:
    """A loaded model is frozen, so the references' loss runs the head on trained positions only, in chunks, and
    never holds every position's logits (benchmarks/bench_eval_loss.py: 16.5 GB -> 0.6 GB at a 152k vocabulary)."""
    from sft.config import ModelConfig, QuantConfig
    from sft.generate.setup import load_for_inference, resolve_model
    from sft.train.loss import causal_lm, plain_linear_head

    model = load_for_inference(resolve_model(None, ModelConfig(path=str(tiny_dir))), QuantConfig(name="none"))
    assert plain_linear_head(causal_lm(model)) is not None
