"""benchmarks/load.py at toy size: concurrent jobs log runs with nothing lost, and the table is printed.
The figures themselves are docs/benchmarks.md's business; this only keeps the benchmark working."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT, entry_env

pytestmark = pytest.mark.slow  # forks jobs; the PostgreSQL case starts a database and an `mlflow server`


def _load(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=entry_env(),
        cwd=ROOT.parent,
    )


def _rows(stdout: str) -> list[list[str]]:
    """The main table's rows (backend ... log calls), as cells."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and cells[0] in ("sqlite", "postgres") and re.fullmatch(r"\d+/\d+", cells[3]):
            rows.append(cells)
    return rows


def _check(result, backend: str, modes: list[str], n: int, epochs: int):
    out = result.stdout
    tail = (out + result.stderr)[-4000:]  # the tables and, on failure, the errors the benchmark lists
    assert result.returncode == 0, tail
    assert "| backend | mode | N | runs FINISHED | errors | metric points logged | lost |" in out, tail
    assert "OK: no errors, nothing lost" in out, tail
    rows = [r for r in _rows(out) if r[0] == backend]
    assert [r[1] for r in rows] == modes, tail
    for r in rows:
        assert r[2] == str(n) and r[3] == f"{n}/{n}", tail  # every run FINISHED
        assert r[4] == "0" and r[6] == "0" and r[7] == "0 / 0", tail  # no errors; nothing lost
        assert r[5] == f"{n * (epochs * 10 + 4):,}", tail  # 10 metrics per epoch and 4 at the end, per job
        assert re.fullmatch(r"[\d.]+ / [\d.]+", r[9]) and re.fullmatch(r"[\d.]+ / [\d.]+", r[10]), tail
    # The per-call table names every call type.
    assert "| setup | start | params | tags | epoch | fit_end | artifact | end |" in out, tail


def test_load_benchmark_at_small_n():
    """Two jobs logging the way sweeplab does (in the background) to the default SQLite store. The
    PostgreSQL server and larger N are the benchmark's, not the suite's (docs/benchmarks.md, "Load")."""
    result = _load("--n", "2", "--epochs", "3", "--epoch-seconds", "0", "--backends", "sqlite", "--modes", "async")
    _check(result, "sqlite", ["async"], 2, 3)


def test_load_benchmark_fails_loudly_on_bad_options():
    result = _load("--backends", "oracle", timeout=60)
    assert result.returncode == 2 and "unknown backend 'oracle'" in result.stderr
