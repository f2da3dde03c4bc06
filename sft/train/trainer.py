"""The transformers Trainer, fed with our rows and collators, plus what a run needs around its step loop:
atomic checkpoints, a trained-token counter that survives resumes, and stop-at-next-step on preemption.

The loss is normalized over every trained token of the optimizer step (all micro-batches, all ranks): the
step's labels[..., 1:] != -100 are counted before the step (`num_items_in_batch`, counted here whatever the model
declares: transformers counts nothing for models with `accepts_loss_kwargs=False`) and the summed token losses
are divided by that count, so accumulation and packing never turn it into a mean of means. In training the
sum comes from sft.train.loss (logits of trained positions only, in chunks). Evaluation is normalized the same way:
eval_loss is the summed loss of every held-out trained token over their number (each row's sum and count are
gathered across ranks), not a mean of per-batch means, so it does not depend on micro-batch size or packing.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainingArguments

from sft.train.checkpoint import AtomicCheckpointMixin
from sft.config import QuantConfig, TrainConfig
from sft.data.tokenize import IGNORE_INDEX
from sft.errors import ConfigError
from sft.train.loss import forward_trained_loss_sum, loss_parity, own_logits_loss_sum, trained_loss_per_row
from sft.model.kernels import kernel_arguments
from sft.model.quant import pick_device, weights_dtype


def pick_optimizer(name: str, device: str, fsdp: bool = False) -> str:
    """auto: paged_adamw_8bit on GPU, adamw_torch on CPU and under train.fsdp (the only one run on shards)."""
    if name != "auto":
        return name
    return "paged_adamw_8bit" if device == "cuda" and not fsdp else "adamw_torch"


def training_arguments(
    train: TrainConfig, quant: QuantConfig, seed: int, out_dir: Path, has_eval: bool, model_dtype: str = "auto",
    packing: bool = False,
) -> TrainingArguments:
    """model_dtype: ModelConfig.dtype, which sets the compute precision when nothing is quantized. packing: the
    rows are packed; each is evaluated on its own (see SftTrainer.prediction_step). Under train.fsdp checkpoints
    hold the adapter only: the Trainer cannot save the optimizer state of a model sharded before it."""
    device = pick_device()
    # bf16 -> bf16 autocast (on CPU too, when asked for: the GPU's numerics on a CPU); fp16 -> fp16 on GPU only
    dtype = str(weights_dtype(model_dtype, quant, device)).removeprefix("torch.")
    eval_steps = train.eval_steps if has_eval and train.eval_steps > 0 else None
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        report_to="none",  # TensorBoard is added by build_trainer, writing to out_dir/tensorboard on rank 0
        seed=seed,
        data_seed=seed,
        learning_rate=train.lr,
        lr_scheduler_type=train.scheduler,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        num_train_epochs=train.epochs,
        max_steps=train.max_steps if train.max_steps > 0 else -1,  # transformers: epochs only below 0
        per_device_train_batch_size=train.micro_batch_size,
        # packed rows are flattened into one [1, T] row per micro-batch, so one packed row per eval batch keeps
        # the per-row sums the evaluation loop gathers one per data set row (it drops the repeats that even
        # out the ranks' shards by counting rows)
        per_device_eval_batch_size=1 if packing else train.micro_batch_size,
        gradient_accumulation_steps=train.grad_accum,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=pick_optimizer(train.optim, device, train.fsdp),
        bf16=dtype == "bfloat16",
        fp16=device == "cuda" and dtype == "float16",
        logging_steps=train.logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        save_only_model=train.fsdp,
        remove_unused_columns=False,  # rows are already model inputs; position_ids must reach the model
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        average_tokens_across_devices=True,  # the loss divisor counts the trained tokens of every rank
        use_cpu=device == "cpu",
        disable_tqdm=False,
        **kernel_arguments(train.kernels),  # train.kernels=liger: transformers applies Liger when training starts
    )


class TokenMeanLoss:
    """compute_metrics of evaluation: predictions are per-row [loss sum, source index], label_ids per-row trained
    tokens. The loss is the mean per trained token over every held-out row; with several sources also each
    source's own (`loss/<name>`, logged as eval_loss/<name>)."""

    def __init__(self, names: list[str] | None = None) -> None:
        self.names = names or []

    def __call__(self, prediction: Any) -> dict[str, float]:
        import numpy as np

        predictions = np.asarray(prediction.predictions).reshape(-1, 2)
        sums, sources, counts = predictions[:, 0], predictions[:, 1].astype(int), np.asarray(prediction.label_ids)
        total, count = float(sums.sum()), int(counts.sum())
        out = {"loss": total / count if count else float("nan"), "trained_tokens": count}
        if len(self.names) > 1:
            for i, name in enumerate(self.names):
                mine = sources == i
                n = int(counts[mine].sum())
                if n:
                    out[f"loss/{name}"] = float(sums[mine].sum()) / n
        return out


