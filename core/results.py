"""The results directory: the contract between measuring and analysing.

Layout of one run (everything downstream reads only this):

    <run>/manifest.json                 plan as run, versions, host, servers, steps and their status
    <run>/plan.yaml                     the plan as run, re-loadable
    <run>/requests/<variant>/step-NNN.parquet   one row per request (records.REQUEST_SCHEMA)
    <run>/metrics/<variant>/step-NNN.parquet    scraped /metrics samples (records.METRIC_SCHEMA)
    <run>/steps.parquet, steps.csv      the derived per-step table (analysis)
    <run>/summary.json                  stable summary for scripts (analysis)
    <run>/report.html, report.md, charts/*.png
    <run>/logs/<variant>.log            server logs

Every file is written to a temporary name and renamed, so a crash leaves either the old file or
the new one, never half of one; a step in flight when the process dies is marked incomplete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import RidgelineError
from core.records import METRIC_SCHEMA, REQUEST_SCHEMA, RequestRecord, StepInfo, records_to_table

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
STEPS = "steps.parquet"


class ResultsError(RidgelineError, RuntimeError):
    """A results directory that cannot be read or written."""


class DiskFullError(ResultsError):
    """The results could not be written because the filesystem (or a size limit) is full."""


def _no_room(path: Path, exc: OSError) -> Optional[DiskFullError]:
    """A clear error for a write that failed for lack of space; None for any other failure."""
    import errno
    import shutil

    code = exc.errno
    if code is None and "No space left" in str(exc):  # some writers lose the errno
        code = errno.ENOSPC
    if code not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return None
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free there now"
    except OSError:
        free = "free space unknown"
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EFBIG: "the file size limit (ulimit -f) is reached"}[code]
    return DiskFullError(f"{why}: could not write {path} ({os.strerror(code)}; {free}). "
                         f"What was written before is intact; free space and resume the run.")


def atomic_write_bytes(path: Path, data: bytes, mode: Optional[int] = None) -> None:
    """Write then rename, with fsync, so a reader never sees half a file.

    `mode` (e.g. 0o644) is set before the rename, for a file another user must read (a Prometheus
    in a container reads its targets file as someone else); otherwise the file stays private.
    """
    _replace_via_temp(path, lambda tmp: Path(tmp).write_bytes(data), mode)


def _replace_via_temp(path: Path, write: Callable[[str], None], mode: Optional[int] = None) -> None:
    """Write through a temporary name beside `path`, fsync, then rename over it: a reader never sees
    half a file, a failure leaves no temporary behind, and a full disk is a DiskFullError naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    except OSError as exc:
        full = _no_room(path, exc)
        if full is None:
            raise
        raise full from None


def atomic_write_text(path: Path, text: str, mode: Optional[int] = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Parquet through a temporary name; a full disk is a DiskFullError naming the file."""
    _replace_via_temp(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def safe_child(root: Path, *parts: str) -> Path:
    """A path under root built from names that came from a plan; refuse any that escapes it."""
    p = root.joinpath(*parts).resolve()
    r = root.resolve()
    if p != r and r not in p.parents:
        raise ResultsError(f"{'/'.join(parts)!r} would leave the results directory {root}")
    return p


class RunDir:
    """Paths and atomic writes of one run's results directory."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    # paths
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    def requests_path(self, variant: str, step: int) -> Path:
        return safe_child(self.path, "requests", variant, f"step-{step:03d}.parquet")

    def metrics_path(self, variant: str, step: int) -> Path:
        return safe_child(self.path, "metrics", variant, f"step-{step:03d}.parquet")

    def log_path(self, variant: str) -> Path:
        return safe_child(self.path, "logs", f"{variant}.log")

    @property
    def charts_dir(self) -> Path:
        return self.path / "charts"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    # writing
    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in ("requests", "metrics", "logs"):
            (self.path / sub).mkdir(exist_ok=True)
        return self

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def write_requests(self, variant: str, step: int, records: list[RequestRecord]) -> Path:
        path = self.requests_path(variant, step)
        atomic_write_table(path, records_to_table(records))
        return path

    def write_metrics(self, variant: str, step: int, table: pa.Table) -> Path:
        path = self.metrics_path(variant, step)
        atomic_write_table(path, table.cast(METRIC_SCHEMA))
        return path

    # reading
    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ResultsError(f"{self.path} is not a results directory (no {MANIFEST})") from None
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{self.manifest_path}: not valid JSON ({exc})") from None

    def steps(self) -> list[StepInfo]:
        return [StepInfo.from_dict(s) for s in self.read_manifest().get("steps", [])]

    def read_requests(self, columns: Optional[list[str]] = None) -> pd.DataFrame:
        """All request rows of the run, one DataFrame (empty with the right columns if none)."""
        return _read_tree(self.path / "requests", REQUEST_SCHEMA, columns)

    def read_metrics(self, columns: Optional[list[str]] = None) -> pd.DataFrame:
        return _read_tree(self.path / "metrics", METRIC_SCHEMA, columns)

    def read_requests_table(self, columns: Optional[list[str]] = None) -> pa.Table:
        return _read_tree_table(self.path / "requests", REQUEST_SCHEMA, columns)


def _files(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.glob("*/step-*.parquet") if not p.name.startswith("."))


def _read_tree_table(root: Path, schema: pa.Schema, columns: Optional[list[str]]) -> pa.Table:
    files = _files(root)
    sch = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    if not files:
        return sch.empty_table()
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=columns, schema=schema).cast(sch))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ResultsError(f"{f}: cannot be read ({exc})") from None
    return pa.concat_tables(tables)


def _read_tree(root: Path, schema: pa.Schema, columns: Optional[list[str]]) -> pd.DataFrame:
    return _read_tree_table(root, schema, columns).to_pandas()


def list_runs(root: Union[str, Path]) -> Iterable[Path]:
    r = Path(root)
    return sorted(p.parent for p in r.glob(f"*/{MANIFEST}"))
