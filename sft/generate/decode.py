"""Batched decoding with left padding and the KV cache; each row stops on its own.

Prompts are padded on the left, so every row's next token sits in the last column; the attention mask marks
the padding and position ids count real tokens only (as `model.generate` does), so a padded row computes
what it would alone. A row that stops (EOS, end-of-turn, stop string, length) leaves the batch: its cache
entries are dropped, and the remaining rows run on a smaller batch.

    step 0 (prefill)   [pad pad  a0  a1  a2]  -> a3        positions [1 1 0 1 2]
                       [ b0  b1  b2  b3  b4]  -> b5        positions [0 1 2 3 4]
    step 1             [a3] [b5] with the cache of both rows, mask grown by one column
"""

from __future__ import annotations

import inspect

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from sft.config import GenerationConfig
from sft.generate.sampling import RowState, make_generator, next_tokens

FinishReason = Literal["eos", "stop", "length"]


@dataclass
class Stopping:
    token_ids: list[int]  # EOS and the template's end-of-turn ids: generation ends, the token is not shown
    strings: list[str] = field(default_factory=list)  # the output is cut before the first one
    decode: Callable[[list[int]], str] | None = None  # ids -> text, needed for stop strings


@dataclass
class Decoded:
    index: int  # position of the row in the call's prompt list
    tokens: list[int]  # generated ids, the stopping token excluded
    finish_reason: FinishReason
    text: str | None = None  # set when a stop string cut the output
    logprobs: list[float] = field(default_factory=list)  # log p(token) under the model, one per token


def left_pad(prompts: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, ...]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return input_ids.to(device), mask.to(device), positions.to(device)


def whole_text_cut(tokens: list[int], stopping: Stopping, min_tokens: int = 0) -> str | None:
    """The output text cut before the first stop string, or None when there is none. A stop string that
    starts within the text of the first `min_tokens` tokens does not count (generation.min_new_tokens).
    Decodes the whole output: for a finished output (beam search) or once the tail has shown a stop string."""
    if not stopping.strings or stopping.decode is None or len(tokens) < min_tokens:
        return None
    text = stopping.decode(tokens)
    start = 0
    if min_tokens:
        head = stopping.decode(tokens[:min_tokens])
        start = len(head) if text.startswith(head) else 0
    hits = [i for i in (text.find(s, start) for s in stopping.strings) if i >= 0]
    return text[: min(hits)] if hits else None


def stop_string_cut(tokens: list[int], stopping: Stopping, min_tokens: int = 0) -> str | None:
    """`whole_text_cut` for an output that grows by one token per call, each shorter output having been
    checked: decodes only its tail, so that a row costs time linear in its length, not quadratic.

    Rests on what a byte-level decode does (token bytes joined, then UTF-8 with U+FFFD for bad or partial
    sequences): a later token can change only the last characters of a text (a U+FFFD awaiting bytes; with
    clean_up_tokenization_spaces, up to 3 for " n't"), and the rest stays in every longer output. So a stop
    string first seen now lies in the window from `longest + UNSETTLED` characters before the newest token."""
    if not stopping.strings or stopping.decode is None or len(tokens) < min_tokens:
        return None
    if _start_may_move(tokens, stopping.decode, min_tokens) or _tail_has_stop(tokens, stopping):
        return whole_text_cut(tokens, stopping, min_tokens)
    return None


REPLACEMENT = "\ufffd"  # what a UTF-8 decode makes of bytes that are not (yet) a character
UNSETTLED = 3  # trailing characters a later token may still rewrite (see stop_string_cut)
SETTLE_TOKENS = 32  # tokens after the min_new_tokens boundary in which to look for UNSETTLED characters


def _exact_window(ids: list[int], end: int, decode: Callable[[list[int]], str], chars: int) -> tuple[int, str]:
    """(w, text): text is a suffix of decode(ids[:end]) decoded from its last w ids only, at least `chars`
    long unless w == end (then all of it). A window that starts inside a character's bytes decodes them as
    U+FFFD, and UTF-8 is back in step at the next lead byte, so what follows the leading U+FFFDs is exact."""
    w = max(chars, 1)
    while w < end:
        text = decode(ids[end - w : end]).lstrip(REPLACEMENT)
        if len(text) >= chars:
            return w, text
        w *= 2  # too few characters (empty special tokens, bytes of one character): look further back
    return end, decode(ids[:end])


def _tail_has_stop(tokens: list[int], stopping: Stopping) -> bool:
    """Whether the text around the newest token holds a stop string: the window ends with the newest token
    and starts `longest + UNSETTLED` exact characters before it."""
    longest = max(len(s) for s in stopping.strings)
    w, _ = _exact_window(tokens, len(tokens) - 1, stopping.decode, longest + UNSETTLED)
    if w == len(tokens) - 1:
        tail = stopping.decode(tokens)
    else:  # it starts where the window without the newest token does: the same leading U+FFFDs go
        tail = stopping.decode(tokens[-w - 1 :]).lstrip(REPLACEMENT)
    return any(s in tail for s in stopping.strings)


