"""Collective communication: latency and energy from measured NCCL tables, alpha-beta outside them.

Latency of ``all_reduce``, ``all_gather``, ``reduce_scatter``, ``all_to_all`` (and ``send_recv``) by
message size (bytes of the collective's buffer), GPU count and interconnect. On NVLink the numbers
come from NCCL latency tables measured by NVIDIA and shipped in ``aiconfigurator-core`` 0.12.0
(Apache-2.0), extracted to ``profiles/comm_<gpu>.json`` (see ``data/public/aiconfigurator_nccl/``):

* inside a table's size range: log-log interpolation between the measured sizes;
* outside it (or for a GPU count the table lacks): alpha-beta ``alpha + beta * bytes`` with alpha and
  beta fitted per (collective, GPU count) on the same table, and ``CommCost.method`` says so;
* ``all_reduce`` inside one node also has vLLM's own all-reduce measured (its custom P2P kernel in
  CUDA-graph mode, same package). vLLM hands small all-reduces to its own kernels (the custom one
  below per-GPU/group-size limits, ``all_reduce_utils.CUSTOM_ALL_REDUCE_MAX_SIZES``, e.g. 256 KiB
  on 8 x H100, a symmetric-memory one above) and large ones to NCCL. Modelling choice: below
  8 MiB (``CustomAllreduce``'s default ``max_size``) an all-reduce costs the faster of the vLLM
  table and NCCL's, standing in for whichever of its kernels vLLM picks; only the custom kernel is
  measured. Decode's all-reduces are small, where it is 1.5-3x faster than NCCL (8 x H100, 64 KiB:
  6.3 us against 18.7 us);
* every table is read as its lower envelope over larger messages (``lower_envelope``): where a
  kernel's measured time dips as the message grows (an algorithm switch), the smaller message is
  priced at the larger one's time, so more bytes never cost less time;
* ``send_recv`` (no table): alpha-beta with the 2-GPU all_gather's alpha and the link bandwidth;
* more than 8 GPUs (beyond one NVLink node), PCIe, InfiniBand: alpha-beta with the datasheet link bandwidth (``GPUSpec``) and a NCCL bus factor.

Energy: every GPU of the collective draws the communication power ``comm_power_w`` while it runs;
a GPU that only waits for it burns its static power (``wait_energy_j``). Both are exposed.

>>> c = collective_cost("all_reduce", 32 * 2**20, 2, "A100-SXM4-40GB")
>>> round(c.time_s * 1e6), c.method
(224, 'table')
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from energylens.costmodel.hardware import GPUSpec, get_gpu
from energylens.errors import EstimateError, InvalidTypeError, UnknownNameError
from energylens.ir.core import COLLECTIVE_FNS
from energylens.typing import Record

__all__ = [
    "COLLECTIVES",
    "INTERCONNECTS",
    "CommCost",
    "collective_time_s",
    "collective_cost",
    "comm_power_w",
    "wait_energy_j",
    "comm_profile",
    "lower_envelope",
    "normalize_interconnect",
    "has_peer_tables",
]

#: Collectives priced here (``Collective.fn`` names of the IR, plus point-to-point).
COLLECTIVES: tuple[str, ...] = COLLECTIVE_FNS
INTERCONNECTS: tuple[str, ...] = ("nvlink", "pcie", "ib")
#: Spellings a user may give (case-insensitive): a name above or ``infiniband``, with an optional
#: generation (``nvlink4``, ``pcie5``, ``pcie-gen5``). The generation is not priced: the link
#: bandwidth is the GPU's datasheet one (``GPUSpec``).
_INTERCONNECT_RE = re.compile(r"(nvlink|pcie|ib|infiniband)(?:[-_ ]?(?:gen)?\d+)?")


def normalize_interconnect(name: Any) -> str:
    """The comm model's interconnect (one of ``INTERCONNECTS``) for a user's spelling of it.

    The one place names are matched, so ``Cluster``, ``estimate`` and ``compile`` accept the same ones.

    >>> normalize_interconnect("nvlink4"), normalize_interconnect("PCIe"), normalize_interconnect("InfiniBand")
    ('nvlink', 'pcie', 'ib')
    """
    if not isinstance(name, str):
        raise InvalidTypeError(f"interconnect must be a string ({', '.join(INTERCONNECTS)}) or None for the "
                               f"GPU's default, got {type(name).__name__} {name!r}")
    m = _INTERCONNECT_RE.fullmatch(name.strip().lower())
    if m is None:  # '' too: an empty name is not the default (None is)
        raise UnknownNameError("interconnect", name, [*INTERCONNECTS, "nvlink4", "pcie5", "infiniband"])
    return "ib" if m.group(1) == "infiniband" else m.group(1)

#: GPU (canonical name of ``energylens gpus``) -> comm profile measured on that GPU family.
_PROFILE_OF: dict[str, str] = {
    "A100-SXM4-40GB": "a100_sxm", "A100-SXM-80GB": "a100_sxm", "A100-SXM4-80GB": "a100_sxm",
    "H100-SXM": "h100_sxm", "H200": "h200_sxm", "B200": "b200_sxm",
}

#: Bytes each GPU moves over its link per byte of buffer, NCCL ring algorithms (nccl-tests busbw).
def _bus_factor(fn: str, n: int) -> float:
    if fn == "all_reduce":
        return 2 * (n - 1) / n
    if fn == "send_recv":
        return 1.0
    return (n - 1) / n

#: GPUs in one node (an HGX/DGX NVLink domain, or a PCIe host); larger groups are priced over InfiniBand.
GPUS_PER_NODE = 8
#: Largest all-reduce vLLM hands to its own kernels (``CustomAllreduce``'s default ``max_size``);
#: larger ones go to NCCL.
_VLLM_AR_MAX_BYTES = 8 * 2**20
#: InfiniBand bandwidth per GPU, per direction (one 400 Gb/s NDR HCA per GPU; DGX H100 reference).
_IB_BYTES_PER_S = 50e9
#: Latency of a small inter-node collective step (typical NCCL over IB, per hop).
_IB_ALPHA_S = 20e-6

#: Communication power: idle + this fraction of (TDP - idle). Fitted on the MSCCL++ all-reduce rows
#: of overlap_sweep_dev.csv (A100); see profiles/overlap_a100_sxm4_40gb.json ("comm_power").
_COMM_DYN_FRACTION_DEFAULT = 0.25


@dataclass(frozen=True)
class CommCost(Record):
    """Cost of one collective: time, energy of the GPUs taking part, and how it was priced.

    ``method`` is ``table`` (log-log interpolation of NCCL measurements), ``table_vllm`` (of vLLM's
    all-reduce, where faster than NCCL), ``alpha_beta_small`` /
    ``alpha_beta_large`` (below / above the table's sizes), ``alpha_beta_gpus`` (GPU count not
    measured), or ``alpha_beta_link`` (PCIe/IB or send_recv: datasheet link bandwidth).
    """

    fn: str
    bytes_: float
    num_gpus: int
    time_s: float
    energy_j: float
    power_w: float
    method: str


@functools.cache
def comm_profile(key: str) -> dict[str, Any]:
    """The packaged profile ``profiles/comm_<key>.json`` (tables and alpha-beta fits), each table's
    latencies taken as their lower envelope over larger messages (``lower_envelope``)."""
    path = resources.files("energylens.costmodel").joinpath("profiles", f"comm_{key}.json")
    profile = json.loads(path.read_text())
    for entry in (e for t in profile["tables"].values() for e in t.values()):
        entry["latency_s"] = lower_envelope(entry["latency_s"])
    for entry in profile.get("vllm_all_reduce", {}).values():  # used below _VLLM_AR_MAX_BYTES only
        used = sum(1 for b in entry["bytes"] if b < _VLLM_AR_MAX_BYTES)
        entry["latency_s"] = lower_envelope(entry["latency_s"][:used]) + entry["latency_s"][used:]
    return profile


def lower_envelope(latencies: list[float]) -> list[float]:
    """Each latency (of messages in increasing size) as the least at that size or any larger one: a
    message is never priced slower than a larger one, which the same kernel would move. The tables
    dip where the measured kernels switch algorithms (vLLM's all-reduce on 8 x B200: 26.0 us at 256
    and 512 KiB, 16.7 us at 1 MiB), which priced a longer prompt's prefill faster than a shorter one's.

    >>> lower_envelope([5.0, 26.0, 26.0, 16.7, 20.7])
    [5.0, 16.7, 16.7, 16.7, 20.7]
    """
    out, least = [], math.inf
    for t in reversed(latencies):
        least = min(least, t)
        out.append(least)
    return out[::-1]


def _check(fn: str, bytes_: float, num_gpus: int, interconnect: str) -> None:
    if fn not in COLLECTIVES:
        raise UnknownNameError("collective", fn, COLLECTIVES)
    if interconnect not in INTERCONNECTS:
        raise UnknownNameError("interconnect", interconnect, INTERCONNECTS)
    if not isinstance(bytes_, int | float) or math.isnan(bytes_) or bytes_ < 0:
        raise EstimateError(f"{fn}: message size must be >= 0 bytes, got {bytes_!r}")
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise EstimateError(f"{fn}: num_gpus must be a positive integer, got {num_gpus!r}")


def _profile_key(spec: GPUSpec) -> str:
    key = _PROFILE_OF.get(spec.name)
    if key is None:
        have = sorted(k for k in _PROFILE_OF if k in _known_gpus())
        raise EstimateError(
            f"no measured collective tables for {spec.name}'s peer links, so its multi-GPU plans cannot be "
            f"priced over them: GPUs with tables: {', '.join(have)}; run {spec.name} plans on one GPU (tp = dp = 1; `--gpus 1`), "
            f"or price its collectives over PCIe (`--interconnect pcie`, interconnect='pcie' in Python; datasheet bandwidth)")
    return key


def has_peer_tables(gpu: GPUSpec) -> bool:
    """Whether ``gpu``'s NVLink (or peer fabric) collectives have measured tables to be priced from."""
    return gpu.nvlink_bandwidth_bytes_per_s is not None and gpu.name in _PROFILE_OF


