"""Pareto frontier on hand-made points: no frontier point dominated, every other point dominated."""

from __future__ import annotations

import numpy as np
import pytest

from energylens.search.compile import _batch_grid
from energylens.search.pareto import dominated, pareto_mask


def _brute(x, y):
    n = len(x)
    return np.array([not any(dominated(x, y, i, j) for i in range(n)) for j in range(n)], dtype=bool)


def test_hand_made_points():
    x = [1.0, 2.0, 3.0, 2.0, 4.0, 1.0]
    y = [3.0, 1.0, 0.5, 2.0, 0.5, 3.0]
    # (2,2) is dominated by (2,1); (4,0.5) by (3,0.5); the two (1,3) are equal: both on the frontier
    assert pareto_mask(x, y).tolist() == [True, True, True, False, False, True]


@pytest.mark.parametrize("seed", range(40))
def test_property_random_points_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    x = rng.integers(0, 8, n).astype(float)  # small integer grid: many ties
    y = rng.integers(0, 8, n).astype(float)
    m = pareto_mask(x, y)
    assert m.any()
    for j in range(n):
        dominated_j = any(dominated(x, y, i, j) for i in range(n))
        assert dominated_j != m[j], (j, x[j], y[j])
    assert (m == _brute(x, y)).all()


def test_continuous_points_match_brute_force():
    rng = np.random.default_rng(7)
    x, y = rng.random(500), rng.random(500)
    assert (pareto_mask(x, y) == _brute(x, y)).all()


def test_empty_and_bad_shapes():
    assert pareto_mask([], []).tolist() == []
    with pytest.raises(ValueError):
        pareto_mask([1.0, 2.0], [1.0])


def test_batch_grid_multiples_of_dp():
    assert _batch_grid(4, 8) == ()
    g = _batch_grid(64, 4)
    assert g[0] == 4 and g[-1] == 64 and all(b % 4 == 0 for b in g)
    assert _batch_grid(1000, 1)[-1] == 1000
