"""The training loss on trained positions only, without the full logits.

A causal LM's head turns every position's hidden state into a vocabulary-wide row of logits, and its loss
then keeps the rows whose next label is trained. For SmolLM2 (49,152 tokens) a 2048-token row costs 400 MB
of float32 logits, plus their gradient, mostly for prompt and padding positions that the loss masks away.
Here the model runs with its output head replaced by the identity, so it returns hidden states; the head is
applied to the trained positions alone, a chunk at a time, each chunk recomputed in the backward pass
(activation checkpointing), so at most one chunk of logits exists at once:

    hidden [B, T, d] --select labels[:, 1:] != -100--> [N, d] --chunks of 256: head, cross-entropy--> sum

The head is frozen (LoRA leaves it alone, `all-linear` excludes it), so calling it outside the wrapped
model's forward changes nothing for DDP. Models whose logits pass through more than a linear head
(soft-capping, logit scaling) and heads that are trained (`lora.modules_to_save`) use the model's own loss.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sft.data.tokenize import IGNORE_INDEX

CHUNK = 256  # trained positions per chunk: 256 x 49,152 float32 logits = 50 MB (x3 with softmax and gradient)


def causal_lm(model: Any) -> Any:
    """The transformers *ForCausalLM inside DDP / PEFT wrappers."""
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_linear_head(lm: Any) -> torch.nn.Linear | None:
    """The output head when logits = head(hidden) exactly and the head is frozen; None otherwise."""
    config = lm.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) is not None:
        return None
    if getattr(config, "logits_scaling", 1.0) not in (None, 1.0):
        return None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or any(p.requires_grad for p in head.parameters()):
        return None
    return head


@contextlib.contextmanager
def head_as_identity(lm: Any, head: torch.nn.Module) -> Iterator[None]:
    lm.set_output_embeddings(torch.nn.Identity())
    try:
        yield
    finally:
        lm.set_output_embeddings(head)


def _chunk_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()  # float32 cross-entropy, as transformers' ForCausalLMLoss
    return F.cross_entropy(logits, targets, reduction="sum")


def trained_token_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear) -> tuple[torch.Tensor, int]:
    """Sum of the cross-entropy over positions whose next label is trained, and how many there are.
    hidden: [B, T, d] final hidden states; labels: [B, T], unshifted (the model's convention)."""
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    picked, goals = hidden[:, :-1][trained], targets[trained]
    total = (hidden.sum() * 0.0).float()  # zero, but part of the graph even when nothing is trained
    for start in range(0, goals.numel(), CHUNK):
        chunk = (picked[start : start + CHUNK], goals[start : start + CHUNK], head.weight, head.bias)
        total = total + checkpoint(_chunk_loss_sum, *chunk, use_reentrant=False)
    return total, goals.numel()


def forward_trained_loss_sum(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, int] | None:
    """Run `model` (possibly wrapped) on inputs without labels and return the summed trained-token loss,
    or None when this model needs its own loss (see the module docstring)."""
    lm = causal_lm(model)
    head = plain_linear_head(lm)
    if head is None:
        return None
    with head_as_identity(lm, head):
        hidden = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    return trained_token_loss_sum(hidden, inputs["labels"], head)
