"""Segments -> {input_ids, labels}, with the prompt masked.

Each segment is tokenized on its own and the ids are concatenated (qlora's way), so the label boundary sits
exactly between prompt and answer: no token straddles it, whatever the tokenizer merges. Every trained
segment is followed by one end-of-turn id (the EOS for Alpaca), which is trained: the model learns to stop,
also when pad == eos. Labels are not shifted here; Hugging Face causal LMs shift them in the loss.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypedDict

from sft.data.prompts import Segment
from sft.errors import ConfigError

IGNORE_INDEX = -100


class Example(TypedDict):
    input_ids: list[int]
    labels: list[int]


@dataclass
class TokenizeStats:
    examples: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    truncated: int = 0  # kept examples whose prompt was cut from the left
    total_tokens: int = 0
    trained_tokens: int = 0
    boundary_mismatches: int = 0  # examples where one-string tokenization gives other ids than ours
    eos_untrained: int = 0  # kept examples whose last token is not a trained end-of-turn (must stay 0)


BOUNDARY_WINDOW = 32  # characters each side of a prompt/answer boundary; merges stay within one pre-token


def encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts without special tokens, through the Rust backend when there is one
    (the same ids as tokenizer(texts), without its per-call Python overhead)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in batch(texts, add_special_tokens=False)]


def boundary_mismatches(segment_lists: list[list[Segment]], tokenizer: Any) -> int:
    """Examples where tokenizing prompt + answer as one string would give other ids than tokenizing them apart.

    Only text near a boundary can tokenize differently (pre-tokenization keeps merges local; the end-of-turn
    special token always splits), so each boundary is checked on a window around it instead of re-tokenizing
    every example whole.
    """
    lefts, rights, owners = [], [], []
    for i, segs in enumerate(segment_lists):
        for a, b in zip(segs, segs[1:]):
            if not a.trained:  # prompt -> answer; after an answer comes its end-of-turn token
                lefts.append(a.text[-BOUNDARY_WINDOW:])
                rights.append(b.text[:BOUNDARY_WINDOW])
                owners.append(i)
    n = len(lefts)
    ids = encode(tokenizer, [a + b for a, b in zip(lefts, rights)] + lefts + rights)  # one batch: joint, apart
    return len({owners[k] for k in range(n) if ids[k] != ids[n + k] + ids[2 * n + k]})


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer adds in front of a text on its own (usually [bos] or [])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    return list(full[:start])


def token_id(tokenizer: Any, token: str) -> int:
    ids = tokenizer.convert_tokens_to_ids([token])
    if not ids or ids[0] is None or (ids[0] == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ConfigError(f"end-of-turn token {token!r} is not a single token of this tokenizer")
    return int(ids[0])


def _assemble(
    pieces: list[list[int]], trained: list[bool], prefix: list[int], eot_id: int, train_on_source: bool
) -> tuple[list[int], list[int], int]:
    """Concatenate segment ids; returns (input_ids, labels, length of the last answer incl. its end-of-turn)."""
    ids: list[int] = []
    labels: list[int] = []
    if prefix and pieces[0][: len(prefix)] != prefix:  # a template that writes BOS itself gets no second one
        ids += prefix
        labels += prefix if train_on_source else [IGNORE_INDEX] * len(prefix)
    last_answer = 0
    for piece, is_trained in zip(pieces, trained):
        if is_trained:
            piece = piece + [eot_id]
            last_answer = len(piece)
        ids += piece
        labels += piece if (is_trained or train_on_source) else [IGNORE_INDEX] * len(piece)
    return ids, labels, last_answer


def _truncate(ids: list[int], labels: list[int], max_len: int, keep_head: int) -> tuple[list[int], list[int]]:
    """Cut from the left of the prompt, keeping `keep_head` leading ids (BOS) and the tail."""
    cut = len(ids) - max_len
    return ids[:keep_head] + ids[keep_head + cut :], labels[:keep_head] + labels[keep_head + cut :]


def tokenize_examples(
    segment_lists: list[list[Segment]],
    tokenizer: Any,
    eot: str,
    max_seq_len: int,
    truncation: str = "truncate_source",
    train_on_source: bool = False,
) -> tuple[list[Example], list[int], TokenizeStats]:
    """Tokenize and mask; returns (examples, index of each kept example in the input, stats)."""
    eot_id = token_id(tokenizer, eot)
    prefix = special_prefix(tokenizer)
    flat = encode(tokenizer, [s.text for segs in segment_lists for s in segs])
    stats = TokenizeStats(examples=len(segment_lists), boundary_mismatches=boundary_mismatches(segment_lists, tokenizer))
    examples: list[Example] = []
    kept: list[int] = []
    pos = 0
    for i, segs in enumerate(segment_lists):
        pieces = flat[pos : pos + len(segs)]
        pos += len(segs)
        trained = [s.trained for s in segs]
        ids, labels, last_answer = _assemble(pieces, trained, prefix, eot_id, train_on_source)
        if len(ids) > max_seq_len:
            head = len(prefix) if prefix and ids[: len(prefix)] == prefix else 0
            if truncation == "drop":
                stats.dropped["too_long"] += 1
                continue
            if last_answer + head > max_seq_len:
                stats.dropped["answer_too_long"] += 1
                continue
            ids, labels = _truncate(ids, labels, max_seq_len, head)
            stats.truncated += 1
        n_trained = len(labels) - labels.count(IGNORE_INDEX)
        if n_trained == 0:
            stats.dropped["no_trained_tokens"] += 1
            continue
        if labels[-1] != eot_id or ids[-1] != eot_id:
            stats.eos_untrained += 1
        stats.kept += 1
        stats.total_tokens += len(ids)
        stats.trained_tokens += n_trained
        examples.append({"input_ids": ids, "labels": labels})
        kept.append(i)
    return examples, kept, stats
