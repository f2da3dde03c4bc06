"""python benchmarks/bench_train_arch.py --arch llama-3.2-1b [--stacks ours,trl,hf] [--steps 6] [--smoke]

QLoRA training throughput of a real architecture, three training stacks side by side on the same tokens.
The model is built from the architecture's published shapes with random bf16 weights (no download), written
once to --workdir as a model directory, and loaded by every stack through sft's own loading path
(sft.model.load.load_model: transformers' from_pretrained with our nf4 settings, double quantization, bf16
compute on GPU); LoRA r=16, alpha 32, on all linear layers; gradient checkpointing, non-reentrant:
  ours  sft-train's path: add_lora (k-bit preparation, bf16 embeddings), SftTrainer with its trained-positions
        loss, our best-fit-decreasing packing (pack_examples), PackedCollator, sdpa_varlen attention
  trl   TRL's SFTTrainer on its best settings in trl 1.16: the quantized base and a peft LoraConfig (TRL adds
        the adapters), BFD packing (packing=True, packing_strategy="bfd", which implies padding_free=True),
        completion-only loss, loss_type="nll" (its loss without the full logits); --baseline-attn attention
  ours_liger  ours with train.kernels=liger (Liger's RoPE, RMSNorm, SwiGLU; CUDA only; not in the default --stacks)
  hf    plain transformers Trainer + PEFT: prepare_model_for_kbit_training, get_peft_model, one example per row
        padded to the longest of its micro-batch (DataCollatorForSeq2Seq), the model's own loss
The data are synthetic: random token ids, examples whose prompt and answer lengths are drawn from log-normal
distributions (PROMPT_MEDIAN, ANSWER_MEDIAN, scaled by --seq-len / 4096), the prompt masked out of the loss.
Every stack trains one epoch over the same examples (so the same trained tokens), after one untimed forward
and backward of a micro-batch (warm-up; no optimizer step). --steps sets the epoch: as many examples as our
packing fits into steps x grad-accum x micro-batch rows of --seq-len tokens; TRL packs them itself, and hf
takes as many examples per micro-batch as a packed row holds on average, so each stack makes about --steps
optimizer steps of about the same examples. Each stack runs in its own process.
Per stack: trained tokens/s, model TFLOP/s (bench_train.model_flops: real tokens only, checkpointing's
recompute not counted), MFU against the GPU's dense bf16 peak (gpu_peak_tflops, from the device name, or
--peak-tflops; none for an unknown GPU or a CPU), peak memory (CUDA: torch.cuda.max_memory_allocated over the
epoch, the model included; CPU: the process's peak RSS during it), and the same from the second step on.
--smoke runs the same code on the architecture scaled down (2 layers, hidden 256, vocabulary 8192), rows of
256 tokens and 2 steps of 2 micro-batches: the CPU test of this script. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import CountingCollator, RssSampler, model_flops, one_micro_batch, step_clock

STACKS = ("ours", "trl", "hf", "ours_liger")
DEFAULT_STACKS = ("ours", "trl", "hf")  # ours_liger: ours with train.kernels=liger (CUDA and liger-kernel only)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
ARCHS: dict[str, dict[str, Any]] = {  # the published config.json values (meta-llama on the Hub)
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, head_dim=64, tie_word_embeddings=True,
                         rope_parameters={**LLAMA3_ROPE, "factor": 32.0}),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=14336, vocab_size=128256, head_dim=128, tie_word_embeddings=False,
                         rope_parameters={**LLAMA3_ROPE, "factor": 8.0}),
}
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched as whole words of the
# lower-case device name, first match wins. A bare "H100" is not here: its SXM (989.4) and PCIe (756) parts
# differ by 30%, so it takes --peak-tflops.
GPU_PEAKS = (("h200 nvl", 835.5), ("h200", 989.4), ("gh200", 989.4), ("h100 pcie", 756.0), ("h100 nvl", 835.5),
             ("h100 sxm", 989.4), ("h100 80gb hbm3", 989.4), ("b200", 2250.0), ("a100", 312.0), ("l40s", 362.0),
             ("l40", 181.0), ("l4", 121.0), ("a10g", 70.0))
# Example lengths at 4096-token rows (log-normal: median, sigma of the log), an assumption resembling chat SFT
# mixes (short prompts, answers of a few hundred tokens, a long tail), not fitted to a named data set.
PROMPT_MEDIAN, PROMPT_SIGMA, ANSWER_MEDIAN, ANSWER_SIGMA = 180, 1.0, 320, 0.8
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # the synthetic tokenizer's specials; data ids start after them


def arch_config(name: str, smoke: bool = False) -> Any:
    """LlamaConfig of the published shapes; smoke: 2 layers, hidden 256, vocabulary 8192, the same head ratios,
    MLP ratio, rope and embedding tying."""
    from transformers import LlamaConfig

    shape = dict(ARCHS[name])
    if smoke:
        heads, kv = 8, 8 * shape["num_key_value_heads"] // shape["num_attention_heads"]
        ratio = shape["intermediate_size"] / shape["hidden_size"]
        shape.update(hidden_size=256, num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv,
                     head_dim=256 // heads, intermediate_size=int(256 * ratio), vocab_size=8192)
    return LlamaConfig(**shape, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
                       pad_token_id=PAD_ID, bos_token_id=UNK_ID, eos_token_id=EOS_ID)


def parameter_count(config: Any) -> int:
    """Parameters of the model `config` describes, built on the meta device (no memory); tied weights once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def gpu_peak_tflops(name: str) -> float | None:
    lowered = name.lower()
    return next((peak for key, peak in GPU_PEAKS if re.search(rf"\b{key}\b", lowered)), None)


