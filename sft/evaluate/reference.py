"""The loss and perplexity of the references: the mean cross-entropy over the trained tokens (answers and
their end-of-turn, the prompt too with data.train_on_source), masked exactly as training masks them.

It uses training's own evaluation head (sft.train.loss.trained_loss_per_row): the output head runs on the
trained positions only, a chunk at a time, so the float32 logits of every position (8 rows of 1,024 tokens
with a 152k vocabulary: 5 GB) never exist at once.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sft.config import DataConfig, PromptConfig
from sft.data.collate import PaddedCollator
from sft.data.load import Record
from sft.data.prompts import build_segments, end_of_turn_token
from sft.data.sources import describe_data
from sft.data.tokenize import tokenize_examples
from sft.errors import DataError
from sft.train.loss import trained_loss_per_row


@torch.inference_mode()
def reference_loss(model: Any, tokenizer: Any, records: list[Record], prompt: PromptConfig, data: DataConfig, batch_size: int) -> dict[str, Any]:
    """Token-weighted mean loss of the references over every trained token, and exp of it; for the records of a
    mixture also each source's own (`by_source`)."""
    eot = end_of_turn_token(prompt, tokenizer)
    segments = [build_segments(r, prompt, tokenizer, eot) for r in records]
    examples, kept, _ = tokenize_examples(segments, tokenizer, eot, data.max_seq_len, data.truncation, data.train_on_source)
    if not examples:
        raise DataError(f"{describe_data(data)}: no held-out example fits data.max_seq_len={data.max_seq_len}")
    collate = PaddedCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    sums, counts = [], []
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size]).items()}
        s, c = trained_loss_per_row(model, batch)
        sums += s.tolist()
        counts += c.tolist()
    out = summed(sums, counts)
    names = [records[k].get("source") for k in kept]
    if any(names):
        out["by_source"] = {name: summed([s for s, n in zip(sums, names) if n == name], [c for c, n in zip(counts, names) if n == name])
                            for name in dict.fromkeys(names)}
    return out


def summed(sums: list[float], counts: list[int]) -> dict[str, Any]:
    loss = sum(sums) / sum(counts)
    return {"loss": loss, "perplexity": math.exp(loss), "examples": len(sums), "tokens": sum(counts)}
