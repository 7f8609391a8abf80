"""Vectorised pricing of a MoE model (expert straggler under ep, overlap, dp) equals el.estimate."""

from __future__ import annotations

import numpy as np
import pytest

import energylens as el
from energylens.api import resolve_model
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.profile import load_profile
from energylens.search.compile import variants
from energylens.search.evaluate import Knobs, Variant, clock_profile, price_variant

MODEL = "Qwen/Qwen3-30B-A3B-Instruct-2507"


def test_variants_use_vllms_expert_parallel_sizes_only():
    vs = variants(resolve_model(MODEL), 4)
    assert {(v.parallel.tp, v.parallel.ep, v.parallel.dp) for v in vs} == {
        (1, 1, 1), (1, 1, 2), (1, 2, 2), (1, 1, 3), (1, 1, 4), (1, 4, 4), (2, 1, 1), (2, 2, 1), (2, 1, 2),
        (2, 4, 2), (4, 1, 1), (4, 4, 1)}  # dp=3: 128 experts do not split 3 ways, so ep=1 only


@pytest.mark.parametrize("par,legacy", [(el.Parallel(tp=2, ep=4, dp=2), False), (el.Parallel(tp=4, ep=1, dp=1), False),
                                        (el.Parallel(tp=2, ep=4, dp=2), True)])  # True: vLLM 0.11's MoE tiles
def test_moe_prices_equal_estimate(par, legacy):
    traced = resolve_model(MODEL)
    gpu, prof = get_gpu("H100-SXM"), load_profile("H100-SXM").with_params(legacy_moe_tiles=legacy)
    wl = el.Workload(batch=32, prompt_len=512, output_len=128)
    knobs = Knobs(batches=(4, 32), clocks_mhz=(1380, 1980), comm_sms=(None, 16))
    r = price_variant(Variant(par, True, traced.prefill, traced.decode), knobs, wl, gpu, prof, "nvlink")
    for i, b in enumerate(knobs.batches):
        for f, clock in enumerate(knobs.clocks_mhz):
            for k, sms in enumerate(knobs.comm_sms):
                est = el.estimate(MODEL, el.Cluster("H100-SXM", num_gpus=4), el.Workload(batch=b, prompt_len=512,
                                  output_len=128), par, comm_sms=sms, profile=clock_profile(prof, gpu, clock))
                got = (r.itl_s[i, f, k], r.energy_per_token_j[i, f, k], r.ttft_s[i, f, k])
                want = (est.serving.median_itl_s, est.serving.energy_per_output_token_j, est.prefill.latency_s)
                np.testing.assert_allclose(got, want, rtol=1e-9)
        assert r.memory_bytes[i] == pytest.approx(est.memory.total_bytes, rel=1e-12)