def write_model(args: argparse.Namespace) -> None:
    """The random model (bf16, on the GPU when there is one: initializing 8B parameters there takes seconds) and a
    three-token tokenizer, saved as a model directory that from_pretrained reads."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(arch_config(args.arch, args.smoke), dtype=torch.bfloat16)
    model.save_pretrained(args.model_dir)
    vocab = {"<pad>": PAD_ID, "<eos>": EOS_ID, "<unk>": UNK_ID}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                        pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.save_pretrained(args.model_dir)


def draw_examples(count: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """`count` examples {input_ids, labels}: a prompt (masked) then an answer ending in EOS; none longer than a row."""
    from sft.data.tokenize import IGNORE_INDEX

    rng, scale, examples = random.Random(seed), seq_len / 4096, []
    while len(examples) < count:
        prompt = max(2, round(rng.lognormvariate(math.log(PROMPT_MEDIAN * scale), PROMPT_SIGMA)))
        answer = max(2, round(rng.lognormvariate(math.log(ANSWER_MEDIAN * scale), ANSWER_SIGMA)))
        if prompt + answer > seq_len:
            continue  # drawn again: no stack truncates or drops an example
        ids = [rng.randrange(UNK_ID + 1, vocab) for _ in range(prompt + answer - 1)] + [EOS_ID]
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return examples


class Workload(NamedTuple):
    examples: list[dict[str, list[int]]]  # what every stack trains, one epoch
    rows: list[Any]  # our packing of them (sft.data.packing.pack_examples)
    plan: dict[str, int]  # examples, packed_rows, hf_examples_per_micro_batch


def workload(args: argparse.Namespace, vocab: int) -> Workload:
    """The most examples whose packing fits in steps x grad-accum x micro-batch rows (the same in every process)."""
    from sft.data.packing import pack_examples

    rows_wanted = args.steps * args.grad_accum * args.micro_batch_rows
    mean = PROMPT_MEDIAN * math.exp(PROMPT_SIGMA**2 / 2) + ANSWER_MEDIAN * math.exp(ANSWER_SIGMA**2 / 2)
    pool = draw_examples(int(2 * rows_wanted * 4096 / mean) + 8, args.seq_len, vocab)
    count = 1
    while count < len(pool) and len(pack_examples(pool[: count + 1], args.seq_len, seed=0)) <= rows_wanted:
        count += 1
    examples = pool[:count]
    rows = pack_examples(examples, args.seq_len, seed=0)
    plan = {"examples": count, "packed_rows": len(rows), "hf_examples_per_micro_batch": max(1, round(count / len(rows)))}
    return Workload(examples, rows, plan)


def train_arguments(args: argparse.Namespace, quant: Any, packing: bool) -> Any:
    """sft-train's TrainingArguments (sft.train.trainer.training_arguments) for one epoch; the other stacks copy
    their hyperparameters from it."""
    from sft.config import TrainConfig
    from sft.train.trainer import training_arguments

    train = TrainConfig(max_steps=-1, epochs=1, micro_batch_size=args.micro_batch_rows, grad_accum=args.grad_accum,
                        save_steps=10**6, logging_steps=10**6,
                        kernels="liger" if args.stack == "ours_liger" else "none")  # applied by trainer.train()
    targs = training_arguments(train, quant, 0, Path(args.workdir) / args.stack, has_eval=False, packing=packing)
    targs.save_strategy, targs.disable_tqdm = "no", True
    return targs


def same_hyperparameters(targs: Any) -> dict[str, Any]:
    keys = ("learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "gradient_accumulation_steps",
            "weight_decay", "max_grad_norm", "optim", "bf16", "fp16", "logging_steps", "seed", "data_seed",
            "dataloader_num_workers", "use_cpu")
    return {k: getattr(targs, k) for k in keys} | {"output_dir": targs.output_dir, "save_strategy": "no",
                                                   "report_to": "none", "disable_tqdm": True}


def lora_settings() -> Any:
    """sft-train's LoRA defaults (sft.schemas.LoraConfig): r=16, alpha 32, dropout 0.05, all linear layers."""
    from sft.config import LoraConfig

    return LoraConfig()


