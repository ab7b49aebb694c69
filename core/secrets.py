"""API keys: read from an environment variable or a file, and kept out of everything written.

A key never comes from the plan itself (plans get committed and mailed around), and it must not
reach a log, the manifest, the request rows, a report or a child's argv. Servers can echo what
they were sent (a 401 body that repeats the Authorization header, a log line with the request),
so text that came back from a server is passed through `redact` before it is kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from core.errors import RidgelineError
from core.results import atomic_write_bytes

MASK = "***"
# header and environment names whose values are credentials
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "AUTHORIZATION", "CREDENTIAL")
# values shorter than this are not searched for in text (a 1-character "key" would mangle everything)
MIN_SECRET_LEN = 4


class SecretError(RidgelineError, ValueError):
    """An API key that the plan points at but that cannot be had."""


def read_api_key(env_name: Optional[str], file_name: Optional[str]) -> Optional[str]:
    """The key from the named environment variable, else the named file; None when neither is given."""
    if env_name:
        val = os.environ.get(env_name)
        if not val:
            raise SecretError(f"api_key_env names {env_name!r} but that environment variable is not set or empty")
        return val.strip()
    if file_name:
        path = Path(file_name).expanduser()
        try:
            val = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"api_key_file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise SecretError(f"api_key_file {str(path)!r} is not UTF-8 text") from None
        if not val:
            raise SecretError(f"api_key_file {str(path)!r} is empty")
        return val
    return None


def is_secret_name(name: str) -> bool:
    up = name.upper()
    return any(w in up for w in SECRET_WORDS)


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment with every credential-like variable's value replaced by ***."""
    return {k: (MASK if is_secret_name(k) else v) for k, v in env.items()}


def secrets_in_headers(headers: Optional[Mapping[str, str]]) -> list[str]:
    """The credential values of a header set: the whole value and, for `Bearer X`, X alone."""
    out: list[str] = []
    for k, v in (headers or {}).items():
        if not is_secret_name(k) or not v:
            continue
        out.append(v)
        scheme, _, token = v.partition(" ")
        if token and scheme.lower() in ("bearer", "basic", "token"):
            out.append(token.strip())
    return [s for s in out if len(s) >= MIN_SECRET_LEN]


def redact(text: Optional[str], secrets: Iterable[str]) -> Optional[str]:
    """Text with every occurrence of each secret replaced by ***; None stays None."""
    if not text:
        return text
    for s in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    return text


def redact_obj(obj: Any, secrets: Iterable[str]) -> Any:
    """A JSON-like structure with every string passed through `redact` (keys too)."""
    secrets = [s for s in secrets if s and len(s) >= MIN_SECRET_LEN]
    if not secrets:
        return obj

    def walk(o: Any) -> Any:
        if isinstance(o, str):
            return redact(o, secrets)
        if isinstance(o, dict):
            return {walk(k): walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        return o

    return walk(obj)


def scrub_file(path: Path, secrets: Iterable[str]) -> bool:
    """Rewrite a text file (a server log) with the secrets masked; True when something was masked."""
    secrets = [s for s in secrets if s and len(s) >= MIN_SECRET_LEN]
    if not secrets:
        return False
    try:
        data = path.read_bytes()
    except OSError:
        return False
    out = data
    for s in sorted(set(secrets), key=len, reverse=True):
        out = out.replace(s.encode("utf-8"), MASK.encode())
    if out == data:
        return False
    atomic_write_bytes(path, out)
    return True
