"""The one private MLflow call the project makes (tracking.store.mlflow_schema_scripts: MLflow has no
public API for the schema revisions it knows), held to what the store check relies on, so that an
MLflow upgrade that moves or changes it fails here, by name, instead of letting every store pass."""

from __future__ import annotations

import sqlite3

import pytest

from sweeplab.tracking.store import mlflow_schema_scripts

from support import new_store


def test_mlflow_schema_scripts_know_the_schema_this_mlflow_writes(tmp_path):
    db = new_store(tmp_path / "mlruns") / "mlflow.db"  # created and migrated by this MLflow
    with sqlite3.connect(db) as con:
        (written,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    scripts = mlflow_schema_scripts(f"sqlite:///{db}")
    assert scripts.get_current_head() == written
    assert scripts.get_revision(written).revision == written
    with pytest.raises(Exception, match="ffffffffffff"):  # what the store check reports as "newer"
        scripts.get_revision("ffffffffffff")
