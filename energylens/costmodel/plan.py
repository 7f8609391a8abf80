"""Multi-GPU plans: the rewritten graphs of a plan, their work per GPU, and their price.

A *plan* is a traced graph after the pipeline ``shard{tp,ep,dp}[,fuse],moe{routing}[,overlap{comm_sms}]``
(``plan_graph``). Every op of a planned graph runs on each of the plan's ``tp x dp`` GPUs at its
local dim sizes (``energylens.passes.shard.local_dim_sizes``); the collectives the shard pass
inserted run over ``mesh[axis]`` GPUs. Pricing (``PlanPricer``, same call signature as
``energylens.costmodel.analysis.price_graph``) returns one ``PlanPricedOp`` per op with the cost of
*one GPU* for one execution, so that every total over the plan is ``per-GPU sum x num_gpus``:

* **Compute ops**: ``WorkAnalysis`` at local sizes (fused kernels' HBM bytes and launches come
  from the fusion groups), priced by the roofline and power model of the single-GPU estimate.
* **Collectives** (``all_reduce``/``all_gather``/``all_to_all``/...): latency from the NCCL tables
  (``comm.collective_cost``) on the cluster's interconnect (InfiniBand for a group that spans
  nodes, ``group_spans_nodes``), for the message bytes per GPU (``collective_bytes``); energy = static power x time + the communication power above static
  (``comm_power_w - static``) x time. The dynamic part is in ``OpCost.byte_j`` and in ``comm_j``.
* **Expert straggler** (ep > 1): under vLLM's expert parallelism every GPU runs its E/ep experts
  over all the step's tokens (gathered over dp), so its load is the token-slots routed to its
  own experts; these counts per EP rank come from the routing the ``moe`` pass recorded
  (``graph_expert_load`` over all the step's tokens); the most loaded rank does ``straggler = max / mean`` times the
  mean rank's token work, so an expert op takes the max rank's time while the dynamic energy is
  that of the mean work; every other GPU waits for the straggler at static power. That waiting
  energy is in ``static_j`` and reported as ``wait_j``.
* **Overlap** (``comm_sms`` set): the step runs as two interleaved nano-batches (as NanoFlow and
  Kareus run it). The ``overlap`` pass decides the schedule and the pricer only reads it from the
  IR (``overlap_windows``): a collective on stream 1 runs on ``comm_sms`` SMs concurrently with the
  compute ops that follow it in its region (wrapping round to the region's start: the next layer)
  while they carry an ``sm_share`` below 1, which belong to the other nano-batch. Time and energy
  of that window come from the contended schedule ``overlap.overlap_window`` (SM contention, HBM
  interference, communication power); the collective's cost is the window's minus the solo cost
  of the compute ops, so sums stay additive. Kernels are priced at the full
  batch: the weight re-reads of the second nano-batch are not counted (an optimistic bound).
  Contention coefficients are fitted on A100 (``profiles/overlap_a100_sxm4_40gb.json``); other
  GPUs use them with their own SM count, static power and TDP, the per-SM byte rate scaled by
  NVLink bandwidth per SM and the collective's saturation rate by NVLink bandwidth (``overlap_params``).

The rules are written once, on arrays: ``plan_work`` (work records, fields arrays over points),
``price_ops`` (their time and energy at each point and GPU clock) and ``OverlapWindows`` (the
windows the ``overlap`` pass annotated, read by ``overlap_windows``, priced at any SM count).
``PlanPricer`` applies them at one point and one clock; the search (``energylens.search.evaluate``)
at every batch x clock x SM count of a variant.

>>> from energylens.typing import Parallel
>>> # ops = plan_work(traced.decode, Parallel(tp=2), {"B": np.array([1, 8, 64]), "S": 1, "K": 1024},
>>> #                 gpu=get_gpu("H100"))   -> list[PlanOp], fields arrays over B
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from energylens.costmodel.analysis import PricedOp, WorkAnalysis, _on_chip, is_attention_op
from energylens.costmodel.comm import GPUS_PER_NODE, collective_cost
from energylens.costmodel.compute import WORK_FIELDS, OpWork
from energylens.costmodel.hardware import GPUSpec, get_gpu
from energylens.costmodel.overlap import Kernel, OverlapParams, overlap_window
from energylens.costmodel.power import power_capped_op
from energylens.costmodel.profile import Profile
from energylens.errors import ConfigError, UnknownNameError
from energylens.ir.core import Collective, Einsum, Gather, Graph, Op, Value
from energylens.passes.manager import PassManager
from energylens.passes.moe import Moe, graph_expert_load, straggler_shares
from energylens.passes.overlap import Overlap, count_runs, window_after
from energylens.passes.shard import Shard, collective_bytes, local_dim_sizes, mesh_of, replication
from energylens.typing import MemoryEstimate, OpCost, Parallel, Workload

__all__ = [
    "OP_CLASSES",
    "plan_graph",
    "pipeline_text",
    "PlanOp",
    "plan_work",
    "PlanPricedOp",
    "OpPrices",
    "price_ops",
    "overlap_windows",
    "overlap_block_sizes",
    "OverlapWindows",
    "PlanPricer",
    "overlap_params",
    "plan_memory",
    "state_bytes",
    "num_gpus_of",
]

#: Op classes of ``PlanOp.cls``: GEMMs, attention (KV-length dependent), memory-bound pointwise
#: and gathers, MoE expert ops (their time follows the straggler under ep), collectives.
OP_CLASSES: tuple[str, ...] = ("gemm", "attention", "memory", "expert", "comm")


# ---------------------------------------------------------------------------------------------
# Graphs of a plan


def _moe_pass(routing: str | Moe) -> Moe:
    if isinstance(routing, Moe):
        return routing
    if not isinstance(routing, str):
        raise ConfigError(f"routing must be a routing name or a Moe pass, got {routing!r}")
    return Moe(routing=routing)  # type: ignore[arg-type]


def pipeline_text(parallel: Parallel, fused: bool = True, routing: str | Moe = "uniform",
                  overlap: Overlap | None = None) -> str:
    """The pipeline of a plan in the pass-manager syntax (``"shard{tp=2,ep=1,dp=1},fuse,moe{...}"``,
    then ``overlap{comm_sms=16,total_sms=132}`` when an ``overlap`` pass (model mode) is given)."""
    moe = _moe_pass(routing)
    opts = f"routing={moe.routing}" + (f",skew={moe.skew}" if moe.routing == "zipf" else "") + f",seed={moe.seed}"
    ov = ""
    if overlap is not None:
        ov = (f",overlap{{comm_sms={overlap.comm_sms},total_sms={overlap.total_sms}"
              + (f",comm_block_size={overlap.comm_block_size}" if overlap.comm_block_size != 1024 else "") + "}")
    return (f"shard{{tp={parallel.tp},ep={parallel.ep},dp={parallel.dp}}}" + (",fuse" if fused else "")
            + f",moe{{{opts}}}" + ov)


@functools.lru_cache(maxsize=128)
def _planned(graph: Graph, parallel: Parallel, fused: bool, moe: Moe, overlap: Overlap | None) -> Graph:
    if overlap is not None:  # the schedule on top of the (cached) rewritten graph
        return PassManager((overlap,))(_planned(graph, parallel, fused, moe, None))
    passes: list[Any] = [Shard(parallel.tp, parallel.ep, parallel.dp)]
    if fused:
        from energylens.passes.fuse import Fuse

        passes.append(Fuse())
    passes.append(moe)
    return PassManager(tuple(passes))(graph)


def plan_graph(graph: Graph, parallel: Parallel | None = None, fused: bool = True,
               routing: str | Moe = "uniform", overlap: Overlap | None = None) -> Graph:
    """``graph`` after ``shard{tp,ep,dp}``, ``fuse`` (when ``fused``), ``moe{routing}`` and, when
    given, the ``overlap`` pass (model mode: ``Overlap(comm_sms=16, total_sms=gpu.compute_units)``),
    whose stream and SM-share annotations are the schedule ``PlanPricer(comm_sms=...)`` prices (cached).

    ``routing`` is a routing name (``uniform``, ``zipf``; ``histogram`` needs a ``Moe`` pass) or a
    configured ``energylens.passes.moe.Moe``. Raises ``ShardingError`` for an impossible sharding.
    """
    if overlap is not None and overlap.start is not None:
        raise ConfigError("plan_graph: the overlap pass of a plan runs in model mode (no start/end), "
                          f"got {overlap!r}")
    return _planned(graph, parallel or Parallel(), bool(fused), _moe_pass(routing), overlap)


def num_gpus_of(graph: Graph) -> int:
    """GPUs a planned graph runs on: tp x dp of its mesh (1 for an unsharded graph)."""
    mesh = mesh_of(graph)
    return mesh["tp"] * mesh["dp"]


# ---------------------------------------------------------------------------------------------
# Work per GPU


@dataclass(frozen=True)
class PlanOp:
    """The work of one op of a planned graph on one GPU, for one execution (fields may be arrays).

    ``work``: FLOPs, HBM bytes, GEMM rows, kernel launches of the *mean* GPU at its local dim sizes
    (all zeros for a collective). ``max_work``: the same for the most loaded GPU (differs only for
    expert ops under ep: their token dim ``C`` times ``straggler``). ``replication``: how many GPUs
    compute the same piece (sum over GPUs of ``work.flops`` = global FLOPs x replication).
    Collectives: ``comm_fn`` (``all_reduce``...), ``comm_axis``, ``comm_bytes`` (message bytes per
    GPU, nccl-tests convention), ``comm_gpus`` (GPUs in one collective group), ``comm_across_nodes``
    (the group spans nodes, :func:`group_spans_nodes`: priced over InfiniBand).
    """

    op: Op
    count: int
    cls: str
    work: OpWork
    max_work: OpWork
    straggler: Any = 1.0
    replication: Any = 1.0
    comm_fn: str | None = None
    comm_axis: str | None = None
    comm_bytes: Any = 0.0
    comm_gpus: int = 1
    comm_across_nodes: bool = False


def group_spans_nodes(axis: str, mesh: dict[str, int]) -> bool:
    """Whether one collective group over mesh ``axis`` spans nodes of ``GPUS_PER_NODE`` GPUs.

    Ranks are laid out as vLLM does, tensor parallel innermost (``rank = dp_rank * tp + tp_rank``),
    so a tp group is ``tp`` neighbouring GPUs, whole on one node while ``tp <= GPUS_PER_NODE``; the
    other axes (dp, and the MoE axes ep and etp, which spread over all tp x dp GPUs) take GPUs ``tp``
    apart, so their groups cross nodes whenever the plan has more GPUs than a node.

    >>> group_spans_nodes("tp", {"tp": 4, "dp": 4}), group_spans_nodes("dp", {"tp": 4, "dp": 4})
    (False, True)
    """
    if axis == "tp":
        return mesh.get("tp", 1) > GPUS_PER_NODE
    return mesh.get(axis, 1) > 1 and mesh.get("tp", 1) * mesh.get("dp", 1) > GPUS_PER_NODE


def _zero_work(peak: float) -> OpWork:
    return OpWork(tc_flops=0.0, vec_flops=0.0, hbm_bytes=0.0, rows=0.0, peak_flops_per_s=peak, kv=0.0, kernels=0.0)


def _is_expert_op(op: Op) -> bool:
    """An op of the expert layout: it works on ``e`` experts x ``C`` tokens each."""
    dims = {d for v in (*op.operands, op.result) for d in v.type.dims}
    return not isinstance(op, (Gather, Collective)) and {"e", "C"} <= dims


def op_class(op: Op) -> str:
    """``OP_CLASSES`` entry of an op."""
    if isinstance(op, Collective):
        return "comm"
    if _is_expert_op(op):
        return "expert"
    if is_attention_op(op) or any(_on_chip(v) for v in op.operands):
        return "attention"
    if isinstance(op, Einsum):
        return "gemm"
    return "memory"


class _LocalWork(WorkAnalysis):
    """``WorkAnalysis`` per GPU whose expert ops see ``token_scale`` x their tokens per expert."""

    def __init__(self, graph: Graph, binding: Mapping[str, Any], gpu: GPUSpec, mesh: Mapping[str, int],
                 token_scale: Any = 1.0):
        super().__init__(graph, binding, gpu, mesh)
        self.token_scale = token_scale
        if np.any(np.asarray(token_scale) != 1.0):  # the straggler: its own experts at its own load
            self.hit_shares = straggler_shares(graph, mesh.get("ep", 1))
            if self.hit_shares is not None:  # (uniform routing: hits at its load, no hot experts)
                # the hot rank's experts, hit by as many tokens as give it the straggler's slots:
                # token_scale x the mean rank's, against its expected sum(shares) x (one rank's);
                # checked against simulated draws (128 experts, top-8, ep=4, zipf): within 6% from 1 token
                self.hit_token_scale = 1.0 / sum(self.hit_shares)

    def op_sizes(self, op: Op) -> Mapping[str, float]:
        sizes = super().op_sizes(op)
        if _is_expert_op(op) and "C" in sizes and np.any(np.asarray(self.token_scale) != 1.0):
            sizes = {**sizes, "C": sizes["C"] * self.token_scale}
        return sizes


def _straggler(graph: Graph, sizes: Mapping[str, Any], ep: int) -> Any:
    """Max / mean token load of the ep ranks for the routed tokens of one step (1.0 without ep).

    ``sizes["C"]`` is the global tokens per expert: under ep every GPU sees all the step's tokens
    (the dispatch all-gathers them over dp), and its load is the slots routed to its E/ep experts.
    """
    if ep <= 1 or "num_experts" not in graph.attr or "C" not in sizes:
        return 1.0
    experts, top_k = int(graph.attr["num_experts"]), int(graph.attr["top_k"])
    tokens = np.asarray(sizes["C"] * experts / top_k, dtype=float)
    out = np.array([graph_expert_load(graph, round(float(t)), ep).straggler for t in tokens.ravel()])
    return float(out[0]) if tokens.shape == () else out.reshape(tokens.shape)


def plan_work(ir: Graph, parallel: Parallel | None, binding: Mapping[str, Any], *, gpu: GPUSpec,
              fused: bool = True, routing: str | Moe = "uniform",
              select: Callable[[Op], bool] | None = None) -> list[PlanOp]:
    """Per-GPU work records of every op of a plan: the vectorisable core of ``estimate``.

    ``ir``: a traced graph (``traced.prefill`` / ``traced.decode``), planned here with
    ``plan_graph(ir, parallel, fused, routing)``; with ``parallel=None`` it is taken as an already
    planned graph (the output of ``plan_graph``) and used as it is (``fused``, ``routing`` ignored).
    ``binding``: the *global* sizes of the free symbols, ``{"B": batch, "S": new tokens per
    sequence, "K": KV length}``, as for a single GPU; each may be a numpy array (e.g. ``B`` over
    many batch sizes), and every numeric field of the records is then an array of that shape. Under
    dp each replica gets ``B / dp`` sequences (the shard pass splits the token dims).
    ``select``: keep only the ops it accepts (e.g. ``is_attention_op``).

    Returns, in program order, one ``PlanOp`` per op with ``count`` = repetitions (layers): the
    work of one execution on one GPU (``work``: the mean GPU; ``max_work``: the most loaded one,
    which sets the time of expert ops under ep), its class (``OP_CLASSES``), ``replication``, and for
    collectives the message bytes per GPU and the group size. Nothing here depends on calibration:
    ``price_ops`` prices the records (``PlanPricer`` at one point).
    """
    graph = ir if parallel is None else plan_graph(ir, parallel, fused, routing)
    mesh = mesh_of(graph)
    mean = _LocalWork(graph, binding, gpu, mesh)
    s = _straggler(graph, mean.sizes, mesh["ep"])
    worst = _LocalWork(graph, binding, gpu, mesh, token_scale=s) if np.any(np.asarray(s) != 1.0) else None
    peak = gpu.peak_flops_per_s("bf16")
    out: list[PlanOp] = []
    for op, count in graph.walk():
        if select is not None and not select(op):
            continue
        if isinstance(op, Collective):
            zero = _zero_work(peak)
            out.append(PlanOp(op, count, "comm", zero, zero, comm_fn=op.fn, comm_axis=op.axis,
                              comm_bytes=collective_bytes(op, mean.sizes, mesh), comm_gpus=mesh.get(op.axis, 1),
                              comm_across_nodes=group_spans_nodes(op.axis, mesh)))
            continue
        cls = op_class(op)
        w = mean.visit(op)
        wmax = worst.visit(op) if worst is not None else w
        strag = s if (cls == "expert" and worst is not None) else 1.0
        out.append(PlanOp(op, count, cls, w, wmax if cls == "expert" else w, straggler=strag,
                          replication=replication(op, mean.sizes, mesh)))
    return out


# ---------------------------------------------------------------------------------------------
# Pricing: the rules, on arrays (ops, points, clocks); ``PlanPricer`` is their one-point use


@dataclass(frozen=True)
class PlanPricedOp(PricedOp):
    """A ``PricedOp`` of a plan: ``cost`` is one GPU's, for one execution.

    ``wait_j``: static energy of the GPUs waiting for the expert straggler (inside ``cost.static_j``);
    ``comm_j``: energy of communication above static (inside ``cost.byte_j``); ``cls``: op class.
    """

    cls: str = "memory"
    wait_j: float = 0.0
    comm_j: float = 0.0


@functools.lru_cache(maxsize=32)
def _overlap_params(gpu_name: str, static_w: float) -> OverlapParams:
    base = OverlapParams.load("A100-SXM4-40GB")
    gpu, a100 = get_gpu(gpu_name), get_gpu("A100-SXM4-40GB")
    link = gpu.nvlink_bandwidth_bytes_per_s or gpu.pcie_bandwidth_bytes_per_s
    link_ratio = link / a100.nvlink_bandwidth_bytes_per_s  # type: ignore[operator]
    per_sm = link_ratio * a100.compute_units / gpu.compute_units
    # the rate limit the collective saturates at is the link's: it scales with the link bandwidth
    # (inf stays inf); a block's share of an SM follows this GPU's threads per SM
    return dataclasses.replace(base, num_sms=gpu.compute_units, tdp_w=gpu.tdp_w, static_w=static_w,
                               threads_per_sm=gpu.max_threads_per_compute_unit,
                               per_sm_bytes_per_s_512=base.per_sm_bytes_per_s_512 * per_sm,
                               comm_max_bytes_per_s=base.comm_max_bytes_per_s * link_ratio)


def overlap_params(gpu: GPUSpec, profile: Profile) -> OverlapParams:
    """Contention coefficients for ``gpu`` (its own fit where one exists), else the A100 fit with
    this GPU's SMs, TDP and static power, the per-SM byte rate scaled by its NVLink bandwidth per SM
    and the saturation rate ``comm_max_bytes_per_s`` by its NVLink bandwidth (PCIe where it has no
    NVLink), relative to the A100's; the other coefficients (exponents, J/byte) carry over as fitted."""
    try:
        own = OverlapParams.load(gpu.name)
    except UnknownNameError:  # no fit of its own: transfer the A100 one
        return _overlap_params(gpu.name, float(profile.static_power_w))
    return dataclasses.replace(own, static_w=profile.static_power_w)


