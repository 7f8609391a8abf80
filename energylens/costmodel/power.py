"""Energy of one op: static power x time + pJ/FLOP x FLOPs + pJ/byte x HBM bytes, power-capped at TDP.

Tensor-core FLOPs are paid as the kernel executes them, not as the einsum counts them. Decode
attention (an op that streams the KV cache) puts its few query rows, the query heads that share
one KV head times the query tokens (``OpWork.rows``), on the M side of the MMA, padded to whole
tiles of ``ATTENTION_TILE_ROWS`` = 64 rows: vLLM's FlashAttention-3 packs a decode query group into one
MMA warpgroup with a 64-row tile (its ``use_one_mma_wg``), the smallest M of Hopper's ``wgmma``
and of Blackwell's ``tcgen05`` MMA. The tensor cores switch for the whole tile, so a GQA group of
4 heads costs 16x its useful FLOPs in energy (about ``64 x flop_pj`` per KV byte); its time is
unchanged (the GEMM efficiency curve of ``costmodel.compute`` already prices the short rows).
Weight GEMMs with few tokens are not padded: their kernels put the tokens on the MMA's N side
(8-row granularity). ``profile.kv_byte_pj`` (``None``: ``byte_pj``) can still price a KV byte apart
from a weight byte.

If the power this implies (``static + dynamic energy / time``) exceeds the GPU's TDP, the power
limiter lowers the SM clock (DVFS) until it does not: at a clock ``x = f / f_max`` the compute
side of the roofline takes ``1/x`` as long and a FLOP costs ``V(x)^2`` of its energy
(``costmodel.clock``: the same clock physics as a locked clock), while HBM time and energy per byte
do not change. A compute-bound GEMM thus settles at the clock where it draws exactly TDP, running
slower by less than its excess power; a bandwidth-bound op gives up FLOP energy at no cost in time.
Only an op still over TDP at ``MIN_CLOCK_FRACTION`` of the clock (its HBM traffic alone draws too
much) is stretched until its power is exactly TDP. An op thus never draws more than TDP, and never
less than the static floor. ``Profile.sm_clock_fraction`` (a locked clock) is the highest clock
the limiter may use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from energylens.costmodel.clock import MIN_CLOCK_FRACTION, VOLTAGE_SLOPE
from energylens.costmodel.compute import OpWork, compute_time_s, memory_time_s, on_default_tile, op_time_s
from energylens.costmodel.hardware import GPUSpec
from energylens.costmodel.profile import Profile
from energylens.errors import EstimateError

__all__ = ["ATTENTION_TILE_ROWS", "op_energy", "power_capped", "power_capped_op", "dynamic_energy_j"]

#: Rows of the MMA tile a decode-attention kernel pads its query rows to (see the module docstring).
ATTENTION_TILE_ROWS = 64.0


def power_capped(comp_s: Any, mem_s: Any, extra_s: Any, flop_j: Any, byte_j: Any, static_w: float, tdp_w: float,
                 clock: Any = 1.0) -> tuple[Any, Any]:
    """(time, flop_j) of one execution of an op under the power limit (see the module docstring).

    ``comp_s``, ``flop_j``: compute time and FLOP energy at the maximum clock; ``mem_s``: HBM time;
    ``extra_s``: clock-free time (kernel overheads); ``clock``: the highest clock the op may run
    at, as a fraction of the maximum (a locked clock). Arrays broadcast; the clock the limiter
    settles on is solved for per op (``_limiter_clock``).

    >>> t, fj = power_capped(1e-3, 1e-4, 0.0, 0.65, 0.0, 150.0, 700.0)  # a GEMM at 800 W at full clock
    >>> round(t * 1e3, 2), round(150.0 + fj / t, 1)  # clock ~0.93: 8% slower (not 18%), exactly TDP
    (1.08, 700.0)
    """
    if static_w >= tdp_w:
        raise EstimateError(f"static power {static_w:.0f} W is not below TDP {tdp_w:.0f} W")
    args = (comp_s, mem_s, extra_s, flop_j, byte_j, clock)
    scalar = all(np.ndim(a) == 0 for a in args)
    comp_s, mem_s, extra_s, flop_j, byte_j, clock = (np.atleast_1d(np.asarray(a, dtype=float)) for a in args)
    budget_w = tdp_w - static_w
    v = 1.0 - VOLTAGE_SLOPE * (1.0 - clock)
    shape = np.broadcast_shapes(*(a.shape for a in (comp_s, mem_s, extra_s, flop_j, byte_j, clock)))
    t = _full(np.maximum(comp_s / clock, mem_s) + extra_s, shape)
    fj = _full(flop_j * (v * v), shape)
    over = fj + byte_j > budget_w * t
    if over.any():  # a few ops in a plan space: solve on those only
        ix = over.nonzero()
        c, m, e, f, b, top = (np.broadcast_to(a, shape)[ix] for a in (comp_s, mem_s, extra_s, flop_j, byte_j, clock))
        x = _limiter_clock(c, m, e, f, b, top, budget_w)
        vx = 1.0 - VOLTAGE_SLOPE * (1.0 - x)
        fl = f * vx * vx
        tl = np.maximum(np.maximum(c / x, m) + e, (fl + b) / budget_w)  # over TDP at the lowest clock: stretch
        t[ix], fj[ix] = tl, fl
    if scalar:
        return float(t[0]), float(fj[0])
    return t, fj


def _full(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a``, a fresh result, with the broadcast ``shape`` of all the inputs (copied only if smaller)."""
    return a if a.shape == shape else np.broadcast_to(a, shape).copy()


