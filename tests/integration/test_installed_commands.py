"""The commands as installed (`pip install -e .`, what scripts/setup.sh does): the console scripts and
`python -m sft`, run from a working directory outside the repo with a clean environment (no PYTHONPATH), find
the configs and sft's Slurm launcher (hydra_plugins.sft_slurm). No cluster needed: a stand-in `sinfo` on PATH
describes one small node, and the launcher's check of the request against it stops the sweep before anything
is submitted, which shows the launcher was found and ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def clean_env(path_first: Path) -> dict[str, str]:
    """The user's environment: no PYTHONPATH, the stand-in sinfo first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "PATH": f"{path_first}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


def fake_sinfo(root: Path) -> Path:
    """A `sinfo` that prints one 2-CPU, 4 GB node of the default partition, as `sinfo -h -N -o %P|%N|%c|%m|%G` does."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    sinfo = bin_dir / "sinfo"
    sinfo.write_text("#!/bin/sh\necho 'debug*|node1|2|4000|(null)'\n")
    sinfo.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("how", ["console script", "python -m sft"])
def test_slurm_launcher_is_found_outside_the_repo(tmp_path: Path, how: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    command = [str(BIN / "sft-train")] if how == "console script" else [sys.executable, "-m", "sft", "train"]
    done = subprocess.run([*command, "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null",
                           "hydra.launcher.cpus_per_task=64", "hydra.launcher.mem_gb=1", "data.path=d.json",
                           "train.max_steps=2", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=work, env=clean_env(fake_sinfo(tmp_path)), capture_output=True, text=True, timeout=300)
    assert "Unknown plugin class" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 1, done.stderr[-3000:]
    # CheckedSlurmLauncher.launch ran: its check of the request against the node sinfo described
    assert "error: the Slurm request cannot run on this cluster:" in done.stderr, done.stderr[-3000:]
    assert "hydra.launcher.cpus_per_task=64: the largest node of partition 'debug' has 2 CPUs" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing was submitted
