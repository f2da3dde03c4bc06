"""Masking with hand-written expected ids: the char tokenizer maps each character to ord(char), <s>=1, </s>=2."""

from __future__ import annotations

import torch

from sft.config import PromptConfig
from sft.data.collate import PaddedCollator
from sft.data.prompts import ALPACA_PROMPT_NO_INPUT, build_segments
from sft.data.tokenize import IGNORE_INDEX as X
from sft.data.tokenize import tokenize_examples

QA = PromptConfig(name="custom", template_input="Q:{instruction}|{input}\nA:", template_no_input="Q:{instruction}\nA:")


def run(records, tokenizer, prompt=QA, **kw):
    segments = [build_segments({"id": i, **r}, prompt, tokenizer) for i, r in enumerate(records)]
    kw.setdefault("max_seq_len", 64)
    return tokenize_examples(segments, tokenizer, tokenizer.eos_token, **kw)


def test_labels_without_input(char_tokenizer):
    (ex,), kept, stats = run([{"instruction": "hi", "input": "", "output": "yo"}], char_tokenizer)
    #                   <s>  Q   :   h    i    \n  A   :   y    o   </s>
    assert ex["input_ids"] == [1, 81, 58, 104, 105, 10, 65, 58, 121, 111, 2]
    assert ex["labels"] == [X, X, X, X, X, X, X, X, 121, 111, 2]
    assert kept == [0] and stats.trained_tokens == 3 and stats.eos_untrained == 0


def test_labels_with_input(char_tokenizer):
    (ex,), _, _ = run([{"instruction": "a", "input": "b", "output": "c"}], char_tokenizer)
    #                   <s>  Q   :   a   |    b   \n  A   :   c   </s>
    assert ex["input_ids"] == [1, 81, 58, 97, 124, 98, 10, 65, 58, 99, 2]
    assert ex["labels"] == [X, X, X, X, X, X, X, X, X, 99, 2]


def test_alpaca_template_labels(char_tokenizer):
    (ex,), _, _ = run([{"instruction": "Go", "input": "", "output": "ok"}], char_tokenizer, PromptConfig(), max_seq_len=512)
    prompt = ALPACA_PROMPT_NO_INPUT.replace("{instruction}", "Go")
    assert prompt.endswith("### Instruction:\nGo\n\n### Response:")
    assert ex["input_ids"] == [1] + [ord(c) for c in prompt] + [111, 107, 2]
    assert ex["labels"] == [X] * (1 + len(prompt)) + [111, 107, 2]


def test_truncate_source_cuts_prompt_from_the_left_and_keeps_bos(char_tokenizer):
    rec = {"instruction": "abcdef", "input": "", "output": "yo"}  # 14 ids untruncated
    (ex,), _, stats = run([rec], char_tokenizer, max_seq_len=8)
    #                   <s>  f   \n  A   :   y    o   </s>
    assert ex["input_ids"] == [1, 102, 10, 65, 58, 121, 111, 2]
    assert ex["labels"] == [X, X, X, X, X, 121, 111, 2]
    assert stats.truncated == 1


def test_drop_policy_and_answer_too_long(char_tokenizer):
    recs = [{"instruction": "abcdef", "input": "", "output": "yo"}, {"instruction": "a", "input": "", "output": "z" * 9}]
    examples, _, stats = run(recs, char_tokenizer, max_seq_len=8, truncation="drop")
    assert examples == [] and stats.dropped == {"too_long": 2}
    examples, _, stats = run(recs, char_tokenizer, max_seq_len=8)
    # the first fits once its prompt is cut; the second's answer + EOS alone exceeds the row: never trained empty
    assert len(examples) == 1 and stats.dropped == {"answer_too_long": 1}
    assert all(any(label != X for label in ex["labels"]) for ex in examples)


def test_template_with_its_own_bos_gets_no_second_one(char_tokenizer):
    prompt = PromptConfig(name="custom", template_input="<s>{instruction}{input}:", template_no_input="<s>{instruction}:")
    (ex,), _, stats = run([{"instruction": "h", "input": "", "output": "y"}], char_tokenizer, prompt)
    assert ex["input_ids"] == [1, 104, 58, 121, 2]
    assert ex["labels"] == [X, X, X, 121, 2]
    assert stats.boundary_mismatches == 0


def test_train_on_source_trains_everything(char_tokenizer):
    (ex,), _, _ = run([{"instruction": "hi", "input": "", "output": "yo"}], char_tokenizer, train_on_source=True)
    assert ex["labels"] == ex["input_ids"]


def test_pad_equal_to_eos_keeps_the_eos_trained(char_tokenizer):
    examples, _, _ = run(
        [{"instruction": "hi", "input": "", "output": "yo"}, {"instruction": "hello", "input": "", "output": "y"}],
        char_tokenizer,
    )
    batch = PaddedCollator(pad_id=2)(examples)  # pad == eos, as for SmolLM2
    assert batch["input_ids"][0].tolist() == [1, 81, 58, 104, 105, 10, 65, 58, 121, 111, 2, 2, 2]
    assert batch["labels"][0].tolist() == [X] * 8 + [121, 111, 2, X, X]
    assert batch["attention_mask"][0].tolist() == [1] * 11 + [0, 0]
    assert batch["labels"][1].tolist()[-2:] == [121, 2]
    assert torch.equal(batch["attention_mask"][1], torch.ones(13, dtype=torch.long))


def test_a_tokenizer_without_pad_gets_its_unk_or_else_its_eos_and_the_vocabulary_is_not_resized(tmp_path):
    from conftest import make_char_tokenizer
    from sft.config import ModelConfig
    from sft.model.load import load_tokenizer

    for name, drop, expected in (("with-unk", ["pad_token"], "<unk>"), ("eos-only", ["pad_token", "unk_token"], "</s>")):
        tokenizer = make_char_tokenizer()
        for attr in drop:
            setattr(tokenizer, attr, None)
        tokenizer.save_pretrained(tmp_path / name)
        loaded = load_tokenizer(ModelConfig(path=str(tmp_path / name)))
        assert loaded.pad_token == expected and len(loaded) == len(tokenizer)
        assert loaded.pad_token_id == tokenizer.convert_tokens_to_ids(expected)
