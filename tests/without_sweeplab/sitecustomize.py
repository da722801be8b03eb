"""Imported at start-up by a process a test starts with this folder first on PYTHONPATH, and by every
process that one starts (they inherit PYTHONPATH: ``mlflow models serve`` and its server workers): the
folders that hold the project's packages (the editable install's src/, the tests' own PYTHONPATH) are
taken off ``sys.path``, so neither ``sweeplab`` nor ``sweeplab_model`` can be imported from them, as
on a machine where only MLflow and torch are installed. A model's own copy of sweeplab_model (its
``code`` folder, which MLflow puts on ``sys.path`` when it loads the model) is all there is.

With ``WITHOUT_SWEEPLAB_LOG`` set, each such process appends its command line to that file: a test
sees which processes ran this way. Also exits without the last garbage collections, as
tests/fast_exit/sitecustomize.py does."""

import atexit
import gc
import os
import sys

sys.path[:] = [
    p
    for p in sys.path
    if not any(os.path.isfile(os.path.join(p or ".", pkg, "__init__.py")) for pkg in ("sweeplab", "sweeplab_model"))
]
if os.environ.get("WITHOUT_SWEEPLAB_LOG"):
    with open(os.environ["WITHOUT_SWEEPLAB_LOG"], "a") as log:
        log.write(" ".join(sys.argv) + "\n")
atexit.register(gc.freeze)