@functools.cache
def _known_gpus() -> frozenset[str]:
    from energylens.costmodel.hardware import list_gpus

    return frozenset(list_gpus())


def _interp_loglog(xs: list[float], ys: list[float], x: float) -> float:
    lo, hi = 0, len(xs) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= x:
            lo = mid
        else:
            hi = mid
    x0, x1, y0, y1 = xs[lo], xs[hi], ys[lo], ys[hi]
    w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + w * (math.log(y1) - math.log(y0)))


def collective_time_s(fn: str, bytes_: float, num_gpus: int, gpu: str,
                      interconnect: str = "nvlink") -> tuple[float, str]:
    """Latency in seconds of collective ``fn`` on a ``bytes_`` buffer over ``num_gpus`` GPUs, and the method.

    >>> t, how = collective_time_s("all_gather", 1 << 20, 8, "H100-SXM")
    >>> how, 10e-6 < t < 100e-6
    ('table', True)
    """
    _check(fn, bytes_, num_gpus, interconnect)
    if num_gpus == 1 or bytes_ == 0:
        return 0.0, "trivial"
    spec = get_gpu(gpu)
    if interconnect == "nvlink" and spec.nvlink_bandwidth_bytes_per_s is None:
        raise EstimateError(f"{spec.name} has no NVLink; use `--interconnect pcie` (interconnect='pcie' in Python; "
                            f"valid for it: {', '.join(i for i in INTERCONNECTS if i != 'nvlink')})")
    if num_gpus > GPUS_PER_NODE:  # beyond one node (its NVLink domain or PCIe host): the IB hop dominates
        interconnect = "ib"
    if interconnect != "nvlink" or fn == "send_recv":
        return _link_time_s(fn, bytes_, num_gpus, spec, interconnect), "alpha_beta_link"
    profile = comm_profile(_profile_key(spec))
    tables = profile["tables"][fn]
    entry = tables.get(str(num_gpus))
    if entry is None:  # GPU count not measured: alpha-beta with the bus factor scaled from the nearest
        near = min(tables, key=lambda n: abs(math.log(int(n) / num_gpus)))
        e = tables[near]
        scale = _bus_factor(fn, num_gpus) / _bus_factor(fn, int(near))
        return e["alpha_s"] * num_gpus / int(near) + e["beta_s_per_byte"] * scale * bytes_, "alpha_beta_gpus"
    t, how = _nccl_time_s(entry, bytes_)
    vllm = profile.get("vllm_all_reduce", {}).get(str(num_gpus)) if fn == "all_reduce" else None
    if vllm is not None and bytes_ < _VLLM_AR_MAX_BYTES:
        tv = vllm["latency_s"][0] if bytes_ < vllm["bytes"][0] else _interp_loglog(vllm["bytes"], vllm["latency_s"], bytes_)
        if tv < t:
            return tv, "table_vllm"
    return t, how


