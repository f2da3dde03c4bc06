"""Pieces of sft-generate around the decoding loop: prompts and their ids, batch plans, rows on disk."""

from __future__ import annotations

import json

import pytest
from conftest import make_char_tokenizer

from sft.config import GenerationConfig, PromptConfig
from sft.errors import ConfigError, DataError
from sft.generate.items import build_items, describe, fit_prompt, plan_batches, prompt_ids
from sft.generate.outputs import UNCHECKED, alpaca_eval_rows, check_resumable, read_rows
from sft.io import differing_keys, write_json_atomic

RECORDS = [{"id": i, "instruction": "Do " + "x" * i, "input": "in" if i % 2 else "", "output": f"out {i}"} for i in range(5)]


def test_prompt_ids_have_one_bos_and_the_training_text() -> None:
    tok = make_char_tokenizer()
    from sft.data.segments import Segment

    assert prompt_ids([Segment("ab", False)], tok, [1]) == [1, 97, 98]
    # a template that writes BOS itself gets no second one; record text that spells it stays text
    assert prompt_ids([Segment("<s>", False, plain=False), Segment("ab", False)], tok, [1]) == [1, 97, 98]
    assert prompt_ids([Segment("<s>ab", False)], tok, [1]) == [1, 60, 115, 62, 97, 98]
    items = build_items(RECORDS, PromptConfig(), tok, GenerationConfig(num_return_sequences=3, do_sample=True), 1000, "error", "f")
    assert len(items) == 15 and len({it.seed for it in items}) == 15
    assert items[3].prompt.endswith("### Input:\nin\n\n### Response:") and items[3].ids[0] == 1


def test_long_prompts_keep_bos_and_the_end_or_fail_by_policy(capsys) -> None:
    ids = [1] + list(range(10, 30))
    assert fit_prompt(ids, 5, [1], "truncate", "f: record 0") == [1, 26, 27, 28, 29]
    assert "cut from the left, 21 -> 5 tokens" in capsys.readouterr().err
    with pytest.raises(DataError, match="f: record 0: prompt has 21 tokens"):
        fit_prompt(ids, 5, [1], "error", "f: record 0")
    with pytest.raises(DataError, match="no prompts"):
        build_items([], PromptConfig(), make_char_tokenizer(), GenerationConfig(), 100, "error", "f")


def test_batches_group_similar_lengths_longest_first() -> None:
    items = build_items(RECORDS, PromptConfig(), make_char_tokenizer(), GenerationConfig(), 1000, "error", "f")
    batches = plan_batches(items, 2)
    lengths = [len(it.ids) for b in batches for it in b]
    assert lengths == sorted(lengths, reverse=True) and [len(b) for b in batches] == [2, 2, 1]


