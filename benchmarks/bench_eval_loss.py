#!/usr/bin/env python3
"""python benchmarks/bench_eval_loss.py [--repo DIR] [--vocab 152064]  -- prints JSON.

Peak memory of `sft-eval generate=false` (the references' loss alone) with a large vocabulary: a tiny random
Llama (2 layers, hidden 64) with Qwen2.5's vocabulary size, 8 held-out examples of about 1,000 tokens, one
forward batch of 8 (sft-eval's default loss_batch_size). The model is small on purpose: what is measured is
what the output head costs, which grows with tokens x vocabulary whatever the model's size. A head that keeps
the float32 logits of every position needs 8 x 1,000 x 152,064 x 4 bytes = 4.9 GB, and more for their copies.

--repo DIR runs the command of another checkout (e.g. a worktree of an earlier commit) on the same files, so a
before/after pair is two runs of this script. The peak is the resident set size of the sft-eval process
(getrusage of the waited-for child), so start it on an otherwise idle machine for comparable seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_model(directory: Path, vocab: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from conftest import make_char_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(directory)
    make_char_tokenizer().save_pretrained(directory)  # ids below 128: the vocabulary's size is the head's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose `python -m sft eval` runs")
    parser.add_argument("--vocab", type=int, default=152064, help="vocabulary size (Qwen2.5: 152,064)")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1000, help="about this many tokens per example")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(root / "model", args.vocab)
        body = "word " * ((args.tokens - 120) // 5)
        rows = [{"instruction": f"Summarize text {i}.", "input": body, "output": f"A summary of text {i}: " + "ok " * 20}
                for i in range(args.examples)]
        (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        command = [sys.executable, "-m", "sft", "eval", f"model.path={root / 'model'}", f"data.path={root / 'eval.jsonl'}",
                   "data.eval_path=null", "split=all", "generate=false", f"data.max_seq_len={args.tokens + 200}",
                   f"loss_batch_size={args.examples}", f"out_dir={root / 'eval'}"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=args.repo, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"sft-eval failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = json.loads((root / "eval" / "eval.json").read_text())["results"]["base"]
    print(json.dumps({"repo": str(args.repo), "vocab": args.vocab, "examples": result["examples"],
                      "tokens_scored": result["tokens"], "loss": round(result["loss"], 6),
                      "peak_rss_gb": round(peak_kib / 2**20, 2), "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