def build_ours(args: argparse.Namespace, base: Any, tokenizer: Any, work: Workload, quant: Any) -> tuple[Any, Any]:
    import datasets

    from sft.data.collate import PackedCollator
    from sft.model.lora import add_lora
    from sft.train.trainer import SftTrainer

    model = add_lora(base, quant, lora_settings(), gradient_checkpointing=True)
    counter = CountingCollator(PackedCollator())
    trainer = SftTrainer(model=model, args=train_arguments(args, quant, packing=True),
                         train_dataset=datasets.Dataset.from_list(work.rows), data_collator=counter)
    return trainer, counter


def build_trl(args: argparse.Namespace, base: Any, tokenizer: Any, work: Workload, quant: Any) -> tuple[Any, Any]:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from sft.data.tokenize import IGNORE_INDEX
    from sft.model.lora import peft_config

    rows = [{"input_ids": ex["input_ids"], "completion_mask": [int(label != IGNORE_INDEX) for label in ex["labels"]]}
            for ex in work.examples]  # TRL's own tokenized prompt-completion form
    config = SFTConfig(**same_hyperparameters(train_arguments(args, quant, packing=True)),
                       per_device_train_batch_size=args.micro_batch_rows, max_length=args.seq_len, packing=True,
                       packing_strategy="bfd", padding_free=True, completion_only_loss=True, loss_type="nll",
                       gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer = SFTTrainer(model=base, args=config, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config(lora_settings()))
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    return trainer, counter


def build_hf(args: argparse.Namespace, base: Any, tokenizer: Any, work: Workload, quant: Any) -> tuple[Any, Any]:
    import datasets
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from sft.data.tokenize import IGNORE_INDEX
    from sft.model.lora import peft_config

    model = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, peft_config(lora_settings()))
    model.config.use_cache = False  # as PEFT's QLoRA examples do: no KV cache built in training
    rows = [{**ex, "attention_mask": [1] * len(ex["input_ids"])} for ex in work.examples]
    targs = TrainingArguments(**same_hyperparameters(train_arguments(args, quant, packing=False)),
                              per_device_train_batch_size=work.plan["hf_examples_per_micro_batch"])
    counter = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX))
    trainer = Trainer(model=model, args=targs, train_dataset=datasets.Dataset.from_list(rows), data_collator=counter)
    return trainer, counter


