"""Adapter over pytorch-grad-cam: the best run of a sweep (or a run, or a registered model) -> the
MLflow model that run logged and its saved config -> its test data rebuilt as it was trained ->
GradCAM++ on its misclassified test images -> figures, saved locally and logged back to the run."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sweeplab import job, plots, tracking
from sweeplab.checks import cam_target, check_explain
from sweeplab.data import DeviceLoader, from_config
from sweeplab.device import resolve_device
from sweeplab.engine import evaluate
from sweeplab.errors import ConfigError
from sweeplab_model import Classifier

log = logging.getLogger(__name__)

ARTIFACT_DIR = "explain"
FILES = {
    "grid": "misclassified_grid.png",
    "pairs": "misclassified_heatmaps.png",
    "confusion": "confusion_matrix.png",
    "cams": "cams.npz",
    "summary": "summary.json",
}
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class ExplainError(ConfigError):
    """Something explain.py cannot work with: reported as one line."""


class NothingToExplain(ExplainError):
    """The model classifies every test image correctly."""


# -- options ------------------------------------------------------------------------------------
def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower().replace("++", "plusplus"))


def cam_methods() -> dict[str, type]:
    """pytorch-grad-cam's CAM classes by normalized name: gradcamplusplus, gradcam, eigencam, ..."""
    import pytorch_grad_cam
    from pytorch_grad_cam.base_cam import BaseCAM

    return {
        _key(name): cls
        for name, cls in vars(pytorch_grad_cam).items()
        if isinstance(cls, type) and issubclass(cls, BaseCAM) and cls is not BaseCAM
    }


def method_names() -> list[str]:
    return sorted("gradcam++" if k == "gradcamplusplus" else k for k in cam_methods())


def cam_method(name: str) -> type:
    methods = cam_methods()
    if _key(name) not in methods:
        raise ExplainError(f"method={name!r} is not a pytorch-grad-cam method; use one of {', '.join(method_names())}")
    return methods[_key(name)]


# -- which run ----------------------------------------------------------------------------------
def pick_run(cfg: DictConfig) -> tracking.Run:
    """The run behind ``model_uri``, else ``run_id``, else the best FINISHED run of the chosen sweep
    by ``metric``."""
    tracking.protect(cfg)
    experiment_id = tracking.find_experiment(cfg.tracking)
    if cfg.model_uri:
        return tracking.model_run(str(cfg.model_uri))
    if cfg.run_id:
        return tracking.get_run(str(cfg.run_id))
    if experiment_id is None or not tracking.has_runs(experiment_id):
        raise ExplainError(
            f"no runs in experiment {cfg.tracking.experiment!r} of the MLflow store {tracking.tracking_uri()}; "
            f"train some first (python train.py -m ...) or point tracking.store_dir at the store"
        )
    sweep = str(cfg.sweep) if cfg.sweep is not None else "all"
    if sweep == "latest":
        sweep = tracking.latest_sweep(experiment_id) or "all"
        log.info(f"latest sweep: {sweep}" if sweep != "all" else "no sweeps in the store: choosing among all runs")
    sweep_id = None if sweep == "all" else sweep
    if sweep_id and not tracking.sweep_runs(experiment_id, sweep_id):
        raise ExplainError(f"no runs of sweep {sweep_id} in experiment {cfg.tracking.experiment!r}")
    run = tracking.best_run(experiment_id, str(cfg.metric), cfg.direction, sweep_id)
    if run is None:
        where = f"sweep {sweep_id}" if sweep_id else f"experiment {cfg.tracking.experiment!r}"
        raise ExplainError(f"no FINISHED run of {where} records the metric {cfg.metric!r}")
    return run


def load_classifier(cfg: DictConfig, run: tracking.Run, device: torch.device) -> Classifier:
    """The run's MLflow model (``model_uri``, or the one the run logged), as trained."""
    uri = str(cfg.model_uri) if cfg.model_uri else tracking.model_uri(run.run_id)
    if uri is None:
        raise ExplainError(f"run {run.run_id} ({run.name}) logged no model (it ended before its first epoch?)")
    classifier = tracking.load_model(uri, str(device))
    if not isinstance(classifier, Classifier):
        raise ExplainError(f"the model {uri} is a {type(classifier).__name__}, not a sweeplab Classifier")
    return classifier.to(device).eval()


