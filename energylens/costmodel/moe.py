"""MoE routing statistics: which experts a batch of tokens touches.

Under uniform routing each of ``tokens`` tokens picks ``top_k`` distinct experts out of
``num_experts``; an expert is untouched by one token with probability ``1 - k/E``, so the
expected number of distinct experts hit is ``E * (1 - (1 - k/E) ** T)``. A grouped-GEMM MoE
kernel reads only those experts' weights. Under a skewed routing expert ``e`` takes a share
``q_e`` of the token-slots (``passes.moe``), is picked by one token with probability ``k q_e``,
and the expected count is ``sum_e 1 - (1 - k q_e) ** T``: fewer experts, fewer weight bytes.

>>> round(expected_distinct_experts(128, 8, 1), 6)
8.0
>>> round(expected_distinct_experts(128, 8, 10_000), 3)
128.0
>>> shares = [0.5 / 8] * 8 + [0.5 / 120] * 120          # half the slots on 8 hot experts
>>> round(expected_distinct_experts(128, 8, 8), 1), round(expected_distinct_experts(128, 8, 8, shares), 1)
(51.6, 36.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from energylens.errors import EstimateError

__all__ = ["expected_distinct_experts"]


def expected_distinct_experts(num_experts: float, top_k: float, tokens: float,
                              shares: Sequence[float] | None = None) -> float:
    """Expected number of distinct experts hit by ``tokens`` tokens, each routed to ``top_k`` of
    them; ``shares``: each expert's share of the token-slots (None: uniform, ``1 / num_experts``)."""
    if num_experts <= 0 or not 0 < top_k <= num_experts:
        raise EstimateError(f"MoE routing needs 0 < top_k <= num_experts, got top_k={top_k}, num_experts={num_experts}")
    if tokens < 0:
        raise EstimateError(f"token count must be >= 0, got {tokens}")
    if shares is None:
        return float(num_experts * (1.0 - np.power(1.0 - top_k / num_experts, tokens)))
    picked = np.minimum(top_k * np.asarray(shares, dtype=float), 1.0)  # P(one token picks expert e)
    return float(np.sum(1.0 - np.power(1.0 - picked, tokens)))
