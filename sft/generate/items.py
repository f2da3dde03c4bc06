"""Records -> generation items: one per (record, sample), each with its own seed and its prompt's token ids
exactly as training tokenized the source; and the order they are decoded in."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from sft.config import GenerationConfig, PromptConfig
from sft.data.load import Record
from sft.data.prompts import prompt_segments
from sft.data.segments import Segment
from sft.data.tokenize import encode_segments, special_prefix
from sft.errors import DataError
from sft.generate.sampling import derive_seed


@dataclass
class Item:
    record: Record
    sample: int
    seed: int  # this item's generator seed
    prompt: str
    ids: list[int]

    @property
    def key(self) -> tuple:
        """(id, sample), or (source, id, sample) for the records of a mixture."""
        rec = self.record
        return (rec["source"], rec["id"], self.sample) if "source" in rec else (rec["id"], self.sample)


def prompt_ids(segments: list[Segment], tokenizer: Any, prefix: list[int]) -> list[int]:
    """The prompt's ids as training tokenizes its prompt (the same segments, the same encoding: record text never
    becomes a special token): one BOS (if the model uses one), never two."""
    pieces = encode_segments(tokenizer, [segments])[0]
    ids = [t for piece in pieces for t in piece]
    return ids if not prefix or ids[: len(prefix)] == prefix else prefix + ids


def fit_prompt(ids: list[int], limit: int, prefix: list[int], policy: str, where: str) -> list[int]:
    if len(ids) <= limit:
        return ids
    if policy == "error":
        raise DataError(f"{where}: prompt has {len(ids)} tokens, more than the {limit} allowed (max_prompt_tokens, or long_prompt=truncate)")
    print(f"warning: {where}: prompt cut from the left, {len(ids)} -> {limit} tokens", file=sys.stderr)
    head = len(prefix) if prefix and ids[: len(prefix)] == prefix else 0
    return ids[:head] + ids[len(ids) - limit + head :]


def build_items(records: list[Record], prompt: PromptConfig, tokenizer: Any, gen: GenerationConfig, limit: int, policy: str, source: str) -> list[Item]:
    if not records:
        raise DataError(f"{source}: no prompts to generate from")
    prefix = special_prefix(tokenizer)
    items = []
    for record in records:
        segments = prompt_segments(record, prompt, tokenizer)
        text = "".join(s.text for s in segments)
        ids = fit_prompt(prompt_ids(segments, tokenizer, prefix), limit, prefix, policy, f"{source}: record {record['id']}")
        for s in range(gen.num_return_sequences):
            items.append(Item(record, s, derive_seed(gen.seed, record["id"], s, record.get("source", "")), text, ids))
    return items


def plan_batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Longest prompts first (memory problems show at once), similar lengths together (little padding)."""
    ordered = sorted(items, key=lambda it: (-len(it.ids), it.key))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def describe(rec: Record) -> tuple[str, str, str | None]:
    """(instruction, input, reference) of an Alpaca record, or of a chat's last user turn and answer."""
    if "messages" not in rec:
        return rec["instruction"], rec["input"], rec.get("output")
    msgs = rec["messages"]
    last_user = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
    answer = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else None
    return last_user, "", answer
