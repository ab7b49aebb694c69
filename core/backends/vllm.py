"""Real vLLM servers that ridgeline starts (deploy/vllm_command.py builds their command lines)."""

from core.backends.base import Backend

BACKEND = Backend("vllm", "vllm — measured on real servers", launches_vllm=True)
