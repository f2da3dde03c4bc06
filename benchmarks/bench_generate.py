#!/usr/bin/env python3
"""python benchmarks/bench_generate.py ../shared/data/alpaca_en_demo.json --max-new-tokens 32  -- prints JSON.

On N prompts (Alpaca template) with the embedded SmolLM2 (fp32 on CPU; bf16 with --device cuda), greedy:
1. our batched decoding (sft.generate.decode) at --batch-size, against
2. one prompt at a time through `model.generate` (the loop most inference scripts use), and
3. `model.generate` at the same batch size with left padding;
in generated tokens per second (tokens up to, not counting, the EOS). 1 and 3 are each warmed by one full
untimed run at the measured settings (kernels built for every shape they meet), then timed --repeats times in
alternating order (ours, generate, generate, ours, ...) so that neither side always runs first or last while
the machine's load drifts; each figure is the median of its runs, and the ratio is of the medians. 2 is warmed
on the first --batch-size prompts and timed once. Then sampled (temperature 1, top-p 0.95, one seed): the
fraction of prompts whose sampled text is identical at batch size 1 and --batch-size, and the fraction of
greedy texts equal to model.generate's. Wall and CPU seconds and the load average are reported beside each
figure, since other processes on a shared machine slow the timings. --profile N adds the N ops with most self
time over one batch of each side (torch.profiler); --no-cudnn-sdpa turns cuDNN attention off on CUDA;
--ratio-only times 1 and 3 alone (an A/B of a setting); --model takes another model (a .gguf, a directory);
--split-forward runs each of 1 and 3 once more, splitting its CPU seconds into the prefill forwards, the
one-token forwards and everything outside the model (the loop's own cost: sampling, stopping, cache and masks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch

from sft.config import DataConfig, GenerationConfig, ModelConfig, PromptConfig, QuantConfig
from sft.data.load import load_records
from sft.generate.decode import left_pad
from sft.generate.items import build_items
from sft.generate.job import decode_batch, stopping_for
from sft.model.load import load_model, load_tokenizer, resolve_model_path


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def ours(model, tok, items, gen: GenerationConfig, batch_size: int) -> dict[tuple, list[int]]:
    stopping = stopping_for(tok, model, PromptConfig(), gen)
    out = {}
    for i in range(0, len(items), batch_size):
        for item, d in decode_batch(model, items[i : i + batch_size], gen, stopping, tok.pad_token_id):
            out[item.key] = d.tokens
    return out


@torch.inference_mode()
def hf_generate(model, tok, items, max_new_tokens: int, batch_size: int) -> dict[tuple, list[int]]:
    device = next(model.parameters()).device
    out = {}
    for i in range(0, len(items), batch_size):
        batch = items[i : i + batch_size]
        ids, mask, _ = left_pad([it.ids for it in batch], tok.pad_token_id, device)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for item, row in zip(batch, gen[:, ids.shape[1] :].tolist()):
            out[item.key] = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
    return out


def figure(result: dict, walls: list[float], cpus: list[float]) -> dict[str, Any]:
    """Tokens and the median wall and CPU time over the runs; runs beside it when there were several."""
    tokens = sum(len(t) for t in result.values())
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    out: dict[str, Any] = {"tokens": tokens, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "tokens_per_s": round(tokens / wall, 1)}
    if len(walls) > 1:
        out["runs_wall_s"] = [round(w, 2) for w in walls]
    return out


def alternate(sides: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[Any, list[float], list[float]]]:
    """Time each side `repeats` times, the order flipping every run (A B B A A B ...): (result, walls, cpus)."""
    names = list(sides)
    runs: dict[str, tuple[Any, list[float], list[float]]] = {n: (None, [], []) for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out, wall, cpu = timed(sides[name])
            runs[name] = (out, runs[name][1] + [wall], runs[name][2] + [cpu])
    return runs


def top_ops(fn: Callable[[], Any], device: str, n: int) -> list[dict[str, Any]]:
    """The n (op, input shapes) pairs with most self time (device time on CUDA) over one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: getattr(e, key), reverse=True)[:n]
    return [{"op": e.key, "shapes": str(e.input_shapes), "calls": e.count, "self_ms": round(getattr(e, key) / 1000, 2)}
            for e in events]


def loop_and_sampled(model, tok, items, max_new_tokens: int, b: int, f_ours: dict[str, Any]) -> dict[str, Any]:
    """model.generate one prompt at a time (warmed on the first batch), and whether sampled texts are the same
    at batch 1 and at batch b."""
    hf_generate(model, tok, items[:b], max_new_tokens, 1)
    loop, wall, cpu = timed(lambda: hf_generate(model, tok, items, max_new_tokens, 1))
    f_loop = figure(loop, [wall], [cpu])
    sampled = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=max_new_tokens, seed=1)
    s_b, s_1 = ours(model, tok, items, sampled, b), ours(model, tok, items, sampled, 1)
    return {"generate_one_at_a_time": f_loop, "speedup_vs_one_at_a_time": round(f_ours["tokens_per_s"] / f_loop["tokens_per_s"], 2),
            "sampled_identical_batch_1_vs_batch": sum(s_1[k] == s_b[k] for k in s_b) / len(items)}


