"""Pack the H100 wheels into carry folders .h100c0 .. .h100cN at the repository root, one per device call.

A device call ships the repository's working tree plus the folders it carries, 64 MiB at most.
The vLLM wheel (266 MiB) is cut into consecutive pieces and the small wheels are spread so that
every folder, with the working tree beside it, stays under the budget. The sha256 of every file
(the pieces, the small wheels and the whole vLLM wheel) goes to wheels.sha256, which install.sh
checks on the host; carry.txt says which file travels in which folder.

    python3 benchmarks/h100/pack.py --wheels /work/h100-wheels

The folders are ignored through .git/info/exclude (never committed); only wheels.sha256 and
carry.txt are.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MiB = 2**20
FOLDER_RE = re.compile(r"^\.h100c[0-9]$")
MAX_FOLDERS = 8  # a call carries at most 8 paths; .h100c0 .. .h100c7
PART_SUFFIX = ".part"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def tree_bytes(repo: Path) -> int:
    """What every call ships besides its carried folders: tracked and untracked, not ignored, files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout
    total = 0
    for name in out.split(b"\0"):
        p = repo / name.decode()
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def plan_folders(small: list[tuple[str, int]], vllm_bytes: int, cap: int) -> list[dict]:
    """Spread the small wheels (largest first, into the emptiest folder) over as few folders as the
    total needs, then fill each folder up to an even share with the next bytes of the vLLM wheel."""
    total = vllm_bytes + sum(s for _, s in small)
    n = max(1, math.ceil(total / cap))
    while n <= MAX_FOLDERS:
        share = math.ceil(total / n)
        folders = [{"small": [], "used": 0, "part": 0} for _ in range(n)]
        fits = True
        for name, size in sorted(small, key=lambda x: -x[1]):
            f = min(folders, key=lambda f: f["used"])
            if f["used"] + size > cap:
                fits = False
                break
            f["small"].append(name)
            f["used"] += size
        left = vllm_bytes
        for f in folders:
            room = max(0, min(share, cap) - f["used"])
            f["part"] = min(room, left)
            left -= f["part"]
        if fits and left > 0:  # even shares fell short: let the last folders take the rest up to the cap
            for f in reversed(folders):
                more = min(cap - f["used"] - f["part"], left)
                f["part"] += more
                left -= more
        if fits and left == 0:
            return folders
        n += 1
    raise SystemExit(f"the wheels ({total / MiB:.0f} MiB) do not fit {MAX_FOLDERS} folders of {cap / MiB:.1f} MiB")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, required=True, help="folder with the wheels (fetch_wheels.py --dest)")
    ap.add_argument("--call-mib", type=float, default=60.0,
                    help="most a call may ship: carried folder plus working tree (the limit is 64)")
    ap.add_argument("--tree-headroom-mib", type=float, default=3.0,
                    help="room left for the working tree to grow before the run")
    args = ap.parse_args(argv)

    wheels = sorted(args.wheels.glob("*.whl"))
    vllm = [w for w in wheels if w.name.startswith("vllm-")]
    if len(vllm) != 1:
        raise SystemExit(f"{args.wheels}: expected one vllm-*.whl, found {len(vllm)}")
    vllm_whl = vllm[0]
    small = [(w.name, w.stat().st_size) for w in wheels if w != vllm_whl]
    tree = tree_bytes(REPO)
    cap = int(args.call_mib * MiB) - tree - int(args.tree_headroom_mib * MiB)
    folders = plan_folders(small, vllm_whl.stat().st_size, cap)

    for old in REPO.iterdir():
        if old.is_dir() and FOLDER_RE.match(old.name):
            shutil.rmtree(old)
    sums: list[tuple[str, str]] = []
    carry: list[str] = []
    offset = 0
    with vllm_whl.open("rb") as src:
        for i, f in enumerate(folders):
            d = REPO / f".h100c{i}"
            d.mkdir()
            for name in f["small"]:
                shutil.copy2(args.wheels / name, d / name)
            if f["part"]:
                piece = d / f"{vllm_whl.name}{PART_SUFFIX}{i}"
                with piece.open("wb") as out:
                    out.write(src.read(f["part"]))
                offset += f["part"]
            for p in sorted(d.iterdir()):
                sums.append((sha256(p), p.name))
                carry.append(f"{d.name} {p.name} {p.stat().st_size}")
    assert offset == vllm_whl.stat().st_size
    sums.append((sha256(vllm_whl), vllm_whl.name))

    (HERE / "wheels.sha256").write_text("".join(f"{h}  {n}\n" for h, n in sums))
    (HERE / "carry.txt").write_text(
        "# folder file bytes: what each carried folder holds (made by pack.py)\n" + "\n".join(carry) + "\n")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".h100c0"], cwd=REPO).returncode == 0
    for i in range(len(folders)):
        d = REPO / f".h100c{i}"
        size = sum(p.stat().st_size for p in d.iterdir())
        print(f"{d.name}: {size / MiB:6.2f} MiB in {len(list(d.iterdir()))} files; "
              f"with the working tree {(size + tree) / MiB:6.2f} MiB")
    print(f"working tree {tree / MiB:.2f} MiB; {len(sums) - 1} files in {len(folders)} folders; "
          f"{'ignored by git' if ignored else 'NOT IGNORED: add /.h100c*/ to .git/info/exclude'}")
    return 0 if ignored else 1


if __name__ == "__main__":
    sys.exit(main())
