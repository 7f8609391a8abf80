"""Host/GPU overlap of a serving step (``host_overlap_p``), the KV-byte energy (``kv_byte_pj``) and the
per-sequence time of paged-KV kernels (``kv_seq_overhead_s``)."""

from __future__ import annotations

import numpy as np
import pytest

import energylens as el
from energylens.api import resolve_model
from energylens.costmodel.compute import OpWork
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.power import dynamic_energy_j, op_energy
from energylens.costmodel.profile import default_profile, load_profile
from energylens.costmodel.serving import step_time_s
from energylens.search.evaluate import Knobs, Variant, price_variant

GPU = get_gpu("H100-SXM")


def _work(kv: float) -> OpWork:
    return OpWork(tc_flops=0.0, vec_flops=0.0, hbm_bytes=1e9, rows=0.0, peak_flops_per_s=1e15, kv=kv, kernels=1.0)


def test_kv_bytes_cost_kv_byte_pj():
    prof = default_profile(GPU).with_params(byte_pj=100.0, kv_byte_pj=250.0)
    assert dynamic_energy_j(_work(0.0), prof)[1] == pytest.approx(0.1)
    assert dynamic_energy_j(_work(1.0), prof)[1] == pytest.approx(0.25)
    # None: a KV byte costs byte_pj (the behaviour of profiles without the field)
    assert dynamic_energy_j(_work(1.0), prof.with_params(kv_byte_pj=None))[1] == pytest.approx(0.1)
    # arrays: one coefficient per op
    both = OpWork(**{**_work(0.0).__dict__, "kv": np.array([0.0, 1.0]), "hbm_bytes": np.array([1e9, 1e9])})
    np.testing.assert_allclose(dynamic_energy_j(both, prof)[1], [0.1, 0.25])
    assert op_energy(_work(1.0), 1e-3, GPU, prof)[3] == pytest.approx(0.25)


def test_step_time_serial_and_overlapped():
    prof = default_profile(GPU).with_params(step_overhead_s=1e-3, seq_overhead_s=1e-4)
    assert step_time_s(0.01, 50, prof) == pytest.approx(0.001 + 0.01 + 0.005)  # p = 1: in series
    fast = prof.with_params(host_overlap_p=200.0)
    assert step_time_s(0.01, 50, fast) == pytest.approx(0.011, rel=1e-2)  # GPU-bound: host hidden
    assert step_time_s(0.01, 500, fast) == pytest.approx(0.051, rel=1e-2)  # host-bound: GPU waits
    p4 = prof.with_params(host_overlap_p=4.0)
    t = step_time_s(np.array([0.01, 0.02]), np.array([50, 500]), p4)
    assert np.all(t >= np.maximum([0.01, 0.02], [0.005, 0.05]) + 1e-3 - 1e-12)
    assert np.all(t <= np.array([0.015, 0.07]) + 1e-3)


def test_host_bound_step_draws_less_power():
    traced = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    base = load_profile(GPU).with_params(seq_overhead_s=2e-4, host_overlap_p=8.0)
    wl = el.Workload(batch=512, prompt_len=256, output_len=256)
    cluster = el.Cluster("H100-SXM", num_gpus=1)
    host = el.estimate(traced, cluster, wl, profile=base).serving
    gpu_only = el.estimate(traced, cluster, wl, profile=base.with_params(seq_overhead_s=1e-9)).serving
    assert host.median_itl_s > gpu_only.median_itl_s
    assert host.avg_power_w < gpu_only.avg_power_w


