"""sft-train: prepared rows + QLoRA model + transformers Trainer -> a self-describing, resumable run directory.

`run(cfg)` reads like a table of contents; the step loop belongs to the Trainer (sft.train.trainer), the run
directory to sft.run.RunDir, checkpoints and preemption to sft.train.checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sft.config import TrainRunConfig
from sft.data.collate import make_collator
from sft.data.contamination import tracker_figures
from sft.data.inspect import summary_lines
from sft.data.prepare import Prepared, prepare
from sft.errors import ConfigError
from sft.model.load import load_model, load_tokenizer
from sft.model.lora import add_lora, trainable_summary
from sft.model.quant import pick_device
from sft.model.fsdp import check_fsdp, load_in_turn, shard_fsdp
from sft.model.kernels import check_kernels, kernels_line
from sft.run.adapter import find_adapter
from sft.run.checkpoints import checkpoint_step, read_sft_state, remove_staging
from sft.run.rundir import FINISHED, RunDir, run_config
from sft.run.trackers import KINDS, TRACKERS_FILE, attach, check_installed, chosen
from sft.train.callbacks import LogAtCheckpoints, MetricsFile, Progress, StopOnPreemption, TrackerLogs
from sft.train.checkpoint import EXIT_PREEMPTED, Preemption, PreemptedBeforeTraining
from sft.train.report import plot_loss, summary_line
from sft.train.trainer import SftTrainer, training_arguments


def build_model(cfg: TrainRunConfig, device: str) -> Any:
    """Quantized base + LoRA; the LoRA init is drawn from the seeded global RNG (or is train.init_adapter)."""
    from transformers import set_seed

    set_seed(cfg.seed)
    base = load_model(cfg.model, cfg.quant, device=device)
    applied = kernels_line(base, cfg.train.kernels)  # the Trainer applies them (training_arguments)
    if applied:
        print(applied)
    init = initial_adapter(cfg)
    if init is not None:
        print(f"starting from the adapter in {init}")
    return add_lora(base, cfg.quant, cfg.lora, cfg.train.gradient_checkpointing, init_adapter=init)


def initial_adapter(cfg: TrainRunConfig) -> Path | None:
    """train.init_adapter's adapter directory; refused when it comes from a run on another base."""
    if cfg.train.init_adapter is None:
        return None
    source = find_adapter(cfg.train.init_adapter)
    if source.run is not None and source.run.model().path != cfg.model.path:
        raise ConfigError(f"train.init_adapter={cfg.train.init_adapter}: trained on model.path="
                          f"{source.run.model().path}, not on this run's model.path={cfg.model.path}")
    return source.path


def build_trainer(cfg: TrainRunConfig, model: Any, prepared: Prepared, args: Any, tokenizer: Any, run: RunDir,
                  stopper: StopOnPreemption, trackers: list[Any]) -> SftTrainer:
    from transformers import ProgressCallback

    splits = prepared.datasets
    trainer = SftTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["eval"] if "eval" in splits else None,
        data_collator=make_collator(cfg.data.packing, tokenizer.pad_token_id),
        source_names=list(prepared.report.get("sources", {})),
    )
    sources = prepared.report.get("sources", {})
    trainer.data_keys = {name: r["cache"]["key"] for name, r in sources.items()}
    trainer.data_paths = {name: r["path"] for name, r in sources.items()}
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(Progress())
    trainer.add_callback(stopper)  # before LogAtCheckpoints, which logs at the checkpoint a preemption asks for
    trainer.add_callback(LogAtCheckpoints())
    trainer.add_callback(MetricsFile(run.metrics_file))
    trainer.trackers = trackers  # type: ignore[attr-defined]
    if trackers:  # what was logged up to the checkpoint to resume from (metrics.jsonl, before resume_point cuts it)
        checkpoint = run.latest_checkpoint()
        upto = checkpoint_step(checkpoint) if checkpoint else -1
        trainer.add_callback(TrackerLogs(trackers, [r for r in run.read_metrics() if r.get("step", -1) <= upto]))
    if args.process_index == 0 and "tensorboard" in chosen(cfg.train.report_to):
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        # events logged after the checkpoint a rerun resumes from (or all, with none) are hidden in TensorBoard:
        # those steps are trained and logged again
        checkpoint = run.latest_checkpoint()
        purge_step = checkpoint_step(checkpoint) + 1 if checkpoint else 0
        board = TensorBoardCallback(tb_writer=SummaryWriter(str(run.tensorboard), purge_step=purge_step))
        board.logging_dir = str(run.tensorboard)  # where it reopens its writer after train() closed it
        trainer.add_callback(board)
    return trainer


