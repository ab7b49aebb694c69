"""Real prompts from files: ShareGPT-format conversations (JSON list or JSONL) and prompt JSONL.

Every file is read and checked in full before any server starts, so a bad record fails the run
at once with the file, the record number (and line) and the reason. What is kept in memory is
small: for JSONL only where each record starts in the file (records are re-read when sent); for a
JSON list, read as a stream, only the turns of each conversation.

Formats:
- ShareGPT: a list (JSON) or one object per line (JSONL) of
  {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}
  ("user"/"assistant" are taken too; "system" turns are skipped). A conversation gives as many
  turns as it has human turns each answered by a gpt turn; one with none is skipped and counted.
- Prompts: JSONL of {"prompt": "...", "output_tokens": 128} (output_tokens optional).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from scenarios.prompts import ScenarioError

HUMAN = {"human", "user"}
GPT = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}
SYSTEM = {"system"}


@dataclass(frozen=True, slots=True)
class Turn:
    """One user turn and what the dataset's answer to it was."""

    prompt: str
    reply: Optional[str] = None  # the dataset's answer (ShareGPT); its length sets output tokens
    output_tokens: Optional[int] = None  # given outright (prompts JSONL)


class DatasetError(ScenarioError):
    """A dataset file that cannot be used; names the file, the record and the line."""

    def __init__(self, path: Union[str, Path], why: str, record: Optional[int] = None, line: Optional[int] = None):
        where = str(path)
        if record is not None:
            where += f", record {record}"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"dataset {where}: {why}")
        self.path, self.record, self.line, self.why = str(path), record, line, why


class Dataset:
    """The usable records of one file; record(i) gives the turns of the i-th."""

    def __init__(self, path: Union[str, Path], fmt: str = "auto"):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise DatasetError(self.path, "no such file")
        if not self.path.is_file():
            raise DatasetError(self.path, "not a file")
        self.format = fmt  # sharegpt | prompts (resolved from the first record when auto)
        self.container = ""  # json | jsonl
        self.records_read = 0
        self.skipped = 0
        self._offsets: list[int] = []  # JSONL: byte offset of each usable record
        self._turns: list[tuple[Turn, ...]] = []  # JSON list: the turns of each usable record
        self._load()
        if not len(self):
            raise DatasetError(self.path, "empty: no usable record" + (
                f" ({self.skipped} conversations have no human turn answered by a gpt turn)" if self.skipped else ""))

    def __len__(self) -> int:
        return len(self._offsets) if self.container == "jsonl" else len(self._turns)

    def record(self, i: int) -> tuple[Turn, ...]:
        """The turns of usable record i (0-based)."""
        if self.container == "json":
            return self._turns[i]
        with self.path.open("rb") as f:
            f.seek(self._offsets[i])
            line = f.readline()
        turns = self._parse(json.loads(line), i + 1, None)
        assert turns is not None
        return turns

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "container": self.container,
                "records": len(self), "records_read": self.records_read, "skipped": self.skipped}

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        with self.path.open("rb") as f:
            head = f.read(4096)
        first = head.lstrip()[:1]
        if not first:
            raise DatasetError(self.path, "empty file")
        if first == b"[":
            self.container = "json"
            for n, (rec, line) in enumerate(_iter_json_list(self.path), 1):
                self.records_read = n
                turns = self._parse(rec, n, line)
                if turns is None:
                    self.skipped += 1
                else:
                    self._turns.append(turns)
        else:
            self.container = "jsonl"
            n = 0
            offset = 0
            with self.path.open("rb") as f:
                for lineno, raw in enumerate(f, 1):
                    start, offset = offset, offset + len(raw)
                    if not raw.strip():
                        continue
                    n += 1
                    self.records_read = n
                    try:
                        rec = json.loads(raw)
                    except ValueError as exc:
                        hint = " (a JSON list must start with '[')" if n == 1 else ""
                        raise DatasetError(self.path, f"not JSON: {exc}{hint}", n, lineno) from None
                    turns = self._parse(rec, n, lineno)
                    if turns is None:
                        self.skipped += 1
                    else:
                        self._offsets.append(start)

    def _parse(self, rec: Any, n: int, line: Optional[int]) -> Optional[tuple[Turn, ...]]:
        """The turns of one record; None for a conversation without a usable turn; raises when malformed."""
        if not isinstance(rec, dict):
            raise DatasetError(self.path, f"expected an object, got {_kind(rec)}", n, line)
        if self.format == "auto":
            if "conversations" in rec:
                self.format = "sharegpt"
            elif "prompt" in rec:
                self.format = "prompts"
            else:
                raise DatasetError(self.path, "cannot tell the format: the record has neither 'conversations' "
                                   "(ShareGPT) nor 'prompt' (prompts JSONL)", n, line)
        if self.format == "sharegpt":
            return _sharegpt(rec, self.path, n, line)
        return _prompt(rec, self.path, n, line)


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "true/false", type(None): "null"}.get(type(v), type(v).__name__)


