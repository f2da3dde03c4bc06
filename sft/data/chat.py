"""A conversation -> the chat template's one render, cut into segments whose trained spans are located in it.

    render = template(messages)            once, with prompt.template_kwargs and a fixed date
    every message's content (and an assistant's reasoning_content) is located by aligning the render to its
    skeleton, the render with a placeholder for each text (sft.data.skeleton): in its own place, never in another
    turn or inside a control token's string; skeletons are cached per shape of conversation
    a trained assistant turn runs from the end of its generation prompt (when the skeleton begins with the
    skeleton of the conversation before it plus the generation prompt) or else from its located text, to the
    template's end-of-turn token after its content, that token included
    segments: template text (its special tokens are tokens) | record text (never parsed as special tokens)

A template that marks its assistant text with {% generation %} (what transformers' assistant mask reads) has its
marks decide what is trained instead. Templates that edit the text are followed, not refused: an answer the template
trims is located trimmed, Qwen3's empty think block before the last answer is part of what the template renders. A
turn that cannot be located is a bad record (`ChatError`, naming the turn and why), which data.on_bad_record decides
about. Whether the ids of the segments decode back to the render, and give the skeleton's control tokens, is
checked in sft.data.tokenize.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.config import PromptConfig
from sft.data.segments import Segment, Segments
from sft.data.skeleton import OPEN, Alignment, Skeleton, align, placeholders
from sft.data.tokenize import special_strings
from sft.errors import ConfigError, DataError

PROBE = [{"role": "user", "content": "PROBE-QUESTION"}, {"role": "assistant", "content": "PROBE-ANSWER"}]


class ChatError(DataError):
    """A conversation the template cannot be cut into trained turns (a bad record)."""


def chat_template(cfg: PromptConfig, tokenizer: Any) -> str:
    """prompt.chat_template (a .jinja file, or the template itself), else the tokenizer's own."""
    given = cfg.chat_template
    if given:
        path = Path(given).expanduser()
        if given.endswith((".jinja", ".j2", ".txt")) or ("{" not in given and path.is_file()):
            if not path.is_file():
                raise ConfigError(f"prompt.chat_template={given}: file not found")
            return _read_template(str(path.resolve()), path.stat().st_mtime_ns)
        return given
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError("prompt=chat: this tokenizer has no chat template; set prompt.chat_template to a .jinja file "
                          "(or use prompt=alpaca or prompt=custom)")
    return template


@functools.lru_cache(maxsize=8)
def _read_template(path: str, mtime_ns: int) -> str:
    """A template file read once per version of it (every render asks for it)."""
    return Path(path).read_text(encoding="utf-8")


def render(messages: list[dict[str, Any]], cfg: PromptConfig, tokenizer: Any, generation_prompt: bool,
           tools: list[dict[str, Any]] | None = None) -> str:
    """The template's text for these messages. Today's date is prompt.date, so a template that prints the date
    gives the same prompt (and the same data cache key) every day."""
    day = datetime.date.fromisoformat(cfg.date)
    kwargs: dict[str, Any] = {"date_string": day.strftime("%d %b %Y"), "strftime_now": day.strftime,
                              **dict(cfg.template_kwargs)}
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template(cfg, tokenizer),
                                             tokenize=False, add_generation_prompt=generation_prompt, **kwargs)
    except ConfigError:
        raise
    except Exception as e:  # jinja raises what the template says (e.g. "roles must alternate")
        raise ChatError(f"the chat template refused the conversation ({type(e).__name__}: {e})") from None


def detect_end_of_turn(cfg: PromptConfig, tokenizer: Any) -> str:
    """The special token the template closes an assistant turn with: the first token after the answer of a
    probe conversation, when it is a special token; else the tokenizer's EOS."""
    text = render(PROBE, cfg, tokenizer, generation_prompt=False)
    after = text.find(PROBE[1]["content"])
    if after >= 0:
        tail = text[after + len(PROBE[1]["content"]):]
        first = next((t for t in special_strings(tokenizer) if tail.startswith(t)), None)
        if first is not None:
            return first
    if tokenizer.eos_token is None:
        raise ConfigError("the chat template closes turns with no special token and the tokenizer has no EOS: "
                          "set prompt.end_of_turn")
    return tokenizer.eos_token


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as templates read them: tool-call arguments as objects (records may hold them as JSON strings,
    as Parquet and Arrow force)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [_tool_call(c) for c in m["tool_calls"]]
        out.append(m)
    return out


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function", call))
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except json.JSONDecodeError as e:
            raise ChatError(f"tool call {function.get('name')!r}: arguments are not JSON ({e.msg})") from None
    return {"type": "function", "function": function}


