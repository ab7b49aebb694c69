"""Bringing servers up and down: the variant registry, the launcher, the emulator, rendered deployments."""
