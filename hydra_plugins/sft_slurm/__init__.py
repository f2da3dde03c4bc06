"""sft's Hydra launcher plugin: submitit's Slurm launcher, checking the request against the partition before it
submits, and for a short while after, that no job sits pending for a reason that never clears (sft.slurm).
conf/hydra/launcher/slurm.yaml selects it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from sft.slurm import partition_nodes, request_problems, stop, watch_pending


class CheckedSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        problems = request_problems(self.params, partition_nodes(self.params.get("partition")))
        if problems:
            stop(problems)
        watch_pending(Path(str(self.params["submitit_folder"])).parent, dict(self.params))
        try:
            return super().launch(job_overrides, initial_job_idx)
        except Exception as e:  # sbatch's refusal, as submitit passes it on
            text = str(e)
            if "sbatch" not in text.lower() and "submission" not in text.lower():
                raise
            lines = [line.strip() for line in text.splitlines() if "error" in line.lower()] or [text.strip()[-500:]]
            stop([f"sbatch refused the job: {lines[-1]}"])
