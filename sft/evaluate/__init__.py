"""Evaluation: text metrics of generations, the loss of the references, the before/after report. `run` is sft-eval."""

from sft.evaluate.job import run

__all__ = ["run"]
