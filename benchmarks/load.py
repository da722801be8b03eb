"""Load: N jobs at once, each logging like a real training run, against the stores a sweep can use.

    python benchmarks/load.py                                   # --n 4,16,64 --backends sqlite,postgres --epochs 50
    python benchmarks/load.py --n 2 --epochs 3 --backends sqlite --modes async
    python benchmarks/load.py --backends sqlite,server-sqlite,postgres --modes async,sync

Each job is its own process and does, through sweeplab.tracking, what ``training.py`` does around the
training, without the training: ``tracking.setup`` (the store check, the experiment), the run
started with tags, ~100 params (like the flattened config), ``--epochs`` x 10 metrics with
``step=epoch``, the run-level summary, three small artifacts (a YAML config, a PNG, a text log),
the run ended. ``--epoch-seconds`` stands in for an epoch's training between two epochs' metrics.
Two ways to log an epoch (``--modes``):

- ``async``: what sweeplab does, ``tracking.MlflowLogger``: one ``log_batch`` per epoch, written in
  order by the logger's own background thread, then at the end of the fit a flush (which waits for
  every write) and the summary. A write the store refused is written again, synchronously, at the
  next epoch or at the flush; one refused again raises in the job, which this benchmark counts.
- ``sync``: each epoch a synchronous ``tracking.log_metrics`` (one request, waited for), the way
  code without MLflowLogger logs; its latency is the store's write latency that ``async`` hides.

Backends (``--backends``): ``sqlite``, the default store (a fresh folder, the experiment created by
``tracking.setup`` with its artifact folder beside the database, every job writing to the one
file); ``postgres``, an ``mlflow server`` with ``--serve-artifacts`` on a private PostgreSQL cluster
on 127.0.0.1 (as tests/test_scale_out.py starts them); ``server-sqlite``, the same server on a
SQLite file (to tell the server's part from the database's). Every (backend, mode, N) gets a fresh
store or experiment.

Afterwards it counts, from the store: runs not FINISHED, and the metric points stored against
those logged (``get_metric_history`` per run and key; lost points must be 0), params and artifacts.
It prints a table per (backend, mode, N): errors (exceptions raised by a log call, async writes
MLflow dropped, jobs that died, runs not FINISHED), lost metric points, wall time, and p50/p99
latency of a log call as the job sees it: of an epoch's metrics call, and of all log calls
together; a second table gives p50/p99 per call type. Exit code 1 when anything errored or was lost.

Jobs are forked from one process that imported sweeplab and MLflow once (multiprocessing's
forkserver), so 64 jobs on a small machine start in seconds and share those pages; they start
their runs together, at a barrier.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = (
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_time",
    "images_per_sec",
    "grad_norm",
)
SUMMARY = ("best_test_acc", "best_epoch", "epochs_to_target", "train_time_to_target")
N_PARAMS = 100
ARTIFACTS = {"config/config.yaml", "plots/curves.png", "logs/train.log"}
CALLS = ("setup", "start", "params", "tags", "epoch", "fit_end", "artifact", "end")  # per-call-type table order
BACKENDS = ("sqlite", "postgres", "server-sqlite")
# What MLflow imports on a process's first store access, run start and upload (seconds of CPU each):
# imported once in the forkserver, so that the jobs measure the store, not Python's imports.
WARM_IMPORTS = (
    "sweeplab.tracking",
    "omegaconf",
    "sqlite3",
    "sqlalchemy",
    "alembic.command",
    "alembic.migration",
    "mlflow.store.db.utils",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.tracking.rest_store",
    "mlflow.store.artifact.local_artifact_repo",
    "mlflow.store.artifact.mlflow_artifacts_repo",
    "mlflow.store.artifact.http_artifact_repo",
    "mlflow.tracking.context.registry",
    "mlflow.tracking.request_header.registry",
    "mlflow.tracing.processor.otel",
    "mlflow.utils.name_utils",
    "IPython",
    "git",
    "requests",
    "psycopg",
)


# -- one job ------------------------------------------------------------------------------------
def params_like_a_config(job: int) -> dict[str, str]:
    """~100 params the way tracking.flatten names a composed config's values."""
    base = {
        "model._target_": "sweeplab.models.resnet18",
        "model.width": 64,
        "model.num_classes": 10,
        "optimizer._target_": "torch.optim.SGD",
        "optimizer.lr": 0.01 * (1 + job),
        "optimizer.momentum": 0.9,
        "optimizer.weight_decay": 5e-4,
        "scheduler.name": "reduce_on_plateau",
        "scheduler.factor": 0.5,
        "scheduler.patience": 5,
        "trainer.epochs": 50,
        "trainer.batch_size": 128,
        "trainer.seed": job,
        "trainer.device": "cuda",
        "data.npz": "/data/cifar10.npz",
        "data.mean": "[0.4914, 0.4822, 0.4465]",
        "data.std": "[0.247, 0.2435, 0.2616]",
        "tracking.experiment": "load",
        "paths.checkpoint_dir": "/srv/sweeplab/checkpoints",
    }
    for i in range(N_PARAMS - len(base)):
        base[f"group{i // 10}.key{i % 10}"] = f"value-{i}-{job}"
    return {k: str(v) for k, v in base.items()}