def tracker_config(cfg: TrainRunConfig, report: dict[str, Any]) -> dict[str, Any]:
    """What a tracker run records of the run: its resolved config and the data report's figures."""
    train = report["splits"]["train"]
    data = {"records_read": report["records_read"], "bad_records": report["bad_records"], "kept": train["kept"],
            "total_tokens": train["total_tokens"], "trained_tokens": train["trained_tokens"]}
    if "packing" in train:
        data["packing_efficiency"] = round(train["packing"]["efficiency"], 4)
    for name, source in report.get("sources", {}).items():
        if len(report["sources"]) > 1:
            data[f"source/{name}/drawn"] = source["mixture"]["drawn"]
            data[f"source/{name}/share_of_examples"] = round(source["mixture"]["share_of_examples"], 4)
    data.update(tracker_figures(report))  # duplicates/<kind>, contamination/<set>
    return {**run_config(cfg), "data_report": data}


def close_trackers(trainer: SftTrainer, summary: dict[str, Any] | None = None) -> None:
    for tracker in getattr(trainer, "trackers", []):
        if summary:
            tracker.summarize(summary)
        tracker.finish()


def resume_point(trainer: SftTrainer, run: RunDir) -> Path | None:
    """The newest complete checkpoint (its token count restored, later metrics dropped), or None."""
    checkpoint = run.latest_checkpoint()
    if trainer.is_world_process_zero():
        remove_staging(run.checkpoints)
        run.rewind_metrics(checkpoint_step(checkpoint) if checkpoint else -1)
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


def finish(trainer: SftTrainer, run: RunDir, started: float) -> None:
    """Final eval (unless the last step has one, also from before a restart), adapter/, loss.png, finished.json
    and the one-line summary (rank 0 writes)."""
    step = trainer.state.global_step
    evaluated = one_answer(trainer.is_world_process_zero() and any(  # rank 0's metrics.jsonl decides
        "eval_loss" in r and r.get("step") == step for r in trainer.state.log_history + run.read_metrics()))
    if trainer.eval_dataset is not None and not evaluated:
        trainer.evaluate()
    trainer.save_model(str(run.adapter))
    if not trainer.is_world_process_zero():
        return
    metrics = run.read_metrics()
    plot_loss(metrics, run.path / "loss.png")
    line = summary_line(metrics, time.time() - started)
    run.mark_finished({"global_step": trainer.state.global_step, "trained_tokens": trainer.trained_tokens, "summary": line})
    final = metrics[-1] if metrics else {}
    close_trackers(trainer, {"summary": line, "global_step": trainer.state.global_step,
                             "trained_tokens": trainer.trained_tokens,
                             **{f"final/{k}": v for k, v in final.items() if k.startswith("eval_loss")}})
    print(f"{line}\nrun directory: {run.path} (adapter in {run.adapter})")


def prepare_run(cfg: TrainRunConfig, run: RunDir) -> tuple[Any, Prepared, Any]:
    """Tokenizer, prepared rows (rank 0 first: it fills the cache) and trainer arguments; rank 0 writes
    config.yaml, report.json and the tokenizer into the run directory."""
    from accelerate import PartialState

    tokenizer = load_tokenizer(cfg.model)
    from sft.model.quant import pick_device

    # one preparation per node; the other ranks wait, then memory-map it (cpu=True: under torchrun on CPU, accelerate
    # otherwise takes every rank for a single process, and each would prepare at once)
    with PartialState(cpu=pick_device() == "cpu").local_main_process_first():
        prepared = prepare(cfg.data, cfg.prompt, tokenizer, cfg.seed, use_cache=cfg.cache)
    args = training_arguments(cfg.train, cfg.quant, cfg.seed, run.path, "eval" in prepared.datasets, cfg.model.dtype,
                              cfg.data.packing)
    if args.process_index == 0:
        run.begin(run.as_written(cfg), prepared.report, tokenizer)
        print("\n".join(summary_lines(prepared.report)))
    return tokenizer, prepared, args


def run(cfg: TrainRunConfig) -> int:
    """sft-train: the exit status, 0 (trained, or already finished) or EXIT_PREEMPTED."""
    status = train(cfg)  # on an exception torchrun ends the other ranks; no barrier they could hang in
    leave_process_group()
    return status


