"""sweeplab: Hydra-driven experiment sweeps for image classifiers, logged to MLflow."""

import os

# MLflow 3.17's usage telemetry, without internet, can fail a job's first request to a tracking server
# (its thread removes an environment variable while requests reads it): off unless the user says otherwise.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from sweeplab import paths  # noqa: E402

paths.register_resolvers()  # ${sweeplab_root:}