def _limiter_clock(c: np.ndarray, m: np.ndarray, e: np.ndarray, f: np.ndarray, b: np.ndarray, top: np.ndarray,
                   budget_w: float) -> np.ndarray:
    """The clock x in [MIN_CLOCK_FRACTION, top] at which ``(f V(x)^2 + b) / (max(c/x, m) + e)``,
    the dynamic power, equals ``budget_w`` (ops over it at ``top``; ``V = 1 - s (1 - x)``).

    Bandwidth-bound at the solution (``c/x <= m``), ``V(x)^2 = (budget (m + e) - b) / f`` in closed
    form; else ``g(x) = f x V(x)^2 + (b - budget e) x - budget c = 0``, a convex cubic increasing
    through its root, solved by Newton's method from ``top`` (where ``g > 0``), which converges
    from the right."""
    s = VOLTAGE_SLOPE
    with np.errstate(divide="ignore", invalid="ignore"):
        v2 = (budget_w * (m + e) - b) / f
        xm = (np.sqrt(np.maximum(v2, 0.0)) - (1.0 - s)) / s
    mem_bound = (v2 > 0) & np.isfinite(xm) & (xm * m >= c)
    x = top.copy()
    k = b - budget_w * e
    for _ in range(_NEWTON_STEPS):
        v = 1.0 - s * (1.0 - x)
        g = f * x * v * v + k * x - budget_w * c
        dg = f * v * v + 2.0 * f * s * x * v + k
        x = x - g / np.maximum(dg, 1e-30)
    x = np.where(mem_bound, xm, x)
    return np.clip(x, MIN_CLOCK_FRACTION, top)


#: Newton steps of ``_limiter_clock`` (quadratic convergence from the power-capped side).
_NEWTON_STEPS = 8


def dynamic_energy_j(work: OpWork, profile: Profile) -> tuple[Any, Any]:
    """(flop_j, byte_j) of one execution of an op: tensor-core FLOPs as executed (attention's query
    rows padded to ``ATTENTION_TILE_ROWS``; a MoE GEMM on vLLM's default tile: its padded rows,
    ``tile_flops``), KV-cache bytes at ``kv_byte_pj``."""
    kv = np.asarray(work.kv) > 0
    kv_pj = profile.byte_pj if getattr(profile, "kv_byte_pj", None) is None else profile.kv_byte_pj
    byte_pj = np.where(kv, kv_pj, profile.byte_pj)
    rows = np.maximum(np.asarray(work.rows, dtype=float), 1e-9)
    pad = np.where(kv & (rows >= 1), np.ceil(rows / ATTENTION_TILE_ROWS) * ATTENTION_TILE_ROWS / rows, 1.0)
    tc = np.where(on_default_tile(work, profile), work.tile_flops, work.tc_flops * pad)
    return (tc + work.vec_flops) * profile.flop_pj * 1e-12, work.hbm_bytes * byte_pj * 1e-12


def power_capped_op(work: OpWork, gpu: GPUSpec, profile: Profile, clock: Any = None,
                    time_s: Any = None) -> tuple[Any, Any, Any]:
    """(time after the power cap, flop_j, byte_j) of one execution of ``work`` (fields scalars or
    arrays) at ``clock``, the highest clock the limiter may use as a fraction of the maximum (None:
    the profile's ``sm_clock_fraction``; an array broadcasts against the fields). ``time_s``: the
    op's roofline time at the profile's clock when the caller has it (``compute.op_time_s``)."""
    x0 = getattr(profile, "sm_clock_fraction", 1.0)
    comp, mem = compute_time_s(work, gpu, profile), memory_time_s(work, gpu, profile)
    roofline = op_time_s(work, gpu, profile) if time_s is None else time_s
    flop_j, byte_j = dynamic_energy_j(work, profile)
    t, flop_j = power_capped(comp * x0, mem, roofline - np.maximum(comp, mem), flop_j, byte_j,
                             profile.static_power_w, gpu.tdp_w, x0 if clock is None else clock)
    return t, flop_j, byte_j


def op_energy(work: OpWork, time_s: Any, gpu: GPUSpec, profile: Profile) -> tuple[Any, Any, Any, Any]:
    """(time after the power cap, static_j, flop_j, byte_j) of one execution of an op whose roofline
    time (``compute.op_time_s`` at the profile's clock) is ``time_s``."""
    t, flop_j, byte_j = power_capped_op(work, gpu, profile, time_s=time_s)
    return t, profile.static_power_w * t, flop_j, byte_j
