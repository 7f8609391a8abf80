"""One overlap rule for floats and arrays: ``overlap_window`` on numpy arrays equals it point by point on
floats; the search (arrays) and el.estimate (floats) agree under non-default saturation, SM-take and
energy-per-byte coefficients; the A100 fit transfers to other GPUs by link bandwidth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import energylens as el
import energylens.costmodel.plan as plan_mod
from energylens.api import resolve_model
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.overlap import KERNEL_CLASSES, Kernel, OverlapParams, overlap_window, sm_comm_time_s
from energylens.costmodel.plan import overlap_params
from energylens.costmodel.profile import load_profile
from energylens.errors import EstimateError, UnknownNameError
from energylens.search.evaluate import Knobs, Variant, price_variant

P = OverlapParams.load("A100-SXM4-40GB")
#: every new term switched on, stronger than the fit, and a TDP low enough to cap some points
Q = dataclasses.replace(P, comm_max_bytes_per_s=60e9, comm_saturation_exponent=1.5, sm_take_block_exponent=0.6,
                        comm_j_per_byte=2e-11, sm_power_share=0.5, tdp_w=250.0)
FIELDS = ("time_s", "static_j", "compute_j", "comm_j", "comm_time_s", "comm_exposed_s", "contended_s")


def test_window_on_arrays_equals_window_on_floats() -> None:
    rng = np.random.default_rng(0)
    shape = (6, 4)  # (windows, points)
    width = 4
    times = [rng.uniform(0, 4e-4, shape) for _ in range(width)]
    times[1][0, :] = 0.0  # a zero-time kernel (the search pads windows with one)
    powers = [rng.uniform(0, 300.0, shape) for _ in range(width)]
    classes = [rng.choice(np.array(KERNEL_CLASSES), size=(shape[0], 1)) for _ in range(width)]
    nbytes = rng.uniform(0, 64 * 2**20, (shape[0], 1))
    nbytes[1] = 0.0
    for k, block in ((4, 512), (16, 1024), (40, 256)):
        arr = overlap_window([Kernel(t, w, c) for t, w, c in zip(times, powers, classes, strict=True)],
                             comm_bytes=nbytes, comm_sms=k, block_size=block, params=Q)
        assert np.shape(arr.time_s) == shape
        for i in range(shape[0]):
            for j in range(shape[1]):
                kern = [Kernel(float(t[i, j]), float(w[i, j]), str(c[i, 0]))
                        for t, w, c in zip(times, powers, classes, strict=True)]
                one = overlap_window(kern, comm_bytes=float(nbytes[i, 0]), comm_sms=k, block_size=block, params=Q)
                assert isinstance(one.time_s, float)
                for f in FIELDS:
                    assert np.broadcast_to(getattr(arr, f), shape)[i, j] == pytest.approx(getattr(one, f), rel=1e-12,
                                                                                         abs=1e-18), f
    # both outcomes of the event rule occur: the collective ends inside a kernel, and after the window
    exposed = np.broadcast_to(arr.comm_exposed_s, shape) - Q.serial_per_block_s * 40
    assert (exposed > 1e-12).any() and (np.abs(exposed) < 1e-15).any()
    assert (np.broadcast_to(arr.energy_j, shape) <= Q.tdp_w * np.broadcast_to(arr.time_s, shape) + 1e-12).all()


def test_comm_time_on_arrays_and_errors() -> None:
    nb = np.array([0.0, 1e6, 1e9])
    np.testing.assert_allclose(sm_comm_time_s(nb, 8, 1024, Q), [sm_comm_time_s(float(b), 8, 1024, Q) for b in nb],
                               rtol=1e-15)
    with pytest.raises(EstimateError):
        sm_comm_time_s(np.array([1.0, -1.0]), 8, 1024, Q)
    with pytest.raises(EstimateError):
        Kernel(np.array([1e-3, -1e-3]), 100.0, "gemm")
    with pytest.raises(UnknownNameError):
        Kernel(1e-3, 100.0, np.array(["gemm", "matmul"]))


def test_transfer_scales_the_link_limit_by_bandwidth(monkeypatch: pytest.MonkeyPatch) -> None:
    h100 = overlap_params(get_gpu("H100-SXM"), load_profile("H100-SXM"))  # the packaged fit, transferred
    assert h100.comm_max_bytes_per_s == pytest.approx(P.comm_max_bytes_per_s * 1.5, rel=1e-12)  # 450 / 300 GB/s
    monkeypatch.setattr(OverlapParams, "load", staticmethod(lambda gpu: Q))  # a fit with a finite link limit
    a100 = get_gpu("A100-SXM4-40GB")
    for name in ("H100-SXM", "L40S"):  # NVLink; PCIe only
        gpu = get_gpu(name)
        q = plan_mod._overlap_params.__wrapped__(name, 100.0)  # uncached: the patched base
        link = gpu.nvlink_bandwidth_bytes_per_s or gpu.pcie_bandwidth_bytes_per_s
        ratio = link / a100.nvlink_bandwidth_bytes_per_s
        assert q.comm_max_bytes_per_s == pytest.approx(Q.comm_max_bytes_per_s * ratio, rel=1e-12)
        assert q.per_sm_bytes_per_s_512 == pytest.approx(
            Q.per_sm_bytes_per_s_512 * ratio * a100.compute_units / gpu.compute_units, rel=1e-12)
        assert (q.num_sms, q.static_w, q.tdp_w) == (gpu.compute_units, 100.0, gpu.tdp_w)
        assert q.threads_per_sm == gpu.max_threads_per_compute_unit == {"H100-SXM": 2048, "L40S": 1536}[name]
        assert (q.sm_take_block_exponent, q.comm_j_per_byte) == (Q.sm_take_block_exponent, Q.comm_j_per_byte)


def test_search_equals_estimate_under_new_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    model, wl = "meta-llama/Llama-3.2-1B-Instruct", el.Workload(batch=4, prompt_len=512, output_len=128)
    gpu, prof = get_gpu("H100-SXM"), load_profile("H100-SXM")
    par = el.Parallel(tp=2)
    traced = resolve_model(model)
    knobs = Knobs(batches=(2, 4), clocks_mhz=(1980,), comm_sms=(None, 16))

    def run() -> tuple[np.ndarray, list[tuple[float, float, float]]]:
        r = price_variant(Variant(par, True, traced.prefill, traced.decode), knobs, wl, gpu, prof, "nvlink")
        got = np.array([(r.itl_s[i, 0, 1], r.energy_per_token_j[i, 0, 1], r.prefill_energy_per_token_j[i, 0, 1])
                        for i in range(len(knobs.batches))])
        want = []
        for b in knobs.batches:
            est = el.estimate(model, el.Cluster("H100-SXM", num_gpus=2), dataclasses.replace(wl, batch=b), par,
                              comm_sms=16, profile=prof)
            want.append((est.serving.median_itl_s, est.serving.energy_per_output_token_j,
                         est.prefill.energy_per_token_j))
        return got, want

    base_got, base_want = run()
    np.testing.assert_allclose(base_got, base_want, rtol=1e-9)
    transfer = plan_mod._overlap_params

    def strong(gpu_name: str, static_w: float) -> OverlapParams:
        q = transfer(gpu_name, static_w)
        return dataclasses.replace(q, comm_max_bytes_per_s=q.comm_max_bytes_per_s / 4, comm_saturation_exponent=1.2,
                                   sm_take_block_exponent=0.8, comm_j_per_byte=5e-11, threads_per_sm=1536)

    monkeypatch.setattr(plan_mod, "_overlap_params", strong)
    got, want = run()
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert not np.allclose(got, base_got, rtol=1e-6)  # the stronger terms did change the prices
