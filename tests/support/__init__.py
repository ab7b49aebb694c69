"""Shared pieces for tests that need the real vLLM engine: tiny models, the engine's interpreter, plans."""
