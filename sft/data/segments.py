"""The unit between prompts and tokens: a piece of text, whether it is trained, and whether it came from a record."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool
    # record text (an instruction, an answer, a message): tokenized without special-token parsing, so a record
    # that spells "<|im_end|>" is trained on those characters, never on the control token. False: template text.
    plain: bool = True
    # what the tokens are, for the report: prompt (masked) | answer | reasoning | structure (template text that is
    # trained: the end-of-turn token, think tags, tool-call markup)
    part: str = "prompt"
    end_of_turn: bool = False  # one end-of-turn id (the EOS for Alpaca) follows, trained: the template has none


class Segments(list[Segment]):
    """The segments of a chat render, with its skeleton: the template's render of the same conversation, up to
    where the segments end, with every message's text replaced by a placeholder (sft.data.skeleton). The row
    check compares the control tokens of the row with those of the skeleton tokenized whole. None: not known."""

    def __init__(self, segments: list[Segment], skeleton: str | None = None) -> None:
        super().__init__(segments)
        self.skeleton = skeleton