def cuda_sync_callback() -> Any:
    """Before the step clock: CUDA runs asynchronously, so a step ends when its kernels have."""
    import torch
    from transformers import TrainerCallback

    class Sync(TrainerCallback):
        def on_step_end(self, *a: Any, **kw: Any) -> None:
            torch.cuda.synchronize()

    return Sync()


def rates(marks: list[tuple[float, int, int, int, int]], config: Any, lora_params: int, peak: float | None) -> dict[str, Any]:
    (t0, trained0, _, real0, pairs0), (t1, trained1, _, real1, pairs1) = marks[0], marks[-1]
    flops = model_flops(config, lora_params, real1 - real0, pairs1 - pairs0) / (t1 - t0)
    return {"trained_tokens_per_s": (trained1 - trained0) / (t1 - t0), "model_tflops_per_s": flops / 1e12,
            "mfu": flops / 1e12 / peak if peak else None, "seconds": t1 - t0, "trained_tokens": trained1 - trained0}


def run_stack(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import set_seed

    from sft.config import ModelConfig, QuantConfig
    from sft.model.load import load_model, load_tokenizer

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)"
    peak = args.peak_tflops or (gpu_peak_tflops(device) if cuda else None)
    quant = QuantConfig(name="nf4")
    attn = "sdpa_varlen" if args.stack.startswith("ours") else args.baseline_attn
    set_seed(0)
    started = time.perf_counter()
    base = load_model(ModelConfig(path=args.model_dir, attn_implementation=attn), quant)
    load_s = time.perf_counter() - started
    work = workload(args, base.config.vocab_size)
    if args.stack == "ours_liger":
        from sft.model.kernels import check_kernels

        check_kernels("liger", "cuda" if cuda else "cpu")  # the Trainer applies them when train() starts, as in sft-train
    builder = {"ours": build_ours, "trl": build_trl, "hf": build_hf, "ours_liger": build_ours}[args.stack]
    trainer, counter = builder(args, base, load_tokenizer(ModelConfig(path=args.model_dir)), work, quant)
    if cuda:
        trainer.add_callback(cuda_sync_callback())
    clock = step_clock(counter)
    trainer.add_callback(clock)
    one_micro_batch(trainer, counter)  # warm-up: kernels, allocator
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with RssSampler() as rss:
        trainer.train()
    model = trainer.model
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = model.config
    out = {"device": device, "peak_tflops": peak, "attention": attn, "load_s": load_s, **work.plan,
           "optimizer_steps": len(clock.marks) - 1, "micro_batch_rows": args.micro_batch_rows,
           **rates(clock.marks, config, lora_params, peak), "lora_params": lora_params,
           "peak_memory_mib": (torch.cuda.max_memory_allocated() if cuda else rss.peak) / 2**20,
           "peak_memory_of": "torch.cuda.max_memory_allocated" if cuda else "process RSS",
           "train_loss": next((e["train_loss"] for e in trainer.state.log_history if "train_loss" in e), None)}
    if len(clock.marks) > 2:  # from the end of the first step: optimizer state and first-step costs left out
        out["from_step_2"] = rates(clock.marks[1:], config, lora_params, peak)
    return out


def run_subprocess(args: argparse.Namespace, extra: list[str]) -> tuple[dict[str, Any] | None, str]:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--workdir", args.workdir, *extra]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.stack_timeout or None)
    except subprocess.TimeoutExpired as e:
        return None, f"timed out after {args.stack_timeout} s: {(e.stderr or b'')[-2000:]!r}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return None, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT ")), ""


