"""The run directory that sft-train writes and every later command reads: RunDir, its checkpoints, its adapter."""

from sft.run.rundir import RunDir

__all__ = ["RunDir"]
