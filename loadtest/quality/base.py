"""The one small interface every quality collector implements.

A collector asks a live server one kind of question (prompt logprobs, greedy continuations, task
answers, a harness run) and returns the rows to store; `measure.py` runs the collectors the plan's
quality section names, through the registry, and writes what they return. A new metric is a new
module with a `Collector` subclass plus one line in `registry.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import pyarrow as pa

from loadtest.quality.client import QualityClient, first_choice

COMPLETIONS = "/v1/completions"


class NotMeasurable(RuntimeError):
    """The server cannot answer this kind of question at all (e.g. it returns no prompt logprobs)."""


@dataclass
class Context:
    """What a collector needs to ask one variant's server."""

    client: QualityClient
    model: str  # the served model name requests carry
    base_url: str
    spec: Any  # the plan's block for this collector (LikelihoodSpec, GreedySpec...)
    variant: str
    checkpoint: Optional[str] = None  # the model directory, where the server loads one from disk
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Output:
    """What one collector measured: files to write (Parquet tables or JSON objects) and protocol notes."""

    files: dict[str, Union[pa.Table, dict[str, Any]]]
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. which request options the server accepted
    rows: int = 0


class Collector(ABC):
    """One kind of quality measurement against a live OpenAI-compatible server."""

    name: ClassVar[str]

    @abstractmethod
    async def collect(self, ctx: Context) -> Output:
        """Ask the server and return the rows; raise NotMeasurable or ServerAnswerError when it cannot."""


async def answer_at_temperature_0(ctx: Context, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    """The server's greedy completion of `prompt` (its first choice): what greedy and task collectors ask."""
    body = {"model": ctx.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **extra}
    return first_choice(await ctx.client.post(COMPLETIONS, body), COMPLETIONS)


def first(records: list, limit: Optional[int]) -> list:
    """The first `limit` records (all when None)."""
    return records[:limit] if limit else records
