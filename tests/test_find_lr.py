"""find_lr.py: the LR range test end to end on the tiny data set, the sweep command it prints (parsed
by Hydra and run), its files and MLflow run, and its one-line errors."""

import csv
import math
import re
import shlex

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import sweeplab  # noqa: F401  (resolvers)
from sweeplab import lr_finder
from sweeplab.checks import check_lr_finder
from sweeplab.data import DeviceLoader, load_dataset
from sweeplab.errors import ConfigError
from sweeplab.models import resnet18

from apps import run_app
from support import ROOT, TINY, mlflow_client, where

PNG = b"\x89PNG\r\n\x1a\n"
START, END = 1e-3, 0.1
RANGE = [
    f"lr_finder.start_lr={START}",
    f"lr_finder.end_lr={END}",
    "lr_finder.num_iter=20",
    "lr_finder.runs=2",
    "lr_finder.val=test",
    "lr_finder.val_subset=100",
]


@pytest.fixture(scope="module")
def found(tmp_path_factory, tiny_npz):
    """One find_lr.py run (2 runs of 20 steps, 100 test images per step) through the real entry point,
    in-process, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("find_lr")
    proc = run_app("find_lr.py", *TINY, *RANGE, *where(tmp, tiny_npz))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    [out] = (tmp / "outputs" / "lr_finder" / "runs").iterdir()
    summary = yaml.safe_load((out / "suggestions.yaml").read_text())
    return {"proc": proc, "tmp": tmp, "out": out, "summary": summary, "where": where(tmp, tiny_npz)}


def read_history(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["lr"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def parse_command(command: str):
    """(the overrides after ``python train.py -m``, Hydra's parse of them, the lr values as printed)."""
    words = shlex.split(command)
    assert words[:3] == ["python", "train.py", "-m"]
    parsed = OverridesParser.create().parse_overrides(words[3:])
    assert parsed[-1].get_key_element() == "optimizer.lr"
    return words[3:], parsed, words[-1].split("=", 1)[1].split(",")


def sweep_values(override) -> list[float]:
    """The floats Hydra will run: a sweep, or a single value when both runs agreed."""
    if override.is_sweep_override():
        return [float(v) for v in override.sweep_iterator()]
    return [float(override.value())]


# -- the end-to-end run ------------------------------------------------------------------------------
@pytest.mark.slow
def test_last_line_is_a_sweep_command_hydra_parses(found):
    last = found["proc"].stdout.strip().splitlines()[-1]
    assert last == found["summary"]["command"]
    args, parsed, printed = parse_command(last)
    assert sweep_values(parsed[-1]) == found["summary"]["suggested_lrs"] == [float(v) for v in printed]
    # One value per distinct suggestion (two runs that agree to 3 digits give one value).
    distinct = {lr_finder.format_lr(r["suggested_lr_exact"]) for r in found["summary"]["runs"]}
    assert sorted(printed) == sorted(distinct)
    for v in printed:  # 3 significant digits, written like the baseline's 1e-2 and 9.33e-3
        assert re.fullmatch(r"[1-9](\.\d?[1-9])?e-?[1-9]\d*", v), v
    # The experiment's overrides are repeated; the finder's own and the where-things-run ones are not.
    assert "model=resnet18_narrow" in args and "model.width=4" in args
    assert not [a for a in args if a.startswith(("lr_finder", "tracking.", "paths.", "data.npz", "trainer.device"))]


@pytest.mark.slow
def test_suggestions_are_the_library_steepest_descent_inside_the_range(found):
    runs = found["summary"]["runs"]
    assert [r["seed"] for r in runs] == [1, 2]
    for r in runs:
        lrs, losses = read_history(found["out"] / r["history"])
        assert lrs[0] == pytest.approx(START) and lrs[-1] <= END * (1 + 1e-9)
        assert np.all(np.diff(lrs) > 0) and np.all(np.isfinite(losses))
        exact = r["suggested_lr_exact"]
        assert START <= exact <= END
        # torch-lr-finder's rule: argmin of the gradient of the smoothed loss, first 10 and last 5 steps skipped
        trimmed = slice(10, len(lrs) - 5)
        assert exact == pytest.approx(lrs[trimmed][np.gradient(losses[trimmed]).argmin()], rel=1e-12)
        assert r["suggested_lr"] == pytest.approx(exact, rel=5e-3)  # rounded to 3 significant digits
        assert r["suggested_lr"] == float(lr_finder.format_lr(exact))


@pytest.mark.slow
def test_two_seeds_give_two_different_histories(found):
    (lr0, loss0), (lr1, loss1) = (read_history(found["out"] / r["history"]) for r in found["summary"]["runs"])
    n = min(len(loss0), len(loss1))
    np.testing.assert_allclose(lr0[:n], lr1[:n])  # the same lr schedule ...
    assert np.abs(loss0[:n] - loss1[:n]).max() > 1e-4  # ... but another model init and batch order


@pytest.mark.slow
def test_plots_are_png_files(found):
    names = [r["figure"] for r in found["summary"]["runs"]] + ["lr_finder_summary.png"]
    assert len(names) == 3
    for name in names:
        path = found["out"] / name
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


@pytest.mark.slow
def test_mlflow_run_records_params_suggestions_and_artifacts(found):
    client = mlflow_client(found["tmp"] / "mlruns")
    exp = client.get_experiment_by_name("lr_finder")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr_finder.num_iter"] == "20" and run.data.params["model.width"] == "4"
    assert run.data.params["suggested_lrs"] == ",".join(
        dict.fromkeys(lr_finder.format_lr(r["suggested_lr_exact"]) for r in found["summary"]["runs"])
    )
    assert found["summary"]["override"] == "optimizer.lr=" + run.data.params["suggested_lrs"]
    assert run.data.tags["sweeplab.task"] == "lr_finder"
    assert run.data.tags["sweeplab.next_command"] == found["summary"]["command"]
    for i, r in enumerate(found["summary"]["runs"]):
        assert run.data.metrics[f"run{i}_suggested_lr"] == pytest.approx(r["suggested_lr_exact"])
        curve = client.get_metric_history(run.info.run_id, f"run{i}_loss")
        assert len(curve) == r["steps"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "lr_finder")}
    assert {
        "lr_finder/suggestions.yaml",
        "lr_finder/lr_finder_summary.png",
        "lr_finder/run0_lr_finder.png",
        "lr_finder/run1_history.csv",
        "lr_finder/history.json",
    } <= artifacts


