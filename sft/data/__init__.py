"""The data: records (load) -> prompts -> masked tokens (tokenize) -> [packed rows] -> batches (collate);
`prepare` runs it all, cached; `inspect` shows what is trained. `run` is sft-prepare."""

from sft.data.prepare import run

__all__ = ["run"]
