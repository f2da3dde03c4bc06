"""Two nodes on this machine: two separate torchrun launches (`--nnodes 2 --nproc-per-node 1`, c10d rendezvous on
localhost), each with its own LOCAL_RANK space, sharing one cache directory and one run directory (the shared file
system of a cluster), run from a working directory outside the repo. What scripts/slurm/multi_node.sbatch starts
on each node (tests/slurm/test_slurm.py runs the script itself on a two-node Slurm cluster).

- one data preparation per node, and the shared cache entry built once (the other node waits on its lock);
- 2 nodes x 1 process follow the loss curve of 1 node x 2 processes;
- SIGTERM to every process of both nodes (what Slurm sends on preemption), then the same two launches again:
  the run resumes to the bitwise-same adapter as the uninterrupted run, and rank 0 alone wrote the metrics,
  the tracker run (MLflow, each step once), the report and the checkpoints' model files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from test_torchrun import data_file, losses, overrides, torchrun  # noqa: F401 -- data_file: fixture

pytestmark = pytest.mark.slow
STEPS = 12
TOKENIZING = "tokenizing data source 'train'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_ALLOW_FILE_STORE")}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "SFT_CACHE_DIR": str(root / "shared-cache"), "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri()}


def start_nodes(args: list[str], root: Path) -> list[subprocess.Popen]:
    """One torchrun per node, as srun starts them: same rendezvous endpoint and id, 1 process each."""
    port, work = free_port(), root / "work"
    work.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=two-nodes-{port}", "-m", "sft", "train", *args]
    return [subprocess.Popen(cmd, cwd=work, env=node_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(2)]


def finish(nodes: list[subprocess.Popen], timeout: float = 900) -> list[str]:
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=timeout)[0])
    finally:
        for node in nodes:
            node.kill()
    return outputs


def two_node_args(tiny_dir: Path, data_file: Path, out: Path) -> list[str]:
    return overrides(tiny_dir, data_file, out, "quant=none", "train.micro_batch_size=2", "train.grad_accum=1",
                     f"train.max_steps={STEPS}", "train.save_steps=1000", "train.report_to=[tensorboard,mlflow]")


@pytest.fixture(scope="module")
def two_nodes(tiny_dir: Path, data_file: Path, tmp_path_factory: Any) -> tuple[Path, list[str]]:
    """The uninterrupted 2 x 1 run (its own cold cache and store): (run dir, each node's output)."""
    root = tmp_path_factory.mktemp("two-nodes")
    nodes = start_nodes(two_node_args(tiny_dir, data_file, root / "run"), root)
    outputs = finish(nodes)
    assert all(n.returncode == 0 for n in nodes), "\n".join(o[-3000:] for o in outputs)
    return root / "run", outputs


def test_each_node_prepares_once_and_the_shared_cache_entry_is_built_once(two_nodes: tuple[Path, list[str]]) -> None:
    run, outputs = two_nodes
    # the node whose first rank took the entry's lock tokenized; the other waited and read it
    assert sorted(o.count(TOKENIZING) for o in outputs) == [0, 1], outputs
    report = json.loads((run / "report.json").read_text())
    assert report["splits"]["train"]["kept"] > 0
    entries = [p for p in (run.parent / "shared-cache" / "datasets").iterdir() if not p.name.endswith(".lock")]
    assert not any(p.name.startswith(".tmp-") for p in entries)  # nothing half-written left behind
    assert sum(o.count(f"done: {STEPS} steps") for o in outputs) == 1  # rank 0's summary only


def test_two_nodes_follow_the_loss_curve_of_two_processes_on_one_node(
        two_nodes: tuple[Path, list[str]], tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    run, _ = two_nodes
    args = [a for a in two_node_args(tiny_dir, data_file, tmp_path / "one-node") if "report_to" not in a]
    one_node = torchrun(2, args)
    assert one_node.returncode == 0, (one_node.stdout + one_node.stderr)[-4000:]
    two, one = losses(run), losses(tmp_path / "one-node")
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    assert two == pytest.approx(one, rel=1e-6, abs=1e-7)
    assert len(set(one.values())) > 1


def all_processes(nodes: list[subprocess.Popen]) -> list[Any]:
    import psutil

    procs = []
    for node in nodes:
        parent = psutil.Process(node.pid)
        procs += [parent, *parent.children(recursive=True)]
    return procs


def logged(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"loss"' in line] if path.is_file() else []


def test_sigterm_to_every_rank_then_a_restart_resumes_bitwise_with_rank0_writing(
        two_nodes: tuple[Path, list[str]], tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    reference, _ = two_nodes
    run = tmp_path / "run"
    args = two_node_args(tiny_dir, data_file, run)
    nodes = start_nodes(args, tmp_path)
    end = time.time() + 600
    while not logged(run) or max(logged(run)) < 3:
        assert all(n.poll() is None for n in nodes) and time.time() < end, "the run ended before it was preempted"
        time.sleep(0.05)
    for proc in all_processes(nodes):  # Slurm signals every process of the job step: torchrun and its workers
        proc.send_signal(signal.SIGTERM)
    outputs = finish(nodes)
    assert not (run / "finished.json").exists(), "\n".join(o[-2000:] for o in outputs)
    assert any("checkpoint" in o.lower() for o in outputs), "\n".join(o[-2000:] for o in outputs)
    (checkpoint,) = (run / "checkpoints").iterdir()

    nodes = start_nodes(args, tmp_path)
    outputs = finish(nodes)
    assert all(n.returncode == 0 for n in nodes), "\n".join(o[-3000:] for o in outputs)
    assert all(f"resuming from {checkpoint}" in o for o in outputs), outputs  # both nodes, from the shared run dir
    a, b = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (run, reference))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # bitwise the uninterrupted run

    assert logged(run) == list(range(1, STEPS + 1))  # each step once: one writer, across the restart
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    pids = {e.name.split(".")[-2] for e in events}
    assert len(pids) == 2  # one TensorBoard writer per launch (rank 0 before and after the restart)
    names = sorted(p.name for p in checkpoint.iterdir())
    assert [n for n in names if n.startswith("rng_state")] == ["rng_state_0.pth", "rng_state_1.pth"]  # each rank's RNG
    ids = json.loads((run / "trackers.json").read_text())["mlflow"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # for this reader
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    (only,) = client.search_runs([ids["experiment_id"]])  # one tracker run, reattached by the restart
    steps = [m.step for m in client.get_metric_history(only.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1))
