"""report.html in a real headless Chromium: it renders, logs no console error and fetches nothing.

Any request the page made would have to go through the proxy the browser is given, a local socket
that records each request's target; loopback is not exempt. Chromium talks to its own services
(component updates, clock, accounts) whatever the page, so requests to those hosts are set aside; a
control page that does reference a remote image shows the trap catches a page's request.
Skipped with the reason when Chromium is absent (the CI script installs it).
"""

import base64
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from analysis import analyze, render_reports
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict
from tests.support.quality_rows import add_quality

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


CHROMIUM_OWN = ("google.com", "googleapis.com", "gvt1.com", "gvt2.com")


class ProxyTrap:
    """A listening socket standing in for a proxy: records the target host of every request."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hosts: list[str] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.settimeout(2)
                line = conn.recv(2048).split(b"\r\n")[0].decode("latin-1")
            except OSError:
                line = "? ?"
            finally:
                conn.close()
            target = line.split(" ")[1] if " " in line else "?"
            host = re.sub(r"^[a-z]+://", "", target).split("/")[0].split(":")[0]
            self.hosts.append(host)

    def page_requests(self) -> list[str]:
        return [h for h in self.hosts if not any(h == d or h.endswith("." + d) for d in CHROMIUM_OWN)]

    def close(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    steps = {v: [StepModel(c, 0.004 * (1 + c / 16) / s, 0.02, output_tokens=40, warmup_s=0.5, duration_s=3.0,
                           power_w=250.0 + 4 * c) for c in (1, 4, 16, 64)] for v, s in (("fp16", 1.0), ("awq", 1.5))}
    run = build_run(root / "run", RunModel(steps=steps, plan=plan_dict(["fp16", "awq"])))
    add_quality(run.path, {"fp16": 0.0, "awq": 0.8})
    analyze(run.path)
    render_reports(run.path)
    return run.path / "report.html"


def _render(page: Path, profile: Path, shot: Path) -> tuple[str, ProxyTrap]:
    trap = ProxyTrap()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", f"--user-data-dir={profile}",
         f"--proxy-server=http://127.0.0.1:{trap.port}", "--proxy-bypass-list=<-loopback>",
         "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1280,2000",
         page.as_uri()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        trap.close()
    return err, trap


def test_the_trap_catches_a_page_request(tmp_path):
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><p>control</p><img src="http://ridgeline-control.invalid/x.png">')
    _, trap = _render(page, tmp_path / "profile", tmp_path / "control.png")
    assert "ridgeline-control.invalid" in trap.page_requests()


def test_report_renders_in_chromium_without_errors_or_requests(report, tmp_path):
    shot = tmp_path / "shot.png"
    err, trap = _render(report, tmp_path / "profile", shot)
    assert shot.exists() and shot.stat().st_size > 20_000, err[-2000:]
    console = [line for line in err.splitlines() if "CONSOLE" in line or "Refused to" in line]
    assert not console, console
    assert trap.page_requests() == [], f"the page tried to fetch from {trap.page_requests()}"

    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    gray = img[..., :3].mean(axis=2)
    assert gray.std() > 0.05  # not a blank page
    header = gray[:60]
    assert header.mean() < 0.5  # the dark header bar with the backend badge is drawn at the top
    assert (gray[60:1000] < 0.9).mean() > 0.05  # charts and text on the first screen


def test_quality_table_and_chart_are_in_the_rendered_page(report, tmp_path):
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--proxy-server=http://127.0.0.1:9", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert '<section id="quality">' in dom, proc.stderr[-2000:]
    section = dom.split('<section id="quality">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section, re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
    awq = next(c for c in cells if c and c[0] == "awq")
    assert re.fullmatch(r"\+\d+\.\d%", awq[4])  # its perplexity change, as the browser parsed the table
    img = re.search(r'<img alt="speed against quality" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', section)
    assert img is not None
    png = base64.b64decode(img.group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
