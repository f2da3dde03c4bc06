"""The console commands' allocator choice (sft.allocator): one restart with the library preloaded, the same
command line, and the user's environment back for the restarted process's children."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sft import allocator
from sft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, os, sys
print("start", flush=True)
from sft.allocator import choose_allocator
choose_allocator()
maps = open("/proc/self/maps").read()
out = {"argv": sys.argv[1:], "LD_PRELOAD": os.environ.get("LD_PRELOAD"), "MALLOC_CONF": os.environ.get("MALLOC_CONF"),
       "mapped": sorted({line.split()[-1] for line in maps.splitlines() if ".so" in line.split()[-1]})}
if "libjemalloc" in maps:
    import ctypes
    value, size = ctypes.c_ssize_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
    ctypes.CDLL(None).mallctl(b"opt.dirty_decay_ms", ctypes.byref(value), ctypes.byref(size), None, 0)
    out["dirty_decay_ms"] = value.value
print("RESULT " + json.dumps(out))
"""


def probe(env: dict[str, str | None]) -> tuple[int, dict[str, Any]]:
    """Run PROBE with extra arguments in a clean environment plus `env`: (how many times it started, result)."""
    full = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "SFT_ALLOCATOR")}
    full.update({k: v for k, v in env.items() if v is not None})
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT), full.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", PROBE, "a=1", "b=two words"], env=full, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    result = [json.loads(line.removeprefix("RESULT ")) for line in lines if line.startswith("RESULT ")]
    assert len(result) == 1
    return lines.count("start"), result[0]


def stand_in_library() -> str:
    """A shared library Python does not load by itself, preloaded in place of an allocator."""
    _, plain = probe({"SFT_ALLOCATOR": "system"})
    for name in ("libuuid.so.1", "libexpat.so.1", "libsqlite3.so.0", "libcrypt.so.1", "libbz2.so.1.0", "libz.so.1"):
        for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/usr/lib"):
            path = f"{folder}/{name}"
            if os.path.isfile(path) and not any(name in m for m in plain["mapped"]):
                return path
    pytest.skip("no stand-in shared library on this system")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_a_chosen_library_is_preloaded_by_one_restart_with_the_same_arguments() -> None:
    lib = stand_in_library()
    starts, out = probe({"SFT_ALLOCATOR": lib})
    assert starts == 2  # the first process restarted itself once, not in a loop
    assert any(os.path.realpath(m) == os.path.realpath(lib) for m in out["mapped"])
    assert out["argv"] == ["a=1", "b=two words"]
    assert out["LD_PRELOAD"] is None and out["MALLOC_CONF"] is None  # children get the user's environment


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_the_users_preload_and_malloc_conf_come_back_after_the_restart() -> None:
    lib = stand_in_library()
    other = next(m for m in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1", lib) if os.path.isfile(m))
    starts, out = probe({"SFT_ALLOCATOR": lib, "LD_PRELOAD": other, "MALLOC_CONF": "narenas:2"})
    assert starts == 2
    assert out["LD_PRELOAD"] == other and out["MALLOC_CONF"] == "narenas:2"


def test_system_or_a_users_own_allocator_means_no_restart() -> None:
    for env in ({"SFT_ALLOCATOR": "system"}, {"LD_PRELOAD": "/nonexistent/libtcmalloc.so.4"}):
        starts, out = probe(env)
        assert starts == 1 and not any("jemalloc" in m for m in out["mapped"])


@pytest.mark.skipif(allocator.find_jemalloc() is None, reason="no jemalloc on this system (apt install libjemalloc2)")
def test_jemalloc_is_the_default_with_page_decay_off() -> None:
    starts, out = probe({})
    assert starts == 2 and any("jemalloc" in m for m in out["mapped"])
    assert out["dirty_decay_ms"] == -1  # MALLOC_CONF reached jemalloc
    assert out["LD_PRELOAD"] is None and out["MALLOC_CONF"] is None


def test_bad_choices_are_one_clear_error(monkeypatch: Any) -> None:
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("SFT_ALLOCATOR", "/nonexistent/libmalloc.so")
    with pytest.raises(ConfigError, match="SFT_ALLOCATOR=/nonexistent/libmalloc.so: must be auto, system, jemalloc"):
        allocator.choose_allocator()
    monkeypatch.setenv("SFT_ALLOCATOR", "jemalloc")
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    with pytest.raises(ConfigError, match="no libjemalloc.so.2 found"):
        allocator.choose_allocator()
    monkeypatch.setenv("SFT_ALLOCATOR", "auto")  # auto without jemalloc: glibc's malloc, no restart, no error
    allocator.choose_allocator()


def test_a_console_command_reports_a_bad_choice_without_a_traceback() -> None:
    env = {**os.environ, "SFT_ALLOCATOR": "bogus", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sft", "prepare", "data.path=x.json"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: SFT_ALLOCATOR=bogus: must be auto, system, jemalloc or the path of a malloc library"]