class SftTrainer(AtomicCheckpointMixin, Trainer):
    """Trainer that counts trained tokens (for tokens/s and the metrics), evaluates the mean loss per trained
    token, and checkpoints atomically."""

    # our training loss is already divided by the step's trained tokens: the Trainer must not divide it by the
    # accumulation steps (it would, for a model that takes no loss kwargs)
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, source_names: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("compute_metrics", TokenMeanLoss(source_names))
        super().__init__(*args, **kwargs)
        self.trained_tokens = 0
        self._tokens_at_last_log = 0
        self._time_at_last_log: float | None = None  # set when the first step starts: setup is not timed
        self._own_loss: bool | None = None  # decided on the first micro-batch (check_loss)
        self.data_keys: dict[str, str] = {}  # source name -> cache key of its examples (checked on resume)
        self.data_paths: dict[str, str] = {}

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        """The step's micro-batches and its trained tokens over all ranks (what the loss is divided by). Counted
        here, not by the Trainer: it counts only for models that declare loss kwargs, and for a loss type it
        does not know to shift it would count labels[..., 0] too."""
        if self._time_at_last_log is None:
            self._time_at_last_log = time.perf_counter()
        batches = list(itertools.islice(epoch_iterator, num_batches))
        if not batches:
            return batches, None
        num_items = sum((b["labels"][..., 1:] != IGNORE_INDEX).sum() for b in batches).to(device)
        if self.args.world_size > 1:
            num_items = self.accelerator.gather(num_items).sum()
        self.trained_tokens += int(num_items.item())
        return batches, num_items

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Under FSDP2 every rank gathers the full trainable (adapter) weights, which rank 0 writes; the state dict
        peft would take from the model holds each rank's shards. Every rank gets here (save_model and checkpoints
        call it on all of them for a model sharded before the Trainer)."""
        from torch.distributed.tensor import DTensor

        if state_dict is None and any(isinstance(p, DTensor) for p in self.model.parameters()):
            state_dict = {name: p.full_tensor().detach().cpu() if isinstance(p, DTensor) else p.detach().cpu()
                          for name, p in self.model.named_parameters() if p.requires_grad}
        super()._save(output_dir, state_dict)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Training: trained-token loss sum / num_items_in_batch (the step's count, get_batch_samples), scaled by
        the number of processes as the Trainer scales a model's own loss (DDP averages gradients over ranks; the
        divisor already counts every rank's tokens). Never the model's own loss, a mean per micro-batch."""
        if not model.training or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if num_items_in_batch is None:
            raise RuntimeError("training loss: no trained-token count for the step (get_batch_samples gives one)")
        if self._own_loss is None:
            self._own_loss = self.check_loss(model, inputs)
        summed = None if self._own_loss else forward_trained_loss_sum(model, inputs)
        if summed is None:
            summed = own_logits_loss_sum(model, inputs)
        loss = summed[0] / num_items_in_batch
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss

    def check_loss(self, model: Any, inputs: dict[str, Any]) -> bool:
        """Once per run, on the first micro-batch: does the trained-positions head give the model's own loss? When
        it does not (a head that is more than a linear layer, undeclared), say so and use the model's own loss.
        Every rank takes the same decision."""
        import torch
        import torch.distributed as dist

        found = loss_parity(model, inputs)
        tolerance = 1e-3 if not (self.args.bf16 or self.args.fp16) else 2e-2
        differs = found is not None and not abs(found[0] - found[1]) <= tolerance * max(abs(found[1]), 1e-6)
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([float(differs)], device=self.args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            differs = bool(flag.item())
        if self.is_world_process_zero():
            if found is None:
                print("loss check: this model needs its own logits (soft-capping, logit scaling or a trained head)")
            else:
                verdict = "differs: training uses the model's own logits (all of them, more memory)" if differs else "equal"
                print(f"loss check on the first micro-batch: trained-positions head {found[0]:.6f}, "
                      f"the model's own {found[1]:.6f}: {verdict}")
        return differs

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[None, Any, Any]:
        """Evaluation: (no batch loss, per-row [loss sum, source], per-row trained-token counts); the evaluation loop
        gathers them across ranks (dropping the rows that even out the shards) and TokenMeanLoss divides."""
        import torch

        inputs = self._prepare_inputs(inputs)
        source = inputs.pop("source", None)
        with torch.no_grad(), self.compute_loss_context_manager():
            sums, counts = trained_loss_per_row(model, inputs)
        if source is None:
            source = torch.zeros_like(counts)
        if len(source) != len(sums):  # packed: one flattened row of (batch size 1) held-out rows of one source
            source = source[:1].expand(len(sums))
        return None, torch.stack([sums, source.to(sums.dtype)], dim=1), counts

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """As Trainer.evaluate; the time it takes is left out of the next tokens/s."""
        started = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            if self._time_at_last_log is not None:
                self._time_at_last_log += time.perf_counter() - started

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            since = self._time_at_last_log if self._time_at_last_log is not None else now
            logs["trained_tokens"] = self.trained_tokens
            logs["tokens_per_s"] = (self.trained_tokens - self._tokens_at_last_log) / max(now - since, 1e-9)
            self._tokens_at_last_log, self._time_at_last_log = self.trained_tokens, now
        super().log(logs, start_time)

    def sft_state(self) -> dict[str, Any]:
        return {"trained_tokens": self.trained_tokens, "world_size": self.args.world_size, "data": self.data_keys}

    def restore_sft_state(self, state: dict[str, Any], where: str = "the checkpoint") -> None:
        """Refuses another number of processes: each rank's shard of the data, the position to resume from in
        it, the rows per step and the per-rank RNG states all depend on it. Refuses changed data: the rows to resume
        from would be other rows."""
        saved = state.get("world_size")
        if saved is not None and saved != self.args.world_size:
            raise ConfigError(f"{where} was written by {saved} processes and this run has {self.args.world_size}: "
                              f"resume it with {saved} (torchrun --nproc-per-node, or the Slurm job's GPUs)")
        for name, key in (state.get("data") or {}).items():
            if name not in self.data_keys:
                raise ConfigError(f"{where} was trained with data source {name!r}, which this run does not have: "
                                  "resume with the same data.sources (or start a new run in another out_dir)")
            if self.data_keys[name] != key:
                raise ConfigError(f"data source {name!r} ({self.data_paths.get(name)}) is not the data {where} was "
                                  "trained on (its records or their preparation changed): resuming would continue on "
                                  "other rows; restore the file, or start a new run in another out_dir")
        self.trained_tokens = self._tokens_at_last_log = int(state.get("trained_tokens", 0))
