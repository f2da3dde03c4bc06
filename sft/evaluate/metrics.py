"""Text metrics of generations against references: exact match, token F1 and ROUGE-L.

- exact_match: the output equals the reference once leading and trailing whitespace is stripped (strict:
  a format task such as the demo's JSON answers is either right or wrong).
- token_f1: SQuAD's token-level F1 on normalized text (lower case, punctuation and English articles removed).
- rouge_l: ROUGE-L F-measure from Google's `rouge-score` package (its own tokenization, no stemming).
All three are means over rows in [0, 1]; rows without a reference are left out.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(output: str, reference: str) -> float:
    return float(output.strip() == reference.strip())


def token_f1(output: str, reference: str) -> float:
    pred, gold = normalize(output).split(), normalize(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


class RougeL:
    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def __call__(self, output: str, reference: str) -> float:
        return self.scorer.score(reference, output)["rougeL"].fmeasure


def score_texts(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Mean exact match, token F1 and ROUGE-L over (output, reference) pairs."""
    if not pairs:
        return {"examples": 0, "exact_match": None, "token_f1": None, "rouge_l": None}
    rouge = RougeL()
    n = len(pairs)
    return {
        "examples": n,
        "exact_match": sum(exact_match(o, r) for o, r in pairs) / n,
        "token_f1": sum(token_f1(o, r) for o, r in pairs) / n,
        "rouge_l": sum(rouge(o, r) for o, r in pairs) / n,
    }


def score_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return score_texts([(r["output"], r["reference"]) for r in rows if r.get("reference") is not None])