@pytest.mark.parametrize("par", [el.Parallel(), el.Parallel(tp=2)])
def test_vectorised_prices_equal_estimate_with_overlap_and_kv_pj(par):
    model = "meta-llama/Llama-3.1-8B-Instruct"
    traced = resolve_model(model)
    prof = load_profile(GPU).with_params(seq_overhead_s=5e-5, host_overlap_p=4.0, kv_byte_pj=200.0)
    wl = el.Workload(batch=64, prompt_len=512, output_len=128)
    knobs = Knobs(batches=(8, 256), clocks_mhz=(1980,))
    r = price_variant(Variant(par, True, traced.prefill, traced.decode), knobs, wl, GPU, prof, "nvlink")
    for i, b in enumerate(knobs.batches):
        est = el.estimate(model, el.Cluster("H100-SXM", num_gpus=par.tp), el.Workload(batch=b, prompt_len=512,
                          output_len=128), par, profile=prof)
        got = (r.itl_s[i, 0, 0], r.energy_per_token_j[i, 0, 0], r.power_w[i, 0, 0])
        want = (est.serving.median_itl_s, est.serving.energy_per_output_token_j, est.serving.avg_power_w)
        np.testing.assert_allclose(got, want, rtol=1e-9)


def test_kv_seq_overhead_is_per_sequence_per_paged_kv_kernel():
    from energylens.costmodel.analysis import price_graph
    from energylens.costmodel.compute import op_time_s
    from energylens.costmodel.plan import plan_graph, plan_work

    traced = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    dec = plan_graph(traced.decode)
    prof = load_profile(GPU).with_params(kv_seq_overhead_s=1e-6)
    for b in (8.0, 64.0):
        ops = price_graph(dec, {"B": b, "S": 1, "K": 1024}, GPU, prof)
        kv_kernels = [p for p in ops if float(p.work.kv) > 0 and float(p.work.kernels) > 0]
        assert kv_kernels and all(float(p.work.seqs) == b for p in kv_kernels)
        assert all(float(p.work.seqs) == 0 for p in ops if float(p.work.kv) == 0)
        for p in kv_kernels:  # exactly kernels x seqs x kv_seq_overhead_s more than without it
            extra = op_time_s(p.work, GPU, prof) - op_time_s(p.work, GPU, prof.with_params(kv_seq_overhead_s=0.0))
            assert extra == pytest.approx(b * 1e-6)
    # under dp each replica walks the KV caches of its own B / dp sequences
    recs = plan_work(traced.decode, el.Parallel(dp=2), {"B": 64.0, "S": 1, "K": 1024}, gpu=GPU)
    assert {float(r.work.seqs) for r in recs if float(r.work.kv) > 0} == {32.0}


@pytest.mark.parametrize("par", [el.Parallel(), el.Parallel(tp=2)])
def test_vectorised_prices_equal_estimate_with_kv_seq_overhead(par):
    model = "Qwen/Qwen3-30B-A3B-Instruct-2507"
    traced = resolve_model(model)
    prof = load_profile(GPU).with_params(kv_seq_overhead_s=5e-7)
    wl = el.Workload(batch=64, prompt_len=634, output_len=400)
    knobs = Knobs(batches=(8, 64), clocks_mhz=(1980,))
    r = price_variant(Variant(par, True, traced.prefill, traced.decode), knobs, wl, GPU, prof, "nvlink")
    slow = []
    for i, b in enumerate(knobs.batches):
        wl_b = el.Workload(batch=b, prompt_len=634, output_len=400)
        cluster = el.Cluster("H100-SXM", num_gpus=par.tp)
        est = el.estimate(model, cluster, wl_b, par, profile=prof)
        got = (r.itl_s[i, 0, 0], r.energy_per_token_j[i, 0, 0], r.power_w[i, 0, 0])
        want = (est.serving.median_itl_s, est.serving.energy_per_output_token_j, est.serving.avg_power_w)
        np.testing.assert_allclose(got, want, rtol=1e-9)
        off = el.estimate(model, cluster, wl_b, par, profile=prof.with_params(kv_seq_overhead_s=0.0))
        slow.append(est.serving.median_itl_s - off.serving.median_itl_s)
    assert 0 < slow[0] < slow[1]  # the per-sequence time grows with the batch
