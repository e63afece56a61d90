"""Shared fixtures: run the real `onnxforge` command, build tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python -m onnxforge ARGS` as a user would and returns the finished process (text mode)."""
    full_env = dict(os.environ)
    full_env.setdefault("COLUMNS", "200")
    full_env["PYTHONWARNINGS"] = "ignore"
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "onnxforge", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _evaluation_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Every test (and every command it runs) uses a fresh evaluation cache under pytest's tmp dir,
    never the user's ~/.cache."""
    monkeypatch.setenv("ONNXFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("onnxforge-cache")))


@pytest.fixture
def cli():
    return run_cli


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, no traceback, and one `error:` line containing each fragment."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    err_lines = [ln for ln in lines if ln.startswith("error:")]
    assert len(err_lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in proc.stderr.replace("\n", " "), (frag, proc.stderr)
