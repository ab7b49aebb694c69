from gevent import monkey

monkey.patch_all()  # Locust runs on gevent: patch before anything else imports ssl or sockets

import sys

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (real engine, Prometheus, soak)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (tests/run.sh does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

from deploy import launcher


@pytest.fixture
def null_server(tmp_path):
    """Start a null server on loopback; yields a factory taking its delays; stops every one by PID."""
    started = []

    def start(events: int = 0, ttft_ms: float = 0.0, gap_ms: float = 0.0, keepalive_s: float = 75.0) -> launcher.Server:
        port = launcher.free_port()
        cmd = launcher.ServerCommand(
            "null", [sys.executable, "-m", "testdoubles.null_server", "--port", str(port), "--events", str(events),
                     "--ttft-ms", str(ttft_ms), "--gap-ms", str(gap_ms), "--keepalive-s", str(keepalive_s)],
            port=port, startup_timeout_s=30)
        srv = launcher.start(cmd, tmp_path / f"null-{port}.log")
        started.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in started:
            launcher.stop(srv)
            assert not srv.alive()