def _sharegpt(rec: dict[str, Any], path: Path, n: int, line: Optional[int]) -> Optional[tuple[Turn, ...]]:
    conv = rec.get("conversations")
    if conv is None:
        raise DatasetError(path, "missing turns: no 'conversations' list", n, line)
    if not isinstance(conv, list):
        raise DatasetError(path, f"'conversations' must be a list of turns, got {_kind(conv)}", n, line)
    turns: list[Turn] = []
    pending: Optional[str] = None
    for i, t in enumerate(conv):
        if not isinstance(t, dict):
            raise DatasetError(path, f"turn {i} must be an object with 'from' and 'value', got {_kind(t)}", n, line)
        who, val = t.get("from", t.get("role")), t.get("value", t.get("content"))
        if not isinstance(who, str):
            raise DatasetError(path, f"turn {i}: 'from' must be a string, got {_kind(who)}", n, line)
        if not isinstance(val, str):
            raise DatasetError(path, f"turn {i}: 'value' must be a string, got {_kind(val)}", n, line)
        who = who.lower()
        if who in HUMAN:
            pending = val if val.strip() else None
        elif who in GPT:
            if pending is not None and val.strip():
                turns.append(Turn(pending, reply=val))
            pending = None
        elif who not in SYSTEM:
            raise DatasetError(path, f"turn {i}: unknown speaker {who!r} (expected human or gpt)", n, line)
    return tuple(turns) if turns else None


def _prompt(rec: dict[str, Any], path: Path, n: int, line: Optional[int]) -> tuple[Turn, ...]:
    if "prompt" not in rec:
        raise DatasetError(path, "missing 'prompt'", n, line)
    p = rec["prompt"]
    if not isinstance(p, str):
        raise DatasetError(path, f"'prompt' must be a string, got {_kind(p)}", n, line)
    if not p.strip():
        raise DatasetError(path, "'prompt' is empty", n, line)
    out = rec.get("output_tokens")
    if out is not None and (not isinstance(out, int) or isinstance(out, bool) or out < 1):
        raise DatasetError(path, f"'output_tokens' must be a whole number of at least 1, got {out!r}", n, line)
    return (Turn(p, output_tokens=out),)


def _iter_json_list(path: Path, block: int = 1 << 20) -> Iterator[tuple[Any, int]]:
    """Yield (element, line) of a top-level JSON list, reading the file in blocks (no whole-file parse)."""
    dec = json.JSONDecoder()
    buf = ""
    pos = 0
    line = 1  # line number at buf[pos]
    n = 0
    eof = False
    with path.open("r", encoding="utf-8", errors="strict") as f:

        def more() -> bool:
            nonlocal buf, pos, eof
            try:
                chunk = f.read(block)
            except UnicodeDecodeError as exc:
                raise DatasetError(path, f"not UTF-8 text: {exc}", n + 1, line) from None
            if not chunk:
                eof = True
                return False
            buf = buf[pos:] + chunk
            pos = 0
            return True

        def skip_ws() -> None:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    if buf[pos] == "\n":
                        line += 1
                    pos += 1
                if pos < len(buf) or not more():
                    return

        more()
        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            raise DatasetError(path, "not JSON: a JSON dataset is a list of records")
        pos += 1
        skip_ws()
        if pos < len(buf) and buf[pos] == "]":
            return
        while True:
            skip_ws()
            if pos >= len(buf):
                raise DatasetError(path, "not JSON: the list is not closed with ']'", n + 1, line)
            while True:
                try:
                    obj, end = dec.raw_decode(buf, pos)
                    # a number or literal cut at the block edge decodes early: make sure it ended
                    if end == len(buf) and not eof and more():
                        continue
                    break
                except ValueError as exc:
                    if not eof and more():
                        continue
                    raise DatasetError(path, f"not JSON: {exc.args[0].split(':')[0]}", n + 1,
                                       line + buf.count("\n", pos, getattr(exc, "pos", pos))) from None
            n += 1
            yield obj, line
            line += buf.count("\n", pos, end)
            pos = end
            skip_ws()
            if pos >= len(buf):
                raise DatasetError(path, "not JSON: the list is not closed with ']'", n, line)
            c = buf[pos]
            pos += 1
            if c == "]":
                return
            if c != ",":
                raise DatasetError(path, f"not JSON: expected ',' or ']' after the record, found {c!r}", n, line)


_CACHE: dict[tuple[str, str, int, int], Dataset] = {}


def load_dataset(path: Union[str, Path], fmt: str = "auto") -> Dataset:
    """Load (or reuse, while the file is unchanged) a dataset; raises DatasetError naming what is wrong."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        raise DatasetError(p, "no such file") from None
    key = (str(p.resolve()), fmt, st.st_mtime_ns, st.st_size)
    ds = _CACHE.get(key)
    if ds is None:
        ds = Dataset(p, fmt)
        if fmt != "auto" and ds.format != fmt:  # pragma: no cover - format is fixed when given
            raise DatasetError(p, f"expected format {fmt}, found {ds.format}")
        _CACHE.clear()
        _CACHE[key] = ds
    return ds