def epoch_metrics(epoch: int, job: int) -> dict[str, float]:
    acc = 1 - 0.9 * math.exp(-epoch / 10)
    return {
        "train_loss": 2.3 * math.exp(-epoch / 12) + 0.001 * job,
        "train_acc": acc,
        "test_loss": 2.3 * math.exp(-epoch / 15) + 0.1,
        "test_acc": acc - 0.03,
        "val_loss": 2.3 * math.exp(-epoch / 15) + 0.12,
        "val_acc": acc - 0.04,
        "lr": 0.01 * 0.5 ** (epoch // 10),
        "epoch_time": 1.5 + 0.01 * epoch,
        "images_per_sec": 33_000.0 + epoch,
        "grad_norm": 1.0 / epoch,
    }


class _FakeTrainer:
    """What MlflowLogger reads of the engine's trainer."""

    history: list = []

    def __init__(self, epochs: int):
        self.epochs = epochs

    def summary(self) -> dict:
        return {"best_test_acc": 0.94, "best_epoch": self.epochs, "epochs_to_target": 12, "train_time_to_target": 18.5}


class _ErrorCounter(logging.Handler):
    """MLflow's async logging thread reports a failed write as an ERROR log record and drops it."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        text = re.sub(r"^Run Id \w+: ", "", record.getMessage())  # one line per cause, not per run
        cause = re.search(r"\((\w+\.)*\w*(Error|Exception)\)[^\n]*", text)
        self.messages.append((cause.group() if cause else text.splitlines()[0])[:300])


def _line(err: BaseException) -> str:
    """One line naming the error; for a database error, the driver's own line (``(sqlite3.OperationalError)
    database is locked``) rather than SQLAlchemy's preamble."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    cause = next((line for line in lines if re.match(r"\((\w+\.)*\w*(Error|Exception)\)", line)), None)
    return f"{type(err).__name__}: {cause or (lines[0] if lines else '')}"[:300]


def job(index: int, spec: dict, barrier, results) -> None:
    """One job: log a run the way training.py does; put its timings and errors on ``results``."""
    out = {"job": index, "run_id": None, "times": defaultdict(list), "errors": []}
    try:
        # MLflow's own console output (a database error is a screenful) goes to the job's file, not the table's.
        with open(Path(spec["logs"]) / f"job-{index:03d}.log", "w") as log:
            os.dup2(log.fileno(), 2)
        from omegaconf import OmegaConf

        from sweeplab import tracking

        errors = _ErrorCounter()  # what MLflow's logging thread drops (raised errors are counted by call())
        logging.getLogger("mlflow.utils.async_logging").addHandler(errors)
        files = Path(spec["files"])

        def call(kind, fn, *args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                out["errors"].append((kind, _line(err)))
                return None
            finally:
                out["times"][kind].append((time.perf_counter() - start) * 1000)

        barrier.wait(timeout=spec["timeout"])
        cfg = OmegaConf.create({"uri": spec["uri"], "store_dir": spec["store_dir"], "experiment": spec["experiment"]})
        experiment_id = call("setup", tracking.setup, cfg)
        if experiment_id is None:
            return
        tags = {"sweeplab.sweep": spec["sweep"], "sweeplab.load.job": str(index), "sweeplab.seed": str(index)}
        runner = tracking.open_run(experiment_id, f"load-{index:03d}", tags=tags)
        run_id = call("start", runner.__enter__)
        if run_id is None:
            return
        out["run_id"] = run_id
        call("params", tracking.log_params, params_like_a_config(index))
        call("tags", tracking.set_tags, {"sweeplab.data.train_sha256": "0" * 64, "sweeplab.checkpoint_dir": "/ck"})
        call("artifact", tracking.log_text, (files / "config.yaml").read_text(), "config/config.yaml")
        logger, trainer = tracking.MlflowLogger(run_id), _FakeTrainer(spec["epochs"])
        for epoch in range(1, spec["epochs"] + 1):
            if spec["epoch_seconds"]:
                time.sleep(spec["epoch_seconds"])  # the epoch's training
            metrics = epoch_metrics(epoch, index)
            if spec["mode"] == "async":
                call("epoch", logger.on_epoch_end, trainer, {"epoch": epoch, **metrics})
            else:
                call("epoch", tracking.log_metrics, metrics, step=epoch, run_id=run_id)
        if spec["mode"] == "async":
            call("fit_end", logger.on_fit_end, trainer)  # flush the queue, then the summary
        else:
            call("fit_end", tracking.log_metrics, trainer.summary(), run_id=run_id)
        call("artifact", tracking.log_files, [files / "curves.png"], "plots")
        call("artifact", tracking.log_files, [files / "train.log"], "logs")
        call("end", runner.__exit__, None, None, None)  # flush, end_run(FINISHED)
        out["errors"] += [("async write", message) for message in errors.messages]
    except BaseException as err:  # the job itself broke: counted, never silent
        out["errors"].append(("job", _line(err) + " | " + traceback.format_exc(limit=3).splitlines()[-1][:200]))
    finally:
        out["times"] = dict(out["times"])
        results.put(out)


def _noop() -> None:
    pass


def _start_forkserver(ctx) -> None:
    proc = ctx.Process(target=_noop)
    proc.start()
    proc.join()


# -- the stores ---------------------------------------------------------------------------------
def _tests_on_path() -> None:
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))


