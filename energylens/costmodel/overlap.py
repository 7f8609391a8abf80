"""SM contention: time and energy of a collective that runs concurrently with compute.

Physics (per GPU; every GPU of the collective runs the same schedule):

* An SM-driven collective kernel (MSCCL++/NCCL style) with ``k`` thread blocks of ``b`` threads moves
  its bytes at ``k * r(b)`` with a per-SM rate ``r(b) = r_512 * (b / 512) ** gamma`` (more threads in
  flight per SM, more bytes in flight), and pays a fixed latency plus a per-block set-up cost:
  ``T_comm(k, b) = latency + bytes / R(k, b) + per_block * k``. The aggregate rate saturates at the
  link/HBM limit ``R_max`` as blocks are added, ``R = k r(b) / (1 + (k r(b) / R_max) ** n) ** (1/n)``
  (a soft minimum; ``R_max = inf``: ``R = k r(b)``). Its ``k`` blocks also pay a per-block cost that
  no overlap hides (the cross-GPU barrier of every block and the stream sync at
  the window's end): ``serial_per_block * k`` on the critical path.
* While it runs, a compute kernel of class ``c`` loses the SMs the collective holds, slowing by
  ``(N / (N - k')) ** alpha_c`` where ``k' = k (b / threads_per_sm) ** epsilon`` is the SM capacity the
  blocks take (``epsilon = 0``: each block holds a whole SM; ``> 0``: compute blocks co-reside in the
  threads a smaller collective block leaves free; ``alpha`` ~ 1 for a kernel whose waves need every SM,
  ~ 0 for a memory-bound kernel that saturates HBM on fewer SMs), and is further stretched by ``1 + sigma_c``
  by interference (HBM/L2 traffic and issue slots of the spinning collective). The collective in
  turn slows by ``1 + comm_slowdown[c]``.
* The window is simulated event by event: both progress at their contended rates until one finishes;
  the rest of the other runs alone (compute at full speed; the collective at its solo speed, the
  compute stream waiting at the sync point).
* Energy = static power x window time (the waiting included) + each kernel's dynamic energy, split
  into a memory-side part (``1 - phi``: HBM bytes, fixed by the work) and an SM part (``phi``) whose
  power follows the active SMs: while contended it burns ``phi * p * (N - k) / N`` for the stretched
  time, so a kernel slowed by SM loss alone costs ``((N - k) / N) ** (1 - alpha)`` of its SM energy
  while interference stalls (``sigma``) burn full SM power for nothing. The collective draws
  ``comm_active_w + sm_power * k * (b / 512) ** delta`` for as long as it holds its blocks, plus
  ``comm_j_per_byte`` per byte moved (fixed by the bytes, whatever ``k``). So a
  collective given more SMs finishes sooner, shortening the stretch of the compute it contends with:
  energy can fall with ``k`` while time rises (the serial per-block cost). Power is capped at TDP.

Coefficients live in ``profiles/overlap_<gpu>.json`` with their provenance (data, fit, residuals).

>>> p = OverlapParams.load("A100-SXM4-40GB")
>>> k = [Kernel(time_s=1e-3, dyn_power_w=150.0, cls="gemm")]
>>> w = overlap_window(k, comm_bytes=32 * 2**20, comm_sms=8, block_size=1024, params=p)
>>> w.time_s >= 1e-3 and w.energy_j > w.static_j
True
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeAlias

import numpy as np

from energylens.costmodel.hardware import get_gpu
from energylens.errors import EstimateError, UnknownNameError
from energylens.typing import Record

__all__ = [
    "KERNEL_CLASSES",
    "Floats",
    "Kernel",
    "OverlapParams",
    "OverlapCost",
    "sm_comm_time_s",
    "overlap_window",
    "serial_cost",
]

#: Kernel classes the contention model distinguishes.
KERNEL_CLASSES: tuple[str, ...] = ("memory", "gemm", "attention", "comm")

#: A float, or a numpy array of floats: the window rules broadcast over arrays (the search prices
#: every batch x clock point of a window at once, ``energylens.search.evaluate``).
Floats: TypeAlias = "float | np.ndarray"

#: GPU -> overlap profile file stem (profiles/overlap_<stem>.json).
_PROFILE_OF: dict[str, str] = {"A100-SXM4-40GB": "a100_sxm4_40gb", "A100-SXM-80GB": "a100_sxm4_40gb"}


@dataclass(frozen=True)
class Kernel(Record):
    """One compute kernel on stream 0: solo time (s), dynamic power above static (W), class.

    Fields may be numpy arrays (broadcast together, and with the window's ``comm_bytes``): one kernel
    position priced at many points at once; ``cls`` is then an array of class names.
    """

    time_s: Floats
    dyn_power_w: Floats
    cls: str | np.ndarray = "gemm"

    def __post_init__(self) -> None:
        for c in ((self.cls,) if isinstance(self.cls, str) else set(np.asarray(self.cls).flat)):
            if c not in KERNEL_CLASSES:
                raise UnknownNameError("kernel class", str(c), KERNEL_CLASSES)
        if np.any(np.less(self.time_s, 0)) or np.any(np.less(self.dyn_power_w, 0)):
            raise EstimateError(f"kernel time and power must be >= 0, got {self.time_s}, {self.dyn_power_w}")


@dataclass(frozen=True)
class OverlapParams(Record):
    """Contention and power coefficients of one GPU (units in the names)."""

    num_sms: int
    per_sm_bytes_per_s_512: float
    block_exponent: float
    per_block_s: float
    comm_latency_s: float
    sm_exponent: float
    mem_interference: float
    comm_slowdown: Mapping[str, float]
    static_w: float
    sm_power_w: float
    sm_power_block_exponent: float
    comm_active_w: float = 0.0
    iteration_overhead_s: float = 0.0
    tdp_w: float = float("inf")
    #: per-class SM-loss exponent ``alpha_c`` (a class missing here uses ``sm_exponent``)
    sm_exponent_by_class: Mapping[str, float] = field(default_factory=dict)
    #: per-class interference stretch ``sigma_c`` (a class missing here: ``mem_interference`` for
    #: "memory", else 0)
    interference: Mapping[str, float] = field(default_factory=dict)
    #: SM share ``phi`` of a kernel's dynamic power (1: all of it follows the active SMs, the old model
    #: of fixed dynamic energy is ``phi = 0``)
    sm_power_share: float = 0.0
    #: per-block time (s) of the collective that overlap does not hide
    serial_per_block_s: float = 0.0
    #: aggregate byte rate (bytes/s) the collective saturates at however many blocks it is given (the
    #: NVLink/HBM limit of the algorithm); inf: no saturation, the rate is ``k r(b)``
    comm_max_bytes_per_s: float = float("inf")
    #: sharpness ``n`` of the soft minimum between ``k r(b)`` and ``comm_max_bytes_per_s``
    comm_saturation_exponent: float = 2.0
    #: dynamic energy (J) per byte of the collective (links, HBM reads/writes): fixed by the bytes,
    #: whatever the SM count, unlike the power of the blocks that hold SMs
    comm_j_per_byte: float = 0.0
    #: exponent ``epsilon`` of the share of an SM that a collective block of ``b`` threads takes from
    #: compute, ``(b / threads_per_sm) ** epsilon`` (0: a block holds its whole SM; 1: compute blocks
    #: fill the threads the collective leaves free)
    sm_take_block_exponent: float = 0.0
    threads_per_sm: int = 2048
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def load(gpu: str) -> OverlapParams:
        """The fitted coefficients of ``gpu`` (``profiles/overlap_<gpu>.json``)."""
        spec = get_gpu(gpu)
        stem = _PROFILE_OF.get(spec.name)
        if stem is None:
            raise UnknownNameError("GPU with an overlap profile", spec.name, _PROFILE_OF)
        return _load(stem, spec.name)

    @staticmethod
    def from_dict(d: Mapping[str, Any], *, num_sms: int, tdp_w: float = float("inf")) -> OverlapParams:
        c = d["coefficients"]
        return OverlapParams(
            num_sms=num_sms, tdp_w=tdp_w, provenance=d.get("provenance", {}),
            per_sm_bytes_per_s_512=c["per_sm_bytes_per_s_512"], block_exponent=c["block_exponent"],
            per_block_s=c["per_block_s"], comm_latency_s=c["comm_latency_s"],
            sm_exponent=c["sm_exponent"], mem_interference=c["mem_interference"],
            comm_slowdown=dict(c["comm_slowdown"]), static_w=c["static_w"], sm_power_w=c["sm_power_w"],
            sm_power_block_exponent=c["sm_power_block_exponent"], comm_active_w=c.get("comm_active_w", 0.0),
            iteration_overhead_s=c.get("iteration_overhead_s", 0.0),
            sm_exponent_by_class=dict(c.get("sm_exponent_by_class", {})),
            interference=dict(c.get("interference", {})), sm_power_share=c.get("sm_power_share", 0.0),
            serial_per_block_s=c.get("serial_per_block_s", 0.0),
            comm_max_bytes_per_s=float(c.get("comm_max_bytes_per_s") or float("inf")),
            comm_saturation_exponent=c.get("comm_saturation_exponent", 2.0),
            comm_j_per_byte=c.get("comm_j_per_byte", 0.0),
            sm_take_block_exponent=c.get("sm_take_block_exponent", 0.0))


@functools.cache
def _load(stem: str, gpu: str) -> OverlapParams:
    path = resources.files("energylens.costmodel").joinpath("profiles", f"overlap_{stem}.json")
    spec = get_gpu(gpu)
    return OverlapParams.from_dict(json.loads(path.read_text()), num_sms=spec.compute_units, tdp_w=spec.tdp_w)


@dataclass(frozen=True)
class OverlapCost(Record):
    """Time and energy of one GPU over an overlapped window, energy in its parts.

    ``comm_exposed_s`` is the time the compute stream waited for the collective after the window
    (its serial per-block part included); ``contended_s`` the time both streams ran together.
    Fields are floats, or arrays where the kernels or ``comm_bytes`` were.
    """

    time_s: Floats
    static_j: Floats
    compute_j: Floats
    comm_j: Floats
    comm_time_s: Floats
    comm_exposed_s: Floats
    contended_s: Floats = 0.0

    @property
    def energy_j(self) -> Floats:
        return self.static_j + self.compute_j + self.comm_j


def sm_comm_time_s(comm_bytes: Floats, comm_sms: int, block_size: int, params: OverlapParams) -> Floats:
    """Solo time (s) of an SM-driven collective: latency + bytes / R(k, b) + per_block * k.

    ``R(k, b)`` is ``k r(b)`` softly capped at ``comm_max_bytes_per_s`` (module docstring).
    ``comm_bytes`` may be an array (the time is then one too)."""
    if np.any(np.less(comm_bytes, 0)):
        raise EstimateError(f"collective size must be >= 0 bytes, got {comm_bytes}")
    if not 0 < comm_sms < params.num_sms:
        raise EstimateError(f"comm_sms must be in 1..{params.num_sms - 1}, got {comm_sms}")
    if block_size <= 0:
        raise EstimateError(f"block_size must be > 0 threads, got {block_size}")
    return params.comm_latency_s + comm_bytes / _comm_rate(comm_sms, block_size, params) + params.per_block_s * comm_sms


def _comm_rate(comm_sms: int, block_size: int, p: OverlapParams) -> float:
    """Aggregate byte rate ``R(k, b)`` (bytes/s) of the collective."""
    rate = comm_sms * p.per_sm_bytes_per_s_512 * (block_size / 512) ** p.block_exponent
    if p.comm_max_bytes_per_s < float("inf"):
        n = p.comm_saturation_exponent
        rate = rate / (1 + (rate / p.comm_max_bytes_per_s) ** n) ** (1 / n)
    return rate


def _comm_power_w(comm_sms: int, block_size: int, p: OverlapParams) -> float:
    return p.comm_active_w + p.sm_power_w * comm_sms * (block_size / 512) ** p.sm_power_block_exponent


def serial_cost(kernels: Sequence[Kernel], params: OverlapParams) -> OverlapCost:
    """Kernels run alone, back to back (no collective)."""
    t = sum(k.time_s for k in kernels)
    dyn = sum(k.time_s * k.dyn_power_w for k in kernels)
    return OverlapCost(time_s=t, static_j=params.static_w * t, compute_j=dyn, comm_j=0.0,
                       comm_time_s=0.0, comm_exposed_s=0.0)


def _alpha(cls: str, p: OverlapParams) -> float:
    return p.sm_exponent_by_class.get(cls, p.sm_exponent)


def _sigma(cls: str, p: OverlapParams) -> float:
    if cls in p.interference:
        return p.interference[cls]
    return p.mem_interference if cls == "memory" else 0.0


_Terms: TypeAlias = "tuple[Floats, Floats, Floats, Floats]"


def _class_terms(cls: str, active: float, p: OverlapParams) -> tuple[float, float, float, float]:
    """Per-class constants of the window rule: (stretch ``s``, collective slowdown, ``1 - 1 / s``,
    ``phi (active - 1 / s)``); the last two are the extra time and SM-side energy factor (per W of
    dynamic power) of each second the kernel runs contended (``overlap_window``)."""
    stretch = (1.0 / active) ** _alpha(cls, p) * (1 + _sigma(cls, p))
    return stretch, 1 + p.comm_slowdown.get(cls, 0.0), 1 - 1 / stretch, p.sm_power_share * (active - 1 / stretch)


def _by_class(cls: str | np.ndarray, table: Mapping[str, _Terms]) -> _Terms:
    """``table[cls]`` for one class name, or elementwise over an array of class names (arrays)."""
    if isinstance(cls, str):
        return table[cls]
    names = np.asarray(cls)
    present = set(names.ravel().tolist())
    if len(present) == 1:
        return table[str(present.pop())]
    cols = [np.empty(names.shape) for _ in range(4)]
    for c in present:
        mask = names == c
        for col, v in zip(cols, table[str(c)], strict=True):
            col[mask] = v
    return cols[0], cols[1], cols[2], cols[3]


# Float-or-array helpers: plain Python on floats (the scalar path stays fast), numpy on arrays. Both
# paths run the same rule below; on arrays its running sums are arrays it owns, updated in place.
def _shape(kernels: Sequence[Kernel], *values: Floats) -> tuple[int, ...]:
    """The broadcast shape of every kernel field and ``values`` (``()``: all floats)."""
    shapes = {np.shape(v) for v in values}
    shapes |= {np.shape(f) for kern in kernels for f in (kern.time_s, kern.dyn_power_w, kern.cls)}
    return np.broadcast_shapes(*shapes)


def _zeros(shape: tuple[int, ...]) -> Floats:
    """0.0, or a new array of zeros of ``shape``."""
    return np.zeros(shape) if shape else 0.0


def _minimum(a: Floats, b: Floats) -> Floats:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.minimum(a, b)
    return min(a, b)


def _maximum(a: Floats, b: Floats) -> Floats:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return max(a, b)


def _any(cond: Any) -> bool:
    return bool(cond.any()) if isinstance(cond, np.ndarray) else bool(cond)


def _where(cond: Any, a: Floats, b: Floats) -> Floats:
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    return a if cond else b


def _div(a: Floats, b: Floats, default: Floats) -> Floats:
    """``a / b if b > 0 else default``."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) or isinstance(default, np.ndarray):
        pos = np.greater(b, 0)
        return np.where(pos, a / np.where(pos, b, 1.0), default)
    return a / b if b > 0 else default


def overlap_window(kernels: Sequence[Kernel], *, comm_bytes: Floats, comm_sms: int, block_size: int,
                   params: OverlapParams, comm_floor_s: Floats = 0.0) -> OverlapCost:
    """One GPU's window: a collective launched before ``kernels[0]``, synchronised after the last.

    An empty ``kernels`` is the serial case (collective alone, then the compute). Works on floats and
    on numpy arrays alike: kernel fields, ``comm_bytes`` and ``comm_floor_s`` broadcast together, and
    every field of the result is then an array (the search prices all its points with this one
    function). ``comm_floor_s``: the least solo time of the collective whatever its SMs (the plan's
    measured serial time: no number of SMs moves bytes faster than the links do).
    """
    p = params
    n, k = p.num_sms, comm_sms
    t_comm = _maximum(sm_comm_time_s(comm_bytes, k, block_size, p), comm_floor_s)
    taken = k * min(1.0, block_size / p.threads_per_sm) ** p.sm_take_block_exponent
    active = (n - taken) / n  # SM share left to compute while the collective holds its blocks
    by_class: dict[str, _Terms] = {c: _class_terms(c, active, p) for c in KERNEL_CLASSES}
    shape = _shape(kernels, t_comm)
    rem = _zeros(shape)
    rem += t_comm  # solo time (s) of the collective still to run
    t, contended, compute = _zeros(shape), _zeros(shape), _zeros(shape)
    for kern in kernels:
        kt, kw = kern.time_s, kern.dyn_power_w
        stretch, slow, extra, sm_j = _by_class(kern.cls, by_class)
        # Both run contended until one ends: the kernel (after kt * stretch) or the collective (after
        # rem * slow); the rest of the kernel runs alone, a collective that is done (rem = 0) costs
        # it nothing. So the kernel runs tt contended, doing tt / stretch of its solo work.
        rem *= slow
        tt = _minimum(rem, kt * stretch)
        rem -= tt
        rem /= slow
        contended += tt
        t += kt
        t += tt * extra  # tt + (kt - tt / stretch)
        # memory side (1 - phi) fixed by the work; SM side (phi): power x active share for the
        # contended time, full for the solo rest: kw (kt - phi tt / stretch + phi active tt)
        tt *= sm_j
        tt += kt
        tt *= kw
        compute += tt
    exposed = rem + p.serial_per_block_s * k
    t += exposed
    held = contended + exposed
    static = p.static_w * t
    comm = _comm_power_w(k, block_size, p) * held + p.comm_j_per_byte * comm_bytes
    raw = static + compute + comm
    cap = p.tdp_w * t
    over = (raw > cap) & (t > 0)  # average power above TDP: the GPU throttles to it
    if _any(over):
        scale = _where(over, _div(cap, raw, 1.0), 1.0)
        static, compute, comm = static * scale, compute * scale, comm * scale
    return OverlapCost(time_s=t, static_j=static, compute_j=compute, comm_j=comm,
                       comm_time_s=held, comm_exposed_s=exposed, contended_s=contended)