@dataclass(frozen=True)
class Layout:
    """What a conversation's shape gives, whatever its text: the skeleton (sft.data.skeleton), who owns each
    placeholder, where the generation prompt of each assistant turn ends in it (when the render of the turns
    before it plus the generation prompt begins the skeleton) and its {% generation %} spans (None: no marks)."""

    skeleton: Skeleton
    owners: list[tuple[int, str]]
    heads: dict[int, int]
    marked: list[tuple[int, int]] | None


_LAYOUTS: "weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Layout]]" = weakref.WeakKeyDictionary()
LAYOUT_CACHE = 4096  # shapes kept per tokenizer: conversations of one shape (roles, tools, names) share a layout


def conversation_layout(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, cfg: PromptConfig,
                        tokenizer: Any, generation_prompt: bool) -> Layout:
    """The layout of this conversation's shape, rendered once per shape (the template sees placeholders only)."""
    shaped, owners = placeholders(messages)
    shape = json.dumps([shaped, tools], sort_keys=True, ensure_ascii=False, default=str)
    if shape.count(OPEN) != len(owners):
        raise ChatError(f"the conversation spells the private-use character {OPEN!r}, which marks text here")
    key = (chat_template(cfg, tokenizer), json.dumps(dict(cfg.template_kwargs), sort_keys=True, default=str),
           cfg.date, generation_prompt, shape)
    cache = _LAYOUTS.setdefault(tokenizer, {})
    if key not in cache:
        if len(cache) >= LAYOUT_CACHE:
            cache.clear()
        skeleton = Skeleton.parse(render(shaped, cfg, tokenizer, generation_prompt, tools))
        marked = None if generation_prompt else generation_spans(shaped, cfg, tokenizer, tools)
        heads = {}
        if marked is None and not generation_prompt:
            for i in range(1, len(shaped)):
                if shaped[i]["role"] == "assistant":
                    before = render(shaped[:i], cfg, tokenizer, True, tools)
                    if skeleton.text.startswith(before):
                        heads[i] = len(before)
        cache[key] = Layout(skeleton, owners, heads, marked)
    return cache[key]


Spans = dict[tuple[int, str], list[tuple[int, int]]]  # (message, field) -> where its text stands, in order


def locate(text: str, layout: Layout, messages: list[dict[str, Any]]) -> tuple[Spans, Alignment]:
    """Where each message's text stands in its render: (message, field) -> its (start, end) spans, in order."""
    values = [messages[i][name] for i, name in layout.owners]
    aligned = align(text, layout.skeleton, values)
    if not isinstance(aligned, Alignment):
        turn = layout.owners[aligned][0] if 0 <= aligned < len(layout.owners) else None
        where = f"turn {turn} ({messages[turn]['role']}): " if turn is not None else ""
        raise ChatError(f"{where}cannot locate its text in the template's render: the template renders it otherwise "
                        "than it renders a placeholder (it reads the text, beyond trimming it)")
    spans: Spans = {}
    for k in range(1, len(layout.skeleton.pieces), 2):
        spans.setdefault(layout.owners[layout.skeleton.pieces[k]], []).append(aligned.span(k))  # type: ignore[index]
    return spans, aligned


def trained_turns(messages: list[dict[str, Any]], train_on: str) -> set[int]:
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return set(answers[-1:]) if train_on == "last_assistant" else set(answers)


def chat_segments(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, cfg: PromptConfig,
                  tokenizer: Any, end_of_turn: str) -> Segments:
    """Segments of the conversation's render up to the end of its last trained turn."""
    messages = template_messages(messages)
    text = render(messages, cfg, tokenizer, generation_prompt=False, tools=tools)
    layout = conversation_layout(messages, tools, cfg, tokenizer, generation_prompt=False)
    spans, aligned = locate(text, layout, messages)
    parts = {span: "prompt" for found in spans.values() for span in found}  # every record text span: plain
    trained: list[tuple[int, int]] = []
    to_train = trained_turns(messages, cfg.train_on)
    cursor = 0
    for i, msg in enumerate(messages):
        is_trained = i in to_train
        head = aligned.to_render(layout.heads[i]) if is_trained and i in layout.heads else -1
        head = head if head >= cursor else -1
        first = None
        for field, part in (("reasoning_content", "reasoning"), ("content", "answer" if is_trained else "prompt")):
            value = msg.get(field)
            if not isinstance(value, str) or not value:
                continue
            found = [span for span in spans.get((i, field), []) if span[0] >= max(cursor, head)]
            if not found:
                what = "its reasoning_content (the template may not render reasoning)" if field == "reasoning_content" \
                    else "its content (the template changes it beyond trimming)"
                raise ChatError(f"turn {i} ({msg['role']}): cannot find {what} in the template's render")
            if part == "reasoning" and not cfg.train_reasoning:
                part = "prompt"
            parts[found[0]] = part if is_trained else "prompt"
            if first is None and part != "prompt":
                first = found[0][0]
            cursor = found[0][1]
        if not is_trained or layout.marked is not None:
            continue
        close = _template_find(text, end_of_turn, cursor, parts)
        if close < 0:
            raise ChatError(f"turn {i} (assistant): the template does not close it with {end_of_turn!r} "
                            "(prompt.end_of_turn names the token that ends a turn)")
        begin = head if head >= 0 and (cfg.train_reasoning or not msg.get("reasoning_content")) else first
        if begin is None:
            raise ChatError(f"turn {i} (assistant): cannot locate where it begins (the template re-renders earlier "
                            "turns and the turn has no text of its own)")
        cursor = close + len(end_of_turn)
        trained.append((begin, cursor))
    if layout.marked is not None:  # the template marks what is trained: its marks decide
        marked = [(aligned.to_render(a), aligned.to_render(b)) for a, b in layout.marked]
        trained = marked[-1:] if cfg.train_on == "last_assistant" else marked
    record_spans = [(a, b, part) for (a, b), part in sorted(parts.items())]
    if not trained:
        return Segments([Segment(text, trained=False, plain=False)] if not record_spans else cut(text, record_spans, []),
                        skeleton=layout.skeleton.text)
    end = trained[-1][1]
    at = aligned.to_skeleton(end)
    return Segments(cut(text[:end], record_spans, trained), skeleton=layout.skeleton.text[:at] if at >= 0 else None)


