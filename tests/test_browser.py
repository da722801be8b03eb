"""The MLflow UI in a real browser: `mlflow ui` on 127.0.0.1 over a store holding a tiny 2 x 2 sweep
(two learning rates, two seeds each), rendered by headless Chromium. Skips when no Chromium/Chrome is
installed (.ci/install-chromium.sh installs it; SWEEPLAB_CHROMIUM names a binary)."""

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
from sweeps import seeded_sweep, sweep_store

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

    def js(self, expression: str):
        """The value of a JavaScript expression in the page."""
        return self.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True)["result"].get(
            "value"
        )

    def wait_for(self, *needles: str, timeout: float = 120) -> str:
        """The page's text once it holds every regex in ``needles`` (or ``timeout`` s passed: the test's
        assertions then show what it held)."""
        deadline = time.monotonic() + timeout
        while True:
            text = visible_text(self.js("document.documentElement.outerHTML") or "")
            if all(re.search(n, text) for n in needles) or time.monotonic() > deadline:
                return text
            time.sleep(0.2)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", self.session, format="png")["data"]))

    def render(self, url: str, screenshot: Path, *needles: str, timeout: float = 120) -> str:
        """Go to ``url``; once the page's text holds every regex in ``needles`` (or ``timeout`` s
        passed), its text, and a screenshot of it."""
        self.call("Page.navigate", self.session, url=url)
        text = self.wait_for(*needles, timeout=timeout)
        self.screenshot(screenshot)
        return text

    def click(self, selector: str, text: str | None = None, opens: str | None = None, timeout: float = 60) -> None:
        """Click, as a user does (the mouse's press and release where it is on screen), the first
        element that matches the CSS ``selector`` and, if given, whose own text is ``text``; with
        ``opens`` (a CSS selector), again until that is on the page: a click can be lost while an
        earlier menu closes."""
        find = f"""(() => {{
            const e = Array.from(document.querySelectorAll({json.dumps(selector)}))
                .find(e => {json.dumps(text)} === null || (e.innerText || "").trim() === {json.dumps(text)});
            if (!e) return null;
            e.scrollIntoView({{block: "center"}});
            const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        }})()"""
        opened = f"document.querySelector({json.dumps(opens)}) !== null"
        deadline = time.monotonic() + timeout
        while True:
            where = self.js(find)
            if where is not None:
                x, y = where
                for event in ("mouseMoved", "mousePressed", "mouseReleased"):  # clickCount 1: a click
                    self.call(
                        "Input.dispatchMouseEvent", self.session, type=event, x=x, y=y, button="left", clickCount=1
                    )
                for _ in range(10):  # up to 2 s for what it opens
                    if opens is None or self.js(opened):
                        time.sleep(0.5)  # a menu that just opened ignores a click at once (Radix UI)
                        return
                    time.sleep(0.2)
            message = f"clicking {selector} {text or ''} opened no {opens}" if where else f"no {selector} {text or ''}"
            assert time.monotonic() < deadline, message
            time.sleep(0.2)

    def press_escape(self) -> None:
        """Escape, and up to 5 s for the open menu or dialog to close."""
        escape = {"key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27}
        for event in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", self.session, type=event, **escape)
        for _ in range(25):
            if not self.js("document.querySelector('[role=menu], [role=dialog]')"):
                return
            time.sleep(0.2)

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
    store = sweep_store("seeded")
    tmp = tmp_path_factory.mktemp("ui")
    server = start_mlflow("ui", f"sqlite:///{store / 'mlflow.db'}", tmp)
    chromium = None
    try:
        chromium = Chromium(browser, tmp / "profile", tmp / "chromium.log")
        sweep = seeded_sweep(tiny_npz)
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
    table = [r"\| 5 \| matching runs \|", r"\| sweep optimizer\.lr=0\.05,0\.005 seeds=2 \|"]
    text = chromium.render(f"{ui['url']}/#/experiments/{exp}/runs", shot, *table)
    print(f"screenshot: {shot}")
    assert "| 5 | matching runs |" in text, text[-1500:]  # the parent and its four jobs ...
    assert "| sweep optimizer.lr=0.05,0.005 seeds=2 |" in text, text[-1500:]
    assert "| optimizer.lr=0.05 trainer.seed=1 |" not in text, text[-1500:]  # ... folded under its row
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # The parent's page lists its children and shows the comparison table as its description.
    child = r"optimizer\.lr=0\.0(05|5) trainer\.seed=[12]"
    children = rf"\| Child runs \| {child} \|( , \| {child} \|){{3}}"
    best, verdict = r"Best configuration: \| optimizer\.lr=", r"\| Verdict: \| optimizer\.lr=.*Welch's t-test"
    page = f"{ui['url']}/#/experiments/{exp}/runs/{parent.info.run_id}"
    text = chromium.render(page, tmp_path / "parent.png", children, r"\| sweep\.best_mean \|", best, verdict)
    assert re.search(children, text), text[-3000:]
    assert "| sweep.best_mean |" in text and re.search(best, text) and re.search(verdict, text), text[-3000:]


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
    names = "| Run Name: | " + " | ".join(r.info.run_name for r in runs) + " |"
    lrs = "| optimizer.lr | 0.05 | 0.005 | 0.05 | 0.005 |"  # rendered from the runs' params, not their names
    text = ui["chromium"].render(
        f"{ui['url']}/{compare_link(exp, rows)}", shot, re.escape(names), re.escape(lrs), "Parallel Coordinates Plot"
    )
    print(f"screenshot: {shot}")
    assert names in text, text[-3000:]
    assert lrs in text, text[-3000:]
    assert "Parallel Coordinates Plot" in text
    assert shot.stat().st_size > 20_000


def test_the_runs_grouped_by_configuration_show_each_ones_mean(ui, tmp_path):
    """As a user does: "Group by" the tag sweeplab.configuration and show the column best_test_acc; one
    row per configuration, with its two seeds under it and their average; the parent stays apart."""
    client, exp, chromium = ui["client"], ui["experiment"].experiment_id, ui["chromium"]
    runs = client.search_runs([exp], "tags.`mlflow.parentRunId` LIKE '%'")
    means = {}
    for run in runs:
        means.setdefault(run.data.tags["sweeplab.configuration"], []).append(run.data.metrics["best_test_acc"])
    means = {k: sum(v) / len(v) for k, v in means.items()}
    assert sorted(means) == ["optimizer.lr=0.005", "optimizer.lr=0.05"]
    chromium.render(f"{ui['url']}/#/experiments/{exp}/runs", tmp_path / "runs.png", r"\| 5 \| matching runs \|")
    try:
        chromium.click("button", "Group by", opens="[role=menu]")
        chromium.click("[role=menu] [role=menuitemcheckbox]", "sweeplab.configuration")  # closes the menu
        chromium.wait_for(r"Group by: sweeplab\.configuration")
        chromium.click("button", "Columns", opens="[role=dialog]")  # the column chooser is a dialog
        chromium.click("[role=dialog] span", "best_test_acc")
        chromium.press_escape()
        groups = [rf"\| Group: {re.escape(name)} \| 2 \|" for name in means]
        text = chromium.wait_for(r"Group by: sweeplab\.configuration", *groups, r"\| Additional runs \| 1 \|")
        chromium.js("document.querySelector('button[aria-label=Close]')?.click()")  # the assistant's panel
        chromium.js("document.querySelector('[data-testid=sort-header-best_test_acc]').scrollIntoView()")
        shot = tmp_path / "grouped.png"
        chromium.screenshot(shot)
        print(f"screenshot: {shot}")
    finally:  # the UI keeps its grouping and columns in the browser's storage: the other tests see none
        chromium.js("localStorage.clear()")
    assert "Group by: sweeplab.configuration" in text, text[-3000:]
    for group in groups:
        assert re.search(group, text), text[-3000:]
    assert "| Additional runs | 1 |" in text, text[-3000:]  # the sweep's parent: no configuration
    shown = [float(x) for x in re.findall(r"\| ([0-9.]+) \| \(average\) \|", text)]
    assert len(shown) == 2 and all(any(abs(x - m) < 5e-4 for x in shown) for m in means.values()), (shown, means)
