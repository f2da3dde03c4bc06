"""The decoding step: each transform against transformers' own logits processors, and the seeded draw."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sft.config import GenerationConfig
from sft.generate.sampling import (
    RowState, apply_constraints, banned_ngram_tokens, derive_seed, draw, filtered_probs, make_generator,
    next_tokens, sample_top_p,
)


def rows(n: int, seed: int = 0, history: list[int] | None = None) -> list[RowState]:
    return [RowState(history=list(history or []), generator=make_generator(seed + i)) for i in range(n)]


def kept(probs: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(probs[i] > 0).flatten().tolist()) for i in range(probs.shape[0])]


def hf_kept(logits: torch.Tensor, warpers: list) -> list[set[int]]:
    scores = logits.clone()
    for w in warpers:
        scores = w(None, scores)
    return [set(torch.nonzero(torch.isfinite(scores[i])).flatten().tolist()) for i in range(scores.shape[0])]


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(0, 5, 1) == derive_seed(0, 5, 1)
    seeds = {derive_seed(s, i, k) for s in range(3) for i in range(20) for k in range(3)}
    assert len(seeds) == 3 * 20 * 3
    assert all(0 <= s < 2**63 for s in seeds)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    nonzero = lambda p: (sample_top_p(probs, p) > 0).tolist()  # noqa: E731
    assert nonzero(0.7) == [[True, True, False, False]]
    assert nonzero(0.4) == [[True, False, False, False]]  # the most likely one always stays
    assert nonzero(0.9) == [[True, True, True, False]]
    assert torch.equal(sample_top_p(probs, 0.9)[0, :3], probs[0, :3])


@pytest.mark.parametrize(
    "settings",
    [
        {"top_p": 0.8},
        {"top_k": 7},
        {"min_p": 0.2},
        {"temperature": 0.7, "top_k": 20, "top_p": 0.9},
        {"temperature": 1.3, "top_p": 0.95, "min_p": 0.05},
    ],
)
def test_kept_tokens_match_transformers_warpers(settings: dict) -> None:
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    cfg = GenerationConfig(do_sample=True, **settings)
    warpers = [TemperatureLogitsWarper(cfg.temperature)]
    if cfg.top_k:
        warpers.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1:
        warpers.append(TopPLogitsWarper(cfg.top_p))
    if cfg.min_p:
        warpers.append(MinPLogitsWarper(cfg.min_p))
    assert kept(filtered_probs(logits.clone(), cfg)) == hf_kept(logits, warpers)


def test_repetition_penalty_and_ngrams_match_transformers() -> None:
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    torch.manual_seed(1)
    history = [3, 4, 5, 3, 4, 9, 3, 4]
    logits = torch.randn(1, 16)
    ours = logits.clone()
    cfg = GenerationConfig(repetition_penalty=1.3, no_repeat_ngram_size=3)
    apply_constraints(ours, rows(1, history=history), cfg, stop_ids=[])
    ids = torch.tensor([history])
    theirs = NoRepeatNGramLogitsProcessor(3)(ids, RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone()))
    assert torch.equal(ours, theirs)
    assert sorted(banned_ngram_tokens(history, 3)) == [5, 9]


def test_min_new_tokens_bans_stop_ids_until_reached() -> None:
    logits = torch.zeros(1, 8)
    logits[0, 2] = 10.0
    row = rows(1)
    cfg = GenerationConfig(min_new_tokens=2)
    assert next_tokens(logits.clone(), row, cfg, stop_ids=[2]).item() != 2
    row[0].n_generated = 2
    assert next_tokens(logits.clone(), row, cfg, stop_ids=[2]).item() == 2


def test_draw_follows_the_distribution_and_never_a_zeroed_token() -> None:
    logits = torch.log(torch.tensor([[0.15, 0.05, 0.5, 0.3]]))  # removed token (id 1) between kept ones
    cfg = GenerationConfig(do_sample=True, top_k=3)
    state = rows(1, seed=123)
    counts = torch.zeros(4)
    for _ in range(20000):
        counts[draw(filtered_probs(logits.clone(), cfg), state).item()] += 1
    assert counts[1] == 0
    expected = torch.tensor([0.15, 0.0, 0.5, 0.3]) / 0.95
    assert torch.allclose(counts / counts.sum(), expected, atol=0.015)
    last_removed = torch.tensor([[0.5, 0.5, 0.0]])
    assert all(draw(last_removed, [RowState([], make_generator(s))]).item() in (0, 1) for s in range(200))


def test_each_row_draws_from_its_own_generator() -> None:
    torch.manual_seed(2)
    logits = torch.randn(1, 100)
    cfg = GenerationConfig(do_sample=True, temperature=1.5)
    alone = [next_tokens(logits.clone(), [RowState([], make_generator(7))], cfg, []).item() for _ in range(1)]
    neighbours = rows(4, seed=100)
    neighbours[2] = RowState([], make_generator(7))
    together = next_tokens(logits.repeat(4, 1), neighbours, cfg, [])
    assert together[2].item() == alone[0]


def test_temperature_zero_is_greedy_whatever_the_seed() -> None:
    torch.manual_seed(3)
    logits = torch.randn(5, 40)
    cfg = GenerationConfig(do_sample=True, temperature=0.0)
    for seed in (0, 1, 99):
        assert torch.equal(next_tokens(logits.clone(), rows(5, seed), cfg, []), logits.argmax(-1))
    assert torch.equal(next_tokens(logits.clone(), rows(5), dataclasses.replace(cfg, do_sample=False, temperature=1.0), []), logits.argmax(-1))


@pytest.mark.parametrize("given", [{"temperature": 0.9}, {"top_p": 0.9}, {"top_k": 40}, {"min_p": 0.1},
                                   {"temperature": 0.7, "top_p": 0.9}])
def test_sampling_settings_with_sampling_off_are_refused(given) -> None:
    problems = GenerationConfig(**given).problems("generation")
    assert len(problems) == 1 and "with generation.do_sample=false: greedy decoding ignores" in problems[0]
    assert all(f"generation.{k}={v}" in problems[0] for k, v in given.items())
    assert GenerationConfig(do_sample=True, **given).problems("generation") == []


def test_greedy_settings_are_not_refused() -> None:
    assert GenerationConfig().problems("generation") == []
    assert GenerationConfig(temperature=0.0).problems("generation") == []  # conf/generation/greedy.yaml
