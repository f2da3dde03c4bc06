"""Export: a run's adapter merged into its full-precision base. `run` is sft-merge."""

from sft.export.merge import run

__all__ = ["run"]
