"""The C allocator of the console commands: jemalloc when the system has it, glibc's malloc otherwise.

On CPU, training makes many large short-lived allocations (activations, dequantized 4-bit weights, LoRA
dropout masks, logit chunks) between long-lived ones (what gradient checkpointing keeps). glibc's malloc
keeps the holes: training SmolLM2-135M on packed 4 x 512-token micro-batches, RSS grew from 1.2 to 5.7 GB
while the live tensors peaked at about 0.5 GB. jemalloc, with its return of freed pages to the system turned
off (`dirty_decay_ms:-1,muzzy_decay_ms:-1`), reuses them by size class instead: 1.7 GB and 5% less time per
micro-batch on the same run (with jemalloc's default decay, 1.6 GB but 35% slower: every large allocation
faults its pages in again; with the settings of torch's `xeon.run_cpu` launcher, 26% slower).

An allocator must be chosen before the process starts, so the console commands (`sft-train`, ...,
`python -m sft ...`) start themselves again once, with the library in `LD_PRELOAD`, before they import torch.
The new process removes both variables from its environment again, so its own children (torchrun workers,
sbatch, subprocesses) start from the user's environment and choose for themselves.

`SFT_ALLOCATOR` chooses: `auto` (the default: jemalloc when found, else glibc's malloc), `system` (glibc's
malloc), `jemalloc` (an error when no library is found, instead of the silent fallback) or the path of a
malloc library to preload instead (tcmalloc, say). Nothing is restarted when `LD_PRELOAD` already names
jemalloc or tcmalloc (the user chose), or off Linux. A user's own `MALLOC_CONF` is kept. Importing sft (tests,
notebooks, the Hydra functions called from Python) never restarts anything: only the console entry points
call `choose_allocator`.
"""

from __future__ import annotations

import ctypes.util
import glob
import json
import os
import sys

from sft.errors import ConfigError

MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_MARK = "_SFT_ALLOCATOR_RESTARTED"  # set for the restarted process only: the user's LD_PRELOAD and MALLOC_CONF
_KEYS = ("LD_PRELOAD", "MALLOC_CONF")


def find_jemalloc() -> str | None:
    """Path of libjemalloc.so.2 (Debian/Ubuntu libjemalloc2, RHEL jemalloc, conda's jemalloc), or None."""
    prefixes = [os.environ.get("CONDA_PREFIX"), sys.prefix, "/usr", "/usr/local"]
    candidates = [f"{p}/lib/libjemalloc.so.2" for p in prefixes if p]
    candidates += ["/usr/lib64/libjemalloc.so.2", *sorted(glob.glob("/usr/lib/*-linux-gnu/libjemalloc.so.2"))]
    for path in candidates:
        if os.path.isfile(path):
            return path
    name = ctypes.util.find_library("jemalloc")  # a soname; the dynamic loader resolves it
    return name if name else None


def choose_allocator() -> None:
    """Restart this process once under jemalloc or SFT_ALLOCATOR's library (see the module docstring); returns
    when it does not restart, and in the restarted process."""
    if _MARK in os.environ:  # the restarted process: give children the user's environment back
        for key, old in json.loads(os.environ.pop(_MARK)).items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        return
    choice = os.environ.get("SFT_ALLOCATOR", "auto")
    preload = os.environ.get("LD_PRELOAD", "")
    if choice == "system" or not sys.platform.startswith("linux") or "jemalloc" in preload or "tcmalloc" in preload:
        return
    if choice in ("auto", "jemalloc"):
        lib = find_jemalloc()
        if lib is None and choice == "jemalloc":
            raise ConfigError("SFT_ALLOCATOR=jemalloc: no libjemalloc.so.2 found (Debian/Ubuntu: apt install libjemalloc2)")
        if lib is None:
            return
    elif os.path.isfile(choice):
        lib = choice
    else:
        raise ConfigError(f"SFT_ALLOCATOR={choice}: must be auto, system, jemalloc or the path of a malloc library")
    env = dict(os.environ)
    env[_MARK] = json.dumps({key: os.environ.get(key) for key in _KEYS})
    env["LD_PRELOAD"] = f"{lib}:{preload}" if preload else lib
    if "jemalloc" in os.path.basename(lib):
        env.setdefault("MALLOC_CONF", MALLOC_CONF)
    args = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))  # with -m / -c and interpreter flags
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *args[1:]], env)
    except OSError:  # could not restart: run on with the allocator we have
        return
