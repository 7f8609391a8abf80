"""Latency of one op: a roofline with efficiency curves, plus a per-kernel overhead.

``time = max(compute time, memory time) + kernels * (kernel_overhead + seqs * kv_seq_overhead)``
(a decode-attention kernel's fixed part is at least ``attn_kernel_overhead``; a MoE dispatch adds
``moe_call_overhead``, the fixed cost of a fused-MoE call; a MoE expert GEMM on vLLM's untuned default
tile adds its padded FLOPs at ``moe_default_tile_efficiency`` of dense peak, in series with the weight
stream, instead of its FLOPs in the compute term, when the profile prices that engine,
``legacy_moe_tiles``), where

* compute time = (tensor-core FLOPs / (dense peak x GEMM efficiency(rows)) + CUDA-core FLOPs /
  (vector rate)) / ``profile.sm_clock_fraction`` (FLOP rates follow a locked SM clock). The GEMM efficiency curve ``compute_efficiency * rows / (rows + gemm_half_rows)``
  says that a GEMM with few rows (decode GEMV, a MoE expert that got two tokens) cannot fill the
  tensor cores, so it is bandwidth bound long before its FLOPs matter;
* memory time = HBM bytes / (peak bandwidth x achieved fraction); decode attention reading the
  KV cache has its own achieved fraction (paged, short rows);
* a kernel that walks the paged KV cache (decode attention, the KV-cache write) also pays a fixed
  time per sequence it serves (``profile.kv_seq_overhead_s``): each sequence's block table is read
  and its last, partial block and split-KV partial results are handled on their own, whatever its
  length, so many short sequences cost more than their bytes.

Every function here works on floats and on numpy arrays alike (the fit prices thousands of ops
at once with the same code).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from energylens.costmodel.hardware import GPUSpec
from energylens.costmodel.profile import Profile

__all__ = ["OpWork", "WORK_FIELDS", "default_tile_time_s", "gemm_efficiency", "on_default_tile", "op_time_s"]


@dataclass(frozen=True)
class OpWork:
    """What one execution of an op must do, independent of calibration (fields may be arrays).

    ``tc_flops`` run on tensor cores at ``peak_flops_per_s`` (dense rate of the op's dtype);
    ``vec_flops`` on CUDA cores; ``rows`` is the GEMM dimension that limits tensor-core
    utilisation (0 for non-GEMMs); ``kv`` is 1 when the op streams the KV cache; ``kernels`` is
    the number of kernel launches it costs (0 when it runs inside another op's kernel); ``seqs``
    the sequences whose paged KV cache the op walks (local batch; 0 for ops that do not read it);
    ``moe_calls`` the fused-MoE calls the op starts (1 for a MoE dispatch, which pays
    ``profile.moe_call_overhead_s``); ``tile_flops`` the FLOPs a MoE expert GEMM runs on vLLM's
    untuned default tile, its padded rows included (``costmodel.fused_moe``; 0 for other ops).
    """

    tc_flops: Any
    vec_flops: Any
    hbm_bytes: Any
    rows: Any
    peak_flops_per_s: Any
    kv: Any
    kernels: Any
    seqs: Any = 0.0
    moe_calls: Any = 0.0
    tile_flops: Any = 0.0

    @property
    def flops(self) -> Any:
        return self.tc_flops + self.vec_flops


#: The fields of ``OpWork``, in order (for stacking many works into one of arrays).
WORK_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(OpWork))


def gemm_efficiency(rows: Any, profile: Profile) -> Any:
    """Achieved fraction of dense peak of a GEMM whose limiting dimension has ``rows`` rows."""
    rows = np.maximum(rows, 1e-9)
    return profile.compute_efficiency * rows / (rows + profile.gemm_half_rows)


def on_default_tile(work: OpWork, profile: Profile) -> Any:
    """True where the op's FLOPs run on vLLM 0.11's untuned fused-MoE tile and the profile prices
    that engine (``Profile.legacy_moe_tiles``) with a fitted rate for it."""
    if not getattr(profile, "legacy_moe_tiles", False) or getattr(profile, "moe_default_tile_efficiency", None) is None:
        return False
    return np.asarray(work.tile_flops) > 0


def compute_time_s(work: OpWork, gpu: GPUSpec, profile: Profile) -> Any:
    """Tensor-core plus CUDA-core time at the profile's SM clock (``sm_clock_fraction`` of the
    maximum: FLOP rates scale with the clock). A GEMM on the default MoE tile has its own term
    (``default_tile_time_s``)."""
    tile = on_default_tile(work, profile)
    tc_flops = work.tc_flops if tile is False else np.where(tile, 0.0, work.tc_flops)
    tc = tc_flops / (work.peak_flops_per_s * gemm_efficiency(work.rows, profile))
    vec = work.vec_flops / (gpu.bf16_dense_tflops * 1e12 * profile.vector_flops_fraction)
    return (tc + vec) / getattr(profile, "sm_clock_fraction", 1.0)


def default_tile_time_s(work: OpWork, profile: Profile) -> Any:
    """Time of the padded FLOPs of a MoE expert GEMM on vLLM's untuned default tile (0 elsewhere).

    In series with the weight stream: the measured steps grow by this time on top of the
    bandwidth-bound roofline (``fit.kernel_default_tile_efficiency``). Priced like a kernel overhead, at the
    calibrated clock whatever the profile's ``sm_clock_fraction``: what limits the untuned tile
    (compute or load latency) is not known, so a locked clock does not stretch it."""
    if not np.any(on_default_tile(work, profile)):
        return 0.0
    return np.asarray(work.tile_flops) / (np.asarray(work.peak_flops_per_s) * profile.moe_default_tile_efficiency)


def memory_time_s(work: OpWork, gpu: GPUSpec, profile: Profile) -> Any:
    eff = np.where(work.kv > 0, profile.attn_mem_efficiency, profile.mem_efficiency)
    return work.hbm_bytes / (gpu.hbm_bandwidth_bytes_per_s * eff)


def op_time_s(work: OpWork, gpu: GPUSpec, profile: Profile) -> Any:
    """Roofline time of one execution of an op, in seconds (before any power cap)."""
    per_kernel = profile.kernel_overhead_s + work.seqs * profile.kv_seq_overhead_s
    attn_floor = getattr(profile, "attn_kernel_overhead_s", None)
    if attn_floor is not None:  # a decode-attention call (KV-streaming op with FLOPs; not the KV write)
        attention = (np.asarray(work.kv) > 0) & (np.asarray(work.tc_flops) > 0)
        per_kernel = per_kernel + np.where(attention, max(attn_floor - profile.kernel_overhead_s, 0.0), 0.0)
    moe_call = getattr(profile, "moe_call_overhead_s", None) or 0.0
    return (np.maximum(compute_time_s(work, gpu, profile), memory_time_s(work, gpu, profile))
            + default_tile_time_s(work, profile) + work.kernels * per_kernel + work.moe_calls * moe_call)
