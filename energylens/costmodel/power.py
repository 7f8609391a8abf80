"""Energy of one op: static power x time + pJ/FLOP x FLOPs + pJ/byte x HBM bytes, capped at TDP.

Tensor-core FLOPs are paid as the kernel executes them, not as the einsum counts them. Decode
attention (an op that streams the KV cache) puts its few query rows, the query heads that share
one KV head times the query tokens (``OpWork.rows``), on the M side of the MMA, padded to a tile
of ``ATTENTION_TILE_ROWS`` = 64 rows: vLLM's FlashAttention-3 packs a decode query group into one
MMA warpgroup with a 64-row tile (its ``use_one_mma_wg``), the smallest M of Hopper's ``wgmma``
and of Blackwell's ``tcgen05`` MMA. The tensor cores switch for the whole tile, so a GQA group of
4 heads costs 16x its useful FLOPs in energy (about ``64 x flop_pj`` per KV byte); its time is
unchanged (the GEMM efficiency curve of ``costmodel.compute`` already prices the short rows).
Weight GEMMs with few tokens are not padded: their kernels put the tokens on the MMA's N side
(8-row granularity). ``profile.kv_byte_pj`` (``None``: ``byte_pj``) can still price a KV byte apart
from a weight byte.

If the power this implies (``static + dynamic energy / time``) exceeds the GPU's TDP, the GPU
throttles its clocks: the op stretches until its power is exactly TDP
(``time = dynamic energy / (TDP - static)``), its dynamic energy unchanged and its static energy
growing with the longer time. An op thus never draws more than TDP, and never less than the
static floor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from energylens.costmodel.compute import OpWork
from energylens.costmodel.hardware import GPUSpec
from energylens.costmodel.profile import Profile
from energylens.errors import EstimateError

__all__ = ["ATTENTION_TILE_ROWS", "op_energy", "capped_time_s", "dynamic_energy_j"]

#: Rows of the MMA tile a decode-attention kernel pads its query rows to (see the module docstring).
ATTENTION_TILE_ROWS = 64.0


def capped_time_s(time_s: Any, dynamic_j: Any, static_w: float, tdp_w: float) -> Any:
    """Time stretched so that ``static_w + dynamic_j / time`` does not exceed ``tdp_w``."""
    if static_w >= tdp_w:
        raise EstimateError(f"static power {static_w:.0f} W is not below TDP {tdp_w:.0f} W")
    return np.maximum(time_s, dynamic_j / (tdp_w - static_w))


def dynamic_energy_j(work: OpWork, profile: Profile) -> tuple[Any, Any]:
    """(flop_j, byte_j) of one execution of an op: tensor-core FLOPs as executed (attention's query
    rows padded to ``ATTENTION_TILE_ROWS``), KV-cache bytes at ``kv_byte_pj``."""
    kv = np.asarray(work.kv) > 0
    kv_pj = profile.byte_pj if getattr(profile, "kv_byte_pj", None) is None else profile.kv_byte_pj
    byte_pj = np.where(kv, kv_pj, profile.byte_pj)
    rows = np.asarray(work.rows, dtype=float)
    pad = np.where(kv & (rows > 0), np.maximum(1.0, ATTENTION_TILE_ROWS / np.maximum(rows, 1e-9)), 1.0)
    return (work.tc_flops * pad + work.vec_flops) * profile.flop_pj * 1e-12, work.hbm_bytes * byte_pj * 1e-12


def op_energy(work: OpWork, time_s: Any, gpu: GPUSpec, profile: Profile) -> tuple[Any, Any, Any, Any]:
    """(time_s after the TDP cap, static_j, flop_j, byte_j) of one execution of an op."""
    flop_j, byte_j = dynamic_energy_j(work, profile)
    t = capped_time_s(time_s, flop_j + byte_j, profile.static_power_w, gpu.tdp_w)
    return t, profile.static_power_w * t, flop_j, byte_j
