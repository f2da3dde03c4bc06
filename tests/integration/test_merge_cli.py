"""sft-merge: base (full precision) + adapter merged into one transformers directory gives base+adapter's logits."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import run_sft
from test_train_cli import data_file, tiny_overrides  # noqa: F401  (module fixture; tiny_dir is in conftest)


def test_merged_model_matches_base_plus_adapter(tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    trained = run_sft("train", *tiny_overrides(tiny_dir, data_file, f"out_dir={run}", "train.max_steps=3", "lora.r=4"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    merged_dir = tmp_path / "merged"
    merged = run_sft("merge", f"run_dir={run}", f"out_dir={merged_dir}")
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (merged_dir / "config.json").is_file() and (merged_dir / "model.safetensors").is_file()
    assert not list(merged_dir.glob("adapter_*"))  # a plain model, no adapter files

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)  # the run's tokenizer travels with the merge
    ids = tokenizer(["say red:", "say moon and tea:"], padding=True, return_tensors="pt")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), run / "adapter").eval()
    plain = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        want = reference(**ids).logits
        got = plain(**ids).logits
        before = base(**ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, want, atol=1e-4)  # the adapter changes the logits: the test can fail

    refused = run_sft("merge", f"run_dir={run}", f"out_dir={merged_dir}")
    assert refused.returncode == 1 and "not empty" in refused.stderr and "Traceback" not in refused.stderr
