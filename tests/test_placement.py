"""A sweep's parallel jobs on the machine's cards, on the CPU with torch.cuda's answers stubbed: each job's
own card (by its job number, else the first free one), jobs sharing a card only when asked to, and the
one-line refusals before any job starts (more jobs at once than cards, or than fit in a card's memory)."""

import logging
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from sweeplab import device, placement
from sweeplab.device import CLAIMS, claim_card, job_device
from sweeplab.errors import ConfigError

from apps import run_app
from support import ROOT, TINY, where

GiB = 2**30


@pytest.fixture
def gpus(monkeypatch):
    """A machine with ``gpus.count`` stubbed CUDA cards (80 GiB each, ``gpus.used`` of them taken)."""
    fake = SimpleNamespace(count=2, used={})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: fake.count)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Stub GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * GiB))
    monkeypatch.setattr(torch.cuda, "device_memory_used", lambda i: fake.used.get(i, 0))
    yield fake
    device.release_card()


def test_each_job_claims_its_own_card_by_number_then_the_first_free_one(tmp_path):
    claims = [claim_card(tmp_path, job, cards=4) for job in range(4)]
    assert [c.card for c in claims] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"all 4 GPUs already run trainer.jobs_per_card=1 job\(s\) of this sweep"):
        claim_card(tmp_path, 4, cards=4)
    claims[1].release()  # job 1 ended: job 6 would take card 2 by its number, which job 2 holds
    assert claim_card(tmp_path, 6, cards=4).card == 1


def test_jobs_share_a_card_only_when_asked_and_spread_first(tmp_path):
    claims = [claim_card(tmp_path, job, cards=2, jobs_per_card=2) for job in range(4)]
    assert [(c.card, c.slot) for c in claims] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    with pytest.raises(ConfigError, match="trainer.jobs_per_card=3"):
        claim_card(tmp_path, 4, cards=2, jobs_per_card=2)


