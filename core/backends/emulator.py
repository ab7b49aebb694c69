"""The built-in vLLM emulator (deploy/emulator): a modelled GPU, figures that are not measurements."""

from core.backends.base import Backend

BACKEND = Backend("emulator", "emulator — modelled, not measured on a GPU", modelled=True)
