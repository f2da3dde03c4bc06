"""A packed row is exact: each example's loss (and gradient) equals the one it has alone, neighbours or not."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import tiny_llama
from sft.data.collate import PackedCollator
from sft.data.packing import concat_examples
from sft.data.tokenize import IGNORE_INDEX as X


def make_examples() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n, prompt in ((7, 3), (5, 2), (9, 4)):
        ids = torch.randint(3, 128, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [X] * prompt + ids[prompt:]})
    return out


def token_losses(model, batch) -> torch.Tensor:
    """Per-position loss of label[t] predicted at t-1 (0 where masked), as HF's loss computes it."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0, :-1]
    labels = batch["labels"][0, 1:]
    return F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none") * (labels != X)


def alone(ex: dict) -> dict:
    return {"input_ids": torch.tensor([ex["input_ids"]]), "labels": torch.tensor([ex["labels"]])}


def test_each_example_loss_in_a_packed_row_equals_its_loss_alone():
    model = tiny_llama()
    examples = make_examples()
    packed = PackedCollator()([concat_examples(examples)])
    packed_losses = token_losses(model, packed)
    start = 0
    for ex in examples:
        n = len(ex["input_ids"])
        own = token_losses(model, alone(ex))  # positions 1..n-1 of the example
        inside = packed_losses[start : start + n - 1]  # predictions made inside the example
        torch.testing.assert_close(inside, own, rtol=1e-5, atol=1e-6)
        if start:  # the prediction of this example's first token from the previous example is masked
            assert packed_losses[start - 1] == 0
        start += n


def test_gradient_of_one_example_does_not_depend_on_its_neighbours():
    model = tiny_llama()
    examples = make_examples()

    def grad_of_middle(batch, lo, hi):
        model.zero_grad()
        token_losses(model, batch)[lo:hi].sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    packed = PackedCollator()([concat_examples(examples)])
    with_neighbours = grad_of_middle(packed, 7, 7 + 4)  # example 1 occupies positions 7..11
    by_itself = grad_of_middle(alone(examples[1]), 0, 4)
    for a, b in zip(with_neighbours, by_itself):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # fp32 summation-order noise only


def test_without_position_ids_the_examples_would_leak():
    """The control: the same row as one causal sequence gives different losses, so the test above can fail."""
    model = tiny_llama()
    examples = make_examples()
    packed = PackedCollator()([concat_examples(examples)])
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    assert not torch.allclose(token_losses(model, leaky)[7:11], token_losses(model, packed)[7:11])
