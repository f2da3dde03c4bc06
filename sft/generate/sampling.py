"""One decoding step, row by row: logits -> next token, with every row drawing from its own generator.

Each (example, sample) owns a `torch.Generator` seeded from (seed, example id, sample index), so the token it
draws never depends on the batch size, on the order of the prompts or on its neighbours. Sampling is by
inverse CDF over the kept tokens in vocabulary order: one uniform draw per row and step. Batch shapes change
the last bits of the logits on CPU and GPU alike (matmul kernels differ with the number of rows), and such a
difference moves the draw only when the uniform falls within it of a bucket edge (or a token sits exactly at
the top-p / min-p cut).

Order of the transforms (as in transformers): repetition penalty, no-repeat n-grams and min_new_tokens on
the raw logits; then temperature, top-k, top-p and min-p. Temperature 0 (or do_sample=false) is greedy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from sft.config import GenerationConfig


def derive_seed(seed: int, example_id: int, sample: int, source: str = "") -> int:
    """A 63-bit seed for one (example, sample), independent of where it sits in a batch; `source`: the name of the
    example's source in a mixture (ids repeat across sources)."""
    example = f"{source}:{example_id}" if source else example_id
    digest = hashlib.sha256(f"sft-generate|{seed}|{example}|{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")  # CPU draws: the same numbers whatever device the model runs on
    gen.manual_seed(seed)
    return gen


def is_greedy(cfg: GenerationConfig) -> bool:
    return not cfg.do_sample or cfg.temperature == 0


@dataclass
class RowState:
    """What one row has seen so far (prompt without padding, then generated ids) and its generator."""

    history: list[int]
    generator: torch.Generator
    n_generated: int = 0
    logprobs: list[float] = field(default_factory=list)  # of the generated tokens, when asked for


def apply_repetition_penalty(logits: torch.Tensor, rows: list[RowState], penalty: float) -> None:
    """CTRL's penalty on the tokens of each row's own prompt and output (never on its padding)."""
    if penalty == 1.0:
        return
    for i, row in enumerate(rows):
        seen = torch.tensor(sorted(set(row.history)), dtype=torch.long, device=logits.device)
        picked = logits[i, seen]
        logits[i, seen] = torch.where(picked < 0, picked * penalty, picked / penalty)


def banned_ngram_tokens(history: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `history`."""
    if n <= 0 or len(history) < n:
        return []
    prefix = tuple(history[len(history) - n + 1 :])
    return [history[j + n - 1] for j in range(len(history) - n + 1) if tuple(history[j : j + n - 1]) == prefix]


def apply_constraints(logits: torch.Tensor, rows: list[RowState], cfg: GenerationConfig, stop_ids: list[int]) -> None:
    """Repetition penalty, no-repeat n-grams and min_new_tokens, in place on raw logits (float32)."""
    apply_repetition_penalty(logits, rows, cfg.repetition_penalty)
    for i, row in enumerate(rows):
        banned = banned_ngram_tokens(row.history, cfg.no_repeat_ngram_size)
        if row.n_generated < cfg.min_new_tokens:
            banned += stop_ids
        if banned:
            logits[i, banned] = float("-inf")


def sample_top_p(sorted_probs: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the tail beyond the smallest set of tokens whose probability reaches p (Llama's rule: a token
    is kept when the mass before it is at most p, so the most likely one always stays)."""
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    return sorted_probs.masked_fill(before > p, 0.0)


def filtered_probs(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Probabilities in vocabulary order after temperature, top-k, top-p and min-p, the removed tokens at 0
    (not renormalized: the draw scales by the sum). Sorting only decides which tokens stay."""
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if 0 < cfg.top_k < probs.shape[-1] or cfg.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        if 0 < cfg.top_k < sorted_probs.shape[-1]:
            sorted_probs[:, cfg.top_k :] = 0.0
            sorted_probs = sorted_probs / sorted_probs.sum(-1, keepdim=True)  # top-p measures mass within the top k
        if cfg.top_p < 1.0:
            sorted_probs = sample_top_p(sorted_probs, cfg.top_p)
        keep = torch.zeros_like(keep).scatter_(-1, order, sorted_probs > 0)
    if cfg.min_p > 0:
        keep &= probs >= cfg.min_p * probs.max(dim=-1, keepdim=True).values
    return probs * keep


def draw(probs: torch.Tensor, rows: list[RowState]) -> torch.Tensor:
    """Inverse-CDF draw over the vocabulary in id order, one uniform per row from that row's own generator.

    Id order, not probability order: two nearly tied tokens whose order flips with the last bit of a logit
    would otherwise swap their buckets, and the draw would change with the batch shape."""
    u = torch.cat([torch.rand(1, generator=row.generator, dtype=torch.float64) for row in rows])
    cdf = torch.cumsum(probs.double(), dim=-1)
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    pick = torch.searchsorted(cdf, target, right=True)
    last_kept = probs.shape[-1] - 1 - torch.argmax((probs.flip(-1) > 0).int(), dim=-1, keepdim=True)
    return torch.minimum(pick, last_kept).squeeze(-1)  # rounding at the very top never lands on a removed token


def next_tokens(logits: torch.Tensor, rows: list[RowState], cfg: GenerationConfig, stop_ids: list[int]) -> torch.Tensor:
    """The next token of every row; `logits` ([rows, vocab], float32) is modified in place."""
    apply_constraints(logits, rows, cfg, stop_ids)
    if is_greedy(cfg):
        return logits.argmax(dim=-1)
    return draw(filtered_probs(logits, cfg), rows)
