"""Records -> segments of text, each marked trained or not (sft.data.segments).

Alpaca and custom templates: the prompt (masked), then the answer (trained, followed by one end-of-turn
token). Chat: the template's own render, cut into masked and trained parts (sft.data.chat). Generation uses
`prompt_segments`, made by the same functions as training's prompt: training and evaluation see the same ids.
"""

from __future__ import annotations

import re
from typing import Any

from sft.config import PromptConfig
from sft.data.chat import chat_prompt_segments, chat_segments, detect_end_of_turn, template_messages
from sft.data.load import Record
from sft.data.segments import Segment
from sft.data.tokenize import special_strings
from sft.errors import ConfigError

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


_FIELD = re.compile(r"\{(instruction|input|system)\}")  # {system}: prompt.system, in a custom template


def _format(template: str, values: dict[str, str]) -> str:
    # One pass over the template, as Alpaca's str.format_map: text put in is never searched again (an
    # instruction may itself contain "{input}", code or JSON), and other braces of the template stay as written.
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def _values(record: Record, cfg: PromptConfig) -> dict[str, str]:
    return {"instruction": record["instruction"], "input": record["input"], "system": cfg.system or ""}


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


def to_messages(record: Record, cfg: PromptConfig) -> list[dict[str, Any]]:
    """A record as a chat: an Alpaca record's input joins the instruction, as most chat SFT recipes do."""
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


def build_segments(record: Record, cfg: PromptConfig, tokenizer: Any, eot: str | None = None) -> list[Segment]:
    """The record as segments: masked prompt, trained answer(s). eot: end_of_turn_token(cfg, tokenizer), when the
    caller has it already (it is the same for every record)."""
    if cfg.name == "chat":
        eot = eot or end_of_turn_token(cfg, tokenizer)
        return chat_segments(to_messages(record, cfg), record.get("tools"), cfg, tokenizer, eot)
    with_input, without_input = _templates(cfg)
    return [*_fill(with_input if record["input"] else without_input, _values(record, cfg), tokenizer),
            Segment(record["output"], trained=True, part="answer", end_of_turn=True)]


def prompt_segments(record: Record, cfg: PromptConfig, tokenizer: Any) -> list[Segment]:
    """What a model is given at generation time, as segments: everything before the last answer. Training's
    prompt is made by the same functions, so both tokenize to the same ids."""
    if cfg.name == "chat":
        msgs = template_messages(to_messages(record, cfg))
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        return chat_prompt_segments(msgs, record.get("tools"), cfg, tokenizer)
    with_input, without_input = _templates(cfg)
    return _fill(with_input if record["input"] else without_input, _values(record, cfg), tokenizer)


def render_prompt(record: Record, cfg: PromptConfig, tokenizer: Any) -> str:
    """The prompt's text at generation time."""
    return "".join(s.text for s in prompt_segments(record, cfg, tokenizer))


def _fill(template: str, values: dict[str, str], tokenizer: Any) -> list[Segment]:
    """A text template filled in one pass: one plain segment, unless the template itself writes special tokens,
    which then stay tokens while the record's text stays text."""
    if not any(t in template for t in special_strings(tokenizer)):
        return [Segment(_format(template, values), trained=False)]
    out, at = [], 0
    for m in _FIELD.finditer(template):
        if m.start() > at:
            out.append(Segment(template[at : m.start()], trained=False, plain=False))
        if values[m.group(1)]:
            out.append(Segment(values[m.group(1)], trained=False))
        at = m.end()
    if at < len(template):
        out.append(Segment(template[at:], trained=False, plain=False))
    return out


def end_of_turn_token(cfg: PromptConfig, tokenizer: Any) -> str:
    """prompt.end_of_turn; else the token the chat template closes a turn with (chat), or the EOS."""
    if cfg.end_of_turn:
        return cfg.end_of_turn
    if cfg.name == "chat":
        return detect_end_of_turn(cfg, tokenizer)
    if tokenizer.eos_token is None:
        raise ConfigError("the tokenizer has no EOS token: set prompt.end_of_turn")
    return tokenizer.eos_token
