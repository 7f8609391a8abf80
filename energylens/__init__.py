"""energylens: an energy-aware compiler for LLM inference on GPU clusters.

>>> import energylens as el
>>> wl = el.Workload(batch=16, prompt_len=2048, output_len=512)
>>> wl.decode_context_len
2304
"""

from __future__ import annotations

from energylens.errors import EnergylensError
from energylens.typing import SLO, Cluster, Estimate, Parallel, Workload

__all__ = ["EnergylensError", "SLO", "Cluster", "Estimate", "Parallel", "Workload", "estimate", "compile", "Plan", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import energylens` must not import torch
    if name in ("estimate", "compile", "Plan"):
        from energylens import api

        return getattr(api, name)
    raise AttributeError(f"module 'energylens' has no attribute {name!r}")
