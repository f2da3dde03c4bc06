"""The training loss on trained positions only, without the full logits.

A causal LM's head turns every position's hidden state into a vocabulary-wide row of logits, and its loss
then keeps the rows whose next label is trained. For SmolLM2 (49,152 tokens) a 2048-token row costs 400 MB
of float32 logits, plus their gradient, mostly for prompt and padding positions that the loss masks away.
Here the model runs with its output head replaced by the identity, so it returns hidden states; the head is
applied to the trained positions alone, a chunk at a time, so at most one chunk of logits exists at once:

    hidden [B, T, d] --select labels[:, 1:] != -100--> [N, d] --chunks of 256: head, cross-entropy--> sum

While a chunk's logits exist, the forward pass also turns them into their gradient in place (softmax -
one-hot) and multiplies it by the head, keeping d(loss)/d(hidden) ([N, d], the size of the hidden states it
replaces); backward scales it. A chunk costs one float32 [256, vocab] buffer (plus its copy in the compute
dtype under autocast) and two head matmuls per trained position; recomputing the logits in backward took
three (1.04 s against 0.66 s forward and backward on 1,024 positions of SmolLM2's head, CPU, 2 cores).
TRL's fused head does the same with Triton on GPU, but its CPU fallback took 2.5x the time and 10x the
memory of the recomputing version here on 1,024 positions (4.3 s and 1,060 MiB against 1.7 s and 100 MiB,
forward and backward; the previous checkpointed cross_entropy chunks: 2.2 s and 149 MiB).

The head is frozen (LoRA leaves it alone, `all-linear` excludes it), so calling it outside the wrapped
model's forward changes nothing for DDP. Under FSDP2 (train.fsdp) the head is its own FSDP unit, whose weight
outside a forward is this rank's shard (a DTensor of vocab/ranks rows): the loss unshards that unit (an
all-gather every rank joins, as every rank computes its loss) and reshards it after (`unsharded_head`).

Models whose logits pass through more than a linear head (soft-capping, logit scaling) and heads that are
trained (`lora.modules_to_save`) use the model's own loss.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from sft.data.tokenize import IGNORE_INDEX

CHUNK = 256  # trained positions per chunk: 256 x 49,152 float32 logits = 50 MB


def causal_lm(model: Any) -> Any:
    """The transformers *ForCausalLM inside DDP / PEFT wrappers."""
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def own_class(module: torch.nn.Module) -> type:
    """The module's class; FSDP2 swaps a sharded module's class for FSDP<Name>(FSDPModule, <Name>)."""
    from torch.distributed.fsdp import FSDPModule

    return type(module).__bases__[-1] if isinstance(module, FSDPModule) else type(module)


@contextlib.contextmanager
def unsharded_head(head: torch.nn.Module) -> Iterator[None]:
    """The head's full weight for the duration, when FSDP2 shards it (see the module docstring)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(head, FSDPModule):
        yield
        return
    head.unshard()
    try:
        yield
    finally:
        head.reshard()


def plain_linear_head(lm: Any) -> torch.nn.Linear | None:
    """The output head when logits = head(hidden) exactly and the head is frozen; None otherwise."""
    configs = [lm.config]
    if hasattr(lm.config, "get_text_config"):  # multimodal and nested configs keep the language model's inside
        configs.append(lm.config.get_text_config())
    for config in configs:
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) is not None:
            return None
        if getattr(config, "logits_scaling", 1.0) not in (None, 1.0):
            return None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is None or own_class(head) is not torch.nn.Linear or any(p.requires_grad for p in head.parameters()):
        return None
    return head


@contextlib.contextmanager
def head_as_identity(lm: Any, head: torch.nn.Module) -> Iterator[None]:
    lm.set_output_embeddings(torch.nn.Identity())
    try:
        yield
    finally:
        lm.set_output_embeddings(head)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The head's matmul dtype in the model's own forward: autocast's, else the head weight's."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float32 logits of a chunk, the matmul in the weight's (compute) dtype, as the model's head under autocast
    followed by transformers' float32 cross-entropy."""
    return F.linear(hidden.to(weight.dtype), weight, bias).float()


