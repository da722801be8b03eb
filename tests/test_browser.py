"""The MLflow UI in a real browser: `mlflow ui` on 127.0.0.1 over a store holding a tiny 2-run
sweep, rendered by headless Chromium. Skips when no Chromium/Chrome is installed
(.ci/install-chromium.sh installs it; SWEEPLAB_CHROMIUM names a binary)."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from servers import start_mlflow, wait_until_up
from support import stop_process_group
from sweeps import sweep_store, two_run_sweep

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


class Chromium:
    """One headless Chromium for the module, driven over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: JSON messages ending in NUL, commands in on fd 3, answers out on fd 4).
    The UI's JavaScript loads once and every page is a route of the same app, where a browser per page
    (``--dump-dom``) loaded it again each time and waited out a fixed budget of virtual time."""

    def __init__(self, path: str, profile: Path, log: Path):
        commands, self._commands = os.pipe()
        self._answers, answers = os.pipe()

        def on_fds_3_and_4():  # in the child, before exec
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
        flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [path, *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1600,1000"],
                pass_fds=(3, 4),
                preexec_fn=on_fds_3_and_4,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        os.close(commands)
        os.close(answers)
        self._buffer, self._id, self.log = b"", 0, log
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            self.session,
            width=1600,
            height=1000,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, session: str | None = None, timeout: float = 120, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:  # events (no id) and answers to nothing we wait for are skipped
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self._answers], [], [], max(left, 0))
                chunk = os.read(self._answers, 1 << 16) if ready else b""
                assert chunk, (
                    f"Chromium gave no answer to {method} ({'timed out' if not ready else 'pipe closed'}): "
                    + (self.log.read_text()[-2000:])
                )
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]

    def render(self, url: str, screenshot: Path, *needles: str, timeout: float = 120) -> str:
        """Go to ``url``; once the page's text holds every regex in ``needles`` (or ``timeout`` s
        passed: the test's assertions then show what it held), its text, and a screenshot of it."""
        self.call("Page.navigate", self.session, url=url)
        deadline = time.monotonic() + timeout
        while True:
            dom = self.call(
                "Runtime.evaluate", self.session, expression="document.documentElement.outerHTML", returnByValue=True
            )["result"].get("value", "")
            text = visible_text(dom)
            if all(re.search(n, text) for n in needles) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        screenshot.write_bytes(
            base64.b64decode(self.call("Page.captureScreenshot", self.session, format="png")["data"])
        )
        return text

    def close(self) -> None:
        stop_process_group(self.proc)
        os.close(self._commands)
        os.close(self._answers)


@pytest.fixture(scope="module")
def ui(browser, tiny_npz, tmp_path_factory):
    """`mlflow ui` on a free port over the sweep's store, and one Chromium; both stopped (their whole
    process groups) at the end. The server starts on the store before the sweep fills it: its seconds
    of start-up overlap the sweep's. Like every server of the tests it runs one uvicorn worker and no
    job runner (servers.start_mlflow)."""
    store = sweep_store("two_runs")
    tmp = tmp_path_factory.mktemp("ui")
    server = start_mlflow("ui", f"sqlite:///{store / 'mlflow.db'}", tmp)
    chromium = None
    try:
        chromium = Chromium(browser, tmp / "profile", tmp / "chromium.log")
        sweep = two_run_sweep(tiny_npz)
        assert sweep["result"].returncode == 0, sweep["result"].stderr[-3000:]
        wait_until_up(server, timeout=240)  # a busy CI machine starts it slowly
        yield {"url": server.uri, "chromium": chromium, **sweep}
    finally:
        if chromium is not None:
            chromium.close()
        stop_process_group(server.proc)  # the server and its uvicorn worker
    assert server.proc.poll() is not None


def test_the_sweep_is_one_parent_row_with_its_jobs_as_children(ui, tmp_path):
    exp, client, chromium = ui["experiment"].experiment_id, ui["client"], ui["chromium"]
    (parent,) = client.search_runs([exp], "tags.`sweeplab.kind` = 'sweep'")
    shot = tmp_path / "runs.png"
    table = [r"\| 3 \| matching runs \|", r"\| sweep optimizer\.lr=0\.05,0\.02 \|"]
    text = chromium.render(f"{ui['url']}/#/experiments/{exp}/runs", shot, *table)
    print(f"screenshot: {shot}")
    assert "| 3 | matching runs |" in text, text[-1500:]  # the parent and its two jobs ...
    assert "| sweep optimizer.lr=0.05,0.02 |" in text, text[-1500:]
    assert "| optimizer.lr=0.05 |" not in text, text[-1500:]  # ... folded under its row
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # The parent's page lists its children and shows the comparison table as its description.
    children = r"\| Child runs \| optimizer\.lr=0\.0[25] \| , \| optimizer\.lr=0\.0[25] \|"
    page = f"{ui['url']}/#/experiments/{exp}/runs/{parent.info.run_id}"
    text = chromium.render(
        page, tmp_path / "parent.png", children, r"\| sweep\.best_value \|", r"Best: \| optimizer\.lr="
    )
    assert re.search(children, text), text[-3000:]
    assert "| sweep.best_value |" in text and "Best: | optimizer.lr=" in text, text[-3000:]


def test_the_registered_model_page_shows_the_best_alias(ui, tmp_path):
    title, version_1 = "| Registered Models | cifar10-resnet18 |", r"\| Version 1 \|.*@\W*best \|"  # v1 holds it
    text = ui["chromium"].render(
        f"{ui['url']}/#/models/cifar10-resnet18", tmp_path / "model.png", re.escape(title), version_1
    )
    assert title in text, text[-1500:]
    assert re.search(version_1, text), text[-1500:]


def test_compare_page_shows_the_lr_values(ui, tmp_path):
    """The report's compare link: the parameter table lists optimizer.lr per run."""
    from sweeplab.report import compare_link

    client, exp = ui["client"], ui["experiment"].experiment_id
    runs = client.search_runs([exp], "tags.`mlflow.parentRunId` LIKE '%'", order_by=["attributes.start_time ASC"])
    rows = [{"run_id": r.info.run_id} for r in runs]
    shot = tmp_path / "compare.png"
    names = f"| Run Name: | {runs[0].info.run_name} | {runs[1].info.run_name} |"
    lrs = "| optimizer.lr | 0.05 | 0.02 |"  # rendered from the runs' params, not their names
    text = ui["chromium"].render(
        f"{ui['url']}/{compare_link(exp, rows)}", shot, re.escape(names), re.escape(lrs), "Parallel Coordinates Plot"
    )
    print(f"screenshot: {shot}")
    assert names in text, text[-3000:]
    assert lrs in text, text[-3000:]
    assert "Parallel Coordinates Plot" in text
    assert shot.stat().st_size > 20_000
