"""python benchmarks/bench_train.py /work/shared/data/alpaca_en_demo.json [--examples 160 | --examples 0 --steps 5]

Trained tokens per second and peak memory of three ways to run the same QLoRA training (embedded SmolLM2-135M,
nf4, LoRA r=16 on all linear layers, same micro-batch size, accumulation and learning rate; by default
sft-train's micro-batch 4 and accumulation 4):
  packed  our pipeline, padding-free packed rows (position_ids), PackedCollator, sdpa_varlen attention
  padded  our pipeline, one example per row, dynamic padding to the longest row, PaddedCollator
  trl     TRL's SFTTrainer on its own defaults for a prompt/completion data set (its tokenization, padding,
          completion-only loss); precision and max_length are set equal to ours so only the data path differs
Two ways to pick the work:
  --examples N (default 160)  each variant trains one epoch over the same N records (a seeded sample of the
          file): the same trained tokens, so the rates compare the time each takes for the same data. One
          untimed forward and backward of a micro-batch warms up first (no optimizer step; gradients zeroed).
  --steps S (with --examples 0)  each variant runs S optimizer steps on its own order of the whole file; the
          first step is warm-up, excluded from the rate. Packed steps hold ~3x the examples of padded ones, so
          the trained tokens differ and so, by sampling, does their share of prompt tokens.
Every variant runs under the same C allocator (--allocator; by default the one sft's commands choose:
jemalloc when the system has it). Each variant runs in its own process (peak RSS of the process, and sampled
while training runs: its peak and its growth over the RSS at the start of training; on CUDA, peak allocated
memory during training). On CPU, RSS partly measures the C allocator's cache, so torch's memory profiler also
measures the peak of live tensor memory during one micro-batch (forward and backward) after the timed work:
one more micro-batch after the epoch with --examples, the first micro-batch of one extra step with --steps.
On CUDA it also reports model-FLOPs utilization (MFU): model FLOPs (see model_flops) per second over
--peak-tflops. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ("packed", "padded", "trl")


class CountingCollator:
    """Wraps a collator; counts the trained tokens (labels[..., 1:] != -100), all tokens it hands out, the real
    (non-padding) tokens and the causal attention pairs: an example of n tokens has n(n+1)/2 (query, key) pairs.
    Example lengths come from the attention mask (padded rows) or from position_ids restarting at 0 (packed)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.trained, self.tokens, self.real, self.pairs = inner, 0, 0, 0, 0

    def __call__(self, rows: list[Any]) -> Any:
        batch = self.inner(rows)
        self.trained += int((batch["labels"][..., 1:] != -100).sum())
        self.tokens += int(batch["input_ids"].numel())
        for n in example_lengths(batch):
            self.real, self.pairs = self.real + n, self.pairs + n * (n + 1) // 2
        return batch


def example_lengths(batch: Any) -> list[int]:
    if batch.get("attention_mask") is not None:
        return [int(n) for n in batch["attention_mask"].sum(-1).tolist()]
    lengths = []
    for row in batch["position_ids"].tolist():
        starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
        lengths += [b - a for a, b in zip(starts, starts[1:])]
    return lengths


