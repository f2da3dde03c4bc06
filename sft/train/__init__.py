"""Training: prepared rows + QLoRA model + transformers Trainer -> a resumable run directory. `run` is sft-train."""

from sft.train.job import run

__all__ = ["run"]