def test_chat_records_are_described_by_their_last_turns() -> None:
    rec = {"id": 0, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert describe(rec) == ("hi", "", "hello")
    assert describe(RECORDS[1]) == ("Do x", "in", "out 1")


def test_torn_last_line_is_dropped_and_removed(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": 0, "sample": 0}) + "\n" + '{"id": 1, "sam')
    assert read_rows(path) == [{"id": 0, "sample": 0}]
    assert path.read_text() == json.dumps({"id": 0, "sample": 0}) + "\n"


def test_a_rerun_with_other_settings_names_them_but_batch_size_may_change(tmp_path) -> None:
    ident = {"model": "m", "dtype": "float32", "generation": {"seed": 1, "top_p": 0.9, "batch_size": 8}}
    assert not check_resumable(tmp_path, ident)
    write_json_atomic(tmp_path / "generation_config.json", {"identity": ident})
    assert check_resumable(tmp_path, {**ident, "generation": {**ident["generation"], "batch_size": 2}})
    assert differing_keys(ident, {"model": "n", "dtype": "float32", "generation": {"seed": 2, "top_p": 0.9, "batch_size": 8}}, UNCHECKED) == ["generation.seed", "model"]
    with pytest.raises(ConfigError, match="generation.seed"):
        check_resumable(tmp_path, {"model": "m", "dtype": "float32", "generation": {"seed": 2, "top_p": 0.9, "batch_size": 8}})


def test_alpaca_eval_export_joins_input_and_keeps_sample_zero() -> None:
    rows = [{"id": 1, "sample": 0, "instruction": "a", "input": "b", "output": "o1"},
            {"id": 0, "sample": 1, "instruction": "c", "input": "", "output": "x"},
            {"id": 0, "sample": 0, "instruction": "c", "input": "", "output": "o0"}]
    assert alpaca_eval_rows(rows, "g") == [{"instruction": "c", "output": "o0", "generator": "g"},
                                           {"instruction": "a\n\nb", "output": "o1", "generator": "g"}]


def test_the_same_gguf_conversion_under_another_cache_root_is_the_same_base(tmp_path) -> None:
    from sft.generate.setup import same_model

    name = "SmolLM2-135M-Instruct.Q4_1-a5e8372d097e8084"  # the name hashes the GGUF file's path, size and time
    a, b = tmp_path / "home" / "gguf" / name, tmp_path / "repo" / "gguf" / name
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert same_model(str(a), str(b))
    other = tmp_path / "repo" / "gguf" / "SmolLM2-135M-Instruct.Q4_1-0000000000000000"
    other.mkdir()
    assert not same_model(str(a), str(other))
    plain_a, plain_b = tmp_path / "m1" / "model", tmp_path / "m2" / "model"  # two different local models
    plain_a.mkdir(parents=True)
    plain_b.mkdir(parents=True)
    assert not same_model(str(plain_a), str(plain_b))


def test_prompt_only_records_generate_without_a_reference() -> None:
    tokenizer = make_char_tokenizer()
    records = [{"id": 0, "instruction": "Say hi", "input": ""}]
    assert describe(records[0]) == ("Say hi", "", None)
    items = build_items(records, PromptConfig(name="alpaca"), tokenizer, GenerationConfig(), 512, "truncate", "p.jsonl")
    assert items[0].prompt.endswith("### Instruction:\nSay hi\n\n### Response:")


def test_beam_search_with_logprobs_is_refused_at_start() -> None:
    problems = GenerationConfig(num_beams=2, logprobs=True).problems("generation")
    assert problems == ["generation.logprobs=true with generation.num_beams=2: beam search gives no per-token "
                        "log-probabilities"]
    assert GenerationConfig(num_beams=2).problems("generation") == []


def test_stop_strings_from_the_command_line_read_newline_tab_and_backslash_escapes() -> None:
    from sft.data.prompts import unescape

    assert unescape("\\n\\n") == "\n\n" and unescape("###\\t") == "###\t"
    assert unescape("a\\\\nb") == "a\\nb"  # an escaped backslash stays a backslash, followed by n
    assert unescape("\n") == "\n" and unescape("plain") == "plain"


def test_the_identity_holds_the_resolved_dtype_and_device() -> None:
    from sft.config import ModelConfig, QuantConfig
    from sft.generate.job import identity

    ident = identity(ModelConfig(), QuantConfig(name="none"), None, PromptConfig(), GenerationConfig(), [])
    assert (ident["dtype"], ident["device"]) == ("float32", "cpu")  # model.dtype=auto on a CPU
    assert identity(ModelConfig(dtype="bfloat16"), QuantConfig(name="none"), None, PromptConfig(), GenerationConfig(), [])["dtype"] == "bfloat16"


def test_outside_float32_the_batch_size_is_part_of_the_run(tmp_path) -> None:
    """bf16 texts depend on the batch's shape: a file begun at one batch size is not finished at another."""
    for dtype, resumable in (("float32", True), ("bfloat16", False)):
        ident = {"model": "m", "dtype": dtype, "device": "cpu", "generation": {"seed": 1, "batch_size": 8}}
        out = tmp_path / dtype
        out.mkdir()
        write_json_atomic(out / "generation_config.json", {"identity": ident})
        other = {**ident, "generation": {"seed": 1, "batch_size": 2}}
        if resumable:
            assert check_resumable(out, other)
        else:
            with pytest.raises(ConfigError, match="generation.batch_size"):
                check_resumable(out, other)
    with pytest.raises(ConfigError, match="device"):  # begun on a GPU, not finished on a CPU
        check_resumable(tmp_path / "float32", {**ident, "dtype": "float32", "device": "cuda:NVIDIA H200"})