# -- the model as it was trained ----------------------------------------------------------------
def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """``layerN`` -> that stage's last block; ``stem`` -> the stem's batch norm; else a module path."""
    name = str(name)
    match = re.fullmatch(r"(\w+)\[(-?\d+)\]", name)  # layer4[-1]
    if match:
        name = f"{match[1]}.{int(match[2]) % len(getattr(model, match[1], [None]))}"
    if name == "stem" and hasattr(model, "bn1"):
        return model.bn1
    stage = getattr(model, name, None) if "." not in name else None
    if isinstance(stage, nn.Sequential) and len(stage):
        return stage[-1]
    try:
        module = model.get_submodule(name)
        if module is not model:
            return module
    except AttributeError:
        pass
    valid = [
        s
        for s in STAGES
        if (s == "stem" and hasattr(model, "bn1")) or isinstance(getattr(model, s, None), nn.Sequential)
    ] or [n for n, m in model.named_children() if isinstance(m, nn.Sequential) and len(m)]  # torchvision's
    raise ExplainError(
        f"target_layer={name!r} is not a layer of {type(model).__name__}; use one of "
        f"{', '.join(valid)} (a stage's last block) or a module path such as layer4.1.conv2"
    )


def load_test_set(saved: DictConfig, where: DictConfig):
    """The saved run's data (its test split, class names and normalization), read as training read it:
    CIFAR-10/100 or an image folder (from its cache while the folder is unchanged). ``where`` (the
    command's data.npz / data.root / data.path) says where the data lives now."""
    data = saved.data
    for key in ("npz", "root", "path"):
        if where.get(key) and key in data:
            data[key] = str(where[key])
    if where.get("root") and not where.get("npz") and "npz" in data:
        data.npz = None
    try:
        resolved = OmegaConf.to_container(data, resolve=True)
    except Exception as err:  # an interpolation that no longer resolves here
        raise ExplainError(
            f"the run's data config does not resolve here ({str(err).splitlines()[0]}); "
            f"set data.npz=..., data.root=... or data.path=..."
        ) from None
    # The training split only matters for statistics the data computes itself (an image folder caches its own).
    few = data.mean is not None or data.get("name") == "image_folder"
    resolved.update(val_split=0, **({"train_limit": 1} if few else {}))
    dataset = from_config(OmegaConf.create(resolved))
    if data.num_classes is not None and dataset.num_classes != int(data.num_classes):
        raise ExplainError(f"the data has {dataset.num_classes} classes but the run was trained on {data.num_classes}")
    return dataset


# -- the explanation ----------------------------------------------------------------------------
@dataclass
class Explanation:
    run_id: str
    out_dir: Path
    files: dict[str, Path]
    misclassified: int
    total: int
    test_acc: float