def _start_may_move(tokens: list[int], decode: Callable[[list[int]], str], min_tokens: int) -> bool:
    """Whether whole_text_cut's start (the head's length while the text begins with the head's text, else 0)
    may differ from the last call's: while fewer than UNSETTLED characters follow the head, its last ones may
    still change (a character cut by the boundary, a space cleaned up before punctuation)."""
    if not min_tokens:
        return False
    end = min(len(tokens) - 1, min_tokens + SETTLE_TOKENS)  # the tokens after the head, before the newest
    k = UNSETTLED
    while True:
        if len(decode(tokens[min_tokens : min(min_tokens + k, end)]).lstrip(REPLACEMENT)) >= UNSETTLED:
            return False
        if min_tokens + k >= end:
            return True
        k *= 2


def _finished(row: RowState, token: int, start: int, cfg: GenerationConfig, stopping: Stopping) -> tuple[FinishReason | None, str | None]:
    if token in stopping.token_ids:  # banned before min_new_tokens, so only reachable after
        return "eos", None
    cut = stop_string_cut(row.history[start:], stopping, cfg.min_new_tokens)
    if cut is not None:
        return "stop", cut
    if row.n_generated >= cfg.max_new_tokens:
        return "length", None
    return None, None


def _advance(rows: list[RowState], active: list[int], tokens: list[int], raw: torch.Tensor | None, starts: list[int],
             cfg: GenerationConfig, stopping: Stopping, done: list[Decoded]) -> list[int]:
    """Append each active row's token; move finished rows to `done`; returns the batch positions that go on."""
    keep = []
    for j, (i, token) in enumerate(zip(active, tokens)):
        row = rows[i]
        row.history.append(token)
        row.n_generated += 1
        if raw is not None:
            row.logprobs.append(float(raw[j, token]))
        reason, text = _finished(row, token, starts[i], cfg, stopping)
        if reason is None:
            keep.append(j)
            continue
        generated, logprobs = row.history[starts[i] :], row.logprobs
        if reason == "eos":  # the stopping token is not part of the output
            generated, logprobs = generated[:-1], logprobs[:-1]
        done.append(Decoded(i, generated, reason, text, logprobs))
    return keep


def cache_argument(model: Any) -> str:
    """The forward argument that takes the KV cache: `cache` in current transformers, `past_key_values` before
    (deprecated since; a PEFT model forwards either to its base)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.inference_mode()  # no autograd graph: model.generate runs under no_grad too
def decode(
    model: Any, prompts: list[list[int]], seeds: list[int], cfg: GenerationConfig, stopping: Stopping, pad_id: int
) -> list[Decoded]:
    """Generate for every prompt (ids, no padding); row i samples from a generator seeded with seeds[i]."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    input_ids, mask, positions = left_pad(prompts, pad_id, device)
    rows = [RowState(history=list(p), generator=make_generator(s)) for p, s in zip(prompts, seeds)]
    starts = [len(p) for p in prompts]
    active = list(range(len(prompts)))
    cache = DynamicCache(config=model.config)
    with_cache = {cache_argument(model): cache}
    done: list[Decoded] = []
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **with_cache)
    while True:
        logits = out.logits[:, -1, :].float()
        raw = torch.log_softmax(logits, dim=-1) if cfg.logprobs else None
        tokens = next_tokens(logits, [rows[i] for i in active], cfg, stopping.token_ids).tolist()
        keep = _advance(rows, active, tokens, raw, starts, cfg, stopping, done)
        if not keep:
            return done
        if len(keep) < len(active):  # finished rows leave the batch and the cache
            cache.batch_select_indices(torch.tensor(keep, device=device))
            mask, positions = mask[keep], positions[keep]
        active = [active[j] for j in keep]
        step_ids = torch.tensor([[rows[i].history[-1]] for i in active], device=device)
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **with_cache)


@torch.inference_mode()
def beam_decode(model: Any, prompts: list[list[int]], cfg: GenerationConfig, stopping: Stopping, pad_id: int) -> list[Decoded]:
    """Beam search through `model.generate` (deterministic, so no generators); stop strings cut afterwards."""
    device = next(model.parameters()).device
    input_ids, mask, _ = left_pad(prompts, pad_id, device)
    out = model.generate(
        input_ids=input_ids, attention_mask=mask, do_sample=False, num_beams=cfg.num_beams,
        length_penalty=cfg.length_penalty, max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
        repetition_penalty=cfg.repetition_penalty, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        eos_token_id=stopping.token_ids, pad_token_id=pad_id,
    )
    done = []
    for i, ids in enumerate(out[:, input_ids.shape[1] :].tolist()):
        stop_at = next((j for j, t in enumerate(ids) if t in stopping.token_ids), None)
        tokens = ids if stop_at is None else ids[:stop_at]
        cut = whole_text_cut(tokens, stopping, cfg.min_new_tokens)  # once, on the finished output
        reason: FinishReason = "stop" if cut is not None else ("eos" if stop_at is not None else "length")
        done.append(Decoded(i, tokens, reason, cut))
    return done
