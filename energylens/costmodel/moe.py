"""MoE routing statistics: which experts a batch of tokens touches.

Under uniform routing each of ``tokens`` tokens picks ``top_k`` distinct experts out of
``num_experts``; an expert is untouched by one token with probability ``1 - k/E``, so the
expected number of distinct experts hit is ``E * (1 - (1 - k/E) ** T)``. A grouped-GEMM MoE
kernel reads only those experts' weights.

>>> round(expected_distinct_experts(128, 8, 1), 6)
8.0
>>> round(expected_distinct_experts(128, 8, 10_000), 3)
128.0
"""

from __future__ import annotations

import numpy as np

from energylens.errors import EstimateError

__all__ = ["expected_distinct_experts"]


def expected_distinct_experts(num_experts: float, top_k: float, tokens: float) -> float:
    """Expected number of distinct experts hit by ``tokens`` tokens, each routed to ``top_k`` of them."""
    if num_experts <= 0 or not 0 < top_k <= num_experts:
        raise EstimateError(f"MoE routing needs 0 < top_k <= num_experts, got top_k={top_k}, num_experts={num_experts}")
    if tokens < 0:
        raise EstimateError(f"token count must be >= 0, got {tokens}")
    return float(num_experts * (1.0 - np.power(1.0 - top_k / num_experts, tokens)))
