"""Steady-state serving: Poisson prefill mixture and medians."""

from __future__ import annotations

import pytest

from energylens.costmodel.serving import (
    MAX_NUM_BATCHED_TOKENS,
    poisson_median,
    prefill_mixture,
    prefill_tokens_per_step,
)
from energylens.typing import Workload


@pytest.mark.parametrize("lam,median", [(0.0, 0), (0.5, 0), (0.7, 1), (1.0, 1), (2.6, 2), (10.0, 10)])
def test_poisson_median(lam, median):
    assert poisson_median(lam) == median


@pytest.mark.parametrize("batch", [1, 8, 128, 1024])
def test_mixture_is_a_distribution_with_the_right_mean(batch):
    wl = Workload(batch=batch, prompt_len=634, output_len=400)
    mix = prefill_mixture(wl)
    assert sum(w for w, _ in mix) == pytest.approx(1.0)
    mean = sum(w * t for w, t in mix)
    assert mean == pytest.approx(min(batch * 634 / 400, MAX_NUM_BATCHED_TOKENS - batch), rel=0.02)
    assert all(t <= MAX_NUM_BATCHED_TOKENS - batch for _, t in mix)


def test_rare_arrivals_leave_median_step_pure_decode():
    assert prefill_tokens_per_step(Workload(batch=8, prompt_len=634, output_len=400), median=True) == 0
    assert prefill_tokens_per_step(Workload(batch=800, prompt_len=634, output_len=400), median=True) > 0
