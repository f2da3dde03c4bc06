"""sft-train: prepared rows + QLoRA model + transformers Trainer -> a self-describing, resumable run directory.

`train(cfg)` reads like a table of contents; the step loop belongs to the Trainer (sft/trainer.py), the run
directory to sft/rundir.py, checkpoints and preemption to sft/checkpoint.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sft.checkpoint import EXIT_PREEMPTED, Preemption, latest_checkpoint, read_sft_state, remove_staging
from sft.config import TrainRunConfig
from sft.data.collate import make_collator
from sft.data.inspect import summary_lines
from sft.data.prepare import Prepared, prepare
from sft.lora import add_lora, trainable_summary
from sft.metrics_log import MetricsFile, Progress, plot_loss, read_metrics, rewind_metrics, summary_line
from sft.model import load_model, load_tokenizer
from sft.rundir import differing_keys, mark_finished, read_run_config, run_config, run_status, write_run_files
from sft.trainer import LogAtCheckpoints, SftTrainer, StopOnPreemption, training_arguments


def build_model(cfg: TrainRunConfig, device: str) -> Any:
    """Quantized base + LoRA; the LoRA init is drawn from the seeded global RNG."""
    from transformers import set_seed

    set_seed(cfg.seed)
    model = add_lora(load_model(cfg.model, cfg.quant, device=device), cfg.quant, cfg.lora, cfg.train.gradient_checkpointing)
    return model


def build_trainer(cfg: TrainRunConfig, model: Any, prepared: Prepared, args: Any, tokenizer: Any, out: Path,
                  stopper: StopOnPreemption) -> SftTrainer:
    from transformers import ProgressCallback

    splits = prepared.datasets
    trainer = SftTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["eval"] if "eval" in splits else None,
        data_collator=make_collator(cfg.data.packing, tokenizer.pad_token_id),
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(Progress())
    trainer.add_callback(stopper)  # before LogAtCheckpoints, which logs at the checkpoint a preemption asks for
    trainer.add_callback(LogAtCheckpoints())
    trainer.add_callback(MetricsFile(out / "metrics.jsonl"))
    if args.process_index == 0:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        # events logged after the checkpoint a rerun resumes from (or all, with none) are hidden in TensorBoard:
        # those steps are trained and logged again
        checkpoint = latest_checkpoint(out / "checkpoints")
        purge_step = int(checkpoint.name.split("-")[1]) + 1 if checkpoint else 0
        board = TensorBoardCallback(tb_writer=SummaryWriter(str(out / "tensorboard"), purge_step=purge_step))
        board.logging_dir = str(out / "tensorboard")  # where it reopens its writer after train() closed it
        trainer.add_callback(board)
    return trainer


def resume_point(trainer: SftTrainer, out: Path) -> Path | None:
    """The newest complete checkpoint (its token count restored, later metrics dropped), or None."""
    checkpoint = latest_checkpoint(out / "checkpoints")
    if trainer.is_world_process_zero():
        remove_staging(out / "checkpoints")
        rewind_metrics(out / "metrics.jsonl", int(checkpoint.name.split("-")[1]) if checkpoint else -1)
    if checkpoint is not None:
        trainer.restore_sft_state(read_sft_state(checkpoint), str(checkpoint))
        print(f"resuming from {checkpoint}")
    return checkpoint


def trained_to_the_end(trainer: SftTrainer, checkpoint: Path) -> bool:
    """True when `checkpoint` holds the last step (the run stopped after it, before finishing): its weights and
    state are loaded, and no step is trained (the Trainer would train one more: it checks the step count only
    after a step)."""
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    if not 0 < state.max_steps <= state.global_step:
        return False
    # the file is rank 0's: each rank takes its own role back (only rank 0 writes metrics and prints)
    state.is_world_process_zero = trainer.is_world_process_zero()
    state.is_local_process_zero = trainer.is_local_process_zero()
    trainer.state = state
    trainer._load_from_checkpoint(str(checkpoint))
    return True


def one_answer(value: bool) -> bool:
    """Rank 0's value on every rank (evaluate() is collective: all ranks must make the same choice)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def finish(trainer: SftTrainer, out: Path, started: float) -> None:
    """Final eval (unless the last step has one, also from before a restart), adapter/, loss.png, finished.json
    and the one-line summary (rank 0 writes)."""
    step = trainer.state.global_step
    evaluated = one_answer(trainer.is_world_process_zero() and any(  # rank 0's metrics.jsonl decides
        "eval_loss" in r and r.get("step") == step for r in trainer.state.log_history + read_metrics(out / "metrics.jsonl")))
    if trainer.eval_dataset is not None and not evaluated:
        trainer.evaluate()
    trainer.save_model(str(out / "adapter"))
    if not trainer.is_world_process_zero():
        return
    metrics = read_metrics(out / "metrics.jsonl")
    plot_loss(metrics, out / "loss.png")
    line = summary_line(metrics, time.time() - started)
    mark_finished(out, {"global_step": trainer.state.global_step, "trained_tokens": trainer.trained_tokens, "summary": line})
    print(f"{line}\nrun directory: {out} (adapter in {out / 'adapter'})")


