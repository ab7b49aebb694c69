"""Pack the host's missing packages as one installed, xz-compressed folder cut into call-sized pieces.

The wheels are zip files (deflate); the same files installed (1,015 MB) and compressed with xz -6
take 267 MiB against the wheels' 369 (vLLM's CUDA libraries shrink the most), so the set travels in
5 device calls instead of 7, and the H200 host unpacked it in 3 s instead of running pip for a minute. pip installs
here for the host's interpreter and platform (`--target` with `--python-version 3.12`); the
packages are pure Python or manylinux x86-64 builds, so nothing here depends on this machine.

    python3 benchmarks/h100/pack_site.py --wheels /work/h100-wheels     # 13 min on 2 cores (xz)

Writes .h100c0 .. .h100cN (ignored by git) with site.tar.xz.partN, and carry.txt and wheels.sha256
beside this file; stage.sh and install.sh on the host read those two. pack.py is the wheel-only
alternative (pip on the host).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from fetch_wheels import PIP_TARGET
from pack import FOLDER_RE, HERE, MAX_FOLDERS, MiB, REPO, sha256, tree_bytes

ARCHIVE = "site.tar.xz"


def install(wheels: Path, target: Path) -> None:
    """pip install --target for the host's Python 3.12, no index, no dependencies (the set is closed)."""
    if target.exists():
        shutil.rmtree(target)
    # the interpreter and platform tags the wheels were downloaded for
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--target", str(target), *PIP_TARGET]
    subprocess.run(cmd + [str(w) for w in sorted(wheels.glob("*.whl"))], check=True)


def compress(target: Path, archive: Path, level: int) -> None:
    with archive.open("wb") as out:
        tar = subprocess.Popen(["tar", "-C", str(target.parent), "-cf", "-", target.name], stdout=subprocess.PIPE)
        subprocess.run(["xz", "-T0", f"-{level}"], stdin=tar.stdout, stdout=out, check=True)
        if tar.wait() != 0:
            raise SystemExit("tar failed")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, required=True, help="folder with the wheels (fetch_wheels.py --dest)")
    ap.add_argument("--build", type=Path, default=Path("/tmp/h100site"), help="where to install before packing")
    ap.add_argument("--archive", type=Path, default=Path("/work/h100-site.tar.xz"))
    ap.add_argument("--reuse", action="store_true", help="keep an existing --archive (skip install and xz)")
    ap.add_argument("--level", type=int, default=6, help="xz preset (9 gains little and takes 3x longer)")
    ap.add_argument("--call-mib", type=float, default=63.0, help="most a call may ship, working tree included")
    ap.add_argument("--tree-headroom-mib", type=float, default=0.5)
    args = ap.parse_args(argv)

    if not (args.reuse and args.archive.is_file()):
        install(args.wheels, args.build)
        compress(args.build, args.archive, args.level)
    cap = int(args.call_mib * MiB) - tree_bytes(REPO) - int(args.tree_headroom_mib * MiB)
    size = args.archive.stat().st_size
    n = -(-size // cap)
    if n > MAX_FOLDERS:
        raise SystemExit(f"{args.archive} ({size / MiB:.0f} MiB) needs {n} calls of {cap / MiB:.1f} MiB")
    for old in REPO.iterdir():
        if old.is_dir() and FOLDER_RE.match(old.name):
            shutil.rmtree(old)
    piece = -(-size // n)  # even pieces
    sums, carry = [], []
    with args.archive.open("rb") as src:
        for i in range(n):
            d = REPO / f".h100c{i}"
            d.mkdir()
            p = d / f"{ARCHIVE}.part{i}"
            p.write_bytes(src.read(piece))
            sums.append((sha256(p), p.name))
            carry.append(f"{d.name} {p.name} {p.stat().st_size}")
            print(f"{d.name}: {p.stat().st_size / MiB:.2f} MiB")
    sums.append((sha256(args.archive), ARCHIVE))
    (HERE / "wheels.sha256").write_text("".join(f"{h}  {name}\n" for h, name in sums))
    (HERE / "carry.txt").write_text("# folder file bytes: what each carried folder holds (made by pack_site.py)\n"
                                    + "\n".join(carry) + "\n")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".h100c0"], cwd=REPO).returncode == 0
    print(f"{args.archive}: {size / MiB:.1f} MiB in {n} pieces; "
          f"{'ignored by git' if ignored else 'NOT IGNORED: add /.h100c*/ to .git/info/exclude'}")
    return 0 if ignored else 1


if __name__ == "__main__":
    sys.exit(main())
