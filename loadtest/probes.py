"""What watches a step besides the load itself: each watcher a probe behind one protocol.

The runner drives a list of probes through a step: ``open`` before the step's clock starts (a
source opened and first read outside the measurement), ``start`` once the load is on, ``poll``
every loop tick (a probe may end the step early by returning why), ``stop`` as soon as the load
stops (before the records are collected), and ``finish`` once the requests are on disk (write
its own files, note what it saw on the step or the manifest). To watch something new in every
step, write a class with these five methods here and add it to ``Sweep._probes``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import psutil

from core.records import StepInfo
from core.telemetry import write_telemetry
from deploy import launcher, prefix_cache
from deploy.render.prometheus import publish_targets
from loadtest.exporter import ClientExporter
from loadtest.prom_reader import step_series
from loadtest.scraper import Scraper
from loadtest.telemetry import GpuSampler, Telemetry

CLIENT_SATURATED_PCT = 90.0


@dataclass
class StepContext:
    """One step as the probes see it."""

    plan: Any
    run: Any  # core.results.RunDir
    cmd: launcher.ServerCommand
    index: int
    concurrency: Optional[int]
    rate: Optional[float]
    driver: Any
    headers: Optional[dict[str, str]]
    warnings: list[str]  # the manifest's warnings
    info: Optional[StepInfo] = None  # set when the step's clock starts
    t_start: float = 0.0
    end: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Probe(Protocol):
    def open(self, step: StepContext) -> None: ...

    def start(self, step: StepContext) -> None: ...

    def poll(self, step: StepContext, now: float) -> Optional[str]: ...

    def stop(self, step: StepContext) -> None: ...

    def finish(self, step: StepContext) -> None: ...


class _Quiet:
    """Default no-ops, so a probe writes only the hooks it needs."""

    def open(self, step: StepContext) -> None:
        pass

    def start(self, step: StepContext) -> None:
        pass

    def poll(self, step: StepContext, now: float) -> Optional[str]:
        return None

    def stop(self, step: StepContext) -> None:
        pass

    def finish(self, step: StepContext) -> None:
        pass


class PrefixCacheReset(_Quiet):
    """server.prefix_cache: reset, a strict A/B: nothing cached from the step before."""

    def open(self, step: StepContext) -> None:
        if step.plan.server.prefix_cache == "reset":
            err = prefix_cache.reset(step.cmd.url, step.headers)
            if err:
                step.warnings.append(f"{step.cmd.variant} step {step.index}: prefix cache not reset: {err}")


class GpuProbe(_Quiet):
    """GPU telemetry: the variant's sampler, opened and first read before the clock; its file at the end."""

    def __init__(self, sampler: GpuSampler, telemetry: Telemetry):
        self.gpu, self.telemetry = sampler, telemetry

    def open(self, step: StepContext) -> None:
        self.gpu.new_step(step.index)
        self.gpu.poll(force=True)

    def poll(self, step: StepContext, now: float) -> Optional[str]:
        self.gpu.poll(now)
        return None

    def stop(self, step: StepContext) -> None:
        self.gpu.poll(force=True)

    def finish(self, step: StepContext) -> None:
        if self.gpu.active:
            write_telemetry(step.run, step.cmd.variant, step.index, self.gpu.table())
            self.telemetry.finish(self.gpu)


class ScrapeProbe(_Quiet):
    """The server's /metrics, polled here (scrape.direct) or read from Prometheus afterwards."""

    def __init__(self, step_plan: Any, cmd: launcher.ServerCommand, headers: Optional[dict[str, str]]):
        self.spec = step_plan.scrape
        self.scraper = Scraper(cmd.url + "/metrics", cmd.variant, headers=headers, timeout=self.spec.timeout_s,
                               interval=self.spec.interval_s, max_server_share=self.spec.max_server_share)

    def open(self, step: StepContext) -> None:
        self.scraper.new_step(step.index)

    def start(self, step: StepContext) -> None:
        if self.spec.direct:
            self.scraper.start()

    def stop(self, step: StepContext) -> None:
        self.scraper.stop(final=self.spec.direct)

    def finish(self, step: StepContext) -> None:
        spec, scraper = self.spec, self.scraper
        if scraper.widest_interval > spec.interval_s * 1.01:
            step.warnings.append(
                f"{step.cmd.variant} step {step.index}: /metrics took about "
                f"{scraper.widest_interval * spec.max_server_share:.2f} s to serve, so it was scraped every "
                f"{scraper.widest_interval:.1f} s at most instead of {spec.interval_s:g} s (scrape.max_server_share "
                f"{spec.max_server_share:g}): frequent scrapes would slow the server they measure")
        buf = self.scraper.buffer
        if buf.failures and step.info is not None:
            step.info.error = f"{buf.failures} of {buf.scrapes} scrapes failed ({buf.last_error})"
        series, warn = step_series(self.spec, step.cmd.url, step.cmd.variant, step.index, step.t_start, step.end,
                                   buf.table() if self.spec.direct else None)
        if warn:
            step.warnings.append(warn)
        step.run.write_metrics(step.cmd.variant, step.index, series)


class ExporterProbe(_Quiet):
    """The load generator's own metrics: the exporter follows the step's driver."""

    def __init__(self, exporter: ClientExporter):
        self.exporter = exporter

    def start(self, step: StepContext) -> None:
        self.exporter.attach(step.driver, step.cmd.variant, step.index, step.concurrency, step.rate)

    def finish(self, step: StepContext) -> None:
        self.exporter.end_step()


class TargetsProbe(_Quiet):
    """Prometheus file-based targets: the server being measured (and the exporter) while the step runs."""

    def __init__(self, exporter_url: Callable[[], Optional[str]]):
        self.exporter_url = exporter_url

    def start(self, step: StepContext) -> None:
        publish_targets(step.plan.scrape.targets_dir, {step.cmd.variant: step.cmd.url}, self.exporter_url())


class ClientCpuProbe(_Quiet):
    """The busiest load-generator process's CPU, once a second; a step near a full core is flagged."""

    def __init__(self, proc: psutil.Process):
        self.proc, self.cpu_max, self.next = proc, 0.0, 0.0

    def open(self, step: StepContext) -> None:
        self.cpu_max = 0.0
        self.proc.cpu_percent(None)

    def start(self, step: StepContext) -> None:
        self.next = time.time() + 1.0

    def poll(self, step: StepContext, now: float) -> Optional[str]:
        if now >= self.next:
            # with workers, the busiest worker process counts too
            self.cpu_max = max(self.cpu_max, self.proc.cpu_percent(None),
                               getattr(step.driver, "worker_cpu_max", lambda: 0.0)())
            self.next = now + 1.0
        return None

    def finish(self, step: StepContext) -> None:
        info = step.info
        if info is None:
            return
        info.client_cpu_max = round(self.cpu_max, 1)
        info.client_saturated = self.cpu_max >= CLIENT_SATURATED_PCT
        if info.client_saturated:
            step.warnings.append(
                f"{step.cmd.variant} step {step.index}: a load-generator process reached {self.cpu_max:.0f}% of a "
                f"core; its latencies may include client delay (use more workers)")


class LivenessProbe(_Quiet):
    """The variant's server process: a step ends, failed, the moment it exits."""

    def __init__(self, server: Optional[launcher.Server]):
        self.server = server

    def poll(self, step: StepContext, now: float) -> Optional[str]:
        s = self.server
        if s is not None and not s.alive():
            return (f"server of {step.cmd.variant} exited with status {s.process.returncode} "
                    f"during step {step.index}; last log lines:\n{s.log_tail(20)}")
        return None