class RssSampler:
    """Resident memory of this process, sampled every 10 ms from /proc while training runs: the peak of the
    training itself, apart from the model load (whose peak ru_maxrss also holds)."""

    def __init__(self) -> None:
        import threading

        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.freeze()

    def freeze(self) -> None:
        """Stop sampling (before the profiled step: the profiler's own records would count)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
            self.maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def model_flops(config: Any, lora_params: int, real_tokens: int, pairs: int) -> float:
    """Model FLOPs of LoRA training on a frozen base: 4N per token for the base's matmuls (forward 2N, backward
    2N for input gradients only; no weight gradients), 6 per LoRA parameter per token, and the attention
    products (QK^T and AV: 4 * head dims per (query, key) pair and layer forward, twice that backward).
    Gradient-checkpointing recomputation is not counted (that would be hardware FLOPs, not model FLOPs)."""
    d, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = config.num_key_value_heads * head_dim
    per_layer = d * heads * head_dim * 2 + d * kv * 2 + 3 * d * config.intermediate_size
    base = layers * per_layer + d * config.vocab_size  # + lm_head; the input embedding is a lookup
    return (4 * base + 6 * lora_params) * real_tokens + 12 * layers * heads * head_dim * pairs


def profile_tensors(args: argparse.Namespace) -> bool:
    from sft.model.quant import pick_device

    return not args.no_tensor_peak and pick_device() != "cuda"


def total_steps(args: argparse.Namespace) -> int:
    """--steps: the timed steps, plus one profiled step on CPU (see TensorPeak); --examples: -1 (one epoch)."""
    if args.examples:
        return -1
    return args.steps + (1 if profile_tensors(args) else 0)


class TensorPeak:
    """On CPU, RSS mostly measures the C allocator (freed blocks it keeps), not what the training holds. This
    profiles the first micro-batch (forward and backward) of one extra optimizer step, after the timed ones,
    with torch's memory profiler and reports the peak of live tensor memory during it over the tensors alive
    when it starts (the counterpart of CUDA's peak allocated memory above the model). One micro-batch, because
    the profiler's records take gigabytes of RSS per micro-batch of 4 x 512 tokens."""

    def __init__(self, profiled_step: int, rss: RssSampler) -> None:
        import torch

        self.step, self.peak_mib, self.start_mib, self.rss, self.running = profiled_step, None, None, rss, False
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                           record_shapes=True, with_stack=True)

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class Profile(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.global_step == outer.step - 1 and outer.peak_mib is None and not outer.running:
                    outer.rss.freeze()
                    outer.prof.start()
                    outer.running = True

            def on_substep_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.stop()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.stop()

            def stop(self) -> None:
                if outer.running:
                    outer.prof.stop()
                    outer.running = False
                    outer.start_mib, outer.peak_mib = outer.measure()

        return Profile()

    def measure(self) -> tuple[float, float]:
        """(MiB alive at the profile's start: model, LoRA, optimizer state; peak MiB over that start)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
            with open(f"{tmp}/timeline.json") as f:
                _, sizes = json.load(f)
        totals = [sum(row) for row in sizes]
        return totals[0] / 2**20, (max(totals) - totals[0]) / 2**20


def step_clock(counter: CountingCollator) -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        marks: list[tuple[float, int, int, int, int]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.marks.append((time.perf_counter(), counter.trained, counter.tokens, counter.real, counter.pairs))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.marks.append((time.perf_counter(), counter.trained, counter.tokens, counter.real, counter.pairs))

    return Clock()


def one_micro_batch(trainer: Any, counter: CountingCollator, tensor_peak: "TensorPeak | None" = None) -> None:
    """--examples: one forward and backward of the first micro-batch outside the timed epoch, with no optimizer
    step (gradients zeroed, counters reset): before it as warm-up (kernels, allocator), and after it under the
    tensor profiler when there is one (after, so the profiler's records stay out of the epoch's RSS)."""
    import torch

    model = trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trained = torch.tensor(int((inputs["labels"][..., 1:] != -100).sum()))
    if tensor_peak:
        tensor_peak.prof.start()
    trainer.compute_loss(model, inputs, num_items_in_batch=trained).backward()
    if tensor_peak:
        tensor_peak.prof.stop()
        tensor_peak.start_mib, tensor_peak.peak_mib = tensor_peak.measure()
    model.zero_grad(set_to_none=True)
    counter.trained = counter.tokens = counter.real = counter.pairs = 0


def build(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from sft.config import DataConfig, LoraConfig, ModelConfig, PromptConfig, QuantConfig
    from sft.model.lora import add_lora
    from sft.model.load import load_model, load_tokenizer
    from transformers import set_seed

    tokenizer = load_tokenizer(ModelConfig())
    set_seed(0)
    quant = QuantConfig(name=args.quant, compute_dtype=args.compute_dtype)
    model = add_lora(load_model(ModelConfig(), quant), quant, LoraConfig(r=16, alpha=32, dropout=0.05), True)
    data = DataConfig(path=args.subset or args.data, max_seq_len=args.max_seq_len, packing=args.variant == "packed")
    return tokenizer, model, (data, PromptConfig(name="alpaca"), quant)


def ours(args: argparse.Namespace, tokenizer: Any, model: Any, cfgs: Any) -> Any:
    from sft.config import TrainConfig
    from sft.data.collate import make_collator
    from sft.data.prepare import prepare
    from sft.train.trainer import SftTrainer, training_arguments

    data, prompt, quant = cfgs
    dataset = prepare(data, prompt, tokenizer, seed=0, use_cache=False).datasets["train"]
    train = TrainConfig(lr=2e-4, max_steps=total_steps(args), epochs=1, micro_batch_size=args.micro_batch_size,
                        grad_accum=args.grad_accum, save_steps=10**6, optim=args.optim)
    targs = training_arguments(train, quant, 0, Path(args.tmp), has_eval=False)
    targs.save_strategy, targs.disable_tqdm = "no", True
    counter = CountingCollator(make_collator(data.packing, tokenizer.pad_token_id))
    return SftTrainer(model=model, args=targs, train_dataset=dataset, data_collator=counter), counter


def trl(args: argparse.Namespace, tokenizer: Any, model: Any, cfgs: Any) -> Any:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from sft.data.load import load_records
    from sft.data.prompts import render_prompt
    from sft.model.quant import compute_dtype, pick_device
    from sft.train.trainer import pick_optimizer

    data, prompt, quant = cfgs
    records = load_records(data.path, data).records
    rows = [{"prompt": render_prompt(r, prompt, tokenizer), "completion": r["output"]} for r in records]
    device = pick_device()
    bf16 = str(compute_dtype(quant.compute_dtype, device)) == "torch.bfloat16"  # as ours: autocast on CPU too
    config = SFTConfig(
        output_dir=args.tmp, max_steps=total_steps(args), num_train_epochs=1, per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=2e-4, lr_scheduler_type="cosine",
        warmup_steps=0.03, max_grad_norm=0.3, bf16=bf16, fp16=False, max_length=data.max_seq_len,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=0, use_cpu=device == "cpu",
        optim=pick_optimizer(args.optim, device),
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    return trainer, counter


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    tokenizer, model, cfgs = build(args)
    trainer, counter = (trl if args.variant == "trl" else ours)(args, tokenizer, model, cfgs)
    clock = step_clock(counter)
    trainer.add_callback(clock)
    rss = RssSampler()
    tensor_peak = TensorPeak(args.steps + 1, rss) if profile_tensors(args) else None
    if args.examples:
        one_micro_batch(trainer, counter)  # warm-up
    elif tensor_peak:
        trainer.add_callback(tensor_peak.callback())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with rss:
        trainer.train()
    marks = list(clock.marks)
    if args.examples and tensor_peak:
        one_micro_batch(trainer, counter, tensor_peak)
    # --examples: from the start of training to the end of the epoch; --steps: from the end of the first step
    timed = marks if args.examples else marks[1 : args.steps + 1]
    (t0, trained0, tokens0, real0, pairs0), (t1, trained1, tokens1, real1, pairs1) = timed[0], timed[-1]
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_per_s = model_flops(model.config, lora_params, real1 - real0, pairs1 - pairs0) / (t1 - t0)
    out = {
        "trained_tokens_per_s": (trained1 - trained0) / (t1 - t0),
        "tokens_per_s_incl_padding": (tokens1 - tokens0) / (t1 - t0),
        "trained_tokens": trained1 - trained0,
        "optimizer_steps": len(timed) - 1,
        "padding_or_masked_share": 1 - (trained1 - trained0) / max(tokens1 - tokens0, 1),
        "seconds_per_step": (t1 - t0) / (len(timed) - 1),
        "real_tokens_per_s": (real1 - real0) / (t1 - t0),
        "real_share_of_token_slots": (real1 - real0) / max(tokens1 - tokens0, 1),
        "model_tflops_per_s": flops_per_s / 1e12,
        "peak_rss_mib": rss.maxrss / 2**20,  # of the process up to the end of the timed steps
        "rss_at_train_start_mib": rss.start / 2**20,
        "train_peak_rss_mib": rss.peak / 2**20,
        "train_rss_growth_mib": (rss.peak - rss.start) / 2**20,
    }
    if tensor_peak:
        out["tensor_peak_of"] = ("one more micro-batch after the epoch" if args.examples
                                 else "the first micro-batch of one more step")
        out["tensor_peak_mib_over_step_start"] = tensor_peak.peak_mib
        out["tensor_peak_mib"] = tensor_peak.start_mib + tensor_peak.peak_mib
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if args.peak_tflops:
            out["mfu"] = flops_per_s / 1e12 / args.peak_tflops
    return out


def write_subset(args: argparse.Namespace) -> str:
    """A seeded sample of --examples records of the data file, written as a .json list for every variant. Only
    records whose prompt and answer fit in --max-seq-len (with a margin for special tokens) are drawn, so no
    variant drops or truncates one and all train the same tokens."""
    import random

    from sft.config import DataConfig, ModelConfig, PromptConfig
    from sft.data.load import load_records
    from sft.data.prompts import render_prompt
    from sft.model.load import load_tokenizer

    tokenizer, prompt = load_tokenizer(ModelConfig()), PromptConfig(name="alpaca")
    records = load_records(args.data, DataConfig(path=args.data)).records
    fits = [r for r in records
            if len(tokenizer(render_prompt(r, prompt, tokenizer) + r["output"])["input_ids"]) <= args.max_seq_len - 8]
    if args.examples > len(fits):
        sys.exit(f"--examples {args.examples}: {args.data} has {len(fits)} records that fit in {args.max_seq_len} tokens")
    picked = random.Random(0).sample(fits, args.examples)
    path = f"{args.tmp}-examples.json"
    with open(path, "w") as f:
        json.dump([{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]} for r in picked], f)
    return path


def variant_environment(choice: str) -> tuple[dict[str, str], str]:
    """The environment of every variant's process, and its allocator in words: the same for all three."""
    from sft.allocator import MALLOC_CONF, find_jemalloc

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    lib = None if choice == "system" else find_jemalloc()
    if lib is None:
        if choice == "jemalloc":
            sys.exit("--allocator jemalloc: no libjemalloc.so.2 found (Debian/Ubuntu: apt install libjemalloc2)")
        return env, "glibc malloc"
    env.update(LD_PRELOAD=lib, MALLOC_CONF=MALLOC_CONF)
    return env, f"jemalloc ({lib}, {MALLOC_CONF})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="Alpaca-format .json/.jsonl (e.g. ../shared/data/alpaca_en_demo.json)")
    parser.add_argument("--examples", type=int, default=160,
                        help="one epoch over this many records, the same for every variant (0: use --steps)")
    parser.add_argument("--steps", type=int, default=5,
                        help="with --examples 0: optimizer steps per variant (the first is warm-up)")
    parser.add_argument("--max-seq-len", type=int, default=512, help="tokens per example / packed row")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="rows per forward pass (sft-train's default)")
    parser.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step (sft-train's default)")
    parser.add_argument("--quant", default="nf4", choices=("nf4", "fp4", "int8", "none"))
    parser.add_argument("--compute-dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="4-bit compute dtype and autocast (auto: bf16 on GPU, fp32 on CPU); bfloat16 on a CPU "
                             "runs the GPU's precision, so the tensor peaks estimate GPU memory")
    parser.add_argument("--optim", default="auto", help="auto: paged_adamw_8bit on CUDA, adamw_torch on CPU (as sft-train)")
    parser.add_argument("--peak-tflops", type=float, default=989.4,
                        help="the GPU's dense bf16 peak for MFU (H100/H200 SXM: 989.4; 0 = no MFU)")
    parser.add_argument("--allocator", default="auto", choices=("auto", "jemalloc", "system"),
                        help="C allocator of every variant: auto = what sft's commands use (jemalloc with page decay "
                             "off when the system has it, see sft/allocator.py), system = glibc's malloc")
    parser.add_argument("--no-tensor-peak", action="store_true",
                        help="CPU: skip the extra profiled step that measures peak live tensor memory")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one variant, in-process
    parser.add_argument("--tmp", default="/tmp/sft-bench-train", help=argparse.SUPPRESS)
    parser.add_argument("--subset", help=argparse.SUPPRESS)  # internal: the --examples records, as a .json file
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args)))
        return
    import torch

    subset = []
    if args.examples:
        subset = ["--subset", write_subset(args)]
    env, allocator = variant_environment(args.allocator)
    results: dict[str, Any] = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, *sys.argv[1:], *subset, "--variant", variant]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(lines[-1].removeprefix("RESULT "))
    rate = {v: results[v]["trained_tokens_per_s"] for v in VARIANTS}
    share = {v: results[v]["real_share_of_token_slots"] for v in VARIANTS}
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "model": "embedded SmolLM2-135M-Instruct", "quant": args.quant, "compute_dtype": args.compute_dtype, "data": str(args.data),
        "work": f"one epoch over the same {args.examples} records" if args.examples else f"{args.steps} optimizer steps",
        "micro_batch_size": args.micro_batch_size, "grad_accum": args.grad_accum,
        "max_seq_len": args.max_seq_len, "allocator": allocator, "load_average_1m": os.getloadavg()[0],
        "variants": results,
        "packed_vs_padded": rate["packed"] / rate["padded"], "packed_vs_trl": rate["packed"] / rate["trl"],
        # where a step's cost is proportional to its token slots (compute-bound, as on CPU), packing can gain at
        # most what padding wastes: this ratio of real shares bounds packed_vs_padded (per-call costs aside)
        "packed_vs_padded_slot_bound": share["packed"] / share["padded"],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
