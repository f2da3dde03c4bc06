"""Best-fit-decreasing packing: whole examples, near the lower bound, boundaries in position_ids and labels."""

from __future__ import annotations

import math
import random

import pytest

from sft.data.collate import PackedCollator
from sft.data.packing import best_fit_decreasing, concat_examples, pack_examples, packing_stats
from sft.data.tokenize import IGNORE_INDEX as X


def example(n: int, start: int, prompt: int = 1) -> dict:
    ids = list(range(start, start + n))
    return {"input_ids": ids, "labels": [X] * prompt + ids[prompt:]}


def test_the_drawing_in_the_docstring():
    a, b, c = example(3, 10), example(2, 20), example(3, 30)
    row = concat_examples([a, b, c])
    assert row["input_ids"] == [10, 11, 12, 20, 21, 30, 31, 32]
    assert row["position_ids"] == [0, 1, 2, 0, 1, 0, 1, 2]
    assert row["labels"] == [X, 11, 12, X, 21, X, 31, 32]


def test_first_label_of_every_example_is_masked_even_when_trained():
    a, b = example(2, 10, prompt=0), example(2, 20, prompt=0)  # train_on_source: every label set
    assert concat_examples([a, b])["labels"] == [X, 11, X, 21]


def test_best_fit_decreasing_small_case():
    # 6 -> new bin 0 (room 4); 5 -> new bin 1 (room 5); 4 -> bin 0 (the tighter fit; full);
    # 3 -> bin 1 (room 2); 2 -> bin 1 (full); 1 -> new bin 2
    assert best_fit_decreasing([3, 6, 2, 5, 4, 1], capacity=10) == [[1, 4], [3, 0, 2], [5]]
    with pytest.raises(ValueError):
        best_fit_decreasing([11], capacity=10)


def test_realistic_lengths_pack_within_one_row_of_the_lower_bound():
    rng = random.Random(0)
    lengths = [max(8, int(rng.lognormvariate(4.6, 0.7))) for _ in range(3000)]  # Alpaca-like: median ~100
    for capacity in (512, 1024, 2048):
        fitting = [n for n in lengths if n <= capacity]
        bins = best_fit_decreasing(fitting, capacity)
        assert sorted(i for b in bins for i in b) == list(range(len(fitting)))  # each example exactly once
        assert all(sum(fitting[i] for i in b) <= capacity for b in bins)
        assert len(bins) <= math.ceil(sum(fitting) / capacity) + 1


def test_pack_is_deterministic_per_seed_and_keeps_every_token():
    rng = random.Random(1)
    examples = [example(rng.randint(3, 40), 100 * i) for i in range(60)]
    rows = pack_examples(examples, 64, seed=7)
    assert rows == pack_examples(examples, 64, seed=7)
    assert rows != pack_examples(examples, 64, seed=8)  # same bins, another row order
    assert sorted(t for r in rows for t in r["input_ids"]) == sorted(t for e in examples for t in e["input_ids"])
    stats = packing_stats(rows, 64)
    assert stats["rows"] <= stats["lower_bound_rows"] + 1 and stats["efficiency"] > 0.9


def test_packed_collator_flattens_rows_without_attention_mask():
    rows = [concat_examples([example(3, 10)]), concat_examples([example(2, 20), example(2, 30)])]
    batch = PackedCollator()(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                          "max_length_k"}  # no attention_mask
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 30, 31]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert batch["labels"].tolist() == [[X, 11, 12, X, 21, X, 31]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 7] and batch["max_length_q"] == 3


def copies_per_bin(bins: list[list[int]], keys: list[int]) -> list[int]:
    """Per bin, how many of its items are a second (third, ...) copy of an example already in it."""
    return [len(b) - len({keys[i] for i in b}) for b in bins]


@pytest.mark.parametrize("passes", [2, 3])
def test_copies_of_an_example_never_share_a_bin_and_the_packing_stays_as_tight(passes: int) -> None:
    rng = random.Random(0)
    lengths = [max(8, min(1024, int(rng.lognormvariate(4.6, 0.7)))) for _ in range(1000)]
    # members as the mixture draws them: whole passes, one after the other
    members, keys = lengths * passes, list(range(len(lengths))) * passes
    before = best_fit_decreasing(members, 1024)
    assert sum(copies_per_bin(before, keys)) > 0  # the plain rule puts copies side by side
    bins = best_fit_decreasing(members, 1024, keys=keys)
    assert copies_per_bin(bins, keys) == [0] * len(bins)
    assert sorted(i for b in bins for i in b) == list(range(len(members)))  # each member exactly once
    assert all(sum(members[i] for i in b) <= 1024 for b in bins)
    efficiency = lambda found: sum(members) / (len(found) * 1024)  # noqa: E731
    assert abs(efficiency(bins) - efficiency(before)) < 0.005


def test_a_copy_goes_to_the_best_fit_without_its_original_or_trades_places() -> None:
    # 6a -> bin 0 (room 4); its copy cannot join it: bin 1; 4b -> bin 0 (the tighter fit, full); its copy -> bin 1
    assert best_fit_decreasing([6, 6, 4, 4], 10, keys=["a", "a", "b", "b"]) == [[0, 2], [1, 3]]
    # 5a -> bin 0 (room 3); 3b -> bin 0 (full); 3c -> bin 1 (room 5); its copy fits only beside it: 3b moves
    # from bin 0 into bin 1 and the copy takes its place (two bins, as without keys, not three)
    assert best_fit_decreasing([5, 3, 3, 3], 8) == [[0, 1], [2, 3]]
    assert best_fit_decreasing([5, 3, 3, 3], 8, keys=["a", "b", "c", "c"]) == [[0, 3], [2, 1]]
    assert best_fit_decreasing([3, 3, 3], 10, keys=["a", "a", "a"]) == [[0], [1], [2]]  # no trade possible
