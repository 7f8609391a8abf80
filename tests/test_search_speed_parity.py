"""The window rule as ``overlap_window`` computes it (in place on arrays, contended time ``tt`` as the
state) equals the event rule as first written (the contended share ``q`` of each kernel, the fraction
``left`` of the collective still to do), point by point, under every coefficient switched on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from energylens.costmodel.overlap import KERNEL_CLASSES, Kernel, OverlapParams, overlap_window, sm_comm_time_s

P = OverlapParams.load("A100-SXM4-40GB")
Q = dataclasses.replace(P, comm_max_bytes_per_s=60e9, comm_saturation_exponent=1.5, sm_take_block_exponent=0.6,
                        comm_j_per_byte=2e-11, sm_power_share=0.5, tdp_w=250.0)


def _reference(kernels: list[tuple[float, float, str]], comm_bytes: float, k: int, block: int,
               p: OverlapParams) -> tuple[float, float]:
    """(time_s, energy_j) of the window by the event rule, on floats, as first written."""
    t_comm = sm_comm_time_s(comm_bytes, k, block, p)
    active = (p.num_sms - k * min(1.0, block / p.threads_per_sm) ** p.sm_take_block_exponent) / p.num_sms
    left, t, held, compute = 1.0, 0.0, 0.0, 0.0
    for kt, kw, c in kernels:
        sigma = p.interference.get(c, p.mem_interference if c == "memory" else 0.0)
        ti = kt * (1.0 / active) ** p.sm_exponent_by_class.get(c, p.sm_exponent) * (1 + sigma)
        tc = t_comm * (1 + p.comm_slowdown.get(c, 0.0))
        if left <= 0:
            q = 0.0
        elif left * tc >= ti:  # the kernel ends first
            q, left = 1.0, left - (ti / tc if tc > 0 else left)
        else:  # the collective ends inside the kernel
            q, left = (left * tc / ti if ti > 0 else 0.0), 0.0
        tt = q * ti
        t += tt + (1 - q) * kt
        held += tt
        sm_part = p.sm_power_share * kw
        compute += kt * kw * (1 - q) + q * kt * (kw - sm_part) + sm_part * active * tt
    exposed = left * t_comm + p.serial_per_block_s * k
    t += exposed
    held += exposed
    raw = p.static_w * t + compute + (p.comm_active_w + p.sm_power_w * k * (block / 512) ** p.sm_power_block_exponent) \
        * held + p.comm_j_per_byte * comm_bytes
    return t, (min(raw, p.tdp_w * t) if t > 0 else raw)


@pytest.mark.parametrize("params", [P, Q], ids=["fit", "all-terms"])
def test_window_equals_the_event_rule(params: OverlapParams) -> None:
    rng = np.random.default_rng(1)
    shape, width = (5, 7), 6
    times = [rng.uniform(0, 3e-4, shape) for _ in range(width)]
    times[2][0] = 0.0  # zero-time kernels
    powers = [rng.uniform(0, 300.0, shape) for _ in range(width)]
    classes = [rng.choice(np.array(KERNEL_CLASSES), size=(shape[0], 1)) for _ in range(width)]
    nbytes = rng.uniform(0, 48 * 2**20, (shape[0], 1))
    nbytes[1] = 0.0
    capped = 0
    for k, block in ((4, 512), (24, 1024)):
        w = overlap_window([Kernel(t, p, c) for t, p, c in zip(times, powers, classes, strict=True)],
                           comm_bytes=nbytes, comm_sms=k, block_size=block, params=params)
        for i in range(shape[0]):
            for j in range(shape[1]):
                kern = [(float(t[i, j]), float(p[i, j]), str(c[i, 0])) for t, p, c in zip(times, powers, classes,
                                                                                           strict=True)]
                t_ref, e_ref = _reference(kern, float(nbytes[i, 0]), k, block, params)
                assert w.time_s[i, j] == pytest.approx(t_ref, rel=1e-12)
                assert w.energy_j[i, j] == pytest.approx(e_ref, rel=1e-12)
                capped += e_ref >= params.tdp_w * t_ref * (1 - 1e-12)
    assert (capped > 0) == (params is Q)  # the TDP cap is exercised where it is low


def test_window_does_not_write_to_its_inputs() -> None:
    t = np.full((3, 4), 1e-4)
    p = np.full((3, 4), 200.0)
    nb = np.full((3, 1), 8.0 * 2**20)
    kern = [Kernel(t, p, "gemm"), Kernel(t, p, np.array(["memory", "gemm", "attention"])[:, None])]
    overlap_window(kern, comm_bytes=nb, comm_sms=8, block_size=1024, params=Q)
    assert (t == 1e-4).all() and (p == 200.0).all() and (nb == 8.0 * 2**20).all()
