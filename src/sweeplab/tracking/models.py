"""Models: a run's best weights logged as an MLflow model, found and loaded again, and the Model Registry."""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient

from sweeplab.errors import ConfigError
from sweeplab.paths import repo_root
from sweeplab.tracking.records import BEST_ALIAS, CONFIGURATION_TAG, MODEL_NAME, SEED_TAG, Run
from sweeplab.tracking.search import get_run
from sweeplab.tracking.store import quiet

PINNED = ("torch", "torchvision", "numpy", "cloudpickle", "mlflow")  # what loading a logged model needs


def pinned_requirements(names=PINNED) -> list[str]:
    """``name==version`` for each package a logged model needs, from the project's requirements.lock
    (the versions it is tested with), else from what is installed."""
    from importlib.metadata import PackageNotFoundError, version

    pins = {}
    lock = repo_root() / "requirements.lock"
    if lock.is_file():
        for line in lock.read_text().splitlines():
            name, sep, pinned = line.split("#")[0].strip().partition("==")
            if sep:
                pins[name.lower()] = pinned.strip()
    out = []
    for name in names:
        try:
            out.append(f"{name}=={pins.get(name) or version(name)}")
        except PackageNotFoundError:
            continue
    return out


def log_model(model, input_example, name: str = MODEL_NAME) -> str:
    """``model`` (a torch module) as an MLflow model of the active run, in the pytorch flavour with
    a signature and ``input_example`` (numpy); returns its URI (``models:/m-...``). Loading it
    needs this package installed (the model's classes are pickled by reference)."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.inference_mode():
        output = model(torch.as_tensor(input_example)).cpu().numpy()
    with quiet():  # pickle-format models warn that unpickling runs code
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            signature=infer_signature(input_example, output),
            input_example=input_example,
            pip_requirements=pinned_requirements(),
            serialization_format="pickle",  # the default (pt2) would load back as a GraphModule, not our class
        )
    return info.model_uri


def model_uri(run_id: str, name: str = MODEL_NAME) -> str | None:
    """The URI of the model a run logged under ``name`` (the newest one), or None."""
    found = mlflow.search_logged_models(
        experiment_ids=[get_run(run_id).experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=1,
        output_format="list",
    )
    return f"models:/{found[0].model_id}" if found else None


def model_run(uri: str) -> Run:
    """The run that logged the model at ``uri`` (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``models:/m-...`` or ``runs:/<run id>/...``); ConfigError when there is none."""
    try:
        with quiet():
            run_id = get_model_info(uri).run_id
    except Exception as err:  # MlflowException, or an OSError for a runs:/ path that holds no model
        raise ConfigError(f"model {uri}: {str(err).strip().splitlines()[0] if str(err).strip() else err}") from None
    if not run_id:
        raise ConfigError(f"model {uri} was not logged by a run")
    return get_run(run_id)


def load_model(uri: str, device: str = "cpu"):
    """The torch module logged at ``uri`` (ConfigError naming the URI when it cannot be loaded)."""
    import mlflow.pytorch

    try:
        with quiet():
            return mlflow.pytorch.load_model(uri, map_location=device)
    except Exception as err:  # a missing, truncated or foreign model file
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load the model {uri}: {text}") from None


def register_best(model_name: str, run: Run, metric: str, direction: str = "max") -> tuple[int, bool]:
    """Register ``run``'s model as a new version of ``model_name`` (tagged with its ``metric``, its
    configuration and its seed); move the alias ``best`` to it only when its ``metric`` beats the
    version that holds the alias now. Returns (version, alias moved)."""
    uri = model_uri(run.run_id)
    if uri is None:
        raise ConfigError(f"run {run.run_id} logged no model to register")
    client = MlflowClient()
    value = run.metrics.get(metric)
    with quiet():
        tags = {metric: str(value), **{k: run.tags[k] for k in (CONFIGURATION_TAG, SEED_TAG) if k in run.tags}}
        version = mlflow.register_model(uri, model_name, tags=tags).version
    try:
        holder = client.get_model_version_by_alias(model_name, BEST_ALIAS)
        held = client.get_run(holder.run_id).data.metrics.get(metric)
    except MlflowException:  # no alias yet
        held = None
    better = held is None or (value is not None and (value > held if direction == "max" else value < held))
    if better:
        client.set_registered_model_alias(model_name, BEST_ALIAS, version)
    return int(version), better


def model_alias(model_name: str, alias: str = BEST_ALIAS) -> tuple[int, str] | None:
    """(version, run id) that holds ``alias`` of ``model_name``, or None."""
    try:
        version = MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return int(version.version), version.run_id