def _col(x: Any, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, dtype=float), (n,))


def _stack(works: Sequence[OpWork], n: int) -> OpWork:
    """One OpWork with fields of shape (ops, points, 1): the last axis broadcasts against clocks."""
    cols = {}
    for f in WORK_FIELDS:
        out = np.empty((len(works), n, 1))
        for i, w in enumerate(works):
            out[i, :, 0] = getattr(w, f)
        cols[f] = out
    return OpWork(**cols)


@functools.lru_cache(maxsize=262144)
def _coll(fn: str, nbytes: float, n: int, gpu: str, interconnect: str) -> tuple[float, float]:
    c = collective_cost(fn, nbytes, n, gpu, interconnect)
    return c.time_s, c.power_w


def _time_dyn(w: OpWork, gpu: GPUSpec, profile: Profile,
              clocks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(power-capped time, flop_j, byte_j) of one execution of each op of ``w`` (``_stack``), arrays
    (ops, points, clocks): ``power.power_capped_op`` at each of ``clocks`` (fractions of the maximum
    clock; None: the profile's ``sm_clock_fraction``)."""
    t, flop_j, byte_j = power_capped_op(w, gpu, profile, None if clocks is None else np.asarray(clocks, dtype=float))
    return t, flop_j, np.broadcast_to(byte_j, t.shape)


@dataclass
class OpPrices:
    """One execution on one GPU of each of ``recs`` (``price_ops``): arrays (ops, points, clocks).

    ``time_s``: the most loaded GPU's for expert ops under ep; ``flop_j``, ``byte_j``: dynamic energy
    (a collective's ``byte_j`` is its power above static x its time); ``wait_j``: static energy of
    waiting for the expert straggler (inside ``static_w * time_s``).
    """

    recs: Sequence[PlanOp]
    static_w: float
    time_s: np.ndarray
    flop_j: np.ndarray
    byte_j: np.ndarray
    wait_j: np.ndarray
    dyn_j: np.ndarray      # flop_j + byte_j
    energy_j: np.ndarray   # static_w * time_s + dyn_j

    @functools.cached_property
    def dyn_power_w(self) -> np.ndarray:
        """Dynamic power of each compute op running solo (0 for collectives and zero-time ops)."""
        compute = np.array([r.cls != "comm" for r in self.recs])[:, None, None]
        t = self.time_s
        return np.divide(self.dyn_j, t, out=np.zeros(t.shape), where=(t > 0) & compute)


def price_ops(recs: Sequence[PlanOp], n: int, gpu: GPUSpec, profile: Profile, interconnect: str = "nvlink",
              clocks: np.ndarray | None = None) -> OpPrices:
    """Price ``plan_work`` records whose fields are scalars or arrays of ``n`` points, at each clock.

    ``clocks``: locked SM clocks as fractions of the maximum (array (clocks,), each the highest clock
    the power limiter may use, ``power.power_capped``; None: one clock, the profile's
    ``sm_clock_fraction``). Compute ops: the
    roofline and power-capped energy of ``work``; an expert op under ep takes the time of ``max_work``
    (the straggler) while its dynamic energy is the mean GPU's, the others waiting at static power.
    Collectives: ``comm.collective_cost`` for the message bytes, energy above static in ``byte_j``.
    """
    static_w = profile.static_power_w
    shape = (len(recs), n, 1 if clocks is None else len(clocks))
    t, flop_j, byte_j, wait_j = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
    comp = [i for i, r in enumerate(recs) if r.cls != "comm"]
    if comp:
        t[comp], flop_j[comp], byte_j[comp] = _time_dyn(_stack([recs[i].work for i in comp], n), gpu, profile,
                                                        clocks)
        strag = [i for i in comp if recs[i].max_work is not recs[i].work]
        if strag:  # expert straggler: every GPU waits for the most loaded one
            tmax = _time_dyn(_stack([recs[i].max_work for i in strag], n), gpu, profile, clocks)[0]
            tmax = np.maximum(tmax, t[strag])
            wait_j[strag], t[strag] = static_w * (tmax - t[strag]), tmax
    for i, r in enumerate(recs):
        if r.cls != "comm" or int(r.comm_gpus) <= 1:
            continue
        uniq, inv = np.unique(_col(r.comm_bytes, n), return_inverse=True)
        link = "ib" if r.comm_across_nodes else interconnect
        tp = np.array([_coll(r.comm_fn or "", float(b), int(r.comm_gpus), gpu.name, link)
                       for b in uniq])[inv.reshape(-1)]
        t[i] = tp[:, :1]
        byte_j[i] = np.maximum(0.0, tp[:, 1:] - static_w) * tp[:, :1]
    dyn = flop_j + byte_j
    return OpPrices(recs, static_w, t, flop_j, byte_j, wait_j, dyn, static_w * t + dyn)


def _shares_sms(op: Op) -> bool:
    """A compute op the overlap pass put in a window: it runs on a share of the SMs."""
    return op.sm_share is not None and op.sm_share < 1


def overlap_windows(prices: OpPrices) -> list[tuple[int, list[int]]]:
    """The schedule the ``overlap`` pass annotated: (a collective, the compute ops it runs with).

    Read from the IR only: a collective on stream 1 overlaps the compute ops that follow it in its
    region (a maximal run of ops with the same repetition count: a Repeat, or top-level ops),
    wrapping round to the region's start (the next layer), while they carry an ``sm_share`` below 1,
    up to the next collective. Collectives that take no time at any point and empty windows are
    left out. Rows index ``prices.recs``.
    """
    recs = prices.recs
    out = []
    for run in count_runs([r.count for r in recs]):
        for pos, i in enumerate(run):
            if recs[i].cls != "comm" or recs[i].op.stream != 1 or not np.any(prices.time_s[i] > 0):
                continue
            window = window_after(len(run), pos, lambda q, run=run: recs[run[q]].cls != "comm"
                                  and _shares_sms(recs[run[q]].op))
            if window:
                out.append((i, [run[q] for q in window]))
    return out


def overlap_block_sizes(graph: Graph) -> dict[str, int]:
    """Threads per block of each overlapped collective's kernel, as the ``overlap`` pass recorded
    them (``Graph.attrs`` ``overlap.<collective>.block_size``), by collective result name."""
    out = {}
    for key, value in graph.attrs:
        if key.startswith("overlap.") and key.endswith(".block_size"):
            out[key[len("overlap."):-len(".block_size")]] = int(value)
    return out


_CLS = {"expert": "gemm"}  # kernel class of an op class in the contention model


@dataclass
class OverlapWindows:
    """The windows of ``overlap_windows`` as ``overlap.overlap_window`` inputs, for any SM count.

    ``comm``: each window's collective row. ``groups``: (windows, kernels, comm bytes, serial time,
    block size) per window length and recorded block size (None: the caller's), priced by one
    ``overlap_window`` call (the serial time, from the measured tables, is the collective's floor:
    SMs cannot make it beat the links): ``kernels[j]`` is kernel ``j`` of each window of the group, fields (windows, points, clocks)
    ((points, clocks) for a lone window: views). No window is padded (a padded kernel would cost as
    much array work as a real one).
    """

    prices: OpPrices
    comm: list[int]
    groups: list[tuple[list[int], list[Kernel], np.ndarray, np.ndarray, int | None]]
    solo_t: np.ndarray        # (windows, points, clocks): the window's compute ops run solo
    solo_e: np.ndarray

    @classmethod
    def of(cls, p: OpPrices, block_sizes: Mapping[str, int] | None = None) -> OverlapWindows | None:
        """The windows of ``p`` (None when it has none); ``block_sizes``: ``overlap_block_sizes`` of
        the priced graph (a collective without one uses ``collective_cost``'s ``block_size``)."""
        found = overlap_windows(p)
        if not found:
            return None
        comm, windows = [i for i, _ in found], [w for _, w in found]
        n = p.time_s.shape[1]
        # one point and one clock (PlanPricer): a lone window on floats, overlap_window's fast path
        pick = (lambda a: float(a.flat[0])) if p.time_s.shape[1:] == (1, 1) else (lambda a: a)
        blocks = block_sizes or {}
        by_len: dict[tuple[int, int | None], list[int]] = {}
        for row, w in enumerate(windows):
            by_len.setdefault((len(w), blocks.get(p.recs[comm[row]].op.result.name)), []).append(row)
        groups = []
        for (_, block), rows in by_len.items():
            names = [[_CLS.get(p.recs[j].cls, p.recs[j].cls) for j in windows[r]] for r in rows]
            if len(rows) == 1:
                w = windows[rows[0]]
                kernels = [Kernel(time_s=pick(p.time_s[j]), dyn_power_w=pick(p.dyn_power_w[j]), cls=c)
                           for j, c in zip(w, names[0], strict=True)]
                groups.append((rows, kernels, pick(_col(p.recs[comm[rows[0]]].comm_bytes, n)[:, None]),
                               pick(p.time_s[comm[rows[0]]]), block))
                continue
            idx = np.array([windows[r] for r in rows]).T               # (length, windows)
            kt, kw = p.time_s[idx], p.dyn_power_w[idx]                 # (length, windows, points, clocks)
            kernels = [Kernel(time_s=kt[j], dyn_power_w=kw[j],
                              cls=c[0] if len(set(c)) == 1 else np.array(c)[:, None, None])
                       for j, c in enumerate(zip(*names, strict=True))]
            nbytes = np.stack([_col(p.recs[comm[r]].comm_bytes, n) for r in rows])[..., None]
            groups.append((rows, kernels, nbytes, p.time_s[[comm[r] for r in rows]], block))
        solo_t = np.stack([p.time_s[w].sum(axis=0) for w in windows])
        solo_e = np.stack([p.energy_j[w].sum(axis=0) for w in windows])
        return cls(p, comm, groups, solo_t, solo_e)

    def collective_cost(self, comm_sms: int, params: OverlapParams,
                        block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(time_s, energy above static in J) of each window's collective with ``comm_sms`` SMs: the
        contended window's less its compute ops' solo cost (so sums stay additive), arrays (windows,
        points, clocks); 0 where the collective takes no time (its serial price). ``block_size``:
        threads per block of a collective whose graph recorded none."""
        wt, we = np.empty(self.solo_t.shape), np.empty(self.solo_t.shape)
        for rows, kernels, nbytes, serial_s, block in self.groups:
            w = overlap_window(kernels, comm_bytes=nbytes, comm_sms=comm_sms, comm_floor_s=serial_s,
                               block_size=block_size if block is None else block, params=params)
            wt[rows], we[rows] = w.time_s, w.energy_j
        active = self.prices.time_s[self.comm] > 0
        t = np.where(active, np.maximum(0.0, wt - self.solo_t), 0.0)
        return t, np.where(active, np.maximum(0.0, we - self.solo_e - self.prices.static_w * t), 0.0)


@dataclass(frozen=True)
class PlanPricer:
    """Prices planned graphs per GPU; called like ``price_graph(graph, binding, gpu, profile, select)``.

    ``interconnect``: ``nvlink`` | ``pcie`` | ``ib`` for the collectives. Overlap is read from the
    graph: each collective the ``overlap`` pass put on stream 1 (``plan_graph(..., overlap=...)``)
    is priced over the window the graph annotates (``overlap_windows``) with the SMs its
    ``sm_share`` gives on this GPU. ``comm_sms``: the SM count the caller expects (None: whatever
    the graph says); a graph scheduled with another count, or not scheduled at all, is a
    ``ConfigError``, not a silent serial price. Each collective kernel's threads per block are the
    ones the pass recorded (``overlap.<collective>.block_size``; 1024 where none is recorded).
    ``price_ops`` and ``OverlapWindows`` at one point and one clock.
    """

    interconnect: str = "nvlink"
    comm_sms: int | None = None

    def __call__(self, graph: Graph, binding: Mapping[str, float], gpu: GPUSpec, profile: Profile,
                 select: Callable[[Op], bool] | None = None) -> list[PricedOp]:
        recs = plan_work(graph, None, binding, gpu=gpu, select=select)
        p = price_ops(recs, 1, gpu, profile, self.interconnect)
        t, byte_j = p.time_s[:, 0, 0].copy(), p.byte_j[:, 0, 0].copy()
        if any(r.cls == "comm" for r in recs):
            params = overlap_params(gpu, profile)
            sms = self._scheduled_sms(recs, params.num_sms, gpu)
            windows = OverlapWindows.of(p, overlap_block_sizes(graph)) if sms is not None else None
            if windows is not None:
                wt, extra = windows.collective_cost(sms, params)
                t[windows.comm], byte_j[windows.comm] = wt[:, 0, 0], extra[:, 0, 0]
        cols = zip(recs, t.tolist(), p.flop_j[:, 0, 0].tolist(), byte_j.tolist(), p.wait_j[:, 0, 0].tolist(), strict=True)
        return [PlanPricedOp(r.op, r.count, r.work, OpCost(time_s=ti, flops=float(r.work.flops),
                                                           hbm_bytes=float(r.work.hbm_bytes), static_j=p.static_w * ti,
                                                           flop_j=fi, byte_j=bi),
                             cls=r.cls, wait_j=wi, comm_j=bi if r.cls == "comm" else 0.0) for r, ti, fi, bi, wi in cols]

    def _scheduled_sms(self, recs: Sequence[PlanOp], num_sms: int, gpu: GPUSpec) -> int | None:
        """SMs of the stream-1 collectives of ``recs`` (None: none scheduled), checked against ``comm_sms``."""
        if self.comm_sms is not None and not 0 < self.comm_sms < num_sms:
            raise ConfigError(f"comm_sms must be in 1..{num_sms - 1} on {gpu.name}, got {self.comm_sms}")
        shares = {r.op.sm_share for r in recs if r.cls == "comm" and r.op.stream == 1}
        if len(shares) > 1:
            raise ConfigError(f"the graph's overlapped collectives hold different SM shares {sorted(shares)}; "
                              "price one SM count per graph")
        sms = max(1, round(shares.pop() * num_sms)) if shares else None
        if self.comm_sms is not None and sms != self.comm_sms:
            if sms is None and any(r.cls == "comm" and r.comm_axis == "tp" and float(r.comm_gpus) > 1 for r in recs):
                raise ConfigError(
                    f"comm_sms={self.comm_sms} but the graph has no overlap schedule: plan it with "
                    f"plan_graph(..., overlap=Overlap(comm_sms={self.comm_sms}, total_sms={num_sms}))")
            if sms is not None:
                raise ConfigError(f"comm_sms={self.comm_sms} but the graph's overlap schedule gives its "
                                  f"collectives {sms} of {gpu.name}'s {num_sms} SMs")
        return sms


# ---------------------------------------------------------------------------------------------
# Memory per GPU


def _local_value_sizes(graph: Graph, sizes: Mapping[str, float]) -> dict[str, Mapping[str, float]]:
    """Value name -> the per-GPU dim sizes of the first op that produces or reads it."""
    mesh = mesh_of(graph)
    out: dict[str, Mapping[str, float]] = {}
    for op, _ in graph.walk():
        local = {**sizes, **local_dim_sizes(op, sizes, mesh)} if op.sharding else sizes
        for v in (op.result, *op.operands):
            out.setdefault(v.name, local)
    return out


def _nbytes(v: Value, sizes: Mapping[str, float]) -> float:
    n = 1.0
    for d in v.type.dims:
        n *= sizes[d]
    return float(n * v.type.itemsize)


def state_bytes(decode: Graph, sizes: Mapping[str, float]) -> tuple[float, float]:
    """(weights, KV cache) bytes on one GPU of a planned decode graph at the global ``sizes``."""
    local = _local_value_sizes(decode, sizes)
    weights = kv = 0.0
    for d, n in decode.all_decls():
        if d.role in ("param", "cache"):
            b = _nbytes(d.value, local.get(d.value.name, sizes)) * n
            if d.role == "param":
                weights += b
            else:
                kv += b
    return weights, kv


def plan_memory(prefill: Graph, decode: Graph, workload: Workload, gpu: GPUSpec) -> MemoryEstimate:
    """Bytes per GPU of a plan: sharded weights and KV cache, and the largest local working set.

    Same rules as ``memory.memory_estimate`` (KV cache at the mean context, activations of one
    chunked-prefill step), with each tensor at the local sizes of the ops that use it. On an
    unsharded graph this equals ``memory_estimate(..., num_gpus=1)``.
    """
    from energylens.costmodel.memory import _chunk, usable_bytes

    weights, kv = state_bytes(decode, decode.bind(B=workload.batch, S=1, K=workload.decode_context_len))
    mesh = mesh_of(prefill)
    seqs, plen = _chunk(workload, mesh["dp"])
    psizes = prefill.bind(B=seqs, S=plen, K=plen)
    params = {d.value.name for d, _ in prefill.all_decls() if d.role in ("param", "cache")}
    peak = 0.0
    for op, _ in prefill.walk():
        loc = {**psizes, **local_dim_sizes(op, psizes, mesh)} if op.sharding else psizes
        live = [v for v in (*op.operands, op.result) if v.name not in params and not _on_chip(v)]
        peak = max(peak, sum(_nbytes(v, loc) for v in live))
    return MemoryEstimate(weights_bytes=weights, kv_cache_bytes=kv, activation_bytes=peak,
                          capacity_bytes=usable_bytes(gpu))