class _TrainedTokenCrossEntropy(torch.autograd.Function):
    """Sum over N positions of cross_entropy(hidden @ weight.T + bias, targets); gradient for hidden only (the
    head is frozen). The loss is a sum, so its gradient for hidden is known once the forward pass has the
    logits: (softmax - one-hot) @ weight, times the incoming scalar. With `with_grad` the forward pass computes
    it chunk by chunk and keeps it ([N, d], the size of hidden), so backward is one multiply instead of
    recomputing every chunk's logits: two head matmuls per trained position instead of three."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, with_grad: bool) -> torch.Tensor:
        dtype = _compute_dtype(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)  # one cast, not one per chunk
            grad_hidden = torch.empty_like(hidden) if with_grad else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], CHUNK):
                stop = start + CHUNK
                logits = _chunk_logits(hidden[start:stop], w, b)
                goal = targets[start:stop, None]
                picked = logits.gather(1, goal)[:, 0]
                peak = logits.amax(1, keepdim=True)
                exp = logits.sub_(peak).exp_()
                z = exp.sum(1, keepdim=True)
                total += (z[:, 0].log() + peak[:, 0] - picked).sum()
                if grad_hidden is not None:
                    probs = exp.div_(z)  # softmax, in place of the logits
                    probs.scatter_(1, goal, probs.gather(1, goal) - 1)  # d(loss)/d(logits) = softmax - one-hot
                    grad_hidden[start:stop] = probs.to(w.dtype) @ w
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            raise RuntimeError("trained-token loss: backward through a forward computed without gradients")
        return grad_hidden * grad.to(grad_hidden.dtype), None, None, None, None


def trained_token_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear) -> tuple[torch.Tensor, int]:
    """Sum of the cross-entropy over positions whose next label is trained, and how many there are.
    hidden: [B, T, d] final hidden states; labels: [B, T], unshifted (the model's convention)."""
    from torch.distributed.tensor import DTensor

    if isinstance(head.weight, DTensor):  # a shard: its logits would cover part of the vocabulary
        raise TypeError("trained-token loss: the head's weight is an FSDP shard; call this under unsharded_head")
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    picked, goals = hidden[:, :-1][trained], targets[trained]
    # with nothing trained the sum is a zero that is still part of the graph (backward gives zero gradients)
    with_grad = torch.is_grad_enabled() and picked.requires_grad
    return _TrainedTokenCrossEntropy.apply(picked, goals, head.weight, head.bias, with_grad), goals.numel()


def _hidden_states(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.nn.Linear] | None:
    """Run `model` (possibly wrapped) on inputs without labels with its head as the identity: (final hidden
    states [B, T, d], the head), or None when this model needs its own loss (see the module docstring)."""
    lm = causal_lm(model)
    head = plain_linear_head(lm)
    if head is None:
        return None
    with head_as_identity(lm, head):
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits, head


def forward_trained_loss_sum(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, int] | None:
    """The summed trained-token loss of `model` on inputs and how many tokens it covers, or None when this
    model needs its own loss (see the module docstring)."""
    found = _hidden_states(model, inputs)
    if found is None:
        return None
    with unsharded_head(found[1]):
        return trained_token_loss_sum(found[0], inputs["labels"], found[1])


def trained_loss_per_row(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation (no gradients): per row, the summed cross-entropy of its trained tokens and how many there
    are, float32 [B] and int64 [B]. Their totals over a data set give the mean loss per trained token, which
    does not depend on how the rows were batched or packed."""
    labels = inputs["labels"]
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(1)
    found = _hidden_states(model, inputs)
    if found is None:  # the model's own logits (soft-capping, trained head, ...), one row at a time
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        sums = [F.cross_entropy(logits[b, :-1].float(), labels[b, 1:], ignore_index=IGNORE_INDEX, reduction="sum")
                for b in range(labels.shape[0])]
    else:
        hidden, head = found
        with unsharded_head(head):  # one all-gather for the batch's rows
            sums = [trained_token_loss_sum(hidden[b:b + 1], labels[b:b + 1], head)[0] for b in range(labels.shape[0])]
    return torch.stack(sums).float(), counts


def own_logits_loss_sum(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """The summed trained-token loss from the model's own logits (soft-capping and any other head included) and
    how many tokens it covers: the training loss for models the trained-positions head does not fit, still one
    sum over the step's trained tokens (the model's own `loss` would be a mean per micro-batch for models whose
    forward takes no loss arguments)."""
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    targets = inputs["labels"][:, 1:]
    summed = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="sum")
    return summed, int((targets != IGNORE_INDEX).sum())


def loss_parity(model: Any, inputs: dict[str, Any], limit: int = 1024) -> tuple[float, float] | None:
    """(ours, the model's own) mean loss over the trained tokens of the first row of a micro-batch (its first
    `limit` positions, when they hold a trained token: the model's own loss keeps the logits of every position),
    in eval mode (no dropout, no random state drawn), or None when the model takes its own loss anyway."""
    def rows(cut: int | None) -> dict[str, Any]:
        # the boundaries of a packed row (cu_seq_lens_*, max_length_*) describe the whole row: left out of a
        # cut, whose examples the attention then finds from its position_ids
        return {k: v[:1, :cut] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in inputs.items()
                if not k.startswith(("cu_seq_lens_", "max_length_"))}

    inputs = rows(limit) if (rows(limit)["labels"][:, 1:] != IGNORE_INDEX).any() else rows(None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            found = forward_trained_loss_sum(model, inputs)
            if found is None:
                return None
            ours = float(found[0]) / max(found[1], 1)
            theirs = float(model(**inputs).loss)
    finally:
        model.train(was_training)
    return ours, theirs
