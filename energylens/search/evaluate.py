"""Vectorised pricing of a plan space: one structural variant, every batch x clock x SM count at once.

A *structural variant* is ``(tp, ep, dp, fused)``: it fixes the rewritten graphs (the pipeline
``shard{tp,ep,dp}[,fuse],moe``, then ``overlap`` when an SM count is searched). Everything else
the search varies is a *knob* priced on arrays by the cost model's own per-op rules
(``costmodel/plan.py``: ``price_ops``, ``OverlapWindows``, which ``energylens.estimate``'s
``PlanPricer`` applies at one point) and the serving rules of ``costmodel/serving.py``, which the
tests check plan by plan:

* **batch** (concurrent sequences; ``max_num_seqs = batch / dp`` per replica): the graphs' symbols
  ``B``, ``S``, ``K`` are bound to numpy arrays with one entry per *evaluation point*, and
  ``plan_work`` returns every op's per-GPU FLOPs / bytes / rows / collective bytes as arrays over
  the points, in one walk of the graph per *component*. Points are the steps of steady-state
  serving of each batch size (the median step, and every term of the Poisson prefill mixture) and
  the prefill of the whole batch (TTFT). Components are the three parts of a serving step
  (token-wise ops, decode attention, prefill attention) and the prefill phase: 4 graph walks per
  variant, whatever the number of batch sizes, clocks and SM counts;
* **GPU clock** (``costmodel/clock.py``): a locked clock ``f`` is the highest the power limiter may
  use (``power.power_capped``): the roofline's compute side scales by ``f_max / f`` and the
  dynamic energy per FLOP by ``V(f)^2``, a trailing clock axis: arrays ``(ops, points, clocks)``.
  (A clock is exactly a profile with ``sm_clock_fraction = f / f_max``: ``clock_profile`` builds
  it for the scalar oracle);
* **overlap SMs** ``comm_sms``: the graphs go once per variant through the ``overlap`` pass (the
  windows it annotates do not depend on the SM count), and each window it scheduled (a stream-1
  collective and the ``sm_share < 1`` compute ops after it, ``plan.overlap_windows``) is simulated by
  ``overlap.overlap_window`` itself, called on arrays ``(windows, points, clocks)`` once per SM count
  and window length (windows of one length and block size share a call; none is padded); one loop iteration per
  op of the window.

The Python work per variant is thus a loop over ops (one per component, plus one per overlapped
window op), each iteration doing numpy over ``points x clocks [x sms]``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from energylens.costmodel.analysis import is_attention_op
from energylens.costmodel.clock import ClockModel
from energylens.costmodel.hardware import GPUSpec
from energylens.costmodel.memory import _chunk, request_kv_bytes, usable_bytes
from energylens.costmodel.overlap import OverlapParams
from energylens.costmodel.plan import (
    OverlapWindows,
    overlap_block_sizes,
    overlap_params,
    plan_graph,
    plan_work,
    price_ops,
)
from energylens.costmodel.profile import Profile
from energylens.costmodel.serving import (
    kv_capacity_tokens,
    lockstep_weights,
    prefill_mixture,
    prefill_tokens_per_step,
    running_batch,
    served_share,
    serving_context_len,
    step_time_s,
)
from energylens.ir.core import Graph
from energylens.passes.overlap import Overlap
from energylens.passes.shard import local_dim_sizes, mesh_of
from energylens.typing import Parallel, Workload

__all__ = ["Variant", "Knobs", "VariantPrices", "price_variant", "clock_profile",
           "memory_per_gpu"]



@dataclass(frozen=True)
class Variant:
    """A structural variant: parallelism and fusion, with the traced graphs it rewrites."""

    parallel: Parallel
    fused: bool
    prefill: Graph   # traced (not yet planned) graphs
    decode: Graph

    @functools.cached_property
    def planned_decode(self) -> Graph:
        return plan_graph(self.decode, self.parallel, self.fused)

    @functools.cached_property
    def planned_prefill(self) -> Graph:
        return plan_graph(self.prefill, self.parallel, self.fused)

    @property
    def has_tp_comm(self) -> bool:
        return self.parallel.tp > 1

    @property
    def lockstep(self) -> bool:
        """Its replicas step together: a MoE model's expert layers span all of them."""
        return self.parallel.dp > 1 and self.decode.has_experts


