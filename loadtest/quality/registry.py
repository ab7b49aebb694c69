"""Quality collectors by the name of their block in the plan's `quality:` section."""

from __future__ import annotations

from loadtest.quality.base import Collector
from loadtest.quality.greedy import GreedyCollector
from loadtest.quality.likelihood import LikelihoodCollector
from loadtest.quality.lm_eval import LmEvalCollector
from loadtest.quality.task import TaskCollector

COLLECTORS: dict[str, type[Collector]] = {
    "likelihood": LikelihoodCollector,
    "greedy": GreedyCollector,
    "task": TaskCollector,
    "lm_eval": LmEvalCollector,
}
