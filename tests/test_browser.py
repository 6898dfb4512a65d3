"""report.html and claims.html in a real browser: headless Chromium at 1280 px.

Each page must load without a console error, fit 1280 px without horizontal scrolling (the page
and every table), show every case of the run, and give every roofline point its hover text.
The pages are rendered from the committed H200 run (results/), copied into a temp directory.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
ending in NUL, written to its fd 3 and read from its fd 4). That needs no websocket library and no
port, and it sees what the browser itself reports (uncaught exceptions, console.error, failed
loads) rather than what a script injected into the page could catch; it also sets the viewport and
takes the screenshot. The tests skip, saying why, when no chromium can be found or started
(.ci/run installs Debian's `chromium`).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from harness.present import claims, report, roofline
from harness.store import runs

ROOT = Path(__file__).resolve().parent.parent
H200_RUN = ROOT / "results" / "h200-sxm-default-cuda-2026-12-04"
CLAIMS_RUN = ROOT / "results" / "h200-sxm-claims-lite-partial-2026-12-04"
WIDTH = 1280

# What the page looks like to a reader, gathered in the page once it has loaded.
MEASURE = """(() => {
  const cells = el => [...el.querySelectorAll(':scope > td, :scope > th')].map(c => c.textContent.trim());
  return {
    scrollWidth: document.scrollingElement.scrollWidth,
    viewport: window.innerWidth,
    tables: [...document.querySelectorAll('table')].map(t => ({
      title: t.previousElementSibling ? t.previousElementSibling.textContent : '',
      right: t.getBoundingClientRect().right, rows: [...t.rows].map(cells),
      notes: t.nextElementSibling && t.nextElementSibling.tagName === 'UL' ? t.nextElementSibling.innerText : ''})),
    points: [...document.querySelectorAll('svg g[id^="point-"]')].map(g => ({
      id: g.id, title: (g.querySelector(':scope > title') || {textContent: ''}).textContent,
      width: g.getBoundingClientRect().width})),
    chartWidth: document.querySelector('svg') ? document.querySelector('svg').getBoundingClientRect().width : 0,
  };
})()"""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if found := shutil.which(name):
            return found
    return None


class Chromium:
    """One headless Chromium, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, profile: Path, timeout_s: float = 60):
        self.timeout_s, self.next_id, self.buffer, self.events = timeout_s, 0, b"", []
        to_browser, self.writer = _high_pipe()
        self.reader, from_browser = _high_pipe()

        def on_fds_3_and_4():  # in the child: what it reads on 3 and writes on 4
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            close_fds=False, preexec_fn=on_fds_3_and_4)  # noqa: PLW1509 (no threads here)
        os.close(to_browser)
        os.close(from_browser)
        self.session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.writer, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        while True:
            for i, seen in enumerate(self.events):
                if seen.get("method") == event:
                    return self.events.pop(i)
            self.events.append(self._receive())

    def open(self, page: Path, width: int = WIDTH, height: int = 900) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.events.clear()
        self.call("Page.navigate", url=page.as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def console_errors(self) -> list[str]:
        """What the page reported as an error: uncaught exceptions, console.error, failed loads."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def screenshot(self, path: Path, width: int = WIDTH, height: int | None = None) -> None:
        """The page's top `height` pixels (default: all of it), `width` pixels wide."""
        height = height or self.evaluate("document.scrollingElement.scrollHeight")
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.session = None
            self.call("Browser.close")
        except (RuntimeError, OSError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.writer)
        os.close(self.reader)

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.reader], [], [], left)[0]:
                raise TimeoutError(f"chromium said nothing for {self.timeout_s:.0f} s")
            chunk = os.read(self.reader, 1 << 20)
            if not chunk:
                why = self.proc.stderr.read().decode(errors="replace").strip()[-500:]
                raise RuntimeError(f"chromium exited (code {self.proc.wait()}) {why}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are numbered 10 or above, so that putting them on 3 and 4 in the child
    never overwrites one with the other."""
    ends = os.pipe()
    high = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in ends)
    for fd in ends:
        os.close(fd)
    return high


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the HTML is not checked in a browser")
    try:
        chromium = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    except (OSError, RuntimeError, TimeoutError) as exc:
        pytest.skip(f"{binary} could not be started headless: {exc}")
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def h200_report(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("report") / H200_RUN.name
    shutil.copytree(H200_RUN, run_dir)
    report.build(run_dir)
    return run_dir


def fits(page: dict) -> list[str]:
    """Why the page scrolls sideways at its width, if it does."""
    wide = [f"page is {page['scrollWidth']} px wide"] if page["scrollWidth"] > page["viewport"] else []
    return wide + [f"table under {t['title']!r} reaches {t['right']:.0f} px" for t in page["tables"]
                   if t["right"] > page["viewport"]]


def has_row_for(case: dict, table: dict) -> bool:
    """A row of the table holding the case's backend, dtype, status and parameter values, each in
    a cell or in the note under the table that names what is the same in every row."""
    problem = case["case_id"].split(":", 2)[2].rsplit(":", 1)[0]
    wanted = [case["backend"], case["dtype"], case["status"]]
    wanted += [v for _, v in (p.split("=", 1) for p in problem.split(",")) if v != "false"]
    same = set(re.split(r"[\s,]+", table["notes"].split("same in every row:", 1)[-1])) if "same in every row:" in table["notes"] else set()
    spelled = {"true": {"true", "yes", "True"}}
    return any(all((spelled.get(w, {w}) & (cells | same)) for w in wanted) for cells in map(set, table["rows"]))


@pytest.mark.slow
def test_the_report_reads_in_a_browser_at_1280_px(browser, h200_report):
    browser.open(h200_report / "report.html")
    assert browser.console_errors() == []
    page = browser.evaluate(MEASURE)
    assert fits(page) == [] and len(page["tables"]) >= 4
    run = runs.load(h200_report)
    every = {t["title"].split(":")[0]: t for t in page["tables"] if t["title"].endswith(": every case")}
    missing = [r["case_id"] for r in run.rows if not has_row_for(r, every[r["workload"]])]
    assert missing == [] and len(run.rows) == 51
    plotted = roofline.points(run.rows)
    assert len(plotted) == 48 and [p["id"] for p in page["points"]] == [f"point-{i}" for i in range(48)]
    assert [p["title"] for p in page["points"]] == [roofline.hover_text(r) for r in plotted]
    first = page["points"][0]["title"]
    assert first == "gemm m=4096, n=4096, k=4096\ntorch, bf16\n781.2 TFLOPS, 572.2 GB/s\nMFU 78.9%, MBU 11.9%"
    assert all(p["width"] > 3 for p in page["points"]) and page["chartWidth"] > 900  # drawn, and large


def test_the_claims_page_reads_in_a_browser_at_1280_px(browser, tmp_path):
    run_dir = tmp_path / CLAIMS_RUN.name
    shutil.copytree(CLAIMS_RUN, run_dir)
    run = runs.load(run_dir)
    claims.write(run, Console(width=200, file=io.StringIO()))
    browser.open(run_dir / "claims.html")
    assert browser.console_errors() == []
    page = browser.evaluate(MEASURE)
    assert fits(page) == [] and len(page["tables"]) == 1
    findings = claims.evaluate(run.rows, run.meta)
    shown = [row[0] for row in page["tables"][0]["rows"][1:]]
    assert shown == [f.claim for f in findings] and len(shown) >= 3


def test_a_page_that_fails_is_caught(browser, tmp_path):
    """The checks can fail: a script error, a missing image and a table wider than the screen."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><img src='missing.png'><table><tr>"
                    + "<td>wide_cell_without_spaces</td>" * 60 + "</tr></table><script>undefinedThing()</script></body></html>")
    browser.open(page)
    errors = browser.console_errors()
    assert any("undefinedThing" in e for e in errors) and any("ERR_FILE_NOT_FOUND" in e for e in errors)
    assert any(re.match(r"page is \d+ px wide", why) for why in fits(browser.evaluate(MEASURE)))
