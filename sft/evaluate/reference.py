"""The loss and perplexity of the references: the mean cross-entropy over the answer tokens and their
end-of-turn, masked exactly as training masks them."""

from __future__ import annotations

import math
from typing import Any

import torch

from sft.config import DataConfig, PromptConfig
from sft.data.collate import PaddedCollator
from sft.data.load import Record
from sft.data.prompts import build_segments, end_of_turn_token
from sft.data.tokenize import IGNORE_INDEX, tokenize_examples
from sft.errors import DataError


@torch.inference_mode()
def reference_loss(model: Any, tokenizer: Any, records: list[Record], prompt: PromptConfig, data: DataConfig, batch_size: int) -> dict[str, Any]:
    """Token-weighted mean loss of the references (the trained positions of sft.data's masking) and exp of it."""
    segments = [build_segments(r, prompt, tokenizer) for r in records]
    examples, _, _ = tokenize_examples(segments, tokenizer, end_of_turn_token(prompt, tokenizer), data.max_seq_len, data.truncation)
    if not examples:
        raise DataError(f"{data.path}: no held-out example fits data.max_seq_len={data.max_seq_len}")
    collate = PaddedCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        total += float(losses)
        tokens += int((labels != IGNORE_INDEX).sum())
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "examples": len(examples), "tokens": tokens}