@contextmanager
def backend_store(name: str, base: Path, workers: int, env: dict | None = None):
    """Yield the tracking URI for ``name`` (None: the SQLite default in a store folder per round)."""
    if name == "sqlite":
        yield None
        return
    _tests_on_path()
    from servers import mlflow_server

    with ExitStack() as stack:
        if name == "postgres":
            try:
                from servers import start_postgres  # a private cluster on 127.0.0.1, as the tests run it
            except ImportError as err:
                raise RuntimeError(f"no PostgreSQL helper (tests/servers.py): {err}") from None

            pg_uri, pg_stop = start_postgres()
            stack.callback(pg_stop)
            backend = pg_uri
        else:
            backend = f"sqlite:///{base / 'server-sqlite' / 'mlflow.db'}"
        start = time.monotonic()
        uri = stack.enter_context(mlflow_server(backend, base / f"server-{name}", workers=workers, env=env))
        settings = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        up = time.monotonic() - start
        print(f"# {name}: mlflow server --workers {workers} {settings} up in {up:.1f} s at {uri}", flush=True)
        yield uri


def fresh_sqlite_store(store_dir: Path, base: Path) -> None:
    """An empty SQLite store in ``store_dir``: a copy of one migrated once (MLflow takes ~10 s to
    create and migrate its tables; the copy is the same database, as tests/support.py does)."""
    template = base / "template" / "mlflow.db"
    if not template.exists():
        from mlflow.tracking import MlflowClient

        template.parent.mkdir(parents=True)
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()  # creates the tables
    store_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, store_dir / "mlflow.db")


