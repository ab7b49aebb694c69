"""Download, on a machine with a package registry, every wheel the H100 host lacks to run vLLM and ridgeline.

The H100 host has Python 3.12, PyTorch 2.11.0+cu130 and a fixed set of packages, and no network.
vLLM 0.24.0 is the release built against exactly that PyTorch, so only its pure dependencies and
ridgeline's own (Locust and its web stack) have to travel.

Versions come from pip's own resolver: a dry run for the host's interpreter and platform, with the
host's PyTorch as a constraint, so every pin of every package is met at once (vLLM pins
apache-tvm-ffi==0.1.9, which the newest xgrammar does not accept, for one). Which projects travel
comes from a walk of the wheels' metadata that skips what the host has, vLLM's optional extras
(CUDA compilers and CLI tools the server does not use) and the large optional kernel packages.

    python3 benchmarks/h100/fetch_wheels.py --dest /work/h100-wheels

The dry run downloads the whole tree once into pip's cache (PyTorch and CUDA libraries included,
a few GB); the wheels kept go to --dest. Wheels already in --dest are kept when their version is the
resolved one; excluded projects found there are moved to <dest>/excluded.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Optional

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_HOST_LIST = Path("/work/shared/tools/gpu/h100_host_pkgs.txt")
VLLM = "vllm==0.24.0"

# large optional kernel packages: vLLM 0.24.0 serves a dense Llama on Hopper without them
EXCLUDED = {"flashinfer-cubin", "tilelang", "z3-solver"}
EXCLUDED_PREFIXES = ("tokenspeed-", "nvidia-cutlass-dsl")

# the host's PyTorch stack (the device's package notes), which vLLM 0.24.0 pins exactly. Other host
# versions are not constraints: the resolver would then also have to reconcile host packages with
# each other (numba with numpy, say), which is no concern of what travels.
HOST_VERSIONS = {"torch": "2.11.0", "torchaudio": "2.11.0", "torchvision": "0.26.0", "triton": "3.6.0"}

PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(5, 40)]  # pip matches each tag exactly
PLATFORMS += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any"]
PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
for _p in PLATFORMS:
    PIP_TARGET += ["--platform", _p]

# the host's interpreter, for evaluating environment markers
HOST_ENV = dict(default_environment())
HOST_ENV.update(python_version="3.12", python_full_version="3.12.3", implementation_name="cpython",
                platform_python_implementation="CPython", platform_machine="x86_64",
                sys_platform="linux", platform_system="Linux", os_name="posix")


def host_packages(path: Path) -> set[str]:
    """Project names installed on the H100 host (comma or whitespace separated)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(f"host package list {path}: {exc}") from None
    return {canonicalize_name(n) for n in re.split(r"[,\s]+", text) if n}


def is_excluded(name: str) -> bool:
    return name in EXCLUDED or name.startswith(EXCLUDED_PREFIXES)