def prepare_run(cfg: TrainRunConfig, out: Path) -> tuple[Any, Prepared, Any]:
    """Tokenizer, prepared rows (rank 0 first: it fills the cache) and trainer arguments; rank 0 writes
    config.yaml, report.json and the tokenizer into the run directory."""
    from accelerate import PartialState

    tokenizer = load_tokenizer(cfg.model)
    with PartialState().main_process_first():
        prepared = prepare(cfg.data, cfg.prompt, tokenizer, cfg.seed, use_cache=cfg.cache)
    args = training_arguments(cfg.train, cfg.quant, cfg.seed, out, "eval" in prepared.datasets, cfg.model.dtype,
                              cfg.data.packing)
    if args.process_index == 0:
        write_run_files(out, run_config(cfg), prepared.report, tokenizer)
        print("\n".join(summary_lines(prepared.report)))
    return tokenizer, prepared, args


def train(cfg: TrainRunConfig) -> int:
    """Train (or resume, or recognise as finished) the run in cfg.out_dir. Returns the process exit status."""
    import datasets

    datasets.disable_progress_bars()
    started = time.time()
    out = Path(cfg.out_dir)
    status = run_status(out, run_config(cfg))
    if status == "finished":
        print(f"{out}: this run is already finished (finished.json); nothing to do")
        return 0
    if status == "restart":
        changed = [d.split(":")[0] for d in differing_keys(read_run_config(out), run_config(cfg))]
        print(f"{out}: the run there stopped before its first checkpoint; starting over with the changed "
              f"settings ({', '.join(changed)})")
    preemption = Preemption()
    preemption.install()  # a signal from here on stops at the first step boundary, with a checkpoint
    tokenizer, prepared, args = prepare_run(cfg, out)
    model = build_model(cfg, str(args.device))
    print(trainable_summary(model))
    stopper = StopOnPreemption(preemption)
    trainer = build_trainer(cfg, model, prepared, args, tokenizer, out, stopper)
    checkpoint = resume_point(trainer, out)
    if checkpoint is None and trainer.eval_dataset is not None and cfg.train.eval_at_start:
        trainer.evaluate()  # step 0: the eval loss before any training
        trainer.model._is_accelerate_prepared = False  # evaluate() marked it prepared: train() would skip DDP
    if checkpoint is not None and trained_to_the_end(trainer, checkpoint):
        print(f"{checkpoint} holds the last step: finishing the run")
        finish(trainer, out, started)
        return 0
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stopper.stopped_at is not None:
        if trainer.is_world_process_zero():
            print(f"{preemption.signal_name}: saved checkpoint-{stopper.stopped_at}; rerun the same command with "
                  f"out_dir={out.resolve()} to resume (exit {EXIT_PREEMPTED})")
        return EXIT_PREEMPTED
    finish(trainer, out, started)
    return 0
