"""Bringing servers up and down: server commands per backend, the launcher, checks, the emulator, renders."""
