"""Models: a run's best weights logged as an MLflow model, found and loaded again, and the Model Registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient

from sweeplab.errors import ConfigError, first_line
from sweeplab.paths import repo_root
from sweeplab.tracking.records import BEST_ALIAS, CONFIGURATION_TAG, MODEL_NAME, SEED_TAG, Run
from sweeplab.tracking.search import get_run
from sweeplab.tracking.store import quiet

# What loading and serving any logged model needs; the model's own classes may add torchvision (or
# another installed package). Nothing of the training stack: no Hydra, OmegaConf, grad-cam, lr-finder.
NEEDED = ("mlflow", "torch", "numpy", "pandas", "cloudpickle")
TRAVELS = "sweeplab_model"  # the package every logged model carries (see its docstring)


def pinned_requirements(names=NEEDED) -> list[str]:
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
            out.append(f"{name}=={pins.get(name.lower()) or version(name)}")
        except PackageNotFoundError:
            continue
    return out


def model_needs(model) -> tuple[list[str], list[str]]:
    """What loading ``model`` needs besides NEEDED: (code to bundle with it, packages to install).

    Its pickle names the module of each of its classes. sweeplab_model travels with every model; a
    class from an installed package (torchvision, timm, ...) makes that package a requirement; a class
    from a module that is not installed (a user's own file) has that module bundled too. A class of
    sweeplab itself cannot travel (sweeplab imports Hydra, MLflow's tracking, ...): a bug, said loudly."""
    import sys
    from importlib.metadata import packages_distributions

    import sweeplab_model

    code, packages = [Path(sweeplab_model.__file__).parent], []
    installed = packages_distributions()
    for top in sorted({type(m).__module__.split(".")[0] for m in model.modules()} - {TRAVELS, "torch"}):
        if top in ("sweeplab", "__main__"):
            raise ValueError(f"the model holds a class of {top!r}, which cannot travel with it; define it in {TRAVELS}")
        if top in installed:
            packages += [d for d in installed[top] if d not in packages]
        else:
            module = Path(sys.modules[top].__file__)
            code.append(module.parent if module.name == "__init__.py" else module)
    return [str(c) for c in code], packages


def log_model(model, input_example, name: str = MODEL_NAME) -> str:
    """``model`` (a sweeplab_model Classifier) as an MLflow model of the active run; returns its URI
    (``models:/m-...``). ``mlflow.pytorch.load_model`` gives the Classifier back and
    ``mlflow.pyfunc.load_model`` (and ``mlflow models serve``) answers class names and probabilities,
    both without sweeplab: the code the model needs is bundled with it (``code_paths``), its
    requirements are only what loading it needs, and its signature and ``input_example`` (numpy uint8
    images) show what goes in and what comes out."""
    from mlflow.models import Model, infer_signature

    from sweeplab_model.pyfunc import Predictor

    code, packages = model_needs(model)
    output = Predictor(model).predict(input_example)  # the pyfunc's own answer, for the signature
    with quiet():  # pickle-format models warn that unpickling runs code
        info = Model.log(
            artifact_path=None,  # deprecated for name=, and still a required argument
            name=name,
            flavor=_ClassifierFlavor,
            pytorch_model=model,
            code_paths=code,
            signature=infer_signature(input_example, output),
            input_example=input_example,
            pip_requirements=pinned_requirements([*NEEDED, *packages]),
            serialization_format="pickle",  # the default (pt2) would load back as a GraphModule, not our class
        )
    return info.model_uri


class _ClassifierFlavor:
    """The flavour module ``Model.log`` saves a Classifier with: MLflow's pytorch flavour as it is
    (so ``mlflow.pytorch.load_model`` works), with the pyfunc's loader set to sweeplab_model.pyfunc,
    which names the classes and gives their probabilities (the pytorch flavour's own pyfunc answers a
    bare array)."""

    __name__ = "mlflow.pytorch"  # the logged model's flavour, as the UI shows it

    @staticmethod
    def save_model(path, mlflow_model, **kwargs) -> None:
        import mlflow.pyfunc
        import mlflow.pytorch

        mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        spec = mlflow_model.flavors["python_function"]
        mlflow.pyfunc.add_to_model(
            mlflow_model,
            loader_module=f"{TRAVELS}.pyfunc",
            data=spec["data"],
            code=spec["code"],
            conda_env=spec["env"]["conda"],
            python_env=spec["env"]["virtualenv"],
            model_config={"device": None},
        )
        mlflow_model.save(str(Path(path) / "MLmodel"))


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
        raise ConfigError(f"model {uri}: {first_line(err)}") from None
    if not run_id:
        raise ConfigError(f"model {uri} was not logged by a run")
    return get_run(run_id)


def load_model(uri: str, device: str = "cpu"):
    """The torch module logged at ``uri`` (a Classifier; ConfigError naming the URI when it cannot be loaded)."""
    import mlflow.pytorch

    try:
        with quiet():
            return mlflow.pytorch.load_model(uri, map_location=device)
    except Exception as err:  # a missing, truncated or foreign model file
        raise ConfigError(f"cannot load the model {uri}: {first_line(err)}") from None


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
