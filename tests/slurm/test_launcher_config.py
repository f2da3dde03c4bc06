"""hydra/launcher=slurm and =local compose for every command, with the values the job scripts rely on, and
a cluster file (local/slurm.yaml) anywhere on the search path overrides them. No cluster needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import run_sft


def launcher(tmp_path: Path, command: str, *overrides: str) -> Any:
    import yaml

    done = run_sft(command, *overrides, "--cfg", "hydra", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load(done.stdout)["hydra"]["launcher"]


@pytest.mark.parametrize("command", ["prepare", "train", "generate", "eval"])
def test_slurm_launcher_composes_with_warning_requeue_and_trap(tmp_path: Path, command: str) -> None:
    cfg = launcher(tmp_path, command, "hydra/launcher=slurm")
    # submitit's Slurm launcher, checking the request against the partition first (sft/slurm.py)
    assert cfg["_target_"] == "hydra_plugins.sft_slurm.CheckedSlurmLauncher"
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from hydra_plugins.sft_slurm import CheckedSlurmLauncher

    assert issubclass(CheckedSlurmLauncher, SlurmLauncher)
    assert cfg["additional_parameters"]["requeue"] is True
    # USR1 (which the trainer handles), not submitit's USR2, at signal_delay_s before the limit
    assert cfg["additional_parameters"]["signal"] == "USR1@${..signal_delay_s}" and cfg["signal_delay_s"] > 0
    assert any("scontrol requeue" in line and "-eq 75" in line for line in cfg["setup"])
    assert cfg["tasks_per_node"] == 1 and cfg["nodes"] == 1


def test_cluster_file_overrides_the_launcher_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "local").mkdir(parents=True)
    (site / "local" / "slurm.yaml").write_text("partition: gpu-long\naccount: proj42\ntimeout_min: 720\n")
    searchpath = f"hydra.searchpath=[file://{site}]"
    cfg = launcher(tmp_path, "train", "hydra/launcher=slurm", searchpath, "hydra.launcher.timeout_min=30")
    assert (cfg["partition"], cfg["account"], cfg["timeout_min"]) == ("gpu-long", "proj42", 30)
    assert cfg["additional_parameters"]["requeue"] is True  # the rest of slurm.yaml is kept


def test_example_cluster_file_only_uses_launcher_fields(tmp_path: Path) -> None:
    import yaml
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    example = Path(__file__).resolve().parents[2] / "conf" / "local.example" / "slurm.yaml"
    keys = set(yaml.safe_load(example.read_text()))
    assert keys and keys <= set(SlurmQueueConf.__dataclass_fields__)


def test_local_launcher_composes(tmp_path: Path) -> None:
    cfg = launcher(tmp_path, "train", "hydra/launcher=local")
    assert cfg["_target_"].endswith("submitit_launcher.LocalLauncher")


def test_pending_reasons_that_never_clear_name_the_setting(monkeypatch: Any) -> None:
    from sft import slurm

    params = {"timeout_min": 240, "nodes": 1, "cpus_per_task": 8, "tasks_per_node": 1, "mem_gb": 4, "gpus_per_node": None}
    assert "lower hydra.launcher.timeout_min" in slurm.pending_problem("7", "PartitionTimeLimit", "short", params)
    assert "hydra.launcher.partition" in slurm.pending_problem("7", "ReqNodeNotAvail, UnavailableNodes:n1", "debug", params)
    monkeypatch.setattr(slurm, "partition_nodes", lambda p: (p, [slurm.Node("n1", 4, 16000, "")]))
    message = slurm.pending_problem("7", "Resources", "debug", params)
    assert message.startswith("job 7 is pending with Reason=Resources: hydra.launcher.cpus_per_task=8: the largest")
    # waiting helps: a request that fits a node, or a busy cluster
    assert slurm.pending_problem("7", "Resources", "debug", {**params, "cpus_per_task": 2}) is None
    assert slurm.pending_problem("7", "Priority", "debug", params) is None
