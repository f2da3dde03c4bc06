"""train.kernels=liger on CUDA: one training step of the 4-bit base with LoRA, Liger applied by the Trainer
(TrainingArguments use_liger_kernel), gives the loss and LoRA gradients of the plain one (skipped without a GPU
or without liger-kernel)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from conftest import tiny_llama

pytestmark = pytest.mark.gpu


class CaptureGrads(TrainerCallback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self.grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_and_grads(kernels: str, tmp_path: Any) -> tuple[float, dict[str, torch.Tensor]]:
    import datasets

    from sft.config import LoraConfig, ModelConfig, QuantConfig, TrainConfig
    from sft.data.collate import PackedCollator
    from sft.model.load import load_model
    from sft.model.lora import add_lora
    from sft.train.trainer import SftTrainer, training_arguments

    path = tmp_path / "tiny"
    if not path.exists():
        tiny_llama().save_pretrained(path)
    quant = QuantConfig(name="nf4")
    base = load_model(ModelConfig(path=str(path)), quant, device="cuda")
    torch.manual_seed(0)
    model = add_lora(base, quant, LoraConfig(r=4, dropout=0.0), True)
    gen = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, 128, (n,), generator=gen).tolist() for n in (40, 7, 90)]
    rows = datasets.Dataset.from_list([{"input_ids": x, "labels": x, "position_ids": list(range(len(x)))} for x in ids])
    train = TrainConfig(kernels=kernels, max_steps=1, grad_accum=1, micro_batch_size=3, max_grad_norm=0.0)
    args = training_arguments(train, quant, 0, tmp_path / kernels, False, packing=True)
    args.disable_tqdm = True
    capture = CaptureGrads()
    trainer = SftTrainer(model=model, args=args, train_dataset=rows, data_collator=PackedCollator(), callbacks=[capture])
    trainer.train()
    loss = next(e["train_loss"] for e in trainer.state.log_history if "train_loss" in e)
    return loss, capture.grads


def test_liger_kernels_keep_the_loss_and_gradients(tmp_path: Any) -> None:
    pytest.importorskip("liger_kernel")
    plain, plain_grads = loss_and_grads("none", tmp_path)
    liger, liger_grads = loss_and_grads("liger", tmp_path)
    assert liger == pytest.approx(plain, rel=1e-2, abs=1e-2)
    assert plain_grads and plain_grads.keys() == liger_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(liger_grads[name], grad, rtol=5e-2, atol=5e-3, msg=name)
