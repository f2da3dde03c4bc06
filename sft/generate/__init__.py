"""Generation: a setup resolved once (adapter, base, template, tokenizer, records), seeded batched decoding,
resumable outputs. `run` is sft-generate."""

from sft.generate.job import run

__all__ = ["run"]
