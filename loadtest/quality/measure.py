"""Measure one variant's quality through its live server and write the raw rows.

results/<run>/quality/<variant>/ gets quality.json (status, reason, what the weights are, the plan's
settings, the eval files' hashes, what the server accepted) and one file per collector. Numbers
from dummy weights or the emulator would mean nothing, so those variants are recorded as
"not_measured" with the reason and no server is asked. A collector that fails (no prompt logprobs,
a 4xx, a server gone) leaves the variant "failed" with its reason; what the others measured is
written all the same, and nothing of the speed sweep is touched.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from core.backends import backend
from deploy.launcher import ServerCommand
from core.hardware.variants import resolve
from deploy.vllm_command import checkpoint, flag_name
from core.plan import Plan
from core.plan_quality import QualitySpec, file_sha256
from loadtest.quality.base import Context, NotMeasurable
from loadtest.quality.client import QualityClient, ServerAnswerError
from loadtest.quality.registry import COLLECTORS
from loadtest.quality.rows import DONE, FAILED, MEASURED, NOT_MEASURED, QUALITY_JSON
from core.results import ResultsError, atomic_write_json, atomic_write_table, safe_child

QUALITY_DIR = "quality"
ORIGIN_FILE = "ridgeline_quality.json"  # a checkpoint's own note of what its weights are (docs/quality.md)
EMULATOR_REASON = "emulator: no model weights"
DUMMY_REASON = "dummy weights (--load-format dummy)"
HOW_TO_MEASURE = ("quality is not measured on the emulator: give the plan a `quality:` section and "
                  "`backend: vllm` (or external) with real checkpoints, then `ridgeline quality plan.yaml` "
                  "(docs/quality.md)")


def quality_dir(run_path: Path, variant: str) -> Path:
    return safe_child(Path(run_path), QUALITY_DIR, variant)


def read_status(run_path: Path, variant: str) -> Optional[dict[str, Any]]:
    """The variant's quality.json, or None when there is none (or it cannot be read)."""
    p = quality_dir(run_path, variant) / QUALITY_JSON
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def quality_done(run_path: Path, variant: str) -> bool:
    """Whether the variant's quality is measured (or known not measurable): a resumed run keeps it."""
    st = read_status(run_path, variant)
    return st is not None and st.get("status") in DONE


def quality_todo(plan: Plan, run_path: Path) -> list[str]:
    """The variants whose quality the plan asks for and the run does not have yet."""
    q = plan.quality
    if q is None:
        return []
    return [v.name for v in plan.variants if q.measures(v.name) and not quality_done(run_path, v.name)]


def _flag_value(argv: list[str], flag: str) -> Optional[str]:
    for i, a in enumerate(argv):
        if flag_name(a) == flag:
            if "=" in a:
                return a.split("=", 1)[1]
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def weights_of(plan: Plan, cmd: ServerCommand) -> tuple[str, Optional[str]]:
    """What the server's weights are ("real", "dequantized-bf16", "dummy", "emulator") and why not to measure.

    Read from the command that really starts the server, and from the checkpoint's own note
    (ridgeline_quality.json, written where INT4 weights were dequantized back to bf16).
    """
    if backend(plan.backend).modelled:
        return "emulator", EMULATOR_REASON
    if backend(plan.backend).launches_vllm and _flag_value(list(cmd.argv), "--load-format") == "dummy":
        return "dummy", DUMMY_REASON
    if backend(plan.backend).launches_vllm:
        note = Path(checkpoint(plan, resolve(plan.variant(cmd.variant)))) / ORIGIN_FILE
        try:
            kind = json.loads(note.read_text()).get("weights")
        except (OSError, ValueError, AttributeError):
            kind = None
        if isinstance(kind, str) and kind:
            return kind, None
    return "real", None


def _settings(q: QualitySpec) -> dict[str, Any]:
    return q.model_dump(mode="json")


def _files(q: QualitySpec) -> dict[str, str]:
    out = {}
    for block in q.blocks().values():
        f = getattr(block, "file", None)
        if f:
            try:
                out[f] = file_sha256(f)
            except OSError as exc:
                out[f] = f"unreadable: {exc.strerror or exc}"
    return out


def measure_variant(plan: Plan, cmd: ServerCommand, run_path: Path, headers: Optional[dict[str, str]] = None,
                    unavailable: Optional[str] = None) -> dict[str, Any]:
    """Measure the variant's quality against its live server (cmd.url); write and return quality.json.

    `unavailable`: why the server cannot be asked (it did not start, it died): recorded as "failed".
    Never raises for what the server answers (that is the "failed" status); a results directory that
    cannot be written raises ResultsError as everywhere else.
    """
    q = plan.quality
    assert q is not None, "the plan has no quality section"
    out_dir = quality_dir(run_path, cmd.variant)
    weights, reason = weights_of(plan, cmd)
    spec = resolve(plan.variant(cmd.variant))
    record: dict[str, Any] = {
        "variant": cmd.variant, "status": NOT_MEASURED if reason else FAILED, "reason": reason,
        "weights": weights, "served_model": plan.served_model_name or cmd.variant,
        "baseline": q.baseline, "settings": _settings(q), "files": _files(q), "token_ids": False,
        "url": cmd.url, "checkpoint": checkpoint(plan, spec) if backend(plan.backend).launches_vllm else None,
        "measurements": {}, "started": time.time(), "ended": None,
    }
    if reason is None and unavailable:
        record["reason"] = unavailable
    elif reason is None:
        try:
            asyncio.run(_collect_all(plan, cmd, out_dir, record, headers or {}))
        except ResultsError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as the variant's failure, the run goes on
            record["status"], record["reason"] = FAILED, f"{type(exc).__name__}: {exc}"
    record["ended"] = time.time()
    atomic_write_json(out_dir / QUALITY_JSON, record)
    return record


async def _collect_all(plan: Plan, cmd: ServerCommand, out_dir: Path, record: dict[str, Any],
                       headers: dict[str, str]) -> None:
    q = plan.quality
    assert q is not None
    failures = []
    async with QualityClient(cmd.url, headers, concurrency=q.concurrency, timeout_s=q.timeout_s,
                             retries=q.retries) as client:
        for name, block in q.blocks().items():
            ctx = Context(client, plan.served_model_name or cmd.variant, cmd.url, block, cmd.variant,
                          checkpoint=record["checkpoint"], headers=headers)
            t0 = time.time()
            entry: dict[str, Any] = {"status": FAILED, "reason": None, "rows": 0}
            try:
                got = await COLLECTORS[name]().collect(ctx)
            except (NotMeasurable, ServerAnswerError) as exc:
                entry["reason"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one collector's bug or fault must not lose the others
                entry["reason"] = f"{type(exc).__name__}: {exc}"
            else:
                for fname, data in got.files.items():
                    if isinstance(data, pa.Table):
                        atomic_write_table(out_dir / f"{fname}.parquet", data)
                    else:
                        atomic_write_json(out_dir / f"{fname}.json", data)
                entry.update(status=MEASURED, rows=got.rows, protocol=got.notes)
                record["token_ids"] = record["token_ids"] or bool(got.notes.get("token_ids"))
            entry["seconds"] = round(time.time() - t0, 2)
            record["measurements"][name] = entry
            if entry["status"] == FAILED:
                failures.append(f"{name}: {entry['reason']}")
        record["requests"], record["retries"] = client.requests, client.retried
    record["status"] = FAILED if failures else MEASURED
    record["reason"] = "; ".join(failures) or None