def _nccl_time_s(entry: dict[str, Any], bytes_: float) -> tuple[float, str]:
    xs, ys = entry["bytes"], entry["latency_s"]
    if bytes_ < xs[0]:
        return min(ys[0], entry["alpha_s"] + entry["beta_s_per_byte"] * bytes_), "alpha_beta_small"
    if bytes_ > xs[-1]:
        return entry["alpha_s"] + entry["beta_s_per_byte"] * bytes_, "alpha_beta_large"
    return _interp_loglog(xs, ys, bytes_), "table"


def _link_time_s(fn: str, bytes_: float, n: int, spec: GPUSpec, interconnect: str) -> float:
    if interconnect == "ib":  # GPUDirect RDMA: a GPU's traffic also crosses its own PCIe link to the HCA
        bw, alpha = min(_IB_BYTES_PER_S, spec.pcie_bandwidth_bytes_per_s), _IB_ALPHA_S * math.ceil(math.log2(n))
    elif interconnect == "pcie":
        bw, alpha = spec.pcie_bandwidth_bytes_per_s, 10e-6 * (n - 1)
    else:  # send_recv over NVLink: the 2-GPU all_gather's latency, datasheet bandwidth
        if spec.nvlink_bandwidth_bytes_per_s is None:
            raise EstimateError(f"{spec.name} has no NVLink; use `--interconnect pcie` (interconnect='pcie' in Python)")
        bw = spec.nvlink_bandwidth_bytes_per_s
        alpha = comm_profile(_profile_key(spec))["tables"]["all_gather"]["2"]["alpha_s"]
    return alpha + _bus_factor(fn, n) * bytes_ / bw


