"""Pareto frontier of two costs to minimise (energy per token vs latency).

A point ``j`` is *dominated* when some point ``i`` is no worse in both costs and better in one
(``x_i <= x_j``, ``y_i <= y_j``, not both equal). The frontier is the set of points nobody
dominates; equal points are all on it or all off it.

>>> pareto_mask([1.0, 2.0, 3.0, 2.0], [3.0, 1.0, 0.5, 2.0]).tolist()
[True, True, True, False]
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["pareto_mask", "dominated"]


def pareto_mask(x: Any, y: Any) -> np.ndarray:
    """Boolean mask of the non-dominated points of ``(x, y)`` (both minimised), in input order.

    O(n log n): sort by x then y; a point whose y is above the running minimum of the points before
    it is dominated; the few left (ties of the running minimum) are settled exactly.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d arrays of one length, got shapes {x.shape} and {y.shape}")
    n = len(x)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    before = np.concatenate(([np.inf], np.minimum.accumulate(ys)[:-1]))
    cand = ys <= before  # strictly above the running minimum: dominated
    best_x, best_y = np.inf, np.inf  # the earliest (smallest x) point achieving the running minimum
    for j in np.flatnonzero(cand):
        # points before j in sorted order: x <= xs[j]; their minimum y is best_y (<= ys[j] here)
        dominated_j = best_y < ys[j] or (best_y == ys[j] and best_x < xs[j])
        keep[order[j]] = not dominated_j
        if ys[j] < best_y:
            best_x, best_y = xs[j], ys[j]
    return keep


def dominated(x: Any, y: Any, i: int, j: int) -> bool:
    """Does point ``i`` dominate point ``j``?"""
    return bool(x[i] <= x[j] and y[i] <= y[j] and (x[i] < x[j] or y[i] < y[j]))
