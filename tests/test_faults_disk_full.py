"""The disk filling up while a run writes its results: a real, tiny tmpfs, filled in the middle of a step.

The run must stop cleanly (servers stopped, the error naming the full disk and the file), what was
written before must stay readable, and once space is freed the run resumes to the end.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from core.plan import parse_plan
from core.results import DiskFullError
from deploy import launcher
from loadtest.resume import prepare, resume
from loadtest.runner import Sweep, new_run_dir
from testdoubles import fault_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MB tmpfs (needs root or CAP_SYS_ADMIN); unmounted whatever happens."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path) -> int:
    """Write until the filesystem refuses; returns the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as fh:
        block = b"\0" * 4096
        while True:
            try:
                fh.write(block)
                n += len(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return n


class FillAt:
    """Fill the disk once step `index` is measuring, so that step's results cannot be written."""

    def __init__(self, ballast, index: int):
        self.ballast, self.index, self.done = ballast, index, False

    def __call__(self, p) -> None:  # noqa: ANN001
        if not self.done and p.step == self.index + 1 and p.phase == "measure":
            self.done = True
            _fill(self.ballast)


def test_disk_full_stops_the_run_cleanly_and_it_resumes_after(tiny_fs, tmp_path):
    port = launcher.free_port()
    cmd = fault_server.command(port, events=8, gap_ms=2, variant="a")
    d = {"name": "full", "backend": "external", "variants": [{"name": "a", "url": f"http://127.0.0.1:{port}"}],
         "scenario": {"prompt_tokens": 8, "output_tokens": 8},
         "sweep": {"concurrency": [1, 2, 4, 8], "warmup_s": 0, "requests": 20, "drain_s": 10},
         "scrape": {"interval_s": 0.5}, "output_dir": str(tiny_fs / "results")}
    plan = parse_plan(yaml.safe_dump(d), "full.yaml")
    run = new_run_dir(plan)
    ballast = tiny_fs / "ballast"
    sweep = Sweep(plan, run, commands=[cmd], on_progress=FillAt(ballast, 2))
    with pytest.raises(DiskFullError) as ei:
        sweep.execute()
    msg = str(ei.value)
    assert msg.startswith("the disk is full: could not write ")
    assert str(run.path) in msg and "No space left on device" in msg and "resume" in msg
    # the server was stopped on the way out
    pid = sweep.manifest["servers"]["a"]["pid"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # what was persisted before is intact and readable
    man = json.loads(run.manifest_path.read_text())
    st = {s["step"]: s for s in man["steps"]}
    assert st[0]["status"] == st[1]["status"] == "complete"
    assert st[2]["status"] == "incomplete"  # its end could not be written; it was never claimed done
    for i in (0, 1):
        assert pq.read_table(run.requests_path("a", i)).num_rows == st[i]["recorded"] == 20
    leftovers = [p.name for p in run.path.rglob("*.tmp")]
    assert leftovers == []
    # free the space and resume: the run completes where it stopped
    os.unlink(ballast)
    state = prepare(run.path)
    assert state.keep == {("a", 0), ("a", 1)}
    resume(state, commands=[fault_server.command(launcher.free_port(), events=8, gap_ms=2, variant="a")])
    man = run.read_manifest()
    assert man["status"] == "complete"
    assert sorted((s["step"], s["status"], s["recorded"]) for s in man["steps"]) == \
        [(i, "complete", 20) for i in range(4)]