def comm_power_w(gpu: str) -> float:
    """Power in W of one GPU while it takes part in a collective: idle + a fitted share of (TDP - idle)."""
    spec = get_gpu(gpu)
    frac = _COMM_DYN_FRACTION_DEFAULT
    try:
        frac = float(_overlap_comm_fraction())
    except (FileNotFoundError, KeyError):
        pass
    return spec.idle_power_w + frac * (spec.tdp_w - spec.idle_power_w)


@functools.cache
def _overlap_comm_fraction() -> float:
    path = resources.files("energylens.costmodel").joinpath("profiles", "overlap_a100_sxm4_40gb.json")
    return json.loads(path.read_text())["comm_power"]["dynamic_fraction_of_tdp_minus_idle"]


def wait_energy_j(gpu: str, wait_s: float) -> float:
    """Energy in J of one GPU that idles ``wait_s`` seconds waiting for a collective (static power)."""
    if wait_s < 0:
        raise EstimateError(f"wait time must be >= 0 s, got {wait_s!r}")
    return get_gpu(gpu).idle_power_w * wait_s


def collective_cost(fn: str, bytes_: float, num_gpus: int, gpu: str,
                    interconnect: str = "nvlink") -> CommCost:
    """Time and energy (all ``num_gpus`` GPUs together) of one collective.

    Raises ``UnknownNameError`` for an unknown collective or interconnect, and ``EstimateError`` for a
    negative size or a GPU without measured tables over its peer links (MI300X).
    """
    t, how = collective_time_s(fn, bytes_, num_gpus, gpu, interconnect)
    p = comm_power_w(gpu) if t > 0 else 0.0
    return CommCost(fn=fn, bytes_=float(bytes_), num_gpus=num_gpus, time_s=t,
                    energy_j=p * t * num_gpus, power_w=p, method=how)
