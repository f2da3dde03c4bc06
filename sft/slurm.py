"""hydra/launcher=slurm: the request checked against the partition before submitit's launcher submits it
(the launcher itself is hydra_plugins/sft_slurm: Hydra takes launchers from the hydra_plugins package only).

A job asking for GPUs on a partition without any, or for more CPUs or memory than its largest node has, is never
run: sbatch refuses the first ("Invalid generic resource (gres) specification", deep in a traceback) and leaves
the second pending forever (Reason=PartitionConfig) while the submitter waits. Both stop here, before anything is
submitted, with one message naming the hydra.launcher keys to change. Without sinfo nothing is checked.

What only the scheduler knows (a drained or reserved node list, a partition's time or node limits) shows after
submitting: for PENDING_CHECK_S seconds the launcher polls squeue, and a job pending for a reason that never
clears (NEVER_CLEARS) is cancelled, with one message naming the setting to change, instead of a submitter that
waits forever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
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


# squeue reasons that waiting never clears: the request does not fit the partition's limits, the nodes it asks
# for are down, drained or reserved, or it asks for more than any node has.
NEVER_CLEARS = ("PartitionConfig", "PartitionTimeLimit", "PartitionNodeLimit", "ReqNodeNotAvail", "Resources")
PENDING_CHECK_S = float(os.environ.get("SFT_SLURM_PENDING_CHECK_S", "60"))  # how long after submitting to look


def pending_problem(job: str, reason: str, partition: str, params: dict[str, Any]) -> str | None:
    """The message for a job pending for `reason`, naming the launcher key to change; None if waiting may help."""
    head = f"job {job} is pending with Reason={reason}"
    if reason.startswith("ReqNodeNotAvail"):
        return (f"{head}: the nodes it may run on in partition {partition!r} are down, drained or reserved "
                "(sinfo -R says why); set hydra.launcher.partition to another partition, or drop the node choice "
                "(nodelist, constraint) from hydra.launcher.additional_parameters")
    if reason == "PartitionTimeLimit":
        return (f"{head}: hydra.launcher.timeout_min={params.get('timeout_min')} is above partition {partition!r}'s "
                "MaxTime (sinfo -o %l); lower hydra.launcher.timeout_min or choose hydra.launcher.partition")
    if reason == "PartitionNodeLimit":
        return (f"{head}: hydra.launcher.nodes={params.get('nodes')} is more than partition {partition!r} allows; "
                "lower hydra.launcher.nodes or choose hydra.launcher.partition")
    if reason in ("PartitionConfig", "Resources"):
        problems = request_problems(params, partition_nodes(partition))
        if problems:
            return f"{head}: " + "; ".join(problems)
        if reason == "PartitionConfig":
            return (f"{head}: the request does not fit partition {partition!r} (scontrol show partition "
                    f"{partition}); change hydra.launcher.partition or the request (cpus_per_task, mem_gb, "
                    "gpus_per_node, timeout_min)")
    return None  # Priority, Resources that a node has, ...: a matter of waiting


def submitted_jobs(folder: Path) -> list[str]:
    """The Slurm job ids submitit has written job folders for (<sweep>/.submitit/<job>_<task>)."""
    if not folder.is_dir():
        return []
    return sorted({p.name.split("_")[0] for p in folder.iterdir() if p.name.split("_")[0].isdigit()})


def never_starting(jobs: list[str], params: dict[str, Any]) -> tuple[list[str], bool]:
    """(messages for the jobs pending for a reason that will not clear, whether any job is still pending)."""
    done = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i|%T|%r|%P"], capture_output=True,
                          text=True, timeout=60)
    rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 3]
    pending = [(job, reason, partition) for job, state, reason, partition in rows if state == "PENDING"]
    messages = [pending_problem(job, reason, partition, params) for job, reason, partition in pending
                if reason.split(",")[0] in NEVER_CLEARS]
    return [m for m in messages if m][:1], bool(pending)


def watch_pending(folder: Path, params: dict[str, Any], seconds: float = PENDING_CHECK_S, every: float = 2) -> None:
    """In the background, for `seconds` after submitting: a job that sits pending for a reason that will never
    clear is cancelled and the submitter exits 1 with one message naming the setting (it would wait forever)."""
    if not shutil.which("squeue") or seconds <= 0:
        return

    def watch() -> None:
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(every)
            jobs = submitted_jobs(folder)
            if not jobs:
                continue
            messages, still_pending = never_starting(jobs, params)
            if messages:
                subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)
                print("error: the Slurm job will never start:\n  " + "\n  ".join(messages) +
                      f"\n  (cancelled job {', '.join(jobs)})", file=sys.stderr, flush=True)
                os._exit(1)  # the main thread waits in submitit for results that will never come
            if not still_pending:
                return

    threading.Thread(target=watch, name="sft-pending-check", daemon=True).start()