def summarize(args: argparse.Namespace, results: dict[str, Any], stacks: list[str]) -> dict[str, Any]:
    config = arch_config(args.arch, args.smoke)
    ok = {s: r for s, r in results.items() if "error" not in r}
    rate = {s: r["trained_tokens_per_s"] for s, r in ok.items()}
    first = next(iter(ok.values()), {})
    summary = {
        "arch": args.arch, "smoke": args.smoke, "parameters": parameter_count(config), "device": first.get("device"),
        "shape": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                  "num_key_value_heads", "intermediate_size", "vocab_size",
                                                  "tie_word_embeddings")},
        "quant": "nf4, double quantization", "lora": "r=16, alpha 32, all linear layers", "seq_len": args.seq_len,
        "micro_batch_rows": args.micro_batch_rows, "grad_accum": args.grad_accum, "steps": args.steps,
        "example_lengths": f"log-normal at 4096-token rows, scaled by {args.seq_len / 4096:g}: prompt median "
                           f"{PROMPT_MEDIAN} (sigma {PROMPT_SIGMA}), answer median {ANSWER_MEDIAN} (sigma {ANSWER_SIGMA})",
        "stacks": results,
        "same_trained_tokens": len({r["trained_tokens"] for r in ok.values()}) == 1 and len(ok) == len(stacks),
    }
    for other in ("trl", "hf"):
        if "ours" in rate and other in rate:
            summary[f"ours_vs_{other}"] = rate["ours"] / rate[other]
    if "ours" in rate and "ours_liger" in rate:
        summary["liger_vs_ours"] = rate["ours_liger"] / rate["ours"]
        summary["liger_train_loss_vs_ours"] = [ok["ours_liger"]["train_loss"], ok["ours"]["train_loss"]]
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=tuple(ARCHS))
    parser.add_argument("--stacks", default=",".join(DEFAULT_STACKS), help="comma-separated, of: " + ", ".join(STACKS))
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of our packing (the epoch's size)")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per packed row (TRL's max_length)")
    parser.add_argument("--micro-batch-rows", type=int, default=1, help="packed rows per micro-batch (ours, TRL)")
    parser.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    parser.add_argument("--baseline-attn", default="sdpa", help="attn_implementation of trl and hf (flash_attention_2 "
                                                                "where flash-attn is installed)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="dense bf16 peak for MFU; 0: from the device name (gpu_peak_tflops), none if unknown")
    parser.add_argument("--smoke", action="store_true", help="CPU test: scaled-down architecture, 256-token rows, 2 steps")
    parser.add_argument("--workdir", default=None, help="where the random model is written (default: a temp dir)")
    parser.add_argument("--stack-timeout", type=float, default=0, help="seconds per stack's process (0: none)")
    parser.add_argument("--stack", choices=STACKS, help=argparse.SUPPRESS)  # internal: one stack, in-process
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--write-model", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.smoke:
        args.seq_len, args.steps, args.grad_accum = 256, 2, 2
    return args


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.write_model or args.stack:
        if args.write_model:
            write_model(args)
        print("RESULT " + json.dumps(run_stack(args) if args.stack else {}))
        return
    stacks = [s for s in args.stacks.split(",") if s]
    if unknown := set(stacks) - set(STACKS):
        sys.exit(f"--stacks: unknown {', '.join(sorted(unknown))} (choose from {', '.join(STACKS)})")
    with tempfile.TemporaryDirectory(prefix="sft-bench-arch-", dir=args.workdir) as workdir:
        args.workdir, model_dir = workdir, str(Path(workdir) / "model")
        written, error = run_subprocess(args, ["--write-model", "--model-dir", model_dir])
        if written is None:
            sys.exit(f"writing the random {args.arch} failed:\n{error}")
        results: dict[str, Any] = {}
        for stack in stacks:
            result, error = run_subprocess(args, ["--stack", stack, "--model-dir", model_dir])
            results[stack] = result if result is not None else {"error": error}
            print(f"{stack}: {json.dumps(results[stack])}", file=sys.stderr, flush=True)  # kept if a later one hangs
    print(json.dumps(summarize(args, results, stacks), indent=2))
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
