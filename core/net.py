"""Small network helpers shared by the launcher, the distributed master and the test doubles."""

from __future__ import annotations

import socket
import urllib.parse


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (the server binds it a moment later).

    A wildcard host ("" or 0.0.0.0) asks about loopback, where every ridgeline server binds.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]


def instance_of(url: str) -> str:
    """host:port of a server URL, as Prometheus labels the target that scrapes it."""
    u = urllib.parse.urlsplit(url)
    if not u.hostname:
        raise ValueError(f"{url!r} is not a URL with a host")
    port = u.port or (443 if u.scheme == "https" else 80)
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{host}:{port}"
