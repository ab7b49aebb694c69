"""Shared pieces for tests: tiny models, the engine's interpreter, plans, the project's own source files."""
