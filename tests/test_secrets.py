"""No secret reaches MLflow or a log: a password in the tracking URI (and a key marked secret) is
masked in params, tags, saved configs, overrides and logs, against a real MLflow server with its own
authentication (tests/servers.py), which refuses a run without credentials in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from sweeplab import tracking

from apps import run_app
from servers import auth_server
from support import TINY

pytestmark = pytest.mark.slow
PASSWORD = "Alice-s3cret-pw-0123"
TOKEN = "tok-9f8e7d6c5b4a"
RUN = [*TINY, "data.train_limit=100", "data.test_limit=50", "trainer.epochs=1"]


def everything_logged(client: MlflowClient, run, tmp: Path) -> str:
    """A run's params, tags and every artifact's text, as one string."""
    parts = [repr(run.data.params), repr(run.data.tags), run.info.run_name]
    folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp)))
    parts += [p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and p.suffix != ".png"]
    return "\n".join(parts)


def test_credentials_in_a_uri_and_secret_keys_appear_nowhere(tmp_path, tiny_npz, monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    local = [f"paths.log_dir={tmp_path / 'outputs'}", f"paths.checkpoint_dir={tmp_path / 'ck'}", f"data.npz={tiny_npz}"]
    with auth_server(tmp_path / "server") as (uri, admin, admin_password):
        created = requests.post(
            f"{uri}/api/2.0/mlflow/users/create",
            auth=(admin, admin_password),
            json={"username": "alice", "password": PASSWORD},
            timeout=30,
        )
        assert created.status_code == 200, created.text

        anonymous = run_app("train.py", *RUN, *local, f"tracking.uri={uri}")
        assert anonymous.returncode == 2, anonymous.stderr[-2000:]
        (line,) = [x for x in anonymous.stderr.splitlines() if x.strip()][-1:]
        assert line.startswith("error: MLflow store") and "MLFLOW_TRACKING_USERNAME" in line

        with_password = uri.replace("http://", f"http://alice:{PASSWORD}@")
        done = run_app(
            "train.py",
            *RUN,
            *local,
            f"tracking.uri={with_password}",
            f"+data.token={TOKEN}",
            "tracking.secret_keys=[data.token]",
            "tracking.run_name=alice",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert PASSWORD not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
        assert run.info.status == "FINISHED" and run.data.params["tracking.uri"] == f"http://alice:***@{uri[7:]}"
        logged = everything_logged(client, run, tmp_path / "download")
        assert "Test set: Average loss" in logged  # the console log is there ...
        assert PASSWORD not in logged and TOKEN not in logged  # ... and no secret anywhere
        saved = client.download_artifacts(run.info.run_id, "config/config.yaml", str(tmp_path / "saved"))
        assert "${oc.env:SWEEPLAB_SECRET_DATA_TOKEN}" in Path(saved).read_text()  # reruns read it again
        local_files = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "outputs").rglob("*") if p.is_file())
        assert PASSWORD not in local_files and TOKEN not in local_files  # Hydra's own record of the job too

        # The documented way: credentials from the environment, none in the URI; the store takes writes.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        experiment_id = tracking.setup(OmegaConf.create({"uri": uri, "store_dir": "", "experiment": "from-env"}))
        with tracking.open_run(experiment_id, "alice-from-env") as run_id:
            tracking.log_metrics({"x": 1.0})
        assert client.get_run(run_id).info.status == "FINISHED"
