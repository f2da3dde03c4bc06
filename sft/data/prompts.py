"""Records -> segments of text, each marked trained or not.

A segment list alternates prompt text (masked) and answer text (trained, followed by one end-of-turn token).
Generation uses `render_prompt`, which is the last segment list's prompt side: training and evaluation see
the very same prompt text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sft.config import PromptConfig
from sft.data.load import Record
from sft.errors import ConfigError, DataError

# Stanford Alpaca's PROMPT_DICT, verbatim (tatsu-lab/stanford_alpaca, train.py).
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool  # trained segments are followed by the end-of-turn token, trained too


_FIELD = re.compile(r"\{(instruction|input)\}")


def _format(template: str, record: Record) -> str:
    # One pass over the template, as Alpaca's str.format_map: text put in is never searched again (an
    # instruction may itself contain "{input}", code or JSON), and other braces of the template stay as written.
    return _FIELD.sub(lambda m: record[m.group(1)], template)


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def unescape(text: str) -> str:
    """Text as typed on the command line (a custom template, a stop string): Hydra keeps `\\n` as a backslash
    and an n, so \\n, \\t, \\r and \\\\ are read as newline, tab, carriage return and backslash."""
    return re.sub(r"\\[ntr\\]", lambda m: _ESCAPES[m.group(0)], text)


def _templates(cfg: PromptConfig) -> tuple[str, str]:
    if cfg.name == "alpaca":
        return ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT
    if cfg.name == "custom" and cfg.template_input and cfg.template_no_input:
        return unescape(cfg.template_input), unescape(cfg.template_no_input)
    raise ConfigError(f"prompt.name={cfg.name!r} has no text templates")


def to_messages(record: Record, cfg: PromptConfig) -> list[dict[str, str]]:
    """An Alpaca record as a chat: the input joins the instruction, as most chat SFT recipes do."""
    if "messages" in record:
        msgs = list(record["messages"])
    else:
        user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        msgs = [{"role": "user", "content": user}]
        if "output" in record:  # absent in prompt-only records (sft-generate)
            msgs.append({"role": "assistant", "content": record["output"]})
    if cfg.system is not None and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": cfg.system})
    return msgs


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_segments(messages: list[dict[str, str]], tokenizer: Any, end_of_turn: str) -> list[Segment]:
    """Split a rendered chat into masked and trained parts, one trained part per assistant turn.

    The chat template must render each assistant message verbatim after the generation prompt and close it
    with `end_of_turn`; whatever the template puts after that token belongs to the next masked part.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("prompt=chat: this tokenizer has no chat template (use prompt=alpaca or prompt=custom)")
    segments: list[Segment] = []
    consumed = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        answer_end = len(head) + len(msg["content"])
        if not full.startswith(head + msg["content"]) or not full[answer_end:].startswith(end_of_turn):
            raise DataError(
                f"chat template does not render assistant turn {i} as <generation prompt><content>{end_of_turn}; "
                "set prompt.end_of_turn to the token the template closes turns with"
            )
        segments.append(Segment(head[consumed:], trained=False))
        segments.append(Segment(msg["content"], trained=True))
        consumed = answer_end + len(end_of_turn)
    return segments


def build_segments(record: Record, cfg: PromptConfig, tokenizer: Any) -> list[Segment]:
    if cfg.name == "chat" or "messages" in record:
        return chat_segments(to_messages(record, cfg), tokenizer, end_of_turn_token(cfg, tokenizer))
    with_input, without_input = _templates(cfg)
    source = _format(with_input if record["input"] else without_input, record)
    return [Segment(source, trained=False), Segment(record["output"], trained=True)]


def render_prompt(record: Record, cfg: PromptConfig, tokenizer: Any) -> str:
    """The text a model is given at generation time: everything before the last answer."""
    if cfg.name == "chat" or "messages" in record:
        msgs = to_messages(record, cfg)
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        return _render(tokenizer, msgs, generation_prompt=True)
    with_input, without_input = _templates(cfg)
    return _format(with_input if record["input"] else without_input, record)


def end_of_turn_token(cfg: PromptConfig, tokenizer: Any) -> str:
    token = cfg.end_of_turn or tokenizer.eos_token
    if token is None:
        raise ConfigError("the tokenizer has no EOS token: set prompt.end_of_turn")
    return token
