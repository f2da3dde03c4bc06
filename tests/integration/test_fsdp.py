"""sft-train with train.fsdp=true: FSDP2 over 2 CPU processes (gloo) on a tiny Llama in 4-bit nf4.

The 4-bit weights stay packed 4-bit shards (half the bytes on each rank, their quant_state kept); the loss head,
applied outside the model's forward, uses the gathered head and never a shard; the loss curve is the DDP run's;
the adapter is whole and loads in a plain single-process sft-eval.

Run as a script under torchrun (`worker`), this file is also the per-rank check of the sharded model."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_sft
from test_torchrun import data_file, eval_losses, losses, overrides, torchrun  # noqa: F401 -- data_file: a fixture

pytestmark = pytest.mark.slow
FSDP = ["quant=nf4", "quant.quant_storage=float32", "train.micro_batch_size=2", "train.grad_accum=1"]


def packed_bytes(out_features: int, in_features: int) -> int:
    return out_features * in_features // 2  # two 4-bit values per byte


def test_fsdp_qlora_follows_the_ddp_loss_curve_and_its_adapter_loads_in_sft_eval(
    tiny_dir: Path, data_file: Path, tmp_path: Path  # noqa: F811
) -> None:
    fsdp = torchrun(2, overrides(tiny_dir, data_file, tmp_path / "fsdp", *FSDP, "train.fsdp=true"))
    assert fsdp.returncode == 0, (fsdp.stdout + fsdp.stderr)[-4000:]
    ddp = torchrun(2, overrides(tiny_dir, data_file, tmp_path / "ddp", *FSDP))
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-4000:]
    # 2 blocks x (q 64x64, k and v 32x64, o 64x64, gate, up and down 128x64), half of each on a rank
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]
    per_rank = 2 * sum(packed_bytes(o, i) for o, i in shapes) // 2
    assert f"FSDP2: 2 blocks + head + root sharded over 2 processes; 14 4-bit layers, {per_rank:,} bytes" in fsdp.stdout
    assert "FSDP2" not in ddp.stdout
    # the trained-positions head (not the model's own logits) trained the FSDP run, and agreed with the model's own
    assert "trained-positions head" in fsdp.stdout and ": equal" in fsdp.stdout, fsdp.stdout
    fsdp_loss, ddp_loss = losses(tmp_path / "fsdp"), losses(tmp_path / "ddp")
    assert sorted(fsdp_loss) == [1, 2, 3, 4] and len(set(fsdp_loss.values())) > 1
    assert fsdp_loss == pytest.approx(ddp_loss, rel=1e-4, abs=1e-5)
    fsdp_eval = eval_losses(tmp_path / "fsdp")
    assert fsdp_eval == pytest.approx(eval_losses(tmp_path / "ddp"), rel=1e-4)

    from safetensors.torch import load_file

    mine = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in theirs.items()}  # whole, not shards
    assert all((mine[k] - theirs[k]).abs().max() < 1e-5 for k in mine)
    # checkpoints hold the adapter (not the sharded optimizer state); a run stopped after one does not resume
    assert (tmp_path / "fsdp" / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors").is_file()
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "fsdp", stopped)
    (stopped / "finished.json").unlink()
    again = torchrun(2, overrides(tiny_dir, data_file, stopped, *FSDP, "train.fsdp=true"))
    assert again.returncode != 0 and "train.fsdp=true runs do not resume" in again.stdout + again.stderr
    assert f"{REPO / 'sft'}{os.sep}" not in again.stderr  # no frame of ours (torchrun prints its own on exit 1)

    # one process, no FSDP: the adapter scores the held-out rows as the run's last evaluation did
    done = run_sft("eval", f"adapter={tmp_path / 'fsdp'}", f"out_dir={tmp_path / 'eval'}", "generate=false",
                   "quant=nf4")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]
    assert report["adapter"]["loss"] == pytest.approx(fsdp_eval[4], rel=1e-5)
    assert report["base"]["loss"] == pytest.approx(fsdp_eval[0], rel=1e-5)


def test_sharded_model_keeps_4bit_shards_and_the_loss_gathers_the_head(tiny_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO / "tests")}
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           str(tiny_dir), str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["classes"] == ["bitsandbytes.nn.modules.Linear4bit"] * 14  # still bitsandbytes 4-bit layers
        assert seen["storage"] == ["torch.float32"] * 14  # packed in quant_storage, not upcast to [out, in]
        assert seen["local_bytes"] == [b // 2 for b in seen["full_bytes"]]  # each rank holds half the bytes
        assert seen["quant_states"] == 14
        assert seen["head_local_shape"] == [64, 64]  # the head's weight outside a forward: half its 128 rows
        assert seen["loss"] == pytest.approx(seen["unsharded_loss"], rel=1e-6)
        assert seen["shard_refused"] and seen["head_resharded"]
    first, second = (json.loads((tmp_path / f"rank{rank}.json").read_text())["turn"] for rank in (0, 1))
    assert first[1] <= second[0]  # rank 1 loaded the model only after rank 0 had sharded its copy


def test_fsdp_needs_processes_and_matching_quant_storage(
    tiny_dir: Path, data_file: Path, tmp_path: Path  # noqa: F811
) -> None:
    done = run_sft("train", *overrides(tiny_dir, data_file, tmp_path / "run", "quant=nf4", "train.fsdp=true"),
                   "train.report_to=[none]", "train.optim=paged_adamw_8bit")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line = [ln for ln in done.stderr.splitlines() if "train.fsdp=true" in ln]
    assert len(line) == 1 and "torchrun --nproc-per-node" in line[0] and "quant.quant_storage=float32" in line[0]
    assert "train.optim=paged_adamw_8bit: only torch's AdamW" in line[0]
    assert "tokenizing" not in done.stdout and not (tmp_path / "run" / "config.yaml").exists()  # before any loading


def worker(model_dir: str, out: Path) -> None:
    """One rank: load the QLoRA model as sft-train does, take a loss before and after sharding, record what the
    shards are (the test asserts on it)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from sft.config import LoraConfig, ModelConfig, QuantConfig
    from sft.model.load import load_model
    from sft.model.lora import add_lora
    from sft.model.fsdp import load_in_turn, shard_fsdp
    from sft.train.loss import (
        causal_lm,
        forward_trained_loss_sum,
        own_class,
        trained_token_loss_sum,
    )

    dist.init_process_group("gloo")
    quant = QuantConfig(name="nf4", quant_storage="float32")
    ids = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(1))  # the same batch on each rank
    labels = ids.clone()
    labels[:, :8] = -100
    inputs = {"input_ids": ids, "labels": labels}
    import time

    import bitsandbytes as bnb

    def build() -> tuple[Any, list[Any], list[int], float, list[float]]:
        started = time.time()
        torch.manual_seed(0)
        model = add_lora(load_model(ModelConfig(path=model_dir), quant, device="cpu"), quant, LoraConfig(dropout=0),
                         False)
        model.eval()
        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        full_bytes = [m.weight.numel() * m.weight.element_size() for m in layers]
        with torch.no_grad():
            unsharded = forward_trained_loss_sum(model, inputs)[0].item()
        shard_fsdp(model)
        return model, layers, full_bytes, unsharded, [started, time.time()]

    model, layers, full_bytes, unsharded, turn = load_in_turn(build)  # the whole model on one process at a time
    head = causal_lm(model).get_output_embeddings()
    with torch.no_grad():
        loss = forward_trained_loss_sum(model, inputs)[0].item()
        try:  # the shard itself, bypassing the unshard: refused, not a loss over half the vocabulary
            trained_token_loss_sum(torch.zeros(1, 2, 64), torch.ones(1, 2, dtype=torch.long), head)
            refused = False
        except TypeError:
            refused = True
    seen: dict[str, Any] = {
        "classes": [f"{own_class(m).__module__}.{own_class(m).__name__}" for m in layers],
        "storage": [str(m.weight.dtype) for m in layers],
        "local_bytes": [m.weight.to_local().numel() * m.weight.element_size() for m in layers],
        "full_bytes": full_bytes,
        "quant_states": sum(m.quant_state is not None for m in layers),
        "head_local_shape": list(head.weight.to_local().shape),
        "head_resharded": isinstance(head.weight, DTensor),
        "shard_refused": refused,
        "loss": loss, "unsharded_loss": unsharded, "turn": turn,
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    worker(sys.argv[1], Path(sys.argv[2]))