def compute_cams(
    model: nn.Module, layer: nn.Module, method: type, x: torch.Tensor, targets: list[int], chunk: int = 64
) -> np.ndarray:
    """(N, H, W) heat maps in [0, 1], one per image, for the class ``targets[i]``."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps = []
    with method(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(x), chunk):
            outputs = [ClassifierOutputTarget(int(t)) for t in targets[start : start + chunk]]
            maps.append(cam(input_tensor=x[start : start + chunk], targets=outputs))
    return np.concatenate(maps).astype(np.float32)


def output_dir(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir).expanduser().resolve()
    return job.output_dir() or Path.cwd() / "explain"


def explain(cfg: DictConfig) -> Explanation:
    check_explain(cfg)
    method = cam_method(cfg.method)
    device = resolve_device(cfg.device)
    run = pick_run(cfg)
    run_id, metric_value = run.run_id, run.metrics.get(str(cfg.metric))
    log.info(
        f"explaining run {run_id} ({run.name}, {run.status}"
        + (f", {cfg.metric}={metric_value:.4f})" if metric_value is not None else ")")
    )

    saved = tracking.saved_config(run_id)
    classifier = load_classifier(cfg, run, device)
    model = classifier.net
    layer = resolve_layer(model, cfg.target_layer)

    data = load_test_set(saved, cfg.data)
    trained_size = run.tags.get("sweeplab.data.test_size")
    if trained_size and int(trained_size) != len(data.test):
        log.warning(f"the run was evaluated on {trained_size} test images; this data has {len(data.test)}")
    # The model's own normalization, so its predictions here are the ones it serves.
    mean, std = classifier.mean.flatten().tolist(), classifier.std.flatten().tolist()
    loader = DeviceLoader(data.test, cfg.batch_size, device, mean, std)
    result = evaluate(model, loader, device)
    preds, labels = result["preds"].cpu(), loader.labels.cpu()
    wrong = torch.nonzero(preds != labels).flatten()
    log.info(
        f"test accuracy {result['correct']}/{result['total']} ({100 * result['acc']:.2f}%), {len(wrong)} misclassified"
    )
    if not len(wrong):
        raise NothingToExplain(
            f"run {run_id} classifies all {len(labels)} test images correctly: nothing to explain, nothing written"
        )

    idx = wrong[: cfg.num_images]
    targets = (preds if cam_target(cfg) == "predicted" else labels)[idx].tolist()
    x = loader.normalize(data.test.images[idx].to(device))
    cams = compute_cams(model, layer, method, x, targets)
    files = write_outputs(cfg, run, data.classes, data.test.images[idx], idx, preds, labels, targets, cams, result)
    if cfg.log_artifacts:
        tracking.log_files(files.values(), ARTIFACT_DIR, run_id)
        log.info(f"logged {len(files)} files to MLflow run {run_id} under {ARTIFACT_DIR}/")
    print(f"explained {len(idx)} of {len(wrong)} misclassified test images of run {run_id}: {files['grid'].parent}")
    return Explanation(run_id, files["grid"].parent, files, len(wrong), len(labels), result["acc"])


def write_outputs(
    cfg: DictConfig, run: tracking.Run, classes, images, idx, preds, labels, targets, cams, result
) -> dict[str, Path]:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    files = {k: out / v for k, v in FILES.items()}
    run_id, n = run.run_id, len(idx)

    rgb = [img.permute(1, 2, 0).numpy().astype(np.float32) / 255 for img in images]
    overlays = [show_cam_on_image(image, cam, use_rgb=True) for image, cam in zip(rgb, cams)]
    titles = [f"Predicted: {classes[preds[i]]}\nActual: {classes[labels[i]]}" for i in idx.tolist()]
    rows = cfg.rows or -(-n // cfg.cols)
    what = f"{cfg.method} on {cfg.target_layer}, {cam_target(cfg)} class"
    head = f"run {run.name or run_id[:8]} ({run_id[:8]}), test acc {100 * result['acc']:.2f}%"
    plots.save(plots.image_grid_figure(overlays, titles, rows, cfg.cols, f"{what}\n{head}"), files["grid"])
    plots.save(plots.image_heatmap_pairs_figure(rgb, cams, titles, cfg.cols, f"{what}\n{head}"), files["pairs"])

    k = len(classes)
    matrix = torch.bincount(labels * k + preds, minlength=k * k).view(k, k).numpy()
    plots.save(plots.confusion_figure(matrix, classes, head), files["confusion"])
    np.savez_compressed(
        files["cams"],
        index=idx.numpy(),
        label=labels[idx].numpy(),
        pred=preds[idx].numpy(),
        target=np.asarray(targets, dtype=np.int64),
        cam=cams,
        test_preds=preds.numpy(),
        test_labels=labels.numpy(),
    )
    per_class = {c: float(matrix[i, i] / max(1, matrix[i].sum())) for i, c in enumerate(classes)}
    summary = {
        "run_id": run_id,
        "run_name": run.name,
        "metric": str(cfg.metric),
        "metric_value": run.metrics.get(str(cfg.metric)),
        "method": str(cfg.method),
        "target_layer": str(cfg.target_layer),
        "target": cam_target(cfg),
        "grid": [rows, cfg.cols],
        "test_acc": result["acc"],
        "test_images": int(len(labels)),
        "misclassified": int((preds != labels).sum()),
        "explained": n,
        "per_class_acc": per_class,
        "confusion": matrix.tolist(),
    }
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return files
