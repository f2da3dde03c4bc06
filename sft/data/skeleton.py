"""Where each message's text stands in a chat template's render, found without searching for it.

The template renders the conversation twice: once as it is, once with every message's text (content,
reasoning_content) replaced by a unique placeholder -- the skeleton. The skeleton is template text and
placeholders, one after the other; the render must be the same template text with each placeholder replaced by its
message's text, or that text trimmed of some whitespace at its ends (templates trim, strip newlines):

    skeleton   <|im_start|>user\\n  \\ue0000\\ue001  <|im_end|>\\n<|im_start|>assistant\\n  \\ue0001\\ue001  <|im_end|>
    render     <|im_start|>user\\n  a                <|im_end|>\\n<|im_start|>assistant\\n  b                <|im_end|>

So a short text ("a", "end", "|") is located in its own place, never inside a control token's string or another
turn. A render that does not follow its skeleton (a template that reads the text, not only prints it) is not
guessed at: `Alignment` is None and the caller refuses the conversation. The skeleton of a conversation does not
depend on its text, so conversations of the same shape share one (sft.data.chat caches it).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

FIELDS = ("reasoning_content", "content")  # the record text of a message, in the order templates print it
OPEN, CLOSE = "\ue000", "\ue001"  # private-use characters: no template trims, splits or matches them
MARK = re.compile(f"({OPEN}[0-9]+{CLOSE})")


def placeholders(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The messages with each non-empty text replaced by a placeholder, and (message, field) of each placeholder
    by number. Empty texts stay empty: templates test them (`if content`)."""
    out, owners = [], []
    for i, m in enumerate(messages):
        m = dict(m)
        for name in FIELDS:
            if isinstance(m.get(name), str) and m[name]:
                m[name] = f"{OPEN}{len(owners)}{CLOSE}"
                owners.append((i, name))
        out.append(m)
    return out, owners


@dataclass(frozen=True)
class Skeleton:
    """A render with placeholders: pieces alternate template text and placeholder numbers (text, n, text, ...,
    text); starts: where each piece begins in the skeleton's text."""

    text: str
    pieces: tuple[str | int, ...]
    starts: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> "Skeleton":
        parts = MARK.split(text)
        pieces = tuple(p if k % 2 == 0 else int(p[1:-1]) for k, p in enumerate(parts))
        starts, at = [], 0
        for p in parts:
            starts.append(at)
            at += len(p)
        return cls(text, pieces, tuple(starts))

    def occurrences(self, number: int) -> list[int]:
        """Indices of the pieces that are placeholder `number`."""
        return [k for k in range(1, len(self.pieces), 2) if self.pieces[k] == number]


def variants(text: str) -> list[str]:
    """What a template may make of a text: the text with some of its leading and trailing whitespace removed,
    longest first."""
    lead, trail = len(text) - len(text.lstrip()), len(text) - len(text.rstrip())
    if lead == len(text):  # whitespace only: any part of it
        cuts = {text[a:b] for a in range(min(len(text), 16) + 1) for b in range(a, len(text) + 1)} | {""}
        return sorted(cuts, key=len, reverse=True)
    if lead + trail == 0:
        return [text]
    cuts = {text[a : len(text) - b] for a in range(lead + 1) for b in range(trail + 1)}
    return sorted(cuts, key=len, reverse=True)


@dataclass(frozen=True)
class Alignment:
    """A render aligned to its skeleton: where every piece of the skeleton begins in the render."""

    skeleton: Skeleton
    starts: tuple[int, ...]
    length: int

    def span(self, piece: int) -> tuple[int, int]:
        """(start, end) of piece `piece` in the render."""
        end = self.starts[piece + 1] if piece + 1 < len(self.starts) else self.length
        return self.starts[piece], end

    def to_render(self, at: int) -> int:
        """A position in the skeleton's template text, in the render; -1 inside a placeholder."""
        k = bisect.bisect_right(self.skeleton.starts, at) - 1
        k -= k % 2  # the template piece at or before it
        offset = at - self.skeleton.starts[k]
        return self.starts[k] + offset if offset <= len(self.skeleton.pieces[k]) else -1  # type: ignore[arg-type]

    def to_skeleton(self, at: int) -> int:
        """A position in the render's template text, in the skeleton; -1 inside record text."""
        k = bisect.bisect_right(self.starts, at) - 1
        k -= k % 2
        offset = at - self.starts[k]
        return self.skeleton.starts[k] + offset if offset <= len(self.skeleton.pieces[k]) else -1  # type: ignore[arg-type]


def align(text: str, skeleton: Skeleton, values: list[str]) -> Alignment | int:
    """The render `text` aligned to `skeleton`, whose placeholder n stands for values[n]; else the number of the
    first placeholder after which the render stops following the skeleton (-1: its first template text)."""
    pieces, starts, at = skeleton.pieces, [], 0
    if not text.startswith(pieces[0]):  # type: ignore[arg-type]
        return -1
    starts.append(0)
    at = len(pieces[0])  # type: ignore[arg-type]
    for k in range(1, len(pieces), 2):
        number, after = pieces[k], pieces[k + 1]
        found = next((v for v in variants(values[number]) if text.startswith(v, at)  # type: ignore[index]
                      and text.startswith(after, at + len(v))), None)  # type: ignore[arg-type]
        if found is None:
            return number  # type: ignore[return-value]
        starts += [at, at + len(found)]
        at += len(found) + len(after)  # type: ignore[arg-type]
    return Alignment(skeleton, tuple(starts), len(text)) if at == len(text) else len(values)