def test_auto_gives_a_sweep_job_its_card_and_logs_which(gpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sweeplab.device")
    assert job_device("auto", tmp_path, job_num=1) == torch.device("cuda", 1)
    assert "job 1: cuda:1 (Stub GPU) of 2 GPUs, its own" in caplog.text
    assert job_device("auto", tmp_path, job_num=1) == torch.device("cuda", 1)  # the same job: the same claim
    other = claim_card(tmp_path / CLAIMS, 4, cards=2)  # another process's job takes card 0 by its number
    assert other.card == 0
    assert job_device("auto", tmp_path, job_num=2) == torch.device("cuda", 1)  # this worker's next job: the free one
    device.release_card()  # the job's end
    assert claim_card(tmp_path / CLAIMS, 9, cards=2).card == 1
    # Outside a sweep, with one card, or with a device named: no claim.
    assert job_device("auto") == torch.device("cuda")
    assert job_device("cuda:1", tmp_path, job_num=0) == torch.device("cuda", 1)
    gpus.count = 1
    assert job_device("auto", tmp_path, job_num=0) == torch.device("cuda")


def _sweep_config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def _jobs(n: int, *overrides):
    return [_sweep_config(*overrides, f"optimizer.lr=0.0{i + 1}") for i in range(n)]


JOBLIB = ("hydra/launcher=joblib", "model=resnet18_narrow", "data.train_limit=1000")


def test_more_jobs_at_once_than_cards_is_refused_before_any_job(gpus):
    config = _sweep_config(*JOBLIB, "hydra.launcher.n_jobs=3")
    with pytest.raises(ConfigError) as err:
        placement.check_sweep(config, _jobs(4, *JOBLIB))
    assert str(err.value) == (
        "hydra.launcher.n_jobs=3 runs 3 jobs at once but this machine has 2 GPUs and trainer.jobs_per_card=1: "
        "run at most 2 at once, or let jobs share a card (trainer.jobs_per_card=2)"
    )
    placement.check_sweep(_sweep_config(*JOBLIB, "hydra.launcher.n_jobs=2"), _jobs(4, *JOBLIB))  # one each
    asked = ("trainer.jobs_per_card=2", "hydra.launcher.n_jobs=3")
    placement.check_sweep(_sweep_config(*JOBLIB, *asked), _jobs(4, *JOBLIB))  # sharing, asked for
    placement.check_sweep(_sweep_config(*JOBLIB, "hydra.launcher.n_jobs=3"), _jobs(2, *JOBLIB))  # 2 jobs only


def test_jobs_side_by_side_on_one_card_are_checked_against_its_free_memory(gpus, caplog):
    gpus.count = 1
    on_one = (*JOBLIB, "hydra.launcher.n_jobs=4", "trainer.jobs_per_card=4")
    with pytest.raises(ConfigError, match=r"this machine has one GPU and trainer.jobs_per_card=1: run at most 1"):
        placement.check_sweep(_sweep_config(*JOBLIB, "hydra.launcher.n_jobs=2"), _jobs(2, *JOBLIB))
    caplog.set_level(logging.INFO, logger="sweeplab.placement")
    placement.check_sweep(_sweep_config(*on_one), _jobs(4, *JOBLIB))
    each = sum(placement.job_bytes(_sweep_config(*JOBLIB), torch.device("cuda")).values())
    assert "4 jobs at once (hydra.launcher.n_jobs=4): 4 on cuda:0" in caplog.text and 0 < each < 4 * GiB
    gpus.used = {0: 80 * GiB - 3 * each}  # room for three
    with pytest.raises(ConfigError) as err:
        placement.check_sweep(_sweep_config(*on_one), _jobs(4, *JOBLIB))
    message = str(err.value)
    assert message.startswith("hydra.launcher.n_jobs=4 runs 4 jobs at once on cuda:0: they need about ")
    assert "each: data " in message and "but only " in message and "\n" not in message
    three = _sweep_config(*JOBLIB, "hydra.launcher.n_jobs=3", "trainer.jobs_per_card=4")
    placement.check_sweep(three, _jobs(4, *JOBLIB))  # three fit


def test_a_job_needs_its_data_model_activations_and_context():
    cfg = _sweep_config("model=resnet18", "data.train_limit=1000", "data.test_limit=500", "trainer.batch_size=64")
    need = placement.job_bytes(cfg, torch.device("cuda"))
    assert need["data"] == 1500 * 3 * 32 * 32 + 1000 * 3 * (36 * 36 + 32 * 32)  # padded and augmented copies
    assert need["model"] == 16 * 11_173_962  # weights, gradients, optimizer state
    double = placement.job_bytes(_sweep_config("model=resnet18", "trainer.batch_size=128"), torch.device("cuda"))
    assert double["activations"] == 2 * need["activations"] > 0  # linear in the batch
    cpu = placement.job_bytes(cfg, torch.device("cpu"))
    assert cpu["context"] == 0 and cpu["activations"] == 2 * need["activations"]  # fp32 on the CPU


def test_how_many_jobs_each_launcher_runs_at_once():
    assert placement.parallel_jobs(_sweep_config(), 5) == (1, "the basic launcher (one job at a time)")
    assert placement.parallel_jobs(_sweep_config("hydra/launcher=joblib", "hydra.launcher.n_jobs=3"), 2)[0] == 2
    assert placement.parallel_jobs(_sweep_config("hydra/launcher=submitit_local"), 4)[0] == 4
    assert placement.parallel_jobs(_sweep_config("hydra/launcher=slurm"), 4)[0] == 0  # the cluster places them


@pytest.mark.slow
def test_train_py_refuses_the_sweep_in_one_line_before_any_run(gpus, tmp_path, tiny_npz):
    args = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "trainer.device=auto"]
    done = run_app("train.py", "-m", "optimizer.lr=0.1,0.2,0.3,0.4", *where(tmp_path, tiny_npz), *TINY, *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "runs 4 jobs at once but this machine has 2 GPUs" in done.stderr
    assert not (tmp_path / "checkpoints").exists() and not list((tmp_path / "outputs").rglob("*.log"))
