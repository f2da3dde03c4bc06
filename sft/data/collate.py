"""Rows -> batch tensors.

Padded batches pad on the right to the longest row; the attention mask comes from the row lengths, never
from comparing ids with the pad id (pad == eos for many models, and the EOS is a real, trained token).
Packed batches are flattened into one padding-free row; position_ids restart at each example, and the example
boundaries travel as `cu_seq_lens_q/k` and `max_length_q/k` (the keywords transformers' attention functions read:
flash-attention's varlen path and ours, sft/model/attention.py), so no T x T mask is ever built.
"""

from __future__ import annotations

from typing import Any

import torch

from sft.data.tokenize import IGNORE_INDEX


class PaddedCollator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            attention_mask[i, :n] = 1
        return with_source({"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}, rows)


class PackedCollator:
    """Flatten packed rows into a [1, total] batch with the examples' boundaries. No attention_mask: with
    `sdpa_varlen` or flash attention the boundaries are the mask; with plain sdpa or eager, transformers builds
    the block-diagonal mask from position_ids."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("input_ids", "labels", "position_ids"):
            out[key] = torch.as_tensor([t for r in rows for t in r[key]], dtype=torch.long).unsqueeze(0)
        cu = example_boundaries(out["position_ids"][0])
        out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = cu
        out["max_length_q"] = out["max_length_k"] = int((cu[1:] - cu[:-1]).max())
        return with_source(out, rows)


def example_boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """int32 [0, n1, n1 + n2, ..., T]: an example starts at 0 and wherever the position does not go up by one
    (transformers' rule for packed position_ids)."""
    starts = (torch.diff(position_ids) != 1).nonzero().flatten().add(1)
    return torch.cat([torch.tensor([0]), starts, torch.tensor([position_ids.shape[0]])]).to(torch.int32)


def with_source(batch: dict[str, torch.Tensor], rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Held-out rows carry the index of their source (per-source eval loss); evaluation takes it out of the batch
    before the model sees it. A packed held-out row holds one source's examples only."""
    if rows and "source" in rows[0]:
        batch["source"] = torch.as_tensor([r["source"] for r in rows], dtype=torch.long)
    return batch


def make_collator(packing: bool, pad_id: int) -> PaddedCollator | PackedCollator:
    return PackedCollator() if packing else PaddedCollator(pad_id)
