"""The built-in vLLM emulator: a continuous-batching engine timed by a calibrated roofline, behind
vLLM's OpenAI-compatible HTTP API and Prometheus metrics. `python -m deploy.emulator --help`."""

from deploy.emulator.engine import EngineConfig, EngineCore, Request
from deploy.emulator.perf_model import DEFAULT_CALIBRATION, Calibration, PerfModel

__all__ = ["Calibration", "DEFAULT_CALIBRATION", "EngineConfig", "EngineCore", "PerfModel", "Request"]
