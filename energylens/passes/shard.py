"""The shard pass: tensor, expert and data parallelism as "dimension -> mesh axis" annotations.

``Shard(tp, ep, dp)`` seeds the parameter dimensions that each kind of parallelism splits and
propagates the splits through the graph by dimension name; collectives come out of four rules,
not out of matching one model's layers:

* **Seeds** (vLLM's layout). ``tp``: attention heads (``g`` KV heads with their group ``r`` only
  when tp > KV heads, i.e. KV heads replicated; or ``q``/``hq``/``hk``), the MLP intermediate
  ``f``, the vocabulary ``v`` (vLLM pads it to a multiple of 64). ``ep``: the expert dim ``e`` of expert weights
  (params with ``e`` and ``m``); ``etp`` (= tp x dp / ep GPUs per expert): their ``m``. ``dp``:
  the token dims ``B``/``T`` of inputs and caches (each replica serves its own sequences).
* **Propagation**: an op's sharding is the union of its operands' (a dim split in one operand and
  whole in another: the whole one is sliced locally, for free); a result keeps the splits of its
  dims. A Gather that turns tokens into tokens-per-expert moves a ``dp`` split to ``C``.
* **Partial sums**: an einsum contracting a split dim, or a gather from a table split along the
  gathered dim (vocab-parallel embedding), leaves partial sums -> ``all_reduce`` over that axis
  right after it (Megatron's row-parallel linear). Column-parallel then row-parallel MLP and
  attention fall out of this: one all_reduce per block. Partial sums over an expert axis (``ep``
  or ``etp``) instead stay unreduced while every consumer is linear in them (an einsum; a gather
  in its table, such as the MoE combine, whose routing weights are replicated) and are reduced
  where a consumer needs the whole value: after the combine as vLLM does (``reduce_scatter``
  over ``dp`` when dp > 1, then ``all_reduce`` over ``tp``, of ``[tokens, h]``), or per expert
  with an ``all_reduce`` over their axis if a non-linear op reads them before any combine.
* **Full operands**: a reduction over a split dim, a graph output or a region carry that must be
  whole -> ``all_gather`` first (e.g. vocab-split logits).
* **Experts, ep = 1** (vLLM without ``--enable-expert-parallel``): expert weights are split on
  ``m`` over all tp x dp GPUs (``etp``) and every GPU runs every expert's slice on all tokens.
  With dp > 1 the dispatch first all-gathers its token operands (hidden states, routing) over
  ``dp``. The down projection contracts ``m`` and leaves partial sums over ``etp``; they pass
  through the combine (a sum over ``e``, linear in them) and are reduced once as ``[tokens, h]``:
  ``reduce_scatter`` over ``dp`` (dp > 1), then ``all_reduce`` over ``tp`` (tp > 1), not as
  ``[e, C, h]`` (top_k times the bytes). vLLM's ``FusedMoE`` runs the same sequence: with dp > 1
  it flattens tp x dp into the MoE tp group, dispatches / combines over dp as below, then
  ``tensor_model_parallel_all_reduce`` of the combined ``final_hidden_states``.
* **Experts, ep = tp x dp** (vLLM's ``--enable-expert-parallel``; no other ep exists there, so any
  other ep > 1 is a ``ShardingError``): each GPU holds E/ep whole experts. The MoE dispatch (a
  gather from tokens to ``[e, C, ...]``) first all-gathers its token operands over ``dp`` (the
  replicas' hidden states and routing), then keeps only the rows of its own experts (``e`` over
  ``ep``, a local slice, no all-to-all); the expert einsums run E/ep experts over *all* gathered
  tokens. The combine (a sum over ``e``) leaves partial sums, reduced as vLLM does: a
  ``reduce_scatter`` over ``dp`` (each replica gets its own tokens back), then an ``all_reduce``
  over ``tp``, both of ``[tokens, h]``. With dp = 1 that is just the one all_reduce over tp.

  Checked in vLLM's source (v0.10/v0.11): ``FusedMoEParallelConfig.make`` (fused_moe/config.py)
  sets MoE tp 1 and ep = tp x dp under expert parallelism; ``FusedMoE.forward_impl``
  (vllm/model_executor/layers/fused_moe/layer.py) runs ``get_ep_group().dispatch`` only when
  dp > 1 (``do_naive_dispatch_combine``), applies the experts (``expert_map`` marks the non-local
  ones), ``get_ep_group().combine``, then ``maybe_all_reduce_tensor_model_parallel`` =
  ``tensor_model_parallel_all_reduce`` (only the pplx/DeepEP kernels skip it). The default
  ``VLLM_ALL2ALL_BACKEND`` (vllm/envs.py) is ``allgather_reducescatter``: ``AgRsAll2AllManager``
  (vllm/distributed/device_communicators/all2all.py) dispatches with ``all_gatherv`` and combines
  with ``reduce_scatterv`` over the DP group (``NaiveAll2AllManager``, the older default,
  broadcasts over dp and combines with an all_reduce over dp: same data, more bytes). DeepEP and
  pplx all-to-all kernels are opt-in backends and are not modelled.

The mesh sizes are recorded in the graph attribute ``mesh`` (``"tp=2,dp=1,ep=2,etp=1"``);
``mesh_of(graph)`` reads it back. ``Shard()`` with tp = ep = dp = 1 returns its input unchanged.

Cost-side helpers: ``local_dim_sizes`` (per-GPU sizes of an op's dims), ``replication`` (how
many GPUs compute the same piece), ``collective_bytes`` (message bytes per GPU).

>>> from energylens.ir.text import EXAMPLE, parse_graph
>>> g = Shard(tp=2)(parse_graph(EXAMPLE))
>>> [op.kind for op, _ in g.walk()]
['einsum', 'einsum', 'collective', 'elementwise']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from energylens.errors import EstimateError, ShardingError
from energylens.ir.core import (
    MESH_AXES,
    Collective,
    Decl,
    Einsum,
    Gather,
    Graph,
    Op,
    Reduce,
    Repeat,
    Value,
    parse_mesh,
)
from energylens.ir.verify import collective_inside_kernel
from energylens.passes.manager import register_pass
from energylens.typing import Parallel

__all__ = [
    "Shard",
    "MESH_AXES",
    "mesh_sizes",
    "mesh_of",
    "check_parallel",
    "tp_ok",
    "valid_tp_values",
    "valid_ep_values",
    "expert_parallel_sizes",
    "ep_size_error",
    "local_dim_sizes",
    "replication",
    "collective_bytes",
]

_EXPERT_AXES = frozenset({"ep", "etp"})
#: Dims that count tokens (a dp split lives on them): sequences, flattened tokens, tokens per expert.
_TOKEN_DIMS = ("B", "T", "C")
_SHORT = {"all_reduce": "ar", "all_gather": "ag", "all_to_all": "a2a", "reduce_scatter": "rs"}

State = dict[str, str]  # dim -> mesh axis of one value


# ---------------------------------------------------------------------------------------------
# Mesh and model shape


def mesh_sizes(parallel: Parallel) -> dict[str, int]:
    """Size of each mesh axis for ``parallel`` (``etp`` = GPUs sharing one expert = tp x dp / ep).

    >>> mesh_sizes(Parallel(tp=4, ep=2))
    {'tp': 4, 'dp': 1, 'ep': 2, 'etp': 2}
    """
    return {"tp": parallel.tp, "dp": parallel.dp, "ep": parallel.ep,
            "etp": max(1, parallel.tp * parallel.dp // parallel.ep)}


def mesh_of(graph: Graph) -> dict[str, int]:
    """The mesh a sharded graph was built for (all axes 1 for an unsharded graph)."""
    text = graph.attr.get("mesh")
    return dict.fromkeys(MESH_AXES, 1) | (parse_mesh(text) if text else {})


def _int_size(graph: Graph, dim: str) -> int | None:
    size = graph.dim_sizes.get(dim)
    return size if isinstance(size, int) else None


def _heads(graph: Graph) -> tuple[int | None, int | None]:
    """(attention heads, KV heads) from the graph's dims (q or g*r or hq/d; g or hk/d)."""
    q, g, r, d = (_int_size(graph, n) for n in ("q", "g", "r", "d"))
    hq, hk = _int_size(graph, "hq"), _int_size(graph, "hk")
    heads = q or (g * (r or 1) if g else (hq // d if hq and d else None))  # no r: as many heads as KV heads
    kv = g if g else (hk // d if hk and d else None)
    return heads, kv


def _num_experts(graph: Graph) -> int | None:
    if graph.has_experts:
        return int(graph.attr["num_experts"])
    return _int_size(graph, "e")


def tp_ok(tp: int, heads: int | None, kv: int | None) -> bool:
    """Whether vLLM splits ``heads`` attention heads (``kv`` KV heads) over ``tp`` GPUs."""
    if heads and heads % tp:
        return False
    # vLLM: tp divides the KV heads, or KV heads are replicated (tp a multiple of them).
    return not kv or (kv % tp == 0 if tp <= kv else tp % kv == 0)


def _fp8_block_problem(graph: Graph, tp: int, etp: int | None = None) -> str | None:
    """Why vLLM 0.33 cannot load an fp8 checkpoint scaled in weight blocks (graph attr ``fp8_block``)
    with its attention and MLP weights split ``tp`` ways and its experts ``etp`` ways (None: not
    checked); None if it can.

    Dense layers (``validate_fp8_block_shape``): the row-parallel inputs (o_proj, down_proj) must be
    whole blocks per GPU when split; merged column-parallel layers may cut a block
    (``_maybe_allow_fp8_block_shape_mismatch``). Experts (``validate_fp8_block_shape_moe``): the
    expert intermediate size per GPU must be whole blocks (its input side too when tp > 1), unless
    the checkpoint's method refines its scales (graph attr ``fp8_moe_refine``: HF ``fp8``,
    ``refine_fp8_moe_block_shape``) to a finer block of at least 32 dividing the blocks, that size
    and the hidden size, which vLLM's Triton MoE then runs."""
    block = graph.attr.get("fp8_block")
    if not block:
        return None
    bn, bk = (int(x) for x in block.split("x"))
    heads, _ = _heads(graph)
    d, f, m, h = (_int_size(graph, n) for n in ("d", "f", "m", "h"))
    if tp > 1:
        for what, size in (("o_proj input", heads * d // tp if heads and d else 0), ("down_proj input", (f or 0) // tp)):
            if size % bk:
                return f"its {what} per GPU would be {size}, not a multiple of the {bn}x{bk} fp8 weight block"
    if m and etp is not None:
        local = m // etp
        whole = local % bn == 0 and (tp == 1 or local % bk == 0)
        refined = bool(graph.attr.get("fp8_moe_refine")) and math.gcd(bn, bk, local, h or 0) >= 32
        if not whole and not refined:
            return (f"its expert intermediate size per GPU would be {local}, not a multiple of the {bn}x{bk} fp8 "
                    "weight block" + (" nor of a finer block of >= 32" if graph.attr.get("fp8_moe_refine") else ""))
    return None


def valid_tp_values(graph: Graph, up_to: int = 64) -> list[int]:
    """Tensor-parallel degrees (<= ``up_to``) that the graph's heads and MLP width allow (and, for
    fp8 checkpoints scaled in blocks, whose attention and MLP slices are whole blocks)."""
    if not _splits_by_tp(graph):
        return [1]
    heads, kv = _heads(graph)
    f = _int_size(graph, "f")
    return [t for t in range(1, up_to + 1)
            if tp_ok(t, heads, kv) and (not f or f % t == 0) and _fp8_block_problem(graph, t) is None]


def expert_parallel_sizes(tp: int, dp: int) -> tuple[int, ...]:
    """The expert-parallel sizes of a plan with ``tp`` and ``dp``: 1, and ``tp x dp``.

    vLLM has no other EP size: ``--enable-expert-parallel`` spreads the experts over all tp x dp
    GPUs, and without it they are tensor-sharded (ep 1).

    >>> expert_parallel_sizes(4, 2)
    (1, 8)
    """
    return (1,) if tp * dp == 1 else (1, tp * dp)


def valid_ep_values(graph: Graph, num_gpus: int) -> list[int]:
    """``expert_parallel_sizes`` on ``num_gpus`` (= tp x dp) GPUs that divide the graph's experts."""
    e = _num_experts(graph) or 1
    return [s for s in expert_parallel_sizes(num_gpus, 1) if e % s == 0]


def ep_size_error(ep: int, tp: int, dp: int, valid: Sequence[int]) -> ShardingError:
    """The error of an ``ep`` that is neither 1 nor ``tp x dp`` (``valid``: the sizes to offer)."""
    rule = "vLLM spreads experts over all tp x dp GPUs (--enable-expert-parallel) or tensor-shards them (ep = 1)"
    if tp * dp == 1:
        return ShardingError(f"ep={ep} on tp x dp = 1 GPU: {rule}, so ep={ep} needs tp x dp = {ep} "
                             f"(e.g. tp={ep}); valid ep on 1 GPU: 1")
    return ShardingError(f"ep={ep} with tp x dp = {tp} x {dp} = {tp * dp} GPUs: {rule}, so ep is 1 or {tp * dp}; "
                         f"valid ep: {', '.join(map(str, valid))}")


#: weight dimensions the tensor-parallel rules split (``_Sharder.seed``)
_TP_DIMS = frozenset({"q", "hq", "f", "g", "r", "hk", "v", "m"})


def _splits_by_tp(graph: Graph) -> bool:
    """Whether tensor parallelism splits any weight of ``graph`` (not so in a module outside the traced
    families, whose dimensions have no role names)."""
    return any(d.role == "param" and _TP_DIMS & set(d.value.type.dims) for d, _ in graph.all_decls())


def check_parallel(graph: Graph, parallel: Parallel, num_gpus: int | None = None) -> None:
    """Raise ``ShardingError`` if ``parallel`` cannot run ``graph`` (on ``num_gpus`` GPUs, if given).

    >>> from energylens.ir.text import EXAMPLE, parse_graph
    >>> check_parallel(parse_graph(EXAMPLE), Parallel(tp=2), num_gpus=1)
    Traceback (most recent call last):
    ...
    energylens.errors.ShardingError: tp x dp = 2 x 1 = 2 GPUs, but the cluster has 1; use tp x dp <= 1
    """
    tp, ep, dp = parallel.tp, parallel.ep, parallel.dp
    gpus = tp * dp
    if num_gpus is not None and gpus > num_gpus:
        raise ShardingError(f"tp x dp = {tp} x {dp} = {gpus} GPUs, but the cluster has {num_gpus}; "
                            f"use tp x dp <= {num_gpus}")
    if tp > 1 and not _splits_by_tp(graph):
        raise ShardingError(f"tp={tp} splits nothing in {graph.name!r}: the shard rules split attention heads, MLP, "
                            "expert and vocabulary dimensions, which its weights do not name (a module outside "
                            "the traced HF families); every GPU would repeat the whole model: use tp=1")
    heads, kv = _heads(graph)
    valid_tp = ", ".join(map(str, valid_tp_values(graph, up_to=num_gpus or 64)))
    if not tp_ok(tp, heads, kv):
        what = f"{heads} attention heads" + (f" and {kv} KV heads" if kv else "")
        raise ShardingError(
            f"tp={tp} does not divide the model's {what} "
            f"(tp must divide the heads and either divide the KV heads or be a multiple of them); "
            f"valid tp{'' if num_gpus is None else f' on {num_gpus} GPUs'}: {valid_tp}")
    f = _int_size(graph, "f")
    if f and f % tp:
        raise ShardingError(f"tp={tp} does not divide the MLP intermediate size f={f}; "
                            f"valid tp{'' if num_gpus is None else f' on {num_gpus} GPUs'}: {valid_tp}")
    problem = _fp8_block_problem(graph, tp)
    if problem:
        raise ShardingError(f"tp={tp} splits this fp8 checkpoint's weight blocks (vLLM refuses to load it so): {problem}; "
                            f"valid tp{'' if num_gpus is None else f' on {num_gpus} GPUs'}: {valid_tp}")
    experts = _num_experts(graph)
    if ep > 1 and not experts:
        raise ShardingError(f"ep={ep} but graph {graph.name!r} has no experts (dim 'e'); use ep=1")
    if ep not in expert_parallel_sizes(tp, dp):
        raise ep_size_error(ep, tp, dp, valid_ep_values(graph, gpus))
    if experts and experts % ep:
        raise ShardingError(f"ep={ep} does not divide the {experts} experts; valid ep on {gpus} GPUs: "
                            f"{', '.join(map(str, valid_ep_values(graph, gpus)))}")
    m = _int_size(graph, "m")
    etp = gpus // ep
    if experts and m and m % etp:
        whole = [e for e in valid_ep_values(graph, gpus) if m % (gpus // e) == 0]
        hint = (f"use ep={whole[-1]} (--enable-expert-parallel: each expert whole on one GPU)" if whole
                else f"no ep splits it on {gpus} GPUs ({experts} experts); use another GPU count")
        raise ShardingError(f"tp x dp / ep = {etp} GPUs per expert does not divide the expert intermediate size "
                            f"m={m}; {hint}")
    problem = _fp8_block_problem(graph, tp, etp) if experts else None
    if problem:
        whole = experts % gpus == 0 and _fp8_block_problem(graph, tp, 1) is None
        hint = (f"use ep = tp x dp = {gpus} (--enable-expert-parallel), which keeps each expert whole" if whole
                else f"no ep loads it on {gpus} GPUs; use another GPU count")
        raise ShardingError(f"ep={ep} on tp x dp = {gpus} GPUs ({etp} GPUs per expert): vLLM cannot load this fp8 "
                            f"checkpoint so split: {problem}; {hint}")


# ---------------------------------------------------------------------------------------------
# The pass


@register_pass
@dataclass(frozen=True)
class Shard:
    """Shard a graph over ``tp`` x ``dp`` GPUs, experts over ``ep`` of them (vLLM's meaning).

    >>> Shard(tp=4, ep=2).name
    'shard'
    """

    name: ClassVar[str] = "shard"
    tp: int = 1
    ep: int = 1
    dp: int = 1

    def __post_init__(self) -> None:
        Parallel(self.tp, self.ep, self.dp)  # positive ints, or InvalidWorkloadError

    @property
    def parallel(self) -> Parallel:
        return Parallel(self.tp, self.ep, self.dp)

    def __call__(self, graph: Graph) -> Graph:
        done = graph.attr.get("mesh")
        coll = next((op.result.name for op, _ in graph.walk() if isinstance(op, Collective)), None)
        if done is not None or coll is not None:  # a second split would price the wrong work and traffic
            why = f"mesh {done!r}" if done is not None else f"collective %{coll}"
            raise ShardingError(f"graph {graph.name!r} is already sharded ({why}); shard runs once, on the "
                                "traced (unsharded) graph")
        check_parallel(graph, self.parallel)
        mesh = mesh_sizes(self.parallel)
        if all(n == 1 for n in mesh.values()):
            return graph
        out = _Sharder(graph, mesh).run()
        inside = collective_inside_kernel(out)
        if inside:  # the graph was fused first: a collective now splits one of its kernels
            raise ShardingError(f"shard must run before fuse: {inside}; put shard first, e.g. 'shard{{tp=2}},fuse'")
        return out


def _is_dispatch(op: Op) -> bool:
    """A MoE dispatch: a gather from token operands (no ``e``) to tokens per expert ``[e, C, ...]``."""
    return (isinstance(op, Gather) and op.fn != "scatter" and {"e", "C"} <= set(op.result.type.dims)
            and not any("e" in v.type.dims for v in op.operands))


def _sums_over_experts(op: Op) -> bool:
    """An op that sums its operand over the expert dim ``e`` (the MoE combine)."""
    if isinstance(op, Gather):
        return op.fn != "scatter" and op.dim == "e"
    return isinstance(op, Einsum) and "e" in op.contracted_dims


def _linear_in(op: Op, i: int) -> bool:
    """Whether ``op`` is linear in its operand ``i`` (the others fixed): partial sums pass through it.

    An einsum is linear in each operand; a gather (a lookup or the MoE combine, whose routing
    weights scale the rows) in its table, operand 0. A KV-cache scatter, an elementwise op (an add
    of partial sums to a whole value is not a sum of partials) or a reduction is not counted.
    """
    if isinstance(op, Einsum):
        return True
    return isinstance(op, Gather) and op.fn != "scatter" and i == 0


def _dims_of(op: Op) -> list[str]:
    """Every dim of an op, in order of appearance (operands, then result)."""
    return list(dict.fromkeys(d for v in (*op.operands, op.result) for d in v.type.dims))


class _Sharder:
    """One run of the shard pass: walks the graph in order, tracking each value's state."""

    def __init__(self, graph: Graph, mesh: dict[str, int]):
        self.g, self.mesh = graph, mesh
        self.heads, self.kv = _heads(graph)
        self.state: dict[str, State] = {}
        self.params: set[str] = set()
        self.cache: dict[tuple[str, str, str], Value] = {}   # (value, fn, axis) -> collective result
        self.out: list[Op] = []
        self.must_be_whole = set(graph.outputs)
        self.required: dict[str, State] = {}                  # value -> state it must have (carry)
        self.pending: dict[str, set[str]] = {}                # value -> expert axes of its deferred partial sums
        self.uses: dict[str, list[tuple[Op, int]]] = {}       # value -> (consumer, operand position)
        for op, _ in graph.walk():
            for i, v in enumerate(op.operands):
                self.uses.setdefault(v.name, []).append((op, i))
        self.names = {d.value.name for d, _ in graph.all_decls()} | {op.result.name for op, _ in graph.walk()}

    # -- seeds ------------------------------------------------------------------------------
    def seed(self, decl: Decl) -> State:
        dims = decl.value.type.dims
        m, s = self.mesh, {}
        if decl.role == "param":
            self.params.add(decl.value.name)
            if "e" in dims and "m" in dims:  # an expert weight
                if m["ep"] > 1:
                    s["e"] = "ep"
                if m["etp"] > 1:
                    s["m"] = "etp"
                return s
        elif m["dp"] > 1:
            for d in _TOKEN_DIMS:
                if d in dims:
                    s[d] = "dp"
                    break
        tp = m["tp"]
        if tp == 1:
            return s
        for d in dims:
            if d in ("q", "hq", "f"):
                s[d] = "tp"
            elif d == "g":
                s[d] = "tp"
                if self.kv and tp > self.kv and "r" in dims:  # KV heads replicated: split the group too
                    s["r"] = "tp"
            elif d == "r" and self.kv == 1:  # one KV head (a size-1 g names no axis): the group splits
                s[d] = "tp"
            elif d == "hk" and self.kv and tp <= self.kv:     # flattened KV heads: replicated when tp > kv
                s[d] = "tp"
            elif d == "v" and decl.role == "param":  # vocab-parallel embedding / lm_head: vLLM pads
                s[d] = "tp"  # the vocab to a multiple of 64 and splits it (priced as v / tp: < 64 rows off)
        return s

    # -- collectives --------------------------------------------------------------------------
    def fresh(self, name: str) -> str:
        """``name``, or ``name.2``, ``name.3``... if some value of the graph already has it."""
        out, k = name, 1
        while out in self.names:
            k += 1
            out = f"{name}.{k}"
        self.names.add(out)
        return out

    def _collective(self, v: Value, fn: str, axis: str, new_state: State, source_op: Op, name: str) -> Value:
        out = Value(name, v.type)
        sharding = tuple((d, a) for d, a in new_state.items() if a != axis) if fn != "all_to_all" else ()
        self.out.append(Collective(result=out, operands=(v,), fn=fn, axis=axis, sharding=sharding,
                                   source=dataclasses.replace(source_op.source, aten="")))
        self.state[name] = new_state
        return out

    def convert(self, v: Value, fn: str, axis: str, new_state: State, op: Op) -> Value:
        """``v`` after a collective (cached: each value is converted once per region)."""
        key = (v.name, fn, axis)
        if key not in self.cache:
            name = self.fresh(f"{v.name}.{_SHORT[fn]}_{axis}")
            self.cache[key] = self._collective(v, fn, axis, new_state, op, name)
        return self.cache[key]

    def gather_axes(self, v: Value, axes: set[str], op: Op) -> Value:
        """All-gather ``v`` over each of ``axes`` (whole along the dims they split)."""
        for axis in sorted(axes):
            st = {d: a for d, a in self.state[v.name].items() if a != axis}
            v = self.convert(v, "all_gather", axis, st, op)
        return v

    # -- layouts ------------------------------------------------------------------------------
    def is_expert_op(self, op: Op, states: list[State]) -> bool:
        if any(v.name in self.params and _EXPERT_AXES & set(st.values()) for v, st in zip(op.operands, states,
                                                                                           strict=True)):
            return True
        rdims = op.result.type.dims
        return (not isinstance(op, Gather) and "e" in rdims and "C" in rdims
                and any(_EXPERT_AXES & set(st.values()) for st in states))

    def to_expert(self, v: Value, op: Op) -> Value:
        st = self.state[v.name]
        if _EXPERT_AXES & set(st.values()):
            return v
        v = self.gather_axes(v, {a for d, a in st.items() if d not in _TOKEN_DIMS}, op)
        if self.mesh["ep"] > 1 and "e" in v.type.dims:
            raise ShardingError(f"{op.kind} %{op.result.name} reads %{v.name} per expert, but not from a MoE "
                                f"dispatch (a gather from tokens to [e, C, ...]); ep > 1 needs one")
        if any(a == "dp" for a in self.state[v.name].values()):
            return self.gather_axes(v, {"dp"}, op)                               # replicas' tokens
        return v

    def to_dense(self, v: Value, op: Op) -> Value:
        st = self.state[v.name]
        if not _EXPERT_AXES & set(st.values()):
            return v
        if self.mesh["ep"] > 1 and st.get("e") == "ep" and _sums_over_experts(op):
            return v                             # vLLM: the combine leaves partial sums, reduced after it
        v = self.gather_axes(v, {a for d, a in st.items() if d != "e" and a in _EXPERT_AXES}, op)
        if self.state[v.name].get("e") == "ep":
            v = self.gather_axes(v, {"ep"}, op)                                   # experts whole
        return v

    def defers(self, name: str) -> bool:
        """Whether expert partial sums in value ``name`` may stay unreduced: every consumer is linear in it."""
        uses = self.uses.get(name, [])
        return (bool(uses) and name not in self.must_be_whole and name not in self.required
                and all(_linear_in(op, i) for op, i in uses))

    def reduce_pending(self, v: Value, op: Op) -> Value:
        """``v`` with its deferred expert partial sums all-reduced (a consumer needs the whole value)."""
        for axis in sorted(self.pending.get(v.name, ())):
            v = self.convert(v, "all_reduce", axis, dict(self.state[v.name]), op)
        return v

    # -- ops ----------------------------------------------------------------------------------
    def op(self, op: Op) -> None:
        operands = list(op.operands)
        # Deferred expert partial sums flow on through one operand the op is linear in; any other
        # partial operand is reduced first (the product of two partial sums is not a partial sum).
        incoming: set[str] = set()
        for i, v in enumerate(operands):
            if v.name in self.pending:
                if not incoming and _linear_in(op, i):
                    incoming = set(self.pending[v.name])
                else:
                    operands[i] = self.reduce_pending(v, op)
        states = [self.state.get(v.name, {}) for v in operands]
        expert = self.is_expert_op(op, states)
        for i, v in enumerate(operands):
            if v.name not in self.params:
                operands[i] = self.to_expert(v, op) if expert else self.to_dense(v, op)
        ep_mode = self.mesh["ep"] > 1
        is_dispatch = _is_dispatch(op)
        dispatch = ep_mode and is_dispatch
        experts_split = ep_mode or self.mesh["etp"] > 1
        if (experts_split and is_dispatch) or incoming or (
                ep_mode and any(self.state[v.name].get("e") == "ep" for v in operands)):
            # vLLM: the dispatch all-gathers the replicas' tokens (and routing) over dp; the expert
            # layout (local experts, or expert partial sums) then covers every gathered token, so
            # token operands joining it (the combine's routing weights) are gathered too
            for i, v in enumerate(operands):
                if v.name not in self.params and self.state[v.name].get("e") != "ep":
                    operands[i] = self.gather_axes(v, {"dp"} & set(self.state[v.name].values()), op)
        if isinstance(op, Reduce):   # a reduction needs its reduced dims whole
            split = {self.state[operands[0].name][d] for d in op.dims if d in self.state[operands[0].name]}
            operands[0] = self.gather_axes(operands[0], split, op)
        # Union of the operands' splits; a conflicting split is gathered first.
        union: State = {}
        for i, v in enumerate(operands):
            clash = {a for d, a in self.state.get(v.name, {}).items() if union.get(d, a) != a}
            if clash:
                operands[i] = v = self.gather_axes(v, clash, op)
            for d, a in self.state.get(v.name, {}).items():
                union.setdefault(d, a)
        new = dataclasses.replace(op, operands=tuple(operands))
        order = _dims_of(new)
        sharding = tuple((d, union[d]) for d in order if d in union)
        rdims = op.result.type.dims
        if dispatch:       # each GPU dispatches only to its own E/ep experts (a local slice)
            sharding += (("e", "ep"),)
        rstate = {d: a for d, a in sharding if d in rdims}
        partial: set[str] = set()
        if isinstance(op, Einsum):
            partial = {union[d] for d in op.contracted_dims if d in union}
        elif isinstance(op, Gather):
            table = self.state.get(operands[0].name, {})
            if op.fn != "scatter" and op.dim in table:
                partial = {table[op.dim]}                      # vocab-parallel lookup: zeros elsewhere
            lost = {a for d, a in union.items() if d in _TOKEN_DIMS and d not in rdims}
            for axis in lost:                                  # tokens -> tokens per expert keep their split
                target = next((d for d in _TOKEN_DIMS if d in rdims and d not in rstate), None)
                if target is not None:
                    rstate[target] = axis
                    sharding += ((target, axis),)
        # Partial sums: one all_reduce per axis. Expert partials (over ep, or over etp when ep = 1)
        # stay unreduced while every consumer is linear in them (the combine sums them over e), and
        # are then reduced as vLLM does after the combine: reduce_scatter over dp (each replica gets
        # its own tokens back), then all_reduce over tp; tp x dp GPUs in all, ep's or etp's.
        partial |= incoming
        name = op.result.name
        expert_partial = partial & _EXPERT_AXES
        if expert_partial and self.defers(name):
            self.pending[name] = expert_partial
            partial -= expert_partial
            expert_partial = set()
        per_expert = "e" in rdims      # not combined yet: all_reduce over the expert axis as it is
        steps = [("all_reduce", axis) for axis in sorted(partial - (set() if per_expert else _EXPERT_AXES))]
        after = dict(rstate)
        if expert_partial and not per_expert:
            token = next((d for d in _TOKEN_DIMS if d in rdims and d not in after), None)
            if self.mesh["dp"] > 1:
                steps.append(("reduce_scatter", "dp") if token else ("all_reduce", "dp"))
                if token:
                    after[token] = "dp"
            if self.mesh["tp"] > 1:
                steps.append(("all_reduce", "tp"))
        required = self.required.get(name)
        if name in self.must_be_whole:
            required = {d: a for d, a in after.items() if a == "dp" and d in _TOKEN_DIMS}
        extra = set() if required is None else {a for d, a in after.items() if required.get(d) != a}
        final = name
        if steps or extra:
            name = self.fresh(f"{final}.partial" if steps else f"{final}.shard")
        new = dataclasses.replace(new, sharding=sharding, result=Value(name, op.result.type))
        self.out.append(new)
        self.state[name] = rstate
        v = new.result
        st = rstate
        for i, (fn, axis) in enumerate(steps):
            last = i == len(steps) - 1 and not extra
            st = after if fn == "reduce_scatter" else st
            v = self._collective(v, fn, axis, st, op, final if last else self.fresh(f"{final}.{_SHORT[fn]}_{axis}"))
        for i, axis in enumerate(sorted(extra)):
            st = {d: a for d, a in self.state[v.name].items() if a != axis}
            last = i == len(extra) - 1
            v = self._collective(v, "all_gather", axis, st, op, final if last else self.fresh(f"{final}.ag_{axis}"))

    def ops(self, ops: tuple[Op, ...]) -> tuple[Op, ...]:
        self.out, self.cache = [], {}
        for op in ops:
            self.op(op)
        return tuple(self.out)

    def run(self) -> Graph:
        g = self.g
        for d in g.decls:
            self.state[d.value.name] = self.seed(d)
        body: list[Op | Repeat] = []
        pending: list[Op] = []
        for item in g.body:
            if isinstance(item, Repeat):
                body.extend(self.ops(tuple(pending)))
                pending = []
                for d in item.decls:
                    self.state[d.value.name] = self.seed(d)
                self.required[item.carry] = dict(self.state.get(item.init, {}))
                body.append(dataclasses.replace(item, ops=self.ops(item.ops)))
            else:
                pending.append(item)
        body.extend(self.ops(tuple(pending)))
        mesh = ",".join(f"{a}={self.mesh[a]}" for a in MESH_AXES)
        attrs = tuple((k, v) for k, v in g.attrs if k != "mesh") + (("mesh", mesh),)
        return dataclasses.replace(g, body=tuple(body), attrs=attrs)


# ---------------------------------------------------------------------------------------------
# Cost-side helpers


def _number(x: object) -> Any:
    """A size as a float, or a float array (a symbol bound to many values at once)."""
    return x * 1.0 if getattr(x, "shape", ()) != () else float(x)  # type: ignore[operator, arg-type]


def local_dim_sizes(op: Op, binding: Mapping[str, float], mesh: Mapping[str, int]) -> dict[str, float]:
    """Per-GPU size of each of ``op``'s dims: a dim sharded over an axis of size n is divided by n.

    ``binding`` holds every dim's global size (``Graph.bind(B=..., S=..., K=...)``); ``mesh`` the
    axis sizes (``mesh_of(graph)``). Token dims (``B``, ``T``, ``C``: each replica's own tokens,
    however counted) are divided by their axis size. Other dims sharded over the *same* axis split
    it jointly, in the order of ``op.sharding``: a whole dim smaller than the axis (2 KV heads on
    tp=4) is split completely (local size 1) and the rest of the axis goes to the next such dim
    (the group ``r``) or, when none is left, replicates the op. For a ``Collective`` the sizes are
    those of its buffer (its own axis is not in ``op.sharding``).

    >>> from energylens.ir.core import Elementwise, TensorType
    >>> x = Value("x", TensorType(("B", "g", "r"), "bf16"))
    >>> op = Elementwise(result=Value("y", x.type), operands=(x,), fn="silu",
    ...                  sharding=(("g", "tp"), ("r", "tp")))
    >>> local_dim_sizes(op, {"B": 8, "g": 2, "r": 4}, {"tp": 4})
    {'B': 8.0, 'g': 1.0, 'r': 2.0}
    """
    return _local(op, binding, mesh)[0]


def _local(op: Op, binding: Mapping[str, float], mesh: Mapping[str, int]) -> tuple[dict[str, float], float]:
    try:
        sizes = {d: _number(binding[d]) for d in _dims_of(op)}
    except KeyError as e:
        raise EstimateError(f"{op.kind} %{op.result.name}: dimension {e.args[0]!r} has no size "
                            f"(bound: {sorted(binding)})") from None
    by_axis: dict[str, list[str]] = {}
    for d, a in op.sharding:
        by_axis.setdefault(a, []).append(d)
    pieces = 1.0
    for axis, dims in by_axis.items():
        if axis not in mesh:
            raise ShardingError(f"{op.kind} %{op.result.name}: mesh axis {axis!r} is not in the mesh "
                                f"({', '.join(f'{k}={v}' for k, v in mesh.items())})")
        n = mesh[axis]
        tokens = [d for d in dims if d in _TOKEN_DIMS]
        for d in tokens:             # each replica's own tokens, whichever token dim counts them
            sizes[d] /= n
        if tokens:
            pieces *= n
            continue
        for d in dims:
            if n <= 1:
                break
            s = sizes[d]
            if s.is_integer() and 1 <= s < n and n % s == 0:
                sizes[d] = 1.0
                n //= int(s)
                pieces *= s
            else:
                sizes[d] = s / n
                pieces *= n
                n = 1
    return sizes, pieces


def replication(op: Op, binding: Mapping[str, float], mesh: Mapping[str, int]) -> float:
    """How many of the plan's tp x dp GPUs compute the same piece of ``op`` (1: no redundancy).

    Every op runs on all tp x dp GPUs; the sum over GPUs of its local work is
    ``replication x`` its global work (a norm under tp=4 has replication 4).
    """
    _, pieces = _local(op, binding, mesh)
    return mesh.get("tp", 1) * mesh.get("dp", 1) / pieces


def collective_bytes(op: Collective, binding: Mapping[str, float], mesh: Mapping[str, int]) -> float:
    """Message bytes per GPU of a collective, as nccl-tests counts them (the cost model's input).

    ``all_reduce``: the tensor; ``all_gather``: the gathered output; ``reduce_scatter``: the input
    before scattering; ``all_to_all``: the tensor / ep (each GPU sends and receives its 1/ep share
    of the dispatched tokens). Sizes are local (``local_dim_sizes``: splits over other axes apply).
    The collective runs over ``mesh[op.axis]`` GPUs.
    """
    sizes = local_dim_sizes(op, binding, mesh)
    full = math.prod(sizes[d] for d in op.result.type.dims) * op.result.type.itemsize
    return full / mesh.get(op.axis, 1) if op.fn == "all_to_all" else full