def roots() -> list[Requirement]:
    """vLLM, then ridgeline's runtime dependencies (pyproject.toml, with the tokenizers extra)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = list(data["project"]["dependencies"])
    deps += data["project"].get("optional-dependencies", {}).get("tokenizers", [])
    return [Requirement(VLLM)] + [Requirement(s) for s in deps]


def resolve(reqs: list[Requirement], report: Path) -> dict[str, str]:
    """Project -> version, from a pip dry run for the host's Python and platform."""
    if not report.exists():
        constraints = report.with_suffix(".constraints.txt")
        constraints.write_text("".join(f"{k}=={v}\n" for k, v in sorted(HOST_VERSIONS.items())))
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "--target", str(report.parent / "dry-run-target"), *PIP_TARGET,
               "-c", str(constraints), *[str(r) for r in reqs]]
        print("resolving (pip dry run; the first run downloads the whole tree into pip's cache) ...", flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit("pip could not resolve the set:\n" + "\n".join(r.stderr.strip().splitlines()[-8:]))
    data = json.loads(report.read_text())
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def wheel_for(dest: Path, name: str) -> Optional[Path]:
    """The one wheel of project `name` in dest, if there."""
    found = [w for w in dest.glob("*.whl") if canonicalize_name(parse_wheel_filename(w.name)[0]) == name]
    if len(found) > 1:
        raise SystemExit(f"{dest}: more than one wheel of {name}: {', '.join(w.name for w in found)}; keep one")
    return found[0] if found else None


def fetch(name: str, version: str, dest: Path) -> Path:
    """The wheel of name==version in dest: kept if there, else pip download (no dependencies)."""
    have = wheel_for(dest, name)
    if have is not None:
        if str(parse_wheel_filename(have.name)[1]) == str(Version(version)):
            return have
        have.unlink()  # another version: the resolved one replaces it
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *PIP_TARGET,
           f"{name}=={version}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"pip download {name}=={version} failed: {tail}")
    got = wheel_for(dest, name)
    if got is None:
        raise SystemExit(f"pip download {name}=={version} left no wheel in {dest}")
    return got


def requires(wheel: Path, extras: set[str]) -> list[Requirement]:
    """The wheel's Requires-Dist entries that apply on the host, with the given extras."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = z.read(meta_name).decode("utf-8", "replace")
    out = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None:
            envs = [dict(HOST_ENV, extra=e) for e in (extras or {""})]
            if not any(req.marker.evaluate(env) for env in envs):
                continue
        out.append(req)
    return out


def walk(start: list[Requirement], versions: dict[str, str], dest: Path,
         host: set[str]) -> list[tuple[str, Path, str]]:
    """Breadth-first from the roots; returns (project, wheel, required by) for each wheel to carry.

    Extras are followed for ridgeline's requirements (python-socketio[client] is what Locust needs)
    but not below vLLM: its extras pull in CUDA compilers and CLI tools the server does not use.
    """
    todo: list[tuple[Requirement, bool, str]] = [(r, canonicalize_name(r.name) != "vllm", "(root)") for r in start]
    walked: dict[str, set[str]] = {}
    kept: list[tuple[str, Path, str]] = []
    while todo:
        req, with_extras, parent = todo.pop(0)
        name = canonicalize_name(req.name)
        if name in host or name in HOST_VERSIONS or is_excluded(name):
            continue
        extras = set(req.extras) if with_extras else set()
        if name in walked:
            new = extras - walked[name]
            if new:
                walked[name] |= new
                todo.extend((r, with_extras, name) for r in requires(wheel_for(dest, name), new)
                            if r.marker is not None)
            continue
        if name not in versions:
            raise SystemExit(f"{parent} needs {req}, which the resolution does not hold")
        whl = fetch(name, versions[name], dest)
        walked[name] = extras
        kept.append((name, whl, parent))
        todo.extend((r, with_extras, name) for r in requires(whl, extras))
    return kept


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, required=True, help="wheel folder (outside the repository)")
    ap.add_argument("--host-list", type=Path, default=DEFAULT_HOST_LIST, help="packages on the H100 host")
    ap.add_argument("--report", type=Path, help="pip's resolution report (default: <dest>/resolution.json; "
                                                "made by a dry run when missing)")
    args = ap.parse_args(argv)
    dest = args.dest.resolve()
    if dest == REPO or REPO in dest.parents:
        raise SystemExit(f"--dest {dest} is inside the repository; use a folder outside it")
    dest.mkdir(parents=True, exist_ok=True)
    for w in dest.glob("*.whl"):
        if is_excluded(canonicalize_name(parse_wheel_filename(w.name)[0])):
            (dest / "excluded").mkdir(exist_ok=True)
            shutil.move(str(w), dest / "excluded" / w.name)
    start = roots()
    versions = resolve(start, (args.report or dest / "resolution.json").resolve())
    kept = walk(start, versions, dest, host_packages(args.host_list))
    total = 0
    for name, whl, parent in sorted(kept, key=lambda k: -k[1].stat().st_size):
        total += whl.stat().st_size
        print(f"{whl.stat().st_size / 2**20:9.2f} MiB  {whl.name}  (for {parent})")
    print(f"{len(kept)} wheels, {total / 2**20:.1f} MiB in {dest}")
    stray = sorted({w.name for w in dest.glob("*.whl")} - {w.name for _, w, _ in kept})
    if stray:
        (dest / "unused").mkdir(exist_ok=True)
        for n in stray:
            shutil.move(str(dest / n), dest / "unused" / n)
        print(f"moved {len(stray)} wheels the walk does not need to {dest / 'unused'}: {', '.join(stray)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
