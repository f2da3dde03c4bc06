"""Segments -> {input_ids, labels}, with the prompt masked.

Each segment is tokenized on its own and the ids are concatenated (qlora's way), so the label boundary sits
exactly between prompt and answer: no token straddles it, whatever the tokenizer merges. Record text is
tokenized without special-token parsing (a record spelling "<|im_end|>" gets those characters' ids); template
text keeps its special tokens. SentencePiece tokenizers that put a space mark in front of every text on its own
("▁") get each later segment tokenized behind a newline that is then dropped, so a segment tokenizes as it
would inside the whole text. A segment marked end_of_turn is followed by one end-of-turn id (the EOS for Alpaca),
trained: the model learns to stop, also when pad == eos. Every example is checked: its ids decode to its text
(or equal the whole text's tokenization), and a chat row's control tokens are those of its skeleton (the render
with placeholders for the messages' text) tokenized whole; one that fails is dropped as render_mismatch. Labels are not
shifted here; Hugging Face causal LMs shift them in the loss.
"""

from __future__ import annotations

import re
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypedDict

from sft.data.segments import Segment
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
    double_bos: int = 0  # kept examples that start with two BOS ids (must stay 0)
    render_mismatched: list[int] = field(default_factory=list)  # input indices whose ids do not give their text
    unverified: int = 0  # rows whose text a SentencePiece decoder cannot give back (record text spelling "▁")
    trained_by_part: Counter = field(default_factory=Counter)  # answer | reasoning | structure -> trained tokens
    turns_trained: Counter = field(default_factory=Counter)  # trained turns per kept example -> examples


BOUNDARY_WINDOW = 32  # characters each side of a prompt/answer boundary; merges stay within one pre-token