@dataclass(frozen=True)
class Knobs:
    """The array-priced knobs: batch sizes (all replicas), GPU clocks (MHz), overlap SM counts."""

    batches: tuple[int, ...]
    clocks_mhz: tuple[int, ...]
    comm_sms: tuple[int | None, ...] = (None,)


def clock_profile(profile: Profile, gpu: GPUSpec, clock_mhz: float) -> Profile:
    """``profile`` at a locked clock: the scalar equivalent of the search's clock axis."""
    return profile.with_params(sm_clock_fraction=1.0 / ClockModel.of(gpu).compute_scale(clock_mhz))


# ---------------------------------------------------------------------------------------------
# Pricing of one component: arrays (points, clocks[, sms])


@dataclass
class _Ctx:
    gpu: GPUSpec
    profile: Profile
    clocks: np.ndarray      # (clocks,): fractions of the maximum clock
    interconnect: str
    sms: tuple[int | None, ...]
    params: OverlapParams | None


def _component(graph: Graph, binding: dict[str, np.ndarray], c: _Ctx,
               select: Callable[[Any], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-GPU time and energy of one execution of a component of a planned ``graph``: arrays
    (points, clocks, sms). Each collective the overlap pass scheduled has its row replaced by its
    window's price (``OverlapWindows``) at each SM count."""
    recs = plan_work(graph, None, binding, gpu=c.gpu, select=select)
    p = price_ops(recs, len(next(iter(binding.values()))), c.gpu, c.profile, c.interconnect, c.clocks)
    count = np.array([r.count for r in recs], dtype=float)
    t_ser = np.einsum("i,ipf->pf", count, p.time_s)
    e_ser = np.einsum("i,ipf->pf", count, p.energy_j)
    windows = None if c.params is None or all(k is None for k in c.sms) else OverlapWindows.of(
        p, overlap_block_sizes(graph))
    if windows is None:
        return np.stack([t_ser] * len(c.sms), -1), np.stack([e_ser] * len(c.sms), -1)
    comm_t, comm_e = p.time_s[windows.comm], p.energy_j[windows.comm]
    cnt = count[windows.comm][:, None, None]
    ts, es = [], []
    for k in c.sms:
        if k is None:
            ts.append(t_ser)
            es.append(e_ser)
            continue
        nt, extra = windows.collective_cost(k, c.params)
        ts.append(t_ser + (cnt * (nt - comm_t)).sum(axis=0))
        es.append(e_ser + (cnt * (p.static_w * nt + extra - comm_e)).sum(axis=0))
    return np.stack(ts, -1), np.stack(es, -1)


# ---------------------------------------------------------------------------------------------
# A variant


@dataclass(frozen=True)
class VariantPrices:
    """Metrics of every knob setting of one variant: arrays (batches, clocks, sms).

    Times in seconds; energies in joules and powers in watts over all the plan's GPUs.
    """

    variant: Variant
    knobs: Knobs
    itl_s: np.ndarray
    step_s: np.ndarray
    energy_per_token_j: np.ndarray
    power_w: np.ndarray
    ttft_s: np.ndarray
    prefill_energy_per_token_j: np.ndarray
    memory_bytes: np.ndarray   # (batches,): per GPU
    fits: np.ndarray           # (batches,)
    #: (batches,): per GPU, what must fit: the memory, with the KV cache at least one whole request's
    required_bytes: np.ndarray
    sms_ok: np.ndarray         # (sms,): None, or an SM count on a variant with tp collectives
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return self.fits[:, None, None] & self.sms_ok[None, None, :] & np.isfinite(self.itl_s)


def _serving_points(batches: Sequence[int], workload: Workload, ctx_of: Callable[[int], float],
                    replicas: int, lockstep: bool) -> dict[str, np.ndarray]:
    """The priced points of each batch: its median step, then its mixture's steps, with their
    weights for energy (``w``: each replica's own load) and for time (``wt``: ``lockstep_weights``)."""
    b, p, ctx, w, wt, idx, med = [], [], [], [], [], [], []
    for i, bb in enumerate(batches):
        wl = _workload(workload, bb)
        c = ctx_of(bb)
        mixture = prefill_mixture(wl, replicas=replicas)
        med.append(len(b))
        b.append(bb), p.append(prefill_tokens_per_step(wl, median=True, replicas=replicas, lockstep=lockstep,
                                                       mixture=mixture))
        ctx.append(c), w.append(0.0), wt.append(0.0), idx.append(i)
        time_w = lockstep_weights(mixture, replicas) if lockstep and replicas > 1 else [x for x, _ in mixture]
        for (we, pt), wtime in zip(mixture, time_w, strict=True):
            b.append(bb), p.append(pt), ctx.append(c), w.append(we), wt.append(wtime), idx.append(i)
    return {"b": np.asarray(b, float), "p": np.asarray(p, float), "ctx": np.asarray(ctx, float),
            "w": np.asarray(w, float), "wt": np.asarray(wt, float), "idx": np.asarray(idx), "med": np.asarray(med)}


def _workload(workload: Workload, batch: int) -> Workload:
    return dataclasses.replace(workload, batch=batch)


def price_variant(variant: Variant, knobs: Knobs, workload: Workload, gpu: GPUSpec, profile: Profile,
                  interconnect: str) -> VariantPrices:
    """Price every (batch, clock, comm_sms) setting of ``variant`` (see the module docstring)."""
    par = variant.parallel
    gpus = par.tp * par.dp
    clock = ClockModel.of(gpu)
    clocks = np.asarray(knobs.clocks_mhz, dtype=float)
    params = overlap_params(gpu, profile) if variant.has_tp_comm and any(k is not None for k in knobs.comm_sms) else None
    c = _Ctx(gpu, profile, 1.0 / np.atleast_1d(clock.compute_scale(clocks)), interconnect, knobs.comm_sms, params)
    kv_cap = kv_capacity_tokens(variant.planned_decode, gpu)

    def ctx_of(b: int) -> float:
        return serving_context_len(_workload(workload, b), kv_cap)

    running = [running_batch(_workload(workload, x), par.dp, kv_capacity=kv_cap) for x in knobs.batches]  # what runs
    pts = _serving_points(running, workload, ctx_of, par.dp, lockstep=variant.lockstep)
    batches = np.asarray(knobs.batches, dtype=float)
    s_len = float(workload.prompt_len)
    b, p = pts["b"], pts["p"]
    run = np.asarray(running, dtype=float)
    share = np.array([served_share(_workload(workload, x), par.dp) for x in running])[:, None, None]
    ctx_b = np.array([ctx_of(x) for x in running])
    # one overlap pass per variant: its windows are the same at every SM count, priced as a knob
    ov = None if params is None else Overlap(comm_sms=next(k for k in knobs.comm_sms if k is not None),
                                            total_sms=gpu.compute_units)
    dec = plan_graph(variant.decode, par, variant.fused, overlap=ov)
    pre = plan_graph(variant.prefill, par, variant.fused, overlap=ov)
    t1, e1 = _component(dec, {"B": b, "S": (b + p) / b, "K": pts["ctx"]}, c, lambda op: not is_attention_op(op))
    t2, e2 = _component(dec, {"B": run, "S": np.ones_like(run), "K": ctx_b}, c, is_attention_op)
    new_len = workload.prefill_len  # prompt tokens computed (the rest hit the prefix cache)
    t3, e3 = _component(pre, {"B": np.maximum(p, 1e-9) / new_len, "S": np.full_like(p, new_len),
                              "K": np.full_like(p, s_len)}, c, is_attention_op)
    has_p = (p > 0)[:, None, None]
    t_gpu = t1 + t2[pts["idx"]] + np.where(has_p, t3, 0.0)
    t_srv = step_time_s(t_gpu, b[:, None, None] / par.dp, profile)  # kernels with one replica's host overheads
    idle_w = getattr(profile, "overhead_power_w", profile.static_power_w)  # host overheads: no kernel runs
    e_srv = e1 + e2[pts["idx"]] + np.where(has_p, e3, 0.0) + idle_w * (t_srv - t_gpu)
    t_pre, e_pre = _component(pre, {"B": batches, "S": np.full_like(batches, s_len),
                                    "K": np.full_like(batches, s_len)}, c)
    nb = len(batches)
    wmat, tmat = np.zeros((nb, len(b))), np.zeros((nb, len(b)))
    wmat[pts["idx"], np.arange(len(b))] = pts["w"]
    tmat[pts["idx"], np.arange(len(b))] = pts["wt"]
    own_t = np.einsum("bp,pfk->bfk", wmat, t_srv)
    mean_t = np.einsum("bp,pfk->bfk", tmat, t_srv)  # lockstep: the busiest replica's step
    mean_e = np.einsum("bp,pfk->bfk", wmat, e_srv) + idle_w * (mean_t - own_t)
    b3 = run[:, None, None]
    mem, kv = memory_per_gpu(variant, knobs.batches, workload)
    one = request_kv_bytes(kv, np.asarray(knobs.batches, dtype=float), variant.parallel.dp, workload)
    required = np.maximum(mem, mem - kv + one)  # the KV cache holds at least one whole request
    return VariantPrices(
        variant=variant, knobs=knobs, itl_s=t_srv[pts["med"]], step_s=mean_t,
        energy_per_token_j=mean_e * gpus / (b3 * share), power_w=mean_e / mean_t * gpus,
        ttft_s=t_pre, prefill_energy_per_token_j=e_pre * gpus / (batches[:, None, None] * s_len),
        memory_bytes=mem, fits=required <= usable_bytes(gpu), required_bytes=required,
        sms_ok=np.array([k is None or variant.has_tp_comm for k in knobs.comm_sms]),
        extras={"points": len(b) + nb, "context_len": ctx_b, "running": run})


# ---------------------------------------------------------------------------------------------
# Memory per GPU (``plan.plan_memory``'s rules, on arrays of batch sizes)


def memory_per_gpu(variant: Variant, batches: Sequence[int], workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """Bytes per GPU (weights + KV cache + largest prefill working set) at each batch size, and the
    KV cache's part of them.

    Same rules as ``costmodel.plan.plan_memory`` (which ``estimate`` uses), over an array of batches.
    """
    dec, pre = variant.planned_decode, variant.planned_prefill
    b = np.asarray(batches, dtype=float)
    sizes = dec.bind(B=b, S=np.ones_like(b), K=np.full_like(b, workload.decode_context_len))
    mesh = mesh_of(dec)
    local: dict[str, Any] = {}
    for op, _ in dec.walk():
        loc = {**sizes, **local_dim_sizes(op, sizes, mesh)} if op.sharding else sizes
        for v in (op.result, *op.operands):
            local.setdefault(v.name, loc)
    total, kv = np.zeros(len(b)), np.zeros(len(b))
    for d, n in dec.all_decls():
        if d.role in ("param", "cache"):
            s = local.get(d.value.name, sizes)
            nb = np.ones(len(b))
            for x in d.value.type.dims:
                nb = nb * s[x]
            total = total + nb * d.value.type.itemsize * n
            if d.role == "cache":
                kv = kv + nb * d.value.type.itemsize * n
    pmesh = mesh_of(pre)
    chunks = [_chunk(_workload(workload, int(x)), pmesh["dp"]) for x in batches]
    seqs = np.array([s for s, _ in chunks])
    plen = float(workload.prompt_len)
    psizes = pre.bind(B=seqs, S=np.full_like(b, plen), K=np.full_like(b, plen))
    fixed = {d.value.name for d, _ in pre.all_decls() if d.role in ("param", "cache")}
    peak = np.zeros(len(b))
    for op, _ in pre.walk():
        live = [v for v in (*op.operands, op.result)
                if v.name not in fixed and not ("S" in v.type.dims and "K" in v.type.dims)]
        if not live:
            continue
        loc = {**psizes, **local_dim_sizes(op, psizes, pmesh)} if op.sharding else psizes
        tot = np.zeros(len(b))
        for v in live:
            nb = np.ones(len(b))
            for x in v.type.dims:
                nb = nb * loc[x]
            tot = tot + nb * v.type.itemsize
        peak = np.maximum(peak, tot)
    return total + peak, kv
