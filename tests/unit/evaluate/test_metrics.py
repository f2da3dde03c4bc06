"""Text metrics on values worked out by hand."""

from __future__ import annotations

import pytest

from sft.evaluate.metrics import RougeL, exact_match, normalize, score_rows, score_texts, token_f1


def test_exact_match_is_strict_but_ignores_surrounding_whitespace() -> None:
    assert exact_match('\n{"a": 1} ', '{"a": 1}') == 1.0
    assert exact_match('{"a": 1}', '{"a":1}') == 0.0
    assert exact_match("Paris", "paris") == 0.0


def test_token_f1_as_squad_computes_it() -> None:
    assert normalize("The  Cat, sat!") == "cat sat"
    assert token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 * (2 / 4) * (2 / 2) / (2 / 4 + 2 / 2))
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0


def test_rouge_l_is_the_lcs_f_measure() -> None:
    rouge = RougeL()
    assert rouge("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert rouge("mat the on", "the cat sat on the mat") == pytest.approx(2 * (2 / 3) * (2 / 6) / (2 / 3 + 2 / 6))


def test_scores_are_means_over_rows_with_a_reference() -> None:
    rows = [
        {"output": "yes", "reference": "yes"},
        {"output": "no", "reference": "yes"},
        {"output": "whatever", "reference": None},
    ]
    scores = score_rows(rows)
    assert scores["examples"] == 2
    assert scores["exact_match"] == 0.5 and scores["token_f1"] == 0.5 and scores["rouge_l"] == 0.5
    assert score_texts([])["exact_match"] is None
