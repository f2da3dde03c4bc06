"""On the real SmolLM2 tokenizer: trained positions decode to exactly output + EOS, masked ones to the prompt."""

from __future__ import annotations

import json

import pytest

from sft.config import PromptConfig
from sft.data.prompts import build_segments, render_prompt
from sft.data.tokenize import IGNORE_INDEX, tokenize_examples
from sft.config import resource_path


def demo_records(n: int = 40) -> list[dict]:
    with open(resource_path("demo_train.jsonl")) as f:
        return [{"id": i, "input": "", **json.loads(line)} for i, line in zip(range(n), f)]


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_trained_and_masked_positions_decode_exactly(smollm2_tokenizer, template):
    tok, cfg = smollm2_tokenizer, PromptConfig(name=template)
    records = demo_records() + [{"id": 99, "instruction": "Write a haiku.", "input": "", "output": " Leading space, trailing space "}]
    segments = [build_segments(r, cfg, tok) for r in records]
    examples, kept, stats = tokenize_examples(segments, tok, "<|im_end|>", max_seq_len=512)
    assert kept == list(range(len(records))) and stats.eos_untrained == 0
    for record, ex in zip(records, examples):
        trained = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX]
        masked = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label == IGNORE_INDEX]
        assert tok.decode(trained) == record["output"] + "<|im_end|>"
        assert tok.decode(masked) == render_prompt(record, cfg, tok)
        assert ex["labels"][-1] == ex["input_ids"][-1] == tok.eos_token_id == tok.pad_token_id


def test_boundary_mismatch_is_counted_and_labels_stay_exact(smollm2_tokenizer):
    """A template ending in a space: one-string tokenization merges ' yes' into one token, ours never does."""
    tok = smollm2_tokenizer
    cfg = PromptConfig(name="custom", template_input="Q: {instruction} {input}\nA: ", template_no_input="Q: {instruction}\nA: ")
    records = [{"id": 0, "instruction": "Is it?", "input": "", "output": "yes"}]
    assert tok("Q: Is it?\nA: yes")["input_ids"] != tok("Q: Is it?\nA: ")["input_ids"] + tok("yes")["input_ids"]
    (ex,), _, stats = tokenize_examples([build_segments(r, cfg, tok) for r in records], tok, "<|im_end|>", 64)
    assert stats.boundary_mismatches == 1
    assert tok.decode([t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX]) == "yes<|im_end|>"


def test_windowed_boundary_check_agrees_with_whole_string_tokenization(smollm2_tokenizer):
    from sft.data.tokenize import boundary_mismatches, encode

    tok = smollm2_tokenizer
    outputs = ["yes", " yes", "\nyes", "  two spaces", "123", ":)", "-> arrow", "Ünïcödé", "\n\n- a list", "x" * 80, "'quoted'"]
    templates = ["Q: {instruction}\nA:", "Q: {instruction}\nA: ", "Q: {instruction}\nA:\n", "Q: {instruction} =>"]
    count, records = 0, []
    for t in templates:
        cfg = PromptConfig(name="custom", template_input=t + "{input}", template_no_input=t)
        for out in outputs:
            segs = build_segments({"id": 0, "instruction": "Say it " * 10, "input": "", "output": out}, cfg, tok)
            records.append(segs)
            whole = encode(tok, [segs[0].text + segs[1].text])[0]
            count += whole != encode(tok, [segs[0].text])[0] + encode(tok, [segs[1].text])[0]
    assert count > 5  # the cases do hit the boundary effect
    assert boundary_mismatches(records, tok) == count