def leave_process_group() -> None:
    """Under torchrun, wait for every rank (rank 0 writes the artifacts last) and tear the process group down
    before exit: a rank leaving with live gloo threads aborts ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def extend_finished_run(run: RunDir, cfg: TrainRunConfig) -> bool:
    """A finished run asked for more (train.max_steps above the steps it trained, or more train.epochs), nothing
    else changed: it is unfinished again, with the new config, and resumes from its last checkpoint."""
    if not (run.has_config and run.is_finished and run.latest_checkpoint() is not None):
        return False
    wanted = run.as_written(cfg)
    changed = run.changed_keys(wanted)
    if not changed or set(changed) - {"train.max_steps", "train.epochs"}:
        return False
    old, new = run.config.get("train", {}), wanted["train"]
    trained = json.loads((run.path / FINISHED).read_text()).get("global_step", 0)
    if new["max_steps"] > 0:
        more = new["max_steps"] > trained
    else:
        more = old.get("max_steps", -1) <= 0 and new["epochs"] > old.get("epochs", new["epochs"])
    if not more:
        return False  # fewer steps or epochs: the usual error names the keys
    (run.path / FINISHED).unlink(missing_ok=True)  # every rank may get here: each step is safe to repeat
    run.write_config(wanted)
    settings = ", ".join(f"{key}={new[key.removeprefix('train.')]}" for key in changed)
    print(f"{run.path}: the finished run goes on ({settings}), from its last checkpoint")
    return True


def train(cfg: TrainRunConfig) -> int:
    """Train (or resume, or recognise as finished) the run in cfg.out_dir. Returns the process exit status."""
    import datasets

    datasets.disable_progress_bars()
    started = time.time()
    run = RunDir(cfg.out_dir)
    out = run.path
    cfg = run.keep_split(cfg)
    extended = extend_finished_run(run, cfg)
    status = run.status(run.as_written(cfg))
    if status == "finished":
        print(f"{out}: this run is already finished (finished.json); nothing to do")
        return 0
    if status == "restart":
        changed = run.changed_keys(run.as_written(cfg))
        print(f"{out}: the run there stopped before its first checkpoint; starting over with the changed "
              f"settings ({', '.join(changed)})")
        (out / TRACKERS_FILE).unlink(missing_ok=True)  # other settings: new tracker runs, not the old ones continued
    if status in ("new", "restart"):
        run.forget_held_out()  # training starts from step 0: the split it draws now is the one recorded
    check_installed(cfg.train.report_to)  # before any model loads
    if cfg.train.fsdp:  # before anything loads: the data, the tokenizer, the model
        check_fsdp(cfg.quant, pick_device(), int(os.environ.get("WORLD_SIZE", "1")), cfg.train.optim,
                   resuming=run.latest_checkpoint() is not None)
    initial_adapter(cfg)  # so is a wrong train.init_adapter
    preemption = Preemption()
    preemption.install()  # until the step loop starts a signal ends the run at once, then at a step boundary
    try:
        return train_run(cfg, run, preemption, started, extended)
    except PreemptedBeforeTraining as stop:
        print(f"{stop.signal_name} before the first training step: nothing trained to save; rerun the same command "
              f"to start (exit {EXIT_PREEMPTED})", flush=True)
        return EXIT_PREEMPTED
    finally:
        preemption.uninstall()


def sharded(model: Any) -> tuple[Any, str]:
    """The model sharded with FSDP2, and the summary lines to print (its trainable parameters are counted before
    sharding: a shard would count half)."""
    summary = trainable_summary(model)
    return model, f"{summary}\n{shard_fsdp(model)}"


def train_run(cfg: TrainRunConfig, run: RunDir, preemption: Preemption, started: float, extended: bool = False) -> int:
    out = run.path
    tokenizer, prepared, args = prepare_run(cfg, run)
    check_kernels(cfg.train.kernels, args.device.type)
    trackers = []  # rank 0's W&B / MLflow / trackio runs, attached before the model loads (a store it cannot use fails fast)
    if args.process_index == 0 and any(n in KINDS for n in chosen(cfg.train.report_to)):
        trackers = attach(run.path, cfg.train.report_to, cfg.train.project, cfg.train.run_name or run.path.resolve().name,
                          tracker_config(cfg, prepared.report))
    if cfg.train.fsdp:  # after LoRA: the adapters are sharded with the blocks that hold them
        model, line = load_in_turn(lambda: sharded(build_model(cfg, str(args.device))))
        if args.process_index == 0:
            print(line)
    else:
        model = build_model(cfg, str(args.device))
        print(trainable_summary(model))
    stopper = StopOnPreemption(preemption)
    trainer = build_trainer(cfg, model, prepared, args, tokenizer, run, stopper, trackers)
    checkpoint = resume_point(trainer, run)  # refuses changed data: what held_out.json records is what is trained
    if trainer.is_world_process_zero():
        run.record_held_out(prepared.held_out, resumed=checkpoint is not None)
    if checkpoint is None and trainer.eval_dataset is not None and cfg.train.eval_at_start:
        trainer.evaluate()  # step 0: the eval loss before any training
        trainer.model._is_accelerate_prepared = False  # evaluate() marked it prepared: train() would skip DDP
    if checkpoint is not None and not extended and trained_to_the_end(trainer, checkpoint):
        print(f"{checkpoint} holds the last step: finishing the run")
        finish(trainer, run, started)
        return 0
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stopper.stopped_at is not None:
        close_trackers(trainer)
        if trainer.is_world_process_zero():
            print(f"{preemption.signal_name}: saved checkpoint-{stopper.stopped_at}; rerun the same command with "
                  f"out_dir={out.resolve()} to resume (exit {EXIT_PREEMPTED})")
        return EXIT_PREEMPTED
    finish(trainer, run, started)
    return 0
