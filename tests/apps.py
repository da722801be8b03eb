"""The real entry points (train.py, find_lr.py, explain.py, python -m sweeplab.report) run in this
process, exactly as their command lines would run them, but without a new interpreter's seconds of
imports: ``run_app("train.py", "-m", "optimizer.lr=0.1,0.2", ...)``. A subprocess proves nothing more
for what these tests check; tests of signals, concurrent processes and the launchers' workers still
start real processes (support.run_entry)."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from typing import NamedTuple

from support import ROOT


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_app(script: str, *args: str) -> Result:
    """``python <script> <args>`` in this process: its exit code and what it printed (logs included)."""
    from hydra.core.global_hydra import GlobalHydra

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    module = script.startswith("-m ")
    sys.argv = [script[3:] if module else str(ROOT / script), *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if module:
                runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return Result(code, out.getvalue(), err.getvalue())
