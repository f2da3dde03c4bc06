"""sft as a wheel (`pip install dist/sft-*.whl` into a fresh venv), the commands run the way users run them: the
venv's console scripts, from a working directory outside the repo, with a clean environment (no PYTHONPATH). The
configs, the bundled demo data and the embedded-model lookup come from the installed package, the Slurm sweep
runs its jobs with the venv's interpreter, and the trackers and sft-bench work from there.

The venv reuses the dependencies of the test interpreter's environment through a .pth line (site-packages
named in a .pth are put on sys.path without running their own .pth files, so the editable `sft` of the dev venv
stays out): building and installing costs about 3 s instead of minutes of pip downloads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, local_lm_eval_tasks, write_jsonl
from test_slurm import LAUNCHER, WORDS, assert_complete_run, cluster, submitit_job_ids  # noqa: F401 -- cluster: fixture

pytestmark = pytest.mark.slurm


def build_wheel(out: Path) -> Path:
    """The wheel of a copy of the sources (the build writes build/ and *.egg-info next to them, not in the repo)."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "sft", "conf", "hydra_plugins"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (out / "dist").glob("sft-*.whl")
    return wheel


@pytest.fixture(scope="module")
def venv(tmp_path_factory: Any) -> Path:
    """A fresh venv with the wheel installed; returns its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root)
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    site = Path(subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "sft-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, hydra, ... of this env
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "-q",
                           "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir / "bin"


def user_env(root: Path) -> dict[str, str]:
    """A user's environment: no PYTHONPATH; W&B offline, MLflow and trackio writing under root."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "MLFLOW_ALLOW_FILE_STORE")}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(), "TRACKIO_DIR": str(root / "trackio")}


def run(bin_dir: Path, command: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    t0 = time.time()
    done = subprocess.run([str(bin_dir / f"sft-{command}"), *args], cwd=cwd, env=user_env(cwd.parent),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"sft-{command}: " + (done.stdout + done.stderr)[-4000:]
    print(f"sft-{command}: {time.time() - t0:.1f} s")
    return done


def tiny_training(tiny_dir: Path, data: Path, *extra: str) -> list[str]:
    return [f"model.path={tiny_dir}", "quant=none", "prompt=custom", f"data.path={data}", "data.eval_path=null",
            "data.eval_fraction=0.25", "data.max_seq_len=64", "data.packing=true", "train.micro_batch_size=2",
            "train.grad_accum=1", "train.max_steps=2", "train.save_steps=2", "train.lr=1e-3", *extra]


def test_the_wheel_installs_and_every_command_runs_from_it(
    venv: Path, cluster: list[str], tiny_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([str(venv / "python"), "-c", "import sft, hydra_plugins.sft_slurm as p; print(sft.__file__); "
                            "print(p.__file__)"], cwd=work, env=user_env(tmp_path), capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(venv.parent)) for line in where.stdout.split()), where.stdout  # not the repo

    # the defaults: the embedded SmolLM2 and the bundled demo data, found from the installed package
    run(venv, "prepare", f"out_dir={work / 'prepared'}", cwd=work)
    report = json.loads((work / "prepared" / "report.json").read_text())
    assert report["splits"]["train"]["kept"] == 320 and (work / "prepared" / "dataset").is_dir()

    data = write_jsonl(tmp_path / "train.jsonl",
                       [{"instruction": f"say {WORDS[i % 8]}", "input": "", "output": WORDS[(i * 3) % 8]} for i in range(16)])
    trackers = "train.report_to=[tensorboard,wandb,mlflow,trackio]"
    trained = work / "run"
    run(venv, "train", *tiny_training(tiny_dir, data, trackers, "train.project=wheel"), f"out_dir={trained}", cwd=work)
    assert_complete_run(trained, tiny_dir, steps=2)
    assert sorted(json.loads((trained / "trackers.json").read_text())) == ["mlflow", "trackio", "wandb"]
    assert list((trained / "wandb").glob("offline-run-*")) and (tmp_path / "mlruns").is_dir()

    evaluated = run(venv, "eval", f"adapter={trained}", "report_to=[mlflow]", "generation.max_new_tokens=2",
                    f"out_dir={work / 'eval'}", cwd=work)
    assert "logged to the training run's mlflow run" in evaluated.stdout

    pytest.importorskip("lm_eval", reason="sft-bench needs lm-eval (pip install '.[bench]')")
    (tmp_path / "tasks").mkdir()
    tasks = local_lm_eval_tasks(tmp_path / "tasks")
    run(venv, "bench", f"adapter={trained}", "benchmark.tasks=[sft_demo_sentiment]", f"benchmark.include_path={tasks}",
        "benchmark.limit=4", f"out_dir={work / 'bench'}", cwd=work)
    assert (work / "bench" / "benchmarks.md").read_text().startswith("| task | metric | base | adapter |")

    sweep = work / "sweep"
    try:
        run(venv, "train", "-m", *LAUNCHER, *tiny_training(tiny_dir, data), "seed=1,2", f"hydra.sweep.dir={sweep}",
            cwd=work)
    finally:
        cluster += submitit_job_ids(sweep) if (sweep / ".submitit").is_dir() else []
    for point in ("0", "1"):
        assert_complete_run(sweep / point, tiny_dir, steps=2)
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert f"{venv / 'python'} -u -m submitit.core._submit" in script.read_text()  # the jobs ran the wheel's sft
