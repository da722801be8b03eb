"""The MLflow UI in a real browser: `mlflow ui` on 127.0.0.1 over a store holding a tiny 2-run
sweep, rendered by headless Chromium. Skips when no Chromium/Chrome is installed
(.ci/install-chromium.sh installs it; SWEEPLAB_CHROMIUM names a binary)."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import free_port, stop_process_group
from sweeps import two_run_sweep

pytestmark = pytest.mark.slow
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    if os.environ.get("SWEEPLAB_CHROMIUM"):
        return shutil.which(os.environ["SWEEPLAB_CHROMIUM"])
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def visible_text(dom: str) -> str:
    """The rendered page's text, cells joined by ' | '."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " | ", dom))
    return re.sub(r"(\s*\|\s*)+", " | ", text)


@pytest.fixture(scope="module")
def browser():
    path = find_browser()
    if path is None:
        pytest.skip(
            "no headless browser: none of " + ", ".join(BROWSERS) + " is on PATH "
            "(run .ci/install-chromium.sh, or set SWEEPLAB_CHROMIUM to a Chromium/Chrome binary)"
        )
    return path


@pytest.fixture(scope="module")
def ui(browser, tiny_npz):
    """`mlflow ui` on a free port over the sweep's store; stopped (its whole process group) at the end."""
    sweep = two_run_sweep(tiny_npz)
    assert sweep["result"].returncode == 0, sweep["result"].stderr[-3000:]
    port = free_port()
    log = open(sweep["tmp"] / f"mlflow-ui-{port}.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            f"sqlite:///{sweep['store'] / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # a busy CI machine starts it slowly
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (
                "mlflow ui exited: " + (sweep["tmp"] / f"mlflow-ui-{port}.log").read_text()[-2000:]
            )
            assert time.monotonic() < deadline, "mlflow ui did not answer /health within 240 s"
            time.sleep(0.5)
        yield {"url": url, **sweep}
    finally:
        stop_process_group(server)  # the server and its uvicorn workers
        log.close()
    assert server.poll() is not None


def render(browser: str, url: str, screenshot, profile) -> str:
    """The DOM after the page's scripts ran, and a screenshot of it."""
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--window-size=1600,1000",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # slow on a busy machine
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_sweep_is_one_parent_row_with_its_jobs_as_children(ui, browser, tmp_path):
    exp, client = ui["experiment"].experiment_id, ui["client"]
    (parent,) = client.search_runs([exp], "tags.`sweeplab.kind` = 'sweep'")
    shot = tmp_path / "runs.png"
    text = visible_text(render(browser, f"{ui['url']}/#/experiments/{exp}/runs", shot, tmp_path / "profile"))
    print(f"screenshot: {shot}")
    assert "| 3 | matching runs |" in text, text[-1500:]  # the parent and its two jobs ...
    assert "| sweep optimizer.lr=0.05,0.02 |" in text, text[-1500:]
    assert "| optimizer.lr=0.05 |" not in text, text[-1500:]  # ... folded under its row
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # The parent's page lists its children and shows the comparison table as its description.
    page = f"{ui['url']}/#/experiments/{exp}/runs/{parent.info.run_id}"
    text = visible_text(render(browser, page, tmp_path / "parent.png", tmp_path / "profile"))
    assert re.search(r"\| Child runs \| optimizer\.lr=0\.0[25] \| , \| optimizer\.lr=0\.0[25] \|", text), text[-3000:]
    assert "| sweep.best_value |" in text and "Best: | optimizer.lr=" in text, text[-3000:]


def test_the_registered_model_page_shows_the_best_alias(ui, browser, tmp_path):
    text = visible_text(
        render(browser, f"{ui['url']}/#/models/cifar10-resnet18", tmp_path / "model.png", tmp_path / "profile")
    )
    assert "| Registered Models | cifar10-resnet18 |" in text, text[-1500:]
    assert re.search(r"\| Version 1 \|.*@\W*best \|", text), text[-1500:]  # version 1 holds the alias


def test_compare_page_shows_the_lr_values(ui, browser, tmp_path):
    """The report's compare link: the parameter table lists optimizer.lr per run."""
    from sweeplab.compare import compare_link

    client, exp = ui["client"], ui["experiment"].experiment_id
    runs = client.search_runs([exp], "tags.`mlflow.parentRunId` LIKE '%'", order_by=["attributes.start_time ASC"])
    rows = [{"run_id": r.info.run_id} for r in runs]
    shot = tmp_path / "compare.png"
    text = visible_text(render(browser, f"{ui['url']}/{compare_link(exp, rows)}", shot, tmp_path / "profile"))
    print(f"screenshot: {shot}")
    assert f"| Run Name: | {runs[0].info.run_name} | {runs[1].info.run_name} |" in text
    assert "| optimizer.lr | 0.05 | 0.02 |" in text  # rendered from the runs' params, not their names
    assert "Parallel Coordinates Plot" in text
    assert shot.stat().st_size > 20_000
