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
from sft.data.tokenize import tokenize_examples
from sft.errors import DataError
from sft.train.loss import trained_loss_per_row


@torch.inference_mode()
def reference_loss(model: Any, tokenizer: Any, records: list[Record], prompt: PromptConfig, data: DataConfig, batch_size: int) -> dict[str, Any]:
    """Token-weighted mean loss of the references over every trained token, and exp of it."""
    eot = end_of_turn_token(prompt, tokenizer)
    segments = [build_segments(r, prompt, tokenizer, eot) for r in records]
    examples, _, _ = tokenize_examples(segments, tokenizer, eot, data.max_seq_len, data.truncation, data.train_on_source)
    if not examples:
        raise DataError(f"{data.path}: no held-out example fits data.max_seq_len={data.max_seq_len}")
    collate = PaddedCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size]).items()}
        sums, counts = trained_loss_per_row(model, batch)
        total += float(sums.sum())
        tokens += int(counts.sum())
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "examples": len(examples), "tokens": tokens}