@pytest.mark.slow
def test_printed_command_runs_one_finished_training_run_per_value(found):
    args, parsed, _ = parse_command(found["summary"]["command"])
    values = sweep_values(parsed[-1])
    proc = run_app("train.py", "-m", *args, "trainer.epochs=1", *found["where"])  # the command as printed
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow_client(found["tmp"] / "mlruns")
    runs = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # the jobs, not their sweep's parent run
    assert len(runs) == len(values)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(float(r.data.params["optimizer.lr"]) for r in runs) == sorted(values)


# -- messages instead of tracebacks ---------------------------------------------------------------------
def test_too_few_iterations_is_one_line_before_any_work(tmp_path, tiny_npz):
    store = tmp_path / "mlruns"
    proc = run_app(
        "find_lr.py",
        *TINY,
        "lr_finder.num_iter=10",
        f"tracking.store_dir={store}",
        f"data.npz={tiny_npz}",
        f"paths.log_dir={tmp_path / 'outputs'}",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "too few iterations" in proc.stderr and "at least 17" in proc.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # no MLflow run, not even a store


def compose_find_lr(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("find_lr", overrides=list(overrides))


@pytest.mark.parametrize(
    "override, words",
    [
        ("lr_finder.start_lr=1", "must be below lr_finder.end_lr"),
        ("lr_finder.start_lr=0", "must be positive"),
        ("lr_finder.runs=0", "lr_finder.runs=0 must be an integer >= 1"),
        ("lr_finder.step_mode=cosine", "must be one of exp, linear"),
        ("lr_finder.smooth_f=1", "must lie in [0, 1)"),
        ("lr_finder.val=val", "needs a held-out split"),
        ("lr_finder.val_subset=0", "lr_finder.val_subset=0 must be an integer >= 1"),
        ("optimizer.lr=-1", "optimizer.lr=-1"),  # the common checks run too
    ],
)
def test_bad_input_is_a_config_error(override, words):
    with pytest.raises(ConfigError) as err:
        check_lr_finder(compose_find_lr(override))
    assert words in str(err.value)


def test_defaults_compose_with_train_groups_and_own_experiment():
    cfg = compose_find_lr()
    check_lr_finder(cfg)
    assert cfg.task_name == "lr_finder" and cfg.tracking.experiment == "lr_finder"
    assert cfg.model._target_ == "sweeplab.models.resnet18" and cfg.optimizer._target_ == "torch.optim.SGD"
    assert cfg.lr_finder.seed == cfg.trainer.seed and cfg.lr_finder.step_mode == "exp"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process range tests on one thread, like the entry points run_entry starts; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_parts(tiny_npz):
    data = load_dataset("unused", tiny_npz)
    loader = DeviceLoader(data.train, 50, torch.device("cpu"), [0.5] * 3, [0.25] * 3, shuffle=True, seed=3)
    return data, loader


def test_early_divergence_gives_a_message_not_a_suggestion(tiny_parts):
    _, loader = tiny_parts
    torch.manual_seed(0)
    model = resnet18(num_classes=10, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lcfg = OmegaConf.merge(
        compose_find_lr().lr_finder, {"start_lr": 10.0, "end_lr": 1e6, "num_iter": 40, "smooth_f": 0.0, "val": "none"}
    )
    history, suggestion, message = lr_finder.range_test(
        model, opt, torch.nn.CrossEntropyLoss(), loader, None, lcfg, device=torch.device("cpu")
    )
    assert suggestion is None and len(history["lr"]) < 17
    assert "too early for a suggestion" in message and "lr_finder.end_lr" in message
    assert "\n" not in message


def test_range_test_leaves_the_model_and_optimizer_as_they_came(tiny_parts):
    _, loader = tiny_parts
    torch.manual_seed(0)
    model = resnet18(num_classes=10, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lcfg = OmegaConf.merge(compose_find_lr().lr_finder, {"num_iter": 17, "end_lr": 0.1, "val": "none"})
    history, suggestion, _ = lr_finder.range_test(
        model, opt, torch.nn.CrossEntropyLoss(), loader, None, lcfg, device=torch.device("cpu")
    )
    assert len(history["lr"]) == 17 and START <= suggestion <= 0.1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics restored
    assert opt.param_groups[0]["lr"] == 0.05 and "initial_lr" not in opt.param_groups[0]
    assert not opt.state  # no momentum buffers left behind


@pytest.mark.parametrize("progress", [False, True])
def test_the_library_bar_shows_only_with_progress_and_stdout_stays_ours(tiny_parts, capsys, progress):
    _, loader = tiny_parts
    model = resnet18(num_classes=10, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lcfg = OmegaConf.merge(compose_find_lr().lr_finder, {"num_iter": 4, "skip_start": 0, "skip_end": 0, "val": "none"})
    lr_finder.range_test(
        model, opt, torch.nn.CrossEntropyLoss(), loader, None, lcfg, device=torch.device("cpu"), progress=progress
    )
    out, err = capsys.readouterr()
    assert out == ""  # the library's remarks ("Learning rate search finished...") are debug log lines
    assert ("4/4" in err) is progress  # tqdm's bar: "100%|...| 4/4 [...]"


def test_train_iterator_draws_a_new_epoch_each_pass(tiny_parts):
    data, loader = tiny_parts
    it = lr_finder.DeviceTrainIter(loader)  # 500 images in 10 batches of 50
    first = [next(it)[1] for _ in range(10)]
    second = [next(it)[1] for _ in range(10)]
    assert sorted(torch.cat(first).tolist()) == sorted(torch.cat(second).tolist()) == sorted(data.train.labels.tolist())
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a new order, not a replay
    val = lr_finder.DeviceValIter(loader)
    assert len(val.dataset) == 500 and sum(len(y) for _, y in val) == sum(len(y) for _, y in val) == 500


def test_a_suggestion_at_the_window_edge_is_flagged():
    lrs = [10.0 ** (k / 4) for k in range(-20, 0)]  # 20 steps; the rule looks at steps 10..14
    assert lr_finder.at_window_edge(lrs, lrs[10], 10, 5) and lr_finder.at_window_edge(lrs, lrs[14], 10, 5)
    assert not lr_finder.at_window_edge(lrs, lrs[12], 10, 5)
    assert not lr_finder.at_window_edge(lrs, None, 10, 5)


@pytest.mark.parametrize(
    "value, text",
    [
        (0.01, "1e-2"),
        (0.009326033468832199, "9.33e-3"),
        (0.0123456, "1.23e-2"),
        (0.1, "1e-1"),
        (2.5, "2.5e0"),
        (1e-7, "1e-7"),
    ],
)
def test_format_lr_three_significant_digits(value, text):
    assert lr_finder.format_lr(value) == text
    assert math.isclose(float(text), value, rel_tol=5e-3)
    [parsed] = OverridesParser.create().parse_overrides([f"optimizer.lr={text}"])
    assert parsed.value() == float(text)
