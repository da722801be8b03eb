"""The one door to MLflow: no other module of the project imports mlflow. The rest speaks to it in
plain values (run ids, dicts, paths, figures) and ``Run`` records, through the names below.

One module per job: ``store`` (where records go, checked before any run), ``lifecycle`` (a run opened
and ended with its status), ``secrets`` (kept out of everything logged), ``logger`` (params, metrics,
files, figures; the engine's epoch callback), ``search`` (finding runs), ``artifacts`` (a run's
files and saved config), ``provenance`` (config, git, versions, data sets: a run's start recorded in
one call), ``models`` (logged models and the registry) and ``configurations`` (the one best-run
choice: runs grouped by what they vary but the seed, ranked by mean); ``records`` holds the tag names
and the plain records the rest of the project hands over (``Run``, ``RunStart``, ``DataInput``)."""

from sweeplab.tracking.artifacts import artifact_names, download, saved_config
from sweeplab.tracking.configurations import Configuration, choose_best, configuration_of, configurations
from sweeplab.tracking.lifecycle import create_run, end_run, open_run
from sweeplab.tracking.logger import (
    MlflowLogger,
    log_figure,
    log_files,
    log_folder,
    log_metrics,
    log_params,
    log_series,
    log_text,
    set_tags,
)
from sweeplab.tracking.models import (
    load_model,
    log_model,
    model_alias,
    model_needs,
    model_run,
    model_uri,
    pinned_requirements,
    register_best,
)
from sweeplab.tracking.provenance import environment, flatten, git_state, log_dataset, record_start, tags_for
from sweeplab.tracking.records import (
    BEST_ALIAS,
    CONFIGURATION_TAG,
    FAILURE_TAG,
    KIND_TAG,
    MODEL_NAME,
    NOTE_TAG,
    PARENT_TAG,
    SEED_TAG,
    SWEEP_TAG,
    DataInput,
    Run,
    RunStart,
)
from sweeplab.tracking.search import (
    all_runs,
    best_run,
    get_run,
    has_runs,
    latest_sweep,
    metric_history,
    metric_steps,
    sweep_parent,
    sweep_runs,
)
from sweeplab.tracking.secrets import masked_config, protect
from sweeplab.tracking.store import (
    check_reachable,
    find_experiment,
    open_store,
    safe_uri,
    setup,
    store_uri,
    tracking_uri,
    use_store,
)

__all__ = [
    "BEST_ALIAS",
    "CONFIGURATION_TAG",
    "FAILURE_TAG",
    "KIND_TAG",
    "MODEL_NAME",
    "NOTE_TAG",
    "PARENT_TAG",
    "SEED_TAG",
    "SWEEP_TAG",
    "DataInput",
    "Configuration",
    "MlflowLogger",
    "Run",
    "RunStart",
    "all_runs",
    "artifact_names",
    "best_run",
    "check_reachable",
    "choose_best",
    "configuration_of",
    "configurations",
    "create_run",
    "download",
    "end_run",
    "environment",
    "find_experiment",
    "flatten",
    "get_run",
    "git_state",
    "has_runs",
    "latest_sweep",
    "load_model",
    "log_dataset",
    "log_figure",
    "log_files",
    "log_folder",
    "log_metrics",
    "log_params",
    "log_series",
    "log_model",
    "log_text",
    "masked_config",
    "metric_history",
    "metric_steps",
    "model_alias",
    "model_needs",
    "model_run",
    "model_uri",
    "open_run",
    "open_store",
    "pinned_requirements",
    "protect",
    "record_start",
    "register_best",
    "safe_uri",
    "saved_config",
    "set_tags",
    "setup",
    "store_uri",
    "sweep_parent",
    "sweep_runs",
    "tags_for",
    "tracking_uri",
    "use_store",
]
