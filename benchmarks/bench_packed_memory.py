#!/usr/bin/env python3
"""python benchmarks/bench_packed_memory.py ../shared/data/alpaca_en_demo.json [--old-repo DIR] [--rows 8 --seq-len 4096]

Peak live tensor memory of one packed training micro-batch of the embedded model (SmolLM2-135M, --quant nf4, LoRA r=16 on
all linear layers, activation checkpointing, as sft-train runs it): --rows packed rows of up to --seq-len tokens
of the data file's Alpaca records, flattened into one row by the collator, one forward and backward through the
trained-token loss. A dispatch mode follows every storage the step creates until it is freed, so the figure is the
peak of what the step holds above the model's own tensors, not what the C allocator keeps. With --old-repo (a checkout of older code, e.g. `git worktree add /tmp/old 67cd658`),
the same step runs in a second process that imports sft from there, and the difference is printed beside the size
of the dense [1, 1, T, T] boolean mask that transformers would build for the flattened row. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def live_tensor_tracker() -> Any:
    """A dispatch mode that adds up the bytes of every storage an op creates while it is active, until that
    storage is freed (a weak reference's callback), and keeps the peak of that sum."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.weak import WeakIdKeyDictionary

    class LiveTensors(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.now = self.peak = 0
            self.seen: Any = WeakIdKeyDictionary()

        def _freed(self, size: int, _ref: Any) -> None:
            self.now -= size

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            import torch

            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    st = t.untyped_storage()
                    if st not in self.seen and st.nbytes():
                        self.seen[st] = weakref.ref(st, lambda ref, n=st.nbytes(): self._freed(n, ref))
                        self.now += st.nbytes()
                        self.peak = max(self.peak, self.now)
            return out

    return LiveTensors()


def one_step(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in a process whose `sft` is the repo under test."""
    import torch

    import sft
    from sft.config import DataConfig, LoraConfig, ModelConfig, PromptConfig, QuantConfig
    from sft.data.collate import make_collator
    from sft.data.prepare import prepare
    from sft.model.load import load_model, load_tokenizer
    from sft.model.lora import add_lora
    from sft.train.loss import forward_trained_loss_sum

    torch.manual_seed(0)
    tokenizer = load_tokenizer(ModelConfig())
    data = DataConfig(path=args.data, max_seq_len=args.seq_len, packing=True, eval_fraction=0.0)
    rows = prepare(data, PromptConfig(name="alpaca"), tokenizer, seed=0, use_cache=False).datasets["train"]
    rows = [rows[i] for i in range(args.rows)]
    batch = make_collator(True, tokenizer.pad_token_id)(rows)
    quant = QuantConfig(name=args.quant)
    model = add_lora(load_model(ModelConfig(), quant, device="cpu"), quant, LoraConfig(r=16, alpha=32, dropout=0.0), True)
    model.train()
    tracker = live_tensor_tracker()
    start = time.perf_counter()
    with tracker:
        loss, count = forward_trained_loss_sum(model, batch)
        (loss / count).backward()
    seconds = time.perf_counter() - start
    weights = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    tokens = int(batch["input_ids"].shape[1])
    return {
        "sft_from": str(Path(sft.__file__).resolve().parent.parent),
        "tokens": tokens, "examples": int(sum(r["position_ids"].count(0) for r in rows)),
        "batch_keys": sorted(batch), "loss": float(loss / count), "step_seconds": seconds,
        "peak_live_tensor_mib": tracker.peak / 2**20,  # created during the step, above the model's tensors
        "model_tensor_mib": sum(weights.values()) / 2**20,
    }


def run_in(repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, __file__, args.data, "--rows", str(args.rows), "--seq-len", str(args.seq_len),
           "--quant", args.quant, "--inner"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"the step under {repo} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    if Path(result["sft_from"]) != repo.resolve():
        sys.exit(f"{repo}: the subprocess imported sft from {result['sft_from']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="Alpaca-format .json/.jsonl (e.g. ../shared/data/alpaca_en_demo.json)")
    parser.add_argument("--rows", type=int, default=8, help="packed rows in the micro-batch")
    parser.add_argument("--seq-len", type=int, default=4096, help="data.max_seq_len: tokens per packed row at most")
    parser.add_argument("--quant", default="nf4", choices=("nf4", "none"), help="base weights: 4-bit (as sft-train) or fp32")
    parser.add_argument("--old-repo", help="a checkout of older code to run the same step with")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # internal: one step, this process
    args = parser.parse_args()
    args.data = str(Path(args.data).resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.inner:
        print("RESULT " + json.dumps(one_step(args)))
        return
    here = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {"device": f"cpu ({os.cpu_count()} cores)", "data": args.data, "rows": args.rows,
                           "seq_len": args.seq_len, "quant": args.quant, "new": run_in(here, args)}
    tokens = out["new"]["tokens"]
    out["dense_mask_mib"] = tokens * tokens / 2**20  # [1, 1, T, T] booleans, one byte each
    if args.old_repo:
        out["old"] = run_in(Path(args.old_repo), args)
        assert out["old"]["tokens"] == tokens, "both repos must pack the same rows"
        out["saved_mib"] = out["old"]["peak_live_tensor_mib"] - out["new"]["peak_live_tensor_mib"]
        out["saved_over_mask"] = out["saved_mib"] / out["dense_mask_mib"]
        out["loss_difference"] = abs(out["old"]["loss"] - out["new"]["loss"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