def _template_find(text: str, token: str, start: int, record: dict[tuple[int, int], str]) -> int:
    """The first `token` from `start` that the template wrote (not record text spelling it); -1."""
    at = text.find(token, start)
    while at >= 0 and any(a <= at < b for a, b in record):
        at = text.find(token, at + 1)
    return at


def chat_prompt_segments(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, cfg: PromptConfig,
                         tokenizer: Any) -> Segments:
    """A conversation's render with the generation prompt, as segments: its messages' text plain, all masked."""
    text = render(messages, cfg, tokenizer, generation_prompt=True, tools=tools)
    layout = conversation_layout(messages, tools, cfg, tokenizer, generation_prompt=True)
    spans, _ = locate(text, layout, messages)
    return Segments(cut(text, sorted((a, b, "prompt") for found in spans.values() for a, b in found), []),
                    skeleton=layout.skeleton.text)


def generation_spans(messages: list[dict[str, Any]], cfg: PromptConfig, tokenizer: Any,
                     tools: list[dict[str, Any]] | None) -> list[tuple[int, int]] | None:
    """The character spans of a template's {% generation %} blocks in the render (what transformers' assistant
    mask is made of), or None when the template has none."""
    template = chat_template(cfg, tokenizer)
    if not re.search(r"\{%-?\s*generation\s*-?%\}", template):
        return None
    from transformers.utils.chat_template_utils import render_jinja_template

    day = datetime.date.fromisoformat(cfg.date)
    kwargs = {**tokenizer.special_tokens_map, "date_string": day.strftime("%d %b %Y"), "strftime_now": day.strftime,
              **dict(cfg.template_kwargs)}
    _, spans = render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                     return_assistant_tokens_mask=True, add_generation_prompt=False, **kwargs)
    return [tuple(span) for span in spans[0]]


def cut(text: str, record_spans: list[tuple[int, int, str]], trained: list[tuple[int, int]]) -> list[Segment]:
    """Split text where record text starts or ends or a trained span starts or ends."""
    bounds = {0, len(text)} | {p for s, e, _ in record_spans for p in (s, e) if p <= len(text)}
    bounds |= {p for span in trained for p in span}
    edges = sorted(bounds)
    segments = []
    for a, b in zip(edges, edges[1:]):
        owner = next((part for s, e, part in record_spans if s <= a and b <= e), None)
        is_trained = any(s <= a and b <= e for s, e in trained)
        part = owner if owner is not None and owner != "prompt" else ("structure" if is_trained else "prompt")
        segments.append(Segment(text[a:b], trained=is_trained, plain=owner is not None, part=part))
    return spaces_forward(segments)


def spaces_forward(segments: list[Segment]) -> list[Segment]:
    """Move the spaces that end a segment to the start of the next one when both are masked (or both trained):
    tokenizers attach a space to the word after it ("[INST] " + "Hi" is "▁Hi" in one piece, " Hi" in byte-level
    BPE), and the label of a space between two masked parts does not matter. The prompt/answer boundary keeps
    its place: the generation prompt ends there."""
    out: list[Segment] = []
    for seg in segments:
        prev = out[-1] if out else None
        if prev is not None and prev.trained == seg.trained and prev.text.endswith(" ") and prev.text.strip():
            body = prev.text.rstrip(" ")
            out[-1] = dataclasses.replace(prev, text=body)
            seg = dataclasses.replace(seg, text=prev.text[len(body):] + seg.text, plain=seg.plain)
        out.append(seg)
    return out