def encode(tokenizer: Any, texts: list[str], plain: bool = False) -> list[list[int]]:
    """Token ids of many texts without added special tokens, through the Rust backend when there is one (the
    same ids as tokenizer(texts), without its per-call Python overhead). plain: special-token strings in the
    texts are text, not tokens."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=plain)["input_ids"]
    batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
    before = backend.encode_special_tokens
    backend.encode_special_tokens = plain
    try:
        return [e.ids for e in batch(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = before


ANCHOR = "\n"


def anchor_ids(tokenizer: Any) -> list[int]:
    """The ids of ANCHOR when this tokenizer marks the start of every text it is given (SentencePiece's "▁"),
    else []: then a later segment is tokenized behind the anchor, which is dropped."""
    alone, behind, anchor = encode(tokenizer, ["a", ANCHOR + "a", ANCHOR])
    return anchor if behind[: len(anchor)] == anchor and behind[len(anchor):] != alone else []


def marks_after_special(tokenizer: Any) -> bool:
    """True when text after a special token starts with the start-of-text mark, as in Llama-2's legacy
    SentencePiece tokenizers: a segment that follows a special token then gets no anchor."""
    special = tokenizer.eos_token or next(iter(tokenizer.all_special_tokens), None)
    if not special:
        return False
    joint, alone = encode(tokenizer, [special + "a", "a"])
    return joint[1:] == alone


def special_strings(tokenizer: Any) -> list[str]:
    """Every string this tokenizer turns into one special id (its named special tokens and added special ones)."""
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
    return sorted({t for t in [*tokenizer.all_special_tokens, *added] if t}, key=len, reverse=True)


def _ends_special(seg: Segment, specials: list[str]) -> bool:
    return not seg.plain and any(seg.text.endswith(t) for t in specials)


_TRAITS: "weakref.WeakKeyDictionary[Any, tuple[list[int], bool, list[str]]]" = weakref.WeakKeyDictionary()


def traits(tokenizer: Any) -> tuple[list[int], bool, list[str]]:
    """(anchor_ids, legacy: marks_after_special with an anchor, special_strings), found once per tokenizer."""
    if tokenizer not in _TRAITS:
        anchor = anchor_ids(tokenizer)
        _TRAITS[tokenizer] = (anchor, bool(anchor) and marks_after_special(tokenizer), special_strings(tokenizer))
    return _TRAITS[tokenizer]


def encode_segments(tokenizer: Any, segment_lists: list[list[Segment]]) -> list[list[list[int]]]:
    """The ids of every segment: record text plain, template text with its special tokens, each as it would be
    tokenized inside the whole text."""
    anchor, legacy, specials = traits(tokenizer)
    flat = [(s, j > 0 and not (legacy and _ends_special(segs[j - 1], specials)))
            for segs in segment_lists for j, s in enumerate(segs)]
    texts = [(ANCHOR + s.text) if anchor and behind else s.text for s, behind in flat]
    ids: list[list[int]] = [[] for _ in flat]
    for plain in (True, False):
        where = [k for k, (s, _) in enumerate(flat) if s.plain == plain]
        for k, got in zip(where, encode(tokenizer, [texts[k] for k in where], plain=plain)):
            behind = anchor and flat[k][1]
            ids[k] = got[len(anchor):] if behind and got[: len(anchor)] == anchor else got
    out, pos = [], 0
    for segs in segment_lists:
        out.append(ids[pos : pos + len(segs)])
        pos += len(segs)
    return out


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
    pieces: list[list[int]], segs: list[Segment], prefix: list[int], eot_id: int, train_on_source: bool
) -> tuple[list[int], list[int], int, int]:
    """Concatenate segment ids; returns (input_ids, labels, length of the last trained run with its end-of-turn,
    how many prefix ids were put in front)."""
    ids: list[int] = []
    labels: list[int] = []
    if prefix and (not pieces[0] or pieces[0][: len(prefix)] != prefix):  # a template writing BOS gets no second
        ids += prefix
        labels += prefix if train_on_source else [IGNORE_INDEX] * len(prefix)
    added = len(ids)
    run_start, was_trained = 0, False
    for piece, seg in zip(pieces, segs):
        if seg.end_of_turn:
            piece = piece + [eot_id]
        if seg.trained and not was_trained:
            run_start = len(ids)
        was_trained = seg.trained
        ids += piece
        labels += piece if (seg.trained or train_on_source) else [IGNORE_INDEX] * len(piece)
    return ids, labels, len(ids) - run_start, added


def _truncate(ids: list[int], labels: list[int], max_len: int, keep_head: int) -> tuple[list[int], list[int]]:
    """Cut from the left of the prompt, keeping `keep_head` leading ids (BOS) and the tail."""
    cut = len(ids) - max_len
    return ids[:keep_head] + ids[keep_head + cut :], labels[:keep_head] + labels[keep_head + cut :]


def text_of(segs: list[Segment], eot: str, after_special: str = "", specials: tuple[str, ...] = ()) -> str:
    """The text the ids of segs must decode to. after_special: what decoding writes after each special token of
    the template (a space for Llama-2's legacy SentencePiece tokenizers, whose text after a special token starts
    with the start-of-text mark); none after the last one."""
    pieces = [s.text + (eot if s.end_of_turn else "") for s in segs]
    if not (after_special and specials):
        return "".join(pieces)
    pattern = re.compile("|".join(map(re.escape, specials)))
    text = "".join(p if s.plain else pattern.sub(lambda m: m.group(0) + after_special, p) for s, p in zip(segs, pieces))
    return text.removesuffix(after_special) if "".join(pieces).endswith(specials) else text


def render_mismatches(tokenizer: Any, ids_list: list[list[int]], texts: list[str]) -> list[int]:
    """Indices of examples whose ids do not stand for their text: they neither decode to it, nor equal the whole
    text's tokenization, nor decode as that tokenization does (tokenizers whose decoding adds a space after a
    special token, as Llama-2's legacy SentencePiece, or record text spelling a special token)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def decode(batch: list[list[int]]) -> list[str]:
        if backend is not None:  # what batch_decode does without clean-up, minus its per-id Python checks
            return backend.decode_batch(batch, skip_special_tokens=False)
        return tokenizer.batch_decode(batch, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    suspects = [k for k, (got, want) in enumerate(zip(decode(ids_list), texts)) if got != want]
    whole = encode(tokenizer, [texts[k] for k in suspects])
    ours, theirs = decode([ids_list[k] for k in suspects]), decode(whole)
    return [k for k, w, a, b in zip(suspects, whole, ours, theirs) if w != ids_list[k] and a != b]


_CONTROLS: "weakref.WeakKeyDictionary[Any, frozenset[int]]" = weakref.WeakKeyDictionary()


def control_ids(tokenizer: Any) -> frozenset[int]:
    """The ids of the tokenizer's special tokens (what a template writes as control tokens; record text, tokenized
    plain, never gives one)."""
    if tokenizer not in _CONTROLS:
        strings = traits(tokenizer)[2]
        _CONTROLS[tokenizer] = frozenset(int(i) for i in tokenizer.convert_tokens_to_ids(strings) if i is not None)
    return _CONTROLS[tokenizer]


def control_mismatches(tokenizer: Any, ids_list: list[list[int]], skeletons: list[str | None]) -> list[int]:
    """Indices of examples whose control tokens are not those of their skeleton (the template's render with every
    message's text a placeholder) tokenized whole: a cut inside a control token's string ("<|im_st" + "a" +
    "rt|>") decodes to the same text, but its ids are text. Examples without a skeleton are not compared here."""
    controls = control_ids(tokenizer)
    unique = sorted({s for s in skeletons if s is not None})
    want = {s: [t for t in ids if t in controls] for s, ids in zip(unique, encode(tokenizer, unique))}
    return [k for k, (ids, s) in enumerate(zip(ids_list, skeletons))
            if s is not None and [t for t in ids if t in controls] != want[s]]


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
    encoded = encode_segments(tokenizer, segment_lists)
    stats = TokenizeStats(examples=len(segment_lists), boundary_mismatches=boundary_mismatches(segment_lists, tokenizer))
    assembled = [_assemble(pieces, segs, prefix, eot_id, train_on_source) for pieces, segs in zip(encoded, segment_lists)]
    anchor, legacy, found = traits(tokenizer)
    sentencepiece, specials = bool(anchor), tuple(found)
    texts = [text_of(segs, eot, " " if legacy else "", specials) for segs in segment_lists]
    # SentencePiece decodes "▁" and some special-token spellings in text lossily: such rows cannot be compared
    lossy = {i for i, segs in enumerate(segment_lists) if sentencepiece and any(
        s.plain and any(t in s.text for t in (*specials, "▁")) for s in segs)}
    stats.unverified = len(lossy)
    rows = [ids[added:] for ids, _, _, added in assembled]  # the prefix put in front is not part of the text
    wrong = {k for k in render_mismatches(tokenizer, rows, texts) if k not in lossy}
    wrong |= set(control_mismatches(tokenizer, rows, [getattr(segs, "skeleton", None) for segs in segment_lists]))
    stats.render_mismatched = sorted(wrong)
    bad = set(stats.render_mismatched)
    examples: list[Example] = []
    kept: list[int] = []
    for i, ((ids, labels, last_answer, _), segs) in enumerate(zip(assembled, segment_lists)):
        if i in bad:
            stats.dropped["render_mismatch"] += 1
            continue
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
        if prefix and ids[: 2 * len(prefix)] == prefix * 2:
            stats.double_bos += 1
        count_parts(stats, segs, encoded[i])
        stats.kept += 1
        stats.total_tokens += len(ids)
        stats.trained_tokens += n_trained
        examples.append({"input_ids": ids, "labels": labels})
        kept.append(i)
    return examples, kept, stats


def count_parts(stats: TokenizeStats, segs: list[Segment], pieces: list[list[int]]) -> None:
    """Trained tokens by part and trained turns (runs of trained segments) of one example."""
    turns, was = 0, False
    for seg, piece in zip(segs, pieces):
        if seg.trained:
            stats.trained_by_part[seg.part] += len(piece)
            stats.trained_by_part["structure"] += int(seg.end_of_turn)
        turns += seg.trained and not was
        was = seg.trained
    stats.turns_trained[turns] += 1
