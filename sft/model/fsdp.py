"""`train.fsdp=true`: the (PEFT, 4-bit) model sharded with torch's FSDP2 across the torchrun processes."""

from __future__ import annotations

import os
from typing import Any, Callable

from sft.config import QuantConfig
from sft.errors import ConfigError
from sft.model.quant import compute_dtype


FSDP_OPTIMIZERS = ("auto", "adamw_torch")  # the ones run on sharded parameters (auto: adamw_torch under FSDP)


def check_fsdp(quant: QuantConfig, device: str, world_size: int, optim: str = "auto", resuming: bool = False) -> None:
    """At start-up, before anything loads: train.fsdp=true needs several processes, and 4-bit weights stored in
    the dtype of the model's other parameters (bitsandbytes packs two 4-bit values per byte of `quant_storage`):
    the layout FSDP1's flat parameters need (one dtype per unit), and the one tested end to end here. torch 2.13's
    FSDP2 also ran a forward and backward with the default uint8 storage on CPU in a quick probe, but no loss
    curve was checked: untested layouts are refused, not trusted. LLM.int8 was not tried and is refused too.
    Refused as well: optimizers other than torch's AdamW (bitsandbytes' paged and 8-bit ones have never run on
    FSDP2's DTensor shards), and resuming (checkpoints hold the adapter, not the sharded optimizer state)."""
    problems = []
    if world_size < 2:
        problems.append("train.fsdp=true shards the model across processes and this run has 1: launch it with "
                        "torchrun --nproc-per-node=N (N >= 2), or set train.fsdp=false")
    if quant.name == "int8":
        problems.append("train.fsdp=true with quant=int8: LLM.int8 weights cannot be sharded; use quant=nf4 or fp4")
    elif quant.name != "none":
        wanted = str(compute_dtype(quant.compute_dtype, device)).removeprefix("torch.")
        if quant.quant_storage != wanted:
            problems.append(f"train.fsdp=true with quant={quant.name} needs quant.quant_storage={wanted} (the dtype of "
                            f"the model's other parameters on {device}), not {quant.quant_storage}")
    if optim not in FSDP_OPTIMIZERS:
        problems.append(f"train.fsdp=true with train.optim={optim}: only torch's AdamW has run on sharded parameters "
                        "(bitsandbytes' paged and 8-bit optimizers never have); use train.optim=auto or adamw_torch")
    if resuming:
        problems.append("train.fsdp=true runs do not resume (their checkpoints hold the adapter, not the sharded "
                        "optimizer state); start a new run in another out_dir")
    if problems:
        raise ConfigError("; ".join(problems))


def four_bit_bytes(model: Any) -> tuple[int, int]:
    """(bytes of packed 4-bit weights held by this process, number of 4-bit layers): the local shard of each
    Linear4bit weight under FSDP2, the whole weight otherwise."""
    import bitsandbytes as bnb
    from torch.distributed.tensor import DTensor

    total, layers = 0, 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight.to_local() if isinstance(module.weight, DTensor) else module.weight
            total += weight.numel() * weight.element_size()
            layers += 1
    return total, layers


def shard_fsdp(model: Any) -> str:
    """Shard a (PEFT) causal LM with FSDP2 in place across the default process group: one unit per transformer
    block (the model's `_no_split_modules`), one for the output head, one for the rest; returns a summary.

    This is torch's own `fully_shard`, not accelerate's: accelerate keeps an FSDP plugin only for GPU-like
    devices and silently trains with DDP on CPU. The head is a unit of its own because sft.train.loss applies it
    outside the model's forward: it unshards exactly that unit (see `unsharded_head` there). The shards of a 4-bit
    weight are its packed bytes; the all-gathered weight is a plain tensor without quant_state, and bitsandbytes
    gives it back in the layer's forward from the copy it keeps on the module
    (`fix_4bit_weight_quant_state_from_module`): nothing is dequantized or upcast.
    The base model is then marked as sharded at load time, the Trainer's path for a model that already owns its
    placement and gradient reduction (no DDP wrapper; checkpoints without the sharded optimizer state)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(lm, "_no_split_modules", None) or ())
    units = [m for m in lm.modules() if type(m).__name__ in blocks]
    if not units:
        raise ConfigError(f"train.fsdp=true: {type(lm).__name__} names no transformer block class to shard")
    head = lm.get_output_embeddings()
    for unit in [*units, *([head] if head is not None else [])]:
        fully_shard(unit)
    fully_shard(model)
    lm._is_distributed_loading_by_transformers = True  # transformers' flag: the Trainer must not wrap it in DDP
    local, layers = four_bit_bytes(model)
    where = f"; {layers} 4-bit layers, {local:,} bytes of packed weights per process" if layers else ""
    return f"FSDP2: {len(units)} blocks + head + root sharded over {dist.get_world_size()} processes{where}"


def load_in_turn(build: Callable[[], Any]) -> Any:
    """build() (load the 4-bit base, add LoRA, shard it) on the processes of each node one after another, in
    LOCAL_RANK order, with a barrier between turns: a process holds the whole model only until it is sharded,
    so a node holds at most one whole copy at a time, plus the shards (not one per process at once). Every node
    takes its turns at the same time. fully_shard only splits tensors locally, so a turn runs no collective."""
    import torch.distributed as dist

    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    built = None
    for turn in range(local_world):
        if turn == local_rank:
            built = build()
        dist.barrier()
    return built