def write_files(folder: Path) -> Path:
    """The artifacts each job uploads: a config YAML (~3 KB), a PNG (~13 KB), a console log (~20 KB)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{k}: {v}" for k, v in params_like_a_config(0).items()]
    (folder / "config.yaml").write_text("\n".join(lines) + "\n")
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "curves.png")
    log = [
        f"[2026-11-27 12:00:{i % 60:02d}][sweeplab.engine][INFO] - epoch {i}: train_loss 0.{i:04d}" for i in range(300)
    ]
    (folder / "train.log").write_text("\n".join(log) + "\n")
    return folder


# -- one round: N jobs on one store -------------------------------------------------------------
def run_round(ctx, backend: str, uri: str | None, mode: str, n: int, args, base: Path) -> dict:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from sweeplab import tracking

    experiment = f"load-{backend}-{mode}-{n}"
    store_dir = base / "stores" / experiment
    spec = {
        "uri": uri,
        "store_dir": str(store_dir),
        "experiment": experiment,
        "sweep": experiment,
        "epochs": args.epochs,
        "epoch_seconds": args.epoch_seconds,
        "mode": mode,
        "files": str(base / "files"),
        "timeout": args.timeout,
        "logs": str(base / "logs" / experiment),
    }
    Path(spec["logs"]).mkdir(parents=True, exist_ok=True)
    # The experiment (and a fresh SQLite store) made the project's way, before the jobs start.
    if uri is None:
        fresh_sqlite_store(store_dir, base)
    tracking.setup(OmegaConf.create({"uri": uri, "store_dir": str(store_dir), "experiment": experiment}))
    store = uri or tracking.store_uri(OmegaConf.create({"uri": None, "store_dir": str(store_dir)}))

    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=job, args=(i, spec, barrier, results), daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    broken = []
    try:
        barrier.wait(timeout=args.timeout)
    except Exception as err:  # a job died before the barrier
        broken.append(("barrier", f"the jobs did not all start: {_line(err)}"))
    start = time.perf_counter()
    outs, deadline = [], time.monotonic() + args.timeout
    while len(outs) < n and time.monotonic() < deadline:
        try:
            outs.append(results.get(timeout=5))
        except Exception:
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    wall = time.perf_counter() - start
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    missing = n - len(outs)
    broken += [("job", "died or timed out without a result")] * missing

    # What the store holds.
    checked = time.perf_counter()
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    not_finished = [r.info.status for r in runs if r.info.status != "FINISHED"]

    def count(r) -> tuple[int, int, int]:
        """(metric points stored, params lost, artifacts lost) of one run."""
        points = sum(len(client.get_metric_history(r.info.run_id, key)) for key in (*METRICS, *SUMMARY))
        repo = get_artifact_repository(r.info.artifact_uri)  # the run's own files (the client also asks for models)
        have = {f.path for d in ("config", "plots", "logs") for f in repo.list_artifacts(d)}
        return points, max(0, N_PARAMS - len(r.data.params)), len(ARTIFACTS - have)

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(count, runs))
    stored = sum(c[0] for c in counts)
    params_lost = sum(c[1] for c in counts)
    artifacts_lost = sum(c[2] for c in counts)
    expected = n * (args.epochs * len(METRICS) + len(SUMMARY))
    errors = [e for o in outs for e in o["errors"]] + broken
    errors += [("status", f"run {status}, not FINISHED") for status in not_finished]
    errors += [("runs", "run missing from the store")] * max(0, n - len(runs))
    times = defaultdict(list)
    for o in outs:
        for kind, values in o["times"].items():
            times[kind] += values
    return {
        "backend": backend,
        "mode": mode,
        "n": n,
        "runs": len(runs),
        "finished": len(runs) - len(not_finished),
        "errors": errors,
        "error_count": len(errors),
        "expected": expected,
        "stored": stored,
        "lost": expected - stored,
        "lost_params": params_lost + N_PARAMS * max(0, n - len(runs)),
        "lost_artifacts": artifacts_lost + len(ARTIFACTS) * max(0, n - len(runs)),
        "wall_s": wall,
        "check_s": time.perf_counter() - checked,
        "times": dict(times),
    }


# -- report -------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """The q-th percentile, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def fmt_ms(values: list[float]) -> str:
    return f"{pct(values, 50):.1f} / {pct(values, 99):.1f}" if values else "-"


