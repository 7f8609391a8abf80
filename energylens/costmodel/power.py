"""Energy of one op: static power x time + pJ/FLOP x FLOPs + pJ/byte x HBM bytes, capped at TDP.

A byte of KV cache streamed by decode attention costs ``profile.kv_byte_pj`` rather than
``byte_pj``: a paged KV read gathers scattered 16-token blocks (more DRAM row activations per
byte than a weight stream), and FlashAttention's decode kernel runs its softmax on CUDA cores and
its QK / PV products as tensor-core tiles padded to 16-64 rows around the few query heads per KV
head, so the SMs burn power per KV byte that the useful FLOPs do not count. One coefficient per
GPU, fitted like ``byte_pj`` (``None``: same as ``byte_pj``).

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

__all__ = ["op_energy", "capped_time_s", "dynamic_energy_j"]


def capped_time_s(time_s: Any, dynamic_j: Any, static_w: float, tdp_w: float) -> Any:
    """Time stretched so that ``static_w + dynamic_j / time`` does not exceed ``tdp_w``."""
    if static_w >= tdp_w:
        raise EstimateError(f"static power {static_w:.0f} W is not below TDP {tdp_w:.0f} W")
    return np.maximum(time_s, dynamic_j / (tdp_w - static_w))


def dynamic_energy_j(work: OpWork, profile: Profile) -> tuple[Any, Any]:
    """(flop_j, byte_j) of one execution of an op (KV-cache bytes at ``kv_byte_pj``)."""
    kv_pj = profile.byte_pj if getattr(profile, "kv_byte_pj", None) is None else profile.kv_byte_pj
    byte_pj = np.where(np.asarray(work.kv) > 0, kv_pj, profile.byte_pj)
    return work.flops * profile.flop_pj * 1e-12, work.hbm_bytes * byte_pj * 1e-12


def op_energy(work: OpWork, time_s: Any, gpu: GPUSpec, profile: Profile) -> tuple[Any, Any, Any, Any]:
    """(time_s after the TDP cap, static_j, flop_j, byte_j) of one execution of an op."""
    flop_j, byte_j = dynamic_energy_j(work, profile)
    t = capped_time_s(time_s, flop_j + byte_j, profile.static_power_w, gpu.tdp_w)
    return t, profile.static_power_w * t, flop_j, byte_j
