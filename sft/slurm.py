"""hydra/launcher=slurm: the request checked against the partition before submitit's launcher submits it
(the launcher itself is hydra_plugins/sft_slurm: Hydra takes launchers from the hydra_plugins package only).

A job asking for GPUs on a partition without any, or for more CPUs or memory than its largest node has, is never
run: sbatch refuses the first ("Invalid generic resource (gres) specification", deep in a traceback) and leaves
the second pending forever (Reason=PartitionConfig) while the submitter waits. Both stop here, before anything is
submitted, with one message naming the hydra.launcher keys to change. Without sinfo nothing is checked.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any


def register_launcher() -> None:
    """Register hydra_plugins.sft_slurm's launcher with Hydra by name, before Hydra composes.

    Hydra finds plugins by listing the directories of the hydra_plugins namespace (pkgutil.iter_modules). An
    editable install (`pip install -e .`, scripts/setup.sh) maps our package through an import hook instead of a
    directory, which that listing never sees: without this, `hydra/launcher=slurm` fails with "Unknown plugin
    class" unless the repo root happens to be on sys.path. Registering works for every install (editable in any
    mode, wheel, a checkout on PYTHONPATH); where the scan did find it, it is the same class again."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.sft_slurm import CheckedSlurmLauncher

    Plugins.instance().register(CheckedSlurmLauncher)


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    gres: str


def partition_nodes(partition: str | None) -> tuple[str, list[Node]] | None:
    """(partition name, its nodes) from sinfo; None when sinfo is not there or says nothing."""
    if not shutil.which("sinfo"):
        return None
    args = ["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G"] + (["-p", partition] if partition else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode:
        return None
    nodes, names = [], set()
    for line in done.stdout.splitlines():
        part, name, cpus, memory, gres = (line.split("|") + [""] * 5)[:5]
        if not partition and not part.endswith("*"):
            continue  # without a partition, sbatch uses the default one (marked * by sinfo)
        names.add(part.rstrip("*"))
        nodes.append(Node(name, int(cpus.rstrip("+") or 0), int(memory.rstrip("+") or 0), gres))
    if not nodes:
        return None
    return (partition or sorted(names)[0]), nodes


def request_problems(params: dict[str, Any], found: tuple[str, list[Node]] | None) -> list[str]:
    """What of the launcher's request no node of the partition can give, each naming the key to change."""
    if found is None:
        return []
    partition, nodes = found
    out = []
    gpus = params.get("gpus_per_node") or 0
    if gpus and not any("gpu" in n.gres for n in nodes):
        out.append(f"hydra.launcher.gpus_per_node={gpus}: partition {partition!r} has no GPUs (sinfo lists no gpu "
                   "GRES), so sbatch would refuse the job; on a CPU-only cluster set hydra.launcher.gpus_per_node=null")
    cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    most_cpus = max(n.cpus for n in nodes)
    if cpus > most_cpus:
        out.append(f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')}: the largest node of partition "
                   f"{partition!r} has {most_cpus} CPUs, so the job would stay pending forever (Reason=PartitionConfig); "
                   f"set hydra.launcher.cpus_per_task={max(most_cpus // (params.get('tasks_per_node') or 1), 1)} or less")
    memory = params.get("mem_gb")
    most_memory = max(n.memory_mb for n in nodes)
    if memory and most_memory and memory * 1024 > most_memory:
        out.append(f"hydra.launcher.mem_gb={memory}: the largest node of partition {partition!r} has "
                   f"{most_memory // 1024} GB, so the job would stay pending forever (Reason=PartitionConfig); set "
                   f"hydra.launcher.mem_gb={max(most_memory // 1024, 1)} or less")
    return out


def stop(problems: list[str]) -> None:
    """One message and exit status 1 (Hydra would print a traceback for an exception raised here)."""
    print("error: the Slurm request cannot run on this cluster:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