def print_tables(rows: list[dict]) -> None:
    print()
    print("| backend | mode | N | runs FINISHED | errors | metric points logged | lost | lost params / artifacts "
          "| wall s | epoch call p50 / p99 ms | log calls p50 / p99 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        every = [v for kind, vs in r["times"].items() if kind != "setup" for v in vs]
        print(
            f"| {r['backend']} | {r['mode']} | {r['n']} | {r['finished']}/{r['n']} | {r['error_count']} "
            f"| {r['expected']:,} | {r['lost']:,} | {r['lost_params']} / {r['lost_artifacts']} | {r['wall_s']:.1f} "
            f"| {fmt_ms(r['times'].get('epoch', []))} | {fmt_ms(every)} |"
        )
    print()
    print("p50 / p99 ms per call type (setup: tracking.setup; start/end: the run's start and end, end with the")
    print("flush; fit_end: MlflowLogger.on_fit_end = flush + summary, or the summary alone in sync mode; artifact:")
    print("each of the 3 files; epoch: one epoch's 10 metrics):")
    print()
    print("| backend | mode | N | " + " | ".join(CALLS) + " |")
    print("|---|---|---|" + "---|" * len(CALLS))
    for r in rows:
        cells = " | ".join(fmt_ms(r["times"].get(kind, [])) for kind in CALLS)
        print(f"| {r['backend']} | {r['mode']} | {r['n']} | {cells} |")
    failed = [r for r in rows if r["errors"]]
    for r in failed:
        counts: dict[tuple, int] = defaultdict(int)
        for kind, message in r["errors"]:
            counts[(kind, message)] += 1
        print(f"\nerrors, {r['backend']} {r['mode']} N={r['n']}:")
        for (kind, message), count in sorted(counts.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {count} x {kind}: {message}")
    print()


def code_state() -> str:
    """The commit measured, and whether the tracking package (what the jobs run) differs from it."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    try:
        commit, changed = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "src/sweeplab/tracking")
    except OSError:
        return "sweeplab (no git)"
    return f"sweeplab {commit or '?'}" + (" with the tracking package changed" if changed else "")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", default="4,16,64", help="concurrent jobs per round, comma-separated (default 4,16,64)")
    parser.add_argument("--backends", default="sqlite,postgres", help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--modes", default="async", help="async (sweeplab's MlflowLogger), sync, or both: async,sync")
    parser.add_argument("--epochs", type=int, default=50, help="epochs per job, 10 metrics each (default 50)")
    parser.add_argument(
        "--epoch-seconds", type=float, default=0.1, help="pause between epochs, the training (default 0.1)"
    )
    parser.add_argument("--server-workers", type=int, default=2, help="mlflow server --workers (default 2)")
    parser.add_argument(
        "--no-telemetry",
        action="store_true",
        help="MLFLOW_DISABLE_TELEMETRY=true in the jobs (MLflow's telemetry thread races the jobs' requests)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the stores and server logs (the folder is printed)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the mlflow server (repeatable), e.g.\n"
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=40 (SQLAlchemy's default pool: 5 + 10 overflow per worker)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a round may take (default 1800)")
    args = parser.parse_args(argv)
    args.n = [int(x) for x in args.n.split(",") if x]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.backends = ["postgres" if b in ("postgresql", "pg") else b for b in args.backends]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any("=" not in kv for kv in args.server_env):
        parser.error("--server-env takes KEY=VALUE")
    args.server_env = dict(kv.split("=", 1) for kv in args.server_env)
    for b in args.backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r} (use {', '.join(BACKENDS)})")
    for m in args.modes:
        if m not in ("async", "sync"):
            parser.error(f"unknown mode {m!r} (use async, sync)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.no_telemetry:  # before MLflow's import starts its telemetry client (here and in the forkserver)
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    print(
        f"# load benchmark {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {code_state()}, {platform.node()}: "
        f"{os.cpu_count()} cores, "
        f"Python {platform.python_version()}, MLflow {mlflow.__version__}; epochs {args.epochs} x {len(METRICS)} "
        f"metrics, {args.epoch_seconds:g} s apart; {N_PARAMS} params; modes {','.join(args.modes)}; "
        f"telemetry {'off' if args.no_telemetry else 'on'}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(WARM_IMPORTS))  # imported once, shared by every job
    # The forkserver imports those (~10 s) while this process makes the stores.
    warming = threading.Thread(target=_start_forkserver, args=(ctx,), daemon=True)
    warming.start()
    base = Path(tempfile.mkdtemp(prefix="sweeplab-load-"))
    rows, unavailable, began = [], [], time.monotonic()
    try:
        write_files(base / "files")
        if "sqlite" in args.backends:
            fresh_sqlite_store(base / "stores" / "first", base)
        warming.join()
        for backend in args.backends:
            try:
                with backend_store(backend, base, args.server_workers, args.server_env) as uri:
                    for mode in args.modes:
                        for n in args.n:
                            row = run_round(ctx, backend, uri, mode, n, args, base)
                            rows.append(row)
                            print(
                                f"# {backend} {mode} N={n}: {row['wall_s']:.1f} s, {row['error_count']} errors, "
                                f"{row['lost']} metric points lost (counted in {row['check_s']:.1f} s; "
                                f"{time.monotonic() - began:.0f} s since the start)",
                                flush=True,
                            )
            except RuntimeError as err:  # PostgreSQL or the server could not be started
                unavailable.append(f"{backend}: {str(err).splitlines()[0]}")
                print(f"# {backend} not measured: {str(err).splitlines()[0]}", flush=True)
    finally:
        if args.keep:
            print(f"# stores, server logs and the jobs' console logs (logs/) kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print_tables(rows)
    bad = [r for r in rows if r["error_count"] or r["lost"] or r["lost_params"] or r["lost_artifacts"]]
    if bad or unavailable:
        print("FAILED: " + "; ".join([f"{r['backend']} {r['mode']} N={r['n']}" for r in bad] + unavailable))
        return 1
    print(f"OK: no errors, nothing lost ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
