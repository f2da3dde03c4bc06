"""tests/families.py without the package registry: local runs skip the family tests, CI (SFT_REQUIRE_FAMILIES=1,
set by .ci/run) fails them."""

from __future__ import annotations

import subprocess
from typing import Any

import families
import pytest


@pytest.fixture
def no_registry(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path))  # nothing fetched or converted yet

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise subprocess.CalledProcessError(1, args[0])

    monkeypatch.setattr(families.subprocess, "run", unreachable)


def test_without_the_registry_a_local_run_skips(no_registry: None, monkeypatch: Any) -> None:
    monkeypatch.delenv("SFT_REQUIRE_FAMILIES", raising=False)
    with pytest.raises(BaseException) as got:
        families.tokenizer("qwen2.5")
    assert got.type is pytest.skip.Exception and "cannot fetch llama-cpp-python" in str(got.value)


def test_without_the_registry_ci_fails(no_registry: None, monkeypatch: Any) -> None:
    monkeypatch.setenv("SFT_REQUIRE_FAMILIES", "1")
    with pytest.raises(BaseException) as got:  # a skip is an exception too: it must not be what comes out
        families.tokenizer("qwen2.5")
    assert got.type is pytest.fail.Exception and "SFT_REQUIRE_FAMILIES=1" in str(got.value)


def test_ci_requires_the_family_tests() -> None:
    assert "SFT_REQUIRE_FAMILIES=1 bash scripts/test.sh" in (families.Path(__file__).parents[2] / ".ci" / "run").read_text()