def split_forward(model, fn: Callable[[], Any]) -> dict[str, Any]:
    """CPU seconds of one call of fn: in prefill forwards, in one-token forwards, and outside the model."""
    spent = {"prefill_cpu_s": 0.0, "steps_cpu_s": 0.0}
    calls = {"prefill": 0, "steps": 0}
    inner = model.forward

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        out = inner(*args, **kwargs)
        phase = "steps" if kwargs["input_ids"].shape[1] == 1 else "prefill"
        spent[f"{phase}_cpu_s"] += time.process_time() - start
        calls[phase] += 1
        return out

    model.forward = timed_forward  # generate and our loop both call the module, which looks forward up here
    try:
        _, _, cpu = timed(fn)
    finally:
        del model.forward
    return {**{k: round(v, 3) for k, v in spent.items()}, "outside_forward_cpu_s": round(cpu - sum(spent.values()), 3),
            "forward_calls": calls}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default="../shared/data/alpaca_en_demo.json")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto: fp32 on CPU, bf16 on GPU")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (1 is steadier on a busy machine)")
    ap.add_argument("--repeats", type=int, default=4, help="timed runs of ours and of batched model.generate, in alternating order")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="report the N ops with most self time over one batch of each side")
    ap.add_argument("--no-cudnn-sdpa", action="store_true", help="CUDA: torch.backends.cuda.enable_cudnn_sdp(False)")
    ap.add_argument("--ratio-only", action="store_true", help="only ours against batched model.generate: no one-at-a-time loop, no sampled check")
    ap.add_argument("--split-forward", action="store_true", help="one more run of each side: CPU seconds in prefill, in steps, outside the model")
    ap.add_argument("--model", default=None, help="model.path (a .gguf file or a model directory); default: the embedded SmolLM2")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_cudnn_sdpa and args.device.startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    load_start = [round(x, 2) for x in os.getloadavg()]

    path = resolve_model_path(ModelConfig(path=args.model))
    tok = load_tokenizer(ModelConfig(path=args.model), path=path)
    model = load_model(ModelConfig(path=args.model, dtype=args.dtype), QuantConfig(name="none"), device=args.device, path=path).eval()
    records = load_records(args.data, DataConfig(path=args.data, on_bad_record="skip"), limit=args.n).records
    greedy = GenerationConfig(max_new_tokens=args.max_new_tokens)
    items = build_items(records, PromptConfig(), tok, greedy, 4096, "truncate", args.data)
    items.sort(key=lambda it: (-len(it.ids), it.key))  # as sft-generate plans its batches, for all three
    b = args.batch_size
    sides = {
        "ours": lambda: ours(model, tok, items, greedy, b),
        "generate": lambda: hf_generate(model, tok, items, args.max_new_tokens, b),
    }
    for run in sides.values():  # warm-up: oneDNN (and CUDA) build kernels for each new shape on first use
        run()
    runs = alternate(sides, args.repeats)
    ours_b, hf_b = runs["ours"][0], runs["generate"][0]
    f_ours, f_hf = figure(*runs["ours"]), figure(*runs["generate"])
    report = {
        "device": args.device, "dtype": str(model.dtype), "prompts": len(items), "max_new_tokens": args.max_new_tokens,
        "batch_size": b, "torch_threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "load_average_start": load_start, "repeats": args.repeats, "warm_up": "one full untimed run of each side",
        "ours_batched": f_ours, "generate_batched": f_hf,
        "ratio_vs_generate_batched": round(f_ours["tokens_per_s"] / f_hf["tokens_per_s"], 2),
        "ratio_per_run": [round(h / o, 2) for o, h in zip(runs["ours"][1], runs["generate"][1])],
        "cpu_ratio_vs_generate_batched": round(f_hf["cpu_s"] / f_ours["cpu_s"], 2),  # steadier under load, 1 thread
        "greedy_identical_to_generate": sum(ours_b[k] == hf_b[k] for k in ours_b) / len(items),
    }
    if not args.ratio_only:
        report |= loop_and_sampled(model, tok, items, args.max_new_tokens, b, f_ours)
    if args.split_forward:
        report["split_forward"] = {name: split_forward(model, fn) for name, fn in sides.items()}
    if args.device.startswith("cuda"):
        report["cudnn_sdpa"] = torch.backends.cuda.cudnn_sdp_enabled()
    if args.profile:
        report["profile_one_batch"] = {
            "ours": top_ops(lambda: ours(model, tok, items[:b], greedy, b), args.device, args.profile),
            "generate": top_ops(lambda: hf_generate(model, tok, items[:b], args.max_new_tokens, b), args.device, args.profile),
        }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
