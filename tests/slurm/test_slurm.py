"""Jobs on a real one-node Slurm cluster (scripts/slurm/local_cluster.sh): the Hydra launcher, the sbatch
scripts, and preemption (warning signal -> checkpoint -> requeue -> resume -> the same adapter).

Every job trains a tiny Llama with the char tokenizer for a few steps, so the whole module takes minutes.
If the cluster cannot start here (not root, no apt-get, daemons failing), every test is skipped with the
reason printed by local_cluster.sh."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import REPO, local_lm_eval_tasks, write_jsonl

pytestmark = pytest.mark.slurm
CLUSTER = REPO / "scripts" / "slurm" / "local_cluster.sh"
WORDS = ["red", "blue", "green", "tea", "sky", "moon", "cat", "dog"]
# Launcher values for the 2-CPU, GPU-less local node (on a real cluster conf/local/slurm.yaml sets them).
LAUNCHER = [
    "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20", "hydra.launcher.partition=null",
    "hydra.launcher.account=null", "hydra.launcher.qos=null",
]
SBATCH = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G", "--time=20"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[str]]:
    """Starts the local cluster once (or finds it running); yields a list the tests add job ids to, which are
    cancelled at the end; stops the daemons only if this fixture started them."""
    was_up = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True, text=True).returncode == 0
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.skip(f"local Slurm cluster did not start: {(started.stderr or started.stdout).strip()[-800:]}")
    jobs: list[str] = []
    yield jobs
    if jobs:
        subprocess.run(["scancel", *sorted(set(jobs))], capture_output=True)
    if not was_up:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: Any) -> Path:
    rows = [{"instruction": f"say {WORDS[i % 8]}", "input": "", "output": WORDS[(i * 3) % 8]} for i in range(32)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def train_overrides(tiny_dir: Path, data_file: Path, *extra: str) -> list[str]:
    return [
        f"model.path={tiny_dir}", "quant=none", "prompt=custom", f"data.path={data_file}", "data.eval_path=null",
        "data.eval_fraction=0.25", "data.max_seq_len=64", "data.packing=true", "train.micro_batch_size=2",
        "train.grad_accum=2", "train.max_steps=4", "train.save_steps=2", "train.lr=1e-3", *extra,
    ]


def env() -> dict[str, str]:
    # Slurm copies the submitting environment into the job (sbatch --export=ALL): the cache, offline mode
    # and the interpreter and checkout the sbatch scripts use.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "SFT_REPO": str(REPO),
            "SFT_PYTHON": sys.executable}


def sft(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft", *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def submitit_job_ids(sweep: Path) -> list[str]:
    return sorted({p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)})


def sbatch(script: str, log_dir: Path, *args: str, options: tuple[str, ...] = ()) -> str:
    done = subprocess.run(["sbatch", "--parsable", *SBATCH, *options, f"--output={log_dir}/%j.out",
                           str(REPO / "scripts" / "slurm" / script), *args],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_job(job_id: str, timeout: float = 600) -> dict[str, str]:
    """Poll until the job reaches a final state (a requeued job passes through PENDING again)."""
    end = time.time() + timeout
    while True:
        info = job_info(job_id)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
            return info
        assert time.time() < end, f"job {job_id} still {info.get('JobState')} after {timeout} s"
        time.sleep(1)


def wait_for_steps(out: Path, steps: int, is_running: Any, timeout: float = 600) -> None:
    end = time.time() + timeout
    while len(logged_steps(out)) < steps:
        assert is_running(), "the job ended before it could be interrupted"
        assert time.time() < end, f"no {steps} logged steps in {out} after {timeout} s"
        time.sleep(0.5)


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if "loss" in r]


def adapter_tensors(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path) -> None:
    import torch

    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys() and ta
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def assert_complete_run(run: Path, tiny_dir: Path, steps: int) -> None:
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml", "report.json",
                 "metrics.jsonl", "loss.png", "finished.json", "tokenizer/tokenizer_config.json"):
        assert (run / name).is_file(), f"{run}: missing {name}"
    assert logged_steps(run) == list(range(1, steps + 1))  # each step logged once, also across a requeue
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), run / "adapter")
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # training moved B


def test_launcher_sweep_of_two_trainings_then_generation(
    cluster: list[str], tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    done = sft("train", "-m", *LAUNCHER, *train_overrides(tiny_dir, data_file), "train.lr=1e-3,2e-3",
               f"hydra.sweep.dir={sweep}")
    cluster += submitit_job_ids(sweep) if (sweep / ".submitit").is_dir() else []
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert len(submitit_job_ids(sweep)) == 1  # one job array with one task per sweep point
    lrs = []
    for point in ("0", "1"):
        run = sweep / point
        assert_complete_run(run, tiny_dir, steps=4)
        hydra_cfg = (run / ".hydra" / "hydra.yaml").read_text()
        assert re.search(r"\n    id: '?\d+_\d'?\n", hydra_cfg), "hydra.job.id is not a Slurm array task id"
        lrs.append(float(re.search(r"\n  lr: (\S+)\n", (run / "config.yaml").read_text()).group(1)))
    assert sorted(lrs) == [1e-3, 2e-3]

    gen_sweep = tmp_path / "gen"
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"instruction": f"say {w}", "input": "", "output": w} for w in WORDS[:5]])
    gen = sft("generate", "-m", *LAUNCHER, f"adapter={sweep / '0'}", f"data.path={prompts}",
              "generation.max_new_tokens=4", f"hydra.sweep.dir={gen_sweep}")
    cluster += submitit_job_ids(gen_sweep) if (gen_sweep / ".submitit").is_dir() else []
    assert gen.returncode == 0, (gen.stdout + gen.stderr)[-4000:]
    out = gen_sweep / "0"
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted(r["instruction"] for r in rows) == sorted(f"say {w}" for w in WORDS[:5])
    assert all(isinstance(r["output"], str) and r["finish_reason"] in ("eos", "stop", "length") for r in rows)
    assert (out / "generation_config.json").is_file()

    # sft-bench over both adapters on the launcher: one job each, one row per adapter in the sweep's table
    pytest.importorskip("lm_eval", reason="sft-bench needs lm-eval (pip install '.[bench]')")
    tasks = local_lm_eval_tasks(tmp_path)
    bench_sweep = tmp_path / "bench"
    bench = sft("bench", "-m", *LAUNCHER, f"adapter={sweep / '0'},{sweep / '1'}", "benchmark.tasks=[sft_demo_sentiment]",
                f"benchmark.include_path={tasks}", "benchmark.limit=4", f"hydra.sweep.dir={bench_sweep}")
    cluster += submitit_job_ids(bench_sweep) if (bench_sweep / ".submitit").is_dir() else []
    assert bench.returncode == 0, (bench.stdout + bench.stderr)[-4000:]
    rows = (bench_sweep / "benchmarks.md").read_text().splitlines()[2:]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == ["base", str(sweep / "0" / "adapter"),
                                                                     str(sweep / "1" / "adapter")]


def test_sbatch_single_gpu_script_trains(cluster: list[str], tiny_dir: Path, data_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    job = sbatch("single_gpu.sbatch", tmp_path, "train", *train_overrides(tiny_dir, data_file),
                 f"out_dir={run}", f"hydra.run.dir={tmp_path / 'hydra'}")
    cluster.append(job)
    info = wait_job(job)
    log = (tmp_path / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-4000:]
    assert_complete_run(run, tiny_dir, steps=4)
    assert f"sft: job {job} restart 0" in log and "done: 4 steps" in log


def test_warning_signal_checkpoints_requeues_and_resumes_to_the_same_adapter(
    cluster: list[str], tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    steps = 60
    args = train_overrides(tiny_dir, data_file, f"train.max_steps={steps}", "train.save_steps=1000")
    reference = tmp_path / "reference"
    done = sft("train", *args, f"out_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "run"
    job = sbatch("single_gpu.sbatch", tmp_path, "train", *args, f"out_dir={run}",
                 f"hydra.run.dir={tmp_path / 'hydra'}")
    cluster.append(job)
    wait_for_steps(run, 2, lambda: job_info(job).get("JobState") in ("PENDING", "RUNNING"))
    # What `#SBATCH --signal=B:USR1@300` sends before the time limit, now.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    info = wait_job(job)
    log = (tmp_path / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-4000:]
    assert int(info["Restarts"]) == 1, log[-4000:]
    assert "exited 75 after a checkpoint request; requeueing" in log, log[-4000:]
    assert re.search(r"resuming from .*checkpoint-\d+", log), log[-4000:]
    assert f"sft: job {job} restart 1" in log
    assert_complete_run(run, tiny_dir, steps=steps)
    assert_same_adapter(run, reference)


def test_launcher_job_requeued_on_the_warning_signal_resumes_to_the_same_adapter(
    cluster: list[str], tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    steps = 60
    args = train_overrides(tiny_dir, data_file, f"train.max_steps={steps}", "train.save_steps=1000", "seed=1")
    reference = tmp_path / "reference"
    done = sft("train", *args, f"out_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]

    sweep = tmp_path / "sweep"
    submit = subprocess.Popen([sys.executable, "-m", "sft", "train", "-m", *LAUNCHER, *args,
                               f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_steps(sweep / "0", 2, lambda: submit.poll() is None)
        (job,) = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)]
        cluster.append(job.split("_")[0])
        # The launcher's --signal=USR1@N reaches the job step (the trainer), not the batch shell.
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        output, _ = submit.communicate(timeout=600)
    finally:
        submit.kill()
    assert submit.returncode == 0, output[-4000:]
    assert int(job_info(job)["Restarts"]) == 1
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "requeueing job" in logs and re.search(r"resuming from .*checkpoint-\d+", logs), logs[-4000:]
    assert_complete_run(sweep / "0", tiny_dir, steps=steps)
    assert_same_adapter(sweep / "0", reference)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_torchrun_scripts_train_ddp_and_resume_after_the_warning(
    cluster: list[str], tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    """multi_gpu.sbatch (torchrun on one node, 2 CPU processes) and multi_node.sbatch on the cluster's two nodes
    (srun starts one torchrun per node, 1 process each, c10d rendezvous at the first node's NodeAddr); the
    multi-node job is warned mid-run: torchrun survives the signal, its workers checkpoint, the job requeues and
    resumes to the adapter of the uninterrupted 1-node x 2-process run."""
    steps = 40
    args = train_overrides(tiny_dir, data_file, f"train.max_steps={steps}", "train.save_steps=1000", "seed=2")
    nproc2 = {"SFT_NPROC": "2", "SFT_RDZV_PORT": str(free_port())}
    options = ("--cpus-per-task=2", "--export=ALL," + ",".join(f"{k}={v}" for k, v in nproc2.items()))

    single_node = tmp_path / "single-node"
    job = sbatch("multi_gpu.sbatch", tmp_path, "train", *args, f"out_dir={single_node}",
                 f"hydra.run.dir={tmp_path / 'hydra-a'}", options=options)
    cluster.append(job)
    info = wait_job(job)
    log = (tmp_path / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-4000:]
    assert "2 processes" in log and log.count(f"done: {steps} steps") == 1, log[-4000:]  # rank 0 prints it
    assert_complete_run(single_node, tiny_dir, steps=steps)

    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()
    assert len(nodes) >= 2, f"local_cluster.sh starts two nodes, sinfo shows {nodes}"
    port = free_port()
    run = tmp_path / "multi-node"
    job = sbatch("multi_node.sbatch", tmp_path, "train", *args, f"out_dir={run}",
                 f"hydra.run.dir={tmp_path / 'hydra-b'}",
                 options=("--nodes=2", "--cpus-per-task=1", f"--export=ALL,SFT_NPROC=1,SFT_RDZV_PORT={port}"))
    cluster.append(job)
    wait_for_steps(run, 2, lambda: job_info(job).get("JobState") in ("PENDING", "RUNNING"))
    assert job_info(job)["NumNodes"] == "2"
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    info = wait_job(job)
    log = (tmp_path / f"{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-4000:]
    assert int(info["Restarts"]) == 1, log[-4000:]
    # the script's environment: the head node's NodeAddr (scontrol) and SFT_RDZV_PORT, one srun task per node
    assert f"2 nodes x 1 processes, rendezvous 127.0.0.1:{port}" in log, log[-4000:]
    for node_id, name in enumerate(sorted(nodes)[:2]):
        assert log.count(f"sft: node {name} (node {node_id} of 2) starts torchrun") == 2, log[-4000:]  # run + rerun
    assert re.search(r"resuming from .*checkpoint-\d+", log), log[-4000:]
    assert_complete_run(run, tiny_dir, steps=steps)
    assert_same_adapter(run, single_node)


def test_launcher_generation_stopped_by_the_warning_requeues_and_finishes_the_same_file(
    cluster: list[str], tiny_dir: Path, tmp_path: Path
) -> None:
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"instruction": f"say {WORDS[i % 8]} {i}", "input": "", "output": "x"} for i in range(160)])
    args = [f"model.path={tiny_dir}", "prompt=custom", f"data.path={prompts}", "generation.batch_size=1",
            "generation.max_new_tokens=24", "generation.min_new_tokens=24"]
    reference = tmp_path / "reference"
    done = sft("generate", *args, f"out_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]

    sweep = tmp_path / "sweep"
    submit = subprocess.Popen([sys.executable, "-m", "sft", "generate", "-m", *LAUNCHER, *args,
                               f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    rows = sweep / "0" / "generations.jsonl"
    try:
        end = time.time() + 600
        while not (rows.is_file() and len(rows.read_text().splitlines()) >= 2):
            assert submit.poll() is None and time.time() < end, "generation ended before it could be interrupted"
            time.sleep(0.2)
        (job,) = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)]
        cluster.append(job.split("_")[0])
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        output, _ = submit.communicate(timeout=600)
    finally:
        submit.kill()
    assert submit.returncode == 0, output[-4000:]
    assert int(job_info(job)["Restarts"]) == 1
    assert rows.read_bytes() == (reference / "generations.jsonl").read_bytes()


def launcher_without(*keys: str) -> list[str]:
    """LAUNCHER with the given keys left at the launcher's defaults (conf/hydra/launcher/slurm.yaml)."""
    return [o for o in LAUNCHER if o.split("=")[0].removeprefix("hydra.launcher.") not in keys]


def test_a_gpu_request_on_a_cluster_without_gpus_is_one_message_before_submitting(
    cluster: list[str], tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    done = sft("train", "-m", *launcher_without("gpus_per_node"), *train_overrides(tiny_dir, data_file),
               f"hydra.sweep.dir={sweep}")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "hydra.launcher.gpus_per_node=1: partition" in done.stderr and "has no GPUs" in done.stderr
    assert "hydra.launcher.gpus_per_node=null" in done.stderr and "Traceback" not in done.stderr
    assert not (sweep / ".submitit").exists()  # nothing was submitted


def test_a_request_larger_than_every_node_is_one_message_naming_the_keys(
    cluster: list[str], tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    done = sft("train", "-m", *launcher_without("cpus_per_task", "mem_gb"), "hydra.launcher.cpus_per_task=4096",
               "hydra.launcher.mem_gb=100000", *train_overrides(tiny_dir, data_file), f"hydra.sweep.dir={sweep}")
    assert done.returncode == 1, done.stderr[-3000:]
    for key in ("hydra.launcher.cpus_per_task=4096", "hydra.launcher.mem_gb=100000"):
        assert key in done.stderr, done.stderr[-3000:]
    assert "Reason=PartitionConfig" in done.stderr and "Traceback" not in done.stderr
    assert not (sweep / ".submitit").exists()


def test_scancel_during_data_preparation_ends_the_job_within_seconds(
    cluster: list[str], tiny_dir: Path, tmp_path: Path
) -> None:
    big = write_jsonl(tmp_path / "big.jsonl", [{"instruction": f"say {WORDS[i % 8]} {i}", "input": "",
                                                "output": " ".join(WORDS) * 4} for i in range(200_000)])
    args = [f"model.path={tiny_dir}", "quant=none", "prompt=custom", f"data.path={big}", "data.eval_path=null",
            "data.max_seq_len=512", "data.num_proc=1", "cache=false", "train.max_steps=2"]
    run = tmp_path / "run"
    job = sbatch("single_gpu.sbatch", tmp_path, "train", *args, f"out_dir={run}", f"hydra.run.dir={tmp_path / 'hydra'}")
    cluster.append(job)
    log = tmp_path / f"{job}.out"
    end = time.time() + 300
    while not (log.is_file() and "tokenizing data source" in log.read_text()):
        assert job_info(job).get("JobState") in ("PENDING", "RUNNING"), log.read_text()[-3000:] if log.is_file() else ""
        assert time.time() < end, "the job did not start preparing its data"
        time.sleep(0.2)
    time.sleep(2)  # well inside the preparation (200k records: a minute or more on one process)
    cancelled = time.time()
    subprocess.run(["scancel", job], check=True)
    while job_info(job).get("JobState") not in ("CANCELLED", "COMPLETED", "FAILED"):
        assert time.time() - cancelled < 60, "the job is still running a minute after scancel"
        time.sleep(0.2)
    took = time.time() - cancelled
    end = time.time() + 10
    while "SIGTERM before the first training step" not in (out := log.read_text()) and time.time() < end:
        time.sleep(0.2)  # the log is written by the node's slurmd: give it a moment
    assert "SIGTERM before the first training step" in out, out[-3000:]
    assert took < 25, f"{took:.0f} s from scancel to the job's end (Slurm's KillWait is 30 s)"


def test_a_job_pending_for_a_reason_that_never_clears_is_cancelled_with_one_message(
    cluster: list[str], tiny_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    """Asked for a drained node: sbatch accepts the job, which then sits pending (Reason=ReqNodeNotAvail) while
    the submitter would wait forever; the launcher's squeue check after submitting cancels it and names the
    setting. (What the launcher can see before submitting is checked then: the tests above.)"""
    node = sorted(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split())[-1]
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=sft-test"], check=True)
    sweep = tmp_path / "sweep"
    try:
        started = time.time()
        done = sft("train", "-m", *LAUNCHER, f"+hydra.launcher.additional_parameters.nodelist={node}",
                   *train_overrides(tiny_dir, data_file), f"hydra.sweep.dir={sweep}", timeout=300)
        took = time.time() - started
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=True)
    jobs = submitit_job_ids(sweep) if (sweep / ".submitit").is_dir() else []
    cluster += [j.split("_")[0] for j in jobs]
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert "error: the Slurm job will never start:" in done.stderr and "Reason=ReqNodeNotAvail" in done.stderr
    assert "set hydra.launcher.partition to another partition" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 1 and took < 120, done.stderr[-3000:]
    (job,) = {j.split("_")[0] for j in jobs}
    assert job_info(job).get("JobState") == "CANCELLED"
