"""What each command does, on typed config: the bodies behind the console scripts."""

from __future__ import annotations

from pathlib import Path

from sft.config import MergeRunConfig, PrepareRunConfig, TrainRunConfig
from sft.data.inspect import render_example, summary_lines
from sft.data.prepare import Prepared, prepare, write_prepared
from sft.model import load_tokenizer


def run_prepare(cfg: PrepareRunConfig) -> Prepared:
    import datasets

    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare(cfg.data, cfg.prompt, tokenizer, cfg.seed, use_cache=cfg.cache)
    out = write_prepared(prepared, cfg.out_dir)
    for line in summary_lines(prepared.report):
        print(line)
    train = prepared.datasets["train"]
    for i in range(min(cfg.inspect, len(train))):
        print(f"\n--- train row {i} ({len(train[i]['input_ids'])} tokens; trained tokens highlighted) ---")
        print(render_example(train[i]["input_ids"], train[i]["labels"], tokenizer, color=None))
    print(f"\nwrote {Path(out) / 'dataset'} and {Path(out) / 'report.json'}")
    return prepared


def run_train(cfg: TrainRunConfig) -> int:
    """The exit status: 0 (trained, or already finished) or checkpoint.EXIT_PREEMPTED."""
    from sft.train import train

    status = train(cfg)  # on an exception torchrun ends the other ranks; no barrier they could hang in
    _leave_process_group()
    return status


def _leave_process_group() -> None:
    """Under torchrun, wait for every rank (rank 0 writes the artifacts last) and tear the process group down
    before exit: a rank leaving with live gloo threads aborts ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_merge(cfg: MergeRunConfig) -> Path:
    from sft.merge import merge

    return merge(cfg)
