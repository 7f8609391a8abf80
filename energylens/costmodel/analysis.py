"""Cost analysis of an IR graph: interpreters with one method per op kind.

``WorkAnalysis`` turns each op into an ``OpWork`` (FLOPs, HBM bytes, GEMM rows, kernels): what
the op must do, independent of calibration. ``CostAnalysis`` prices that work on a GPU with a
profile and returns an ``OpCost`` per op (time, FLOPs, bytes, static / per-FLOP / per-byte energy).

Rules of the work model (what the kernels of a serving engine actually move):

* **Einsum**: 2 FLOPs per multiply-add over the iteration space (halved to the unmasked part when
  ``causal``); bytes = operands + result. ``rows`` = the smaller of the GEMM's M (output dims of
  the first operand only) and N (output dims of the second only).
* **Attention** runs as one fused kernel (FlashAttention, as vLLM and every serving engine run
  it): a tensor with both the ``S`` and ``K`` dims (scores, probabilities) stays on chip, and the
  ops consuming it (softmax, probs x V) add no kernel launch.
* **MoE experts** (an einsum whose operands all carry the expert dim ``e``): ``T`` tokens routed to
  ``top_k`` of ``E`` experts touch ``E*(1-(1-k/E)^T)`` distinct experts; only their weights are read,
  and each runs a GEMM with ``T*k/distinct`` rows.
* **Pointwise chains** (Elementwise and Reduce ops feeding each other: a decomposed RMSNorm, RoPE,
  SiLU x up, the residual add) run as one fused kernel, as serving engines run them: a value
  produced by a pointwise op and consumed only by pointwise ops never touches HBM, and an op fed
  by a pointwise op adds no kernel launch.
* **Explicit fusion** (``fusion_group``): a value produced and consumed inside one group never
  touches HBM; a group costs one kernel launch.
* **Last position**: an einsum that contracts ``S`` without attending (``bsh,vh->bv``, the
  ``lm_head`` of docs/ir.md) reads one row per sequence.
* **Gather**: the gathered rows are read and written (a scatter writes only the new rows).
* **Collective**: not priced here yet (multi-GPU plans come with the communication model);
  raises ``EstimateError``. An op kind with no method raises ``EstimateError`` too: nothing is ever
  priced as a silent 0.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from energylens.costmodel.compute import OpWork, op_time_s
from energylens.costmodel.fused_moe import default_tile_rows, padded_rows_per_expert
from energylens.costmodel.hardware import GPUSpec
from energylens.costmodel.moe import expected_distinct_experts
from energylens.costmodel.power import op_energy
from energylens.costmodel.profile import Profile
from energylens.errors import EstimateError, VerificationError
from energylens.ir.core import Collective, Einsum, Elementwise, Gather, Graph, Op, Reduce, TensorType, Value
from energylens.typing import OpCost

__all__ = ["Interpreter", "WorkAnalysis", "CostAnalysis", "PricedOp", "price_graph", "is_attention_op"]

R = TypeVar("R")

#: CUDA-core FLOPs per output element of pointwise functions (unknown names: 1).
ELEMENTWISE_FLOPS: dict[str, float] = {
    "add": 1, "sub": 1, "mul": 1, "div": 1, "neg": 1, "cast": 0, "copy": 0, "silu": 4, "gelu": 8,
    "silu_mul": 5, "sigmoid": 4, "exp": 2, "pow": 1, "rsqrt": 2, "sqrt": 2, "rope": 6, "where": 1,
    "tanh": 4, "relu": 1,
}
#: CUDA-core FLOPs per *input* element of reductions (unknown names: 2).
REDUCE_FLOPS: dict[str, float] = {
    "sum": 1, "mean": 1, "max": 1, "min": 1, "argmax": 1, "softmax": 5, "rms_norm": 4,
    "layer_norm": 6, "topk": 4, "log_softmax": 6,
}


def _numel(t: TensorType, sizes: Mapping[str, float]) -> float:
    try:
        return math.prod(sizes[d] for d in t.dims)
    except KeyError as exc:
        raise EstimateError(f"dimension {exc.args[0]!r} has no size (bound: {sorted(sizes)})") from None


def _distinct_experts(num_e: float, top_k: float, tokens: Any, shares: Any = None) -> Any:
    """``expected_distinct_experts``, elementwise when ``tokens`` is an array."""
    if getattr(tokens, "shape", ()) == ():
        return expected_distinct_experts(num_e, top_k, tokens, shares)
    return np.array([expected_distinct_experts(num_e, top_k, float(t), shares) for t in np.ravel(tokens)]).reshape(
        np.shape(tokens))


def _on_chip(v: Value) -> bool:
    """Attention scores / probabilities (dims S and K together) live in SRAM inside FlashAttention."""
    return "S" in v.type.dims and "K" in v.type.dims


def is_attention_op(op: Op) -> bool:
    """An op whose cost depends on the KV length ``K`` (attention, KV-cache reads and writes)."""
    return any("K" in v.type.dims for v in (op.result, *op.operands))


class Interpreter(Generic[R]):
    """Runs a per-op-kind method (``einsum``, ``elementwise``, ``reduce``, ``gather``, ``collective``)
    over every op of a graph, with the graph's dimension sizes bound to ``binding``."""

    def __init__(self, graph: Graph, binding: Mapping[str, float]):
        self.graph = graph
        try:
            self.sizes = graph.bind(**binding)
        except VerificationError as exc:
            raise EstimateError(f"cannot bind the dimensions of graph {graph.name!r}: {exc}") from None
        self.params = {d.value.name for d, _ in graph.all_decls() if d.role == "param"}
        self.caches = {d.value.name for d, _ in graph.all_decls() if d.role == "cache"}

    def run(self, select: Callable[[Op], bool] | None = None) -> list[tuple[Op, int, R]]:
        """(op, repetitions, result) for every op (that ``select`` keeps), in program order."""
        return [(op, count, self.visit(op)) for op, count in self.graph.walk() if select is None or select(op)]

    def visit(self, op: Op) -> R:
        method = getattr(self, op.kind, None)
        if method is None:
            raise EstimateError(f"no cost rule for op kind {op.kind!r} (%{op.result.name}, "
                                f"from {op.source.module or op.source.aten or 'unknown source'})")
        return method(op)


class WorkAnalysis(Interpreter[OpWork]):
    """FLOPs, HBM bytes, GEMM rows and kernel launches of each op (see the module docstring).

    MoE experts hit: as the graph's routing spreads the step's tokens over them (``hit_shares``:
    each expert's share of the token-slots, None: uniform), the mean over ep ranks; ``plan``'s
    straggler rank sets its own (its hot experts' shares, at its own load).

    ``mesh`` (axis -> size, ``energylens.passes.shard.mesh_of``): the work of a sharded graph is
    that of *one GPU*, each op at its local dim sizes (``local_dim_sizes``); None or all axes 1:
    global sizes. Symbols may be bound to numpy arrays (``B=np.array([1, 8, 64])``): every field
    of the ``OpWork`` is then an array over them (one pass prices many batch sizes).
    """

    #: factor from an expert op's tokens to the tokens that pick ``hit_shares``' experts (``plan``'s
    #: straggler: as many as give its rank the straggler's slots)
    hit_token_scale: Any = 1.0

    def __init__(self, graph: Graph, binding: Mapping[str, float], gpu: GPUSpec,
                 mesh: Mapping[str, int] | None = None):
        super().__init__(graph, binding)
        self.gpu = gpu
        self.mesh = dict(mesh) if mesh and any(n > 1 for n in mesh.values()) else None
        self.local: Mapping[str, float] = self.sizes  # dim sizes of the op being visited
        self._group_of: dict[str, int | None] = {}
        consumers: dict[str, set[int | None]] = defaultdict(set)
        self._pointwise: set[str] = set()  # results of Elementwise / Reduce ops
        self._only_pointwise_users: dict[str, bool] = {}
        for op, _ in graph.walk():
            self._group_of[op.result.name] = op.fusion_group
            if isinstance(op, (Elementwise, Reduce)):
                self._pointwise.add(op.result.name)
            for v in op.operands:
                consumers[v.name].add(op.fusion_group)
                pw = isinstance(op, (Elementwise, Reduce))
                self._only_pointwise_users[v.name] = self._only_pointwise_users.get(v.name, True) and pw
        self._consumers = consumers
        self._group_seen: set[int] = set()

    @functools.cached_property
    def hit_shares(self) -> tuple[float, ...] | None:
        """The experts' shares of the token-slots under the graph's routing (None: uniform)."""
        from energylens.passes.moe import routing_shares  # passes sit above the cost model

        return routing_shares(self.graph)

    def op_sizes(self, op: Op) -> Mapping[str, float]:
        """Dim sizes ``op`` works on: global, or per GPU under ``mesh``."""
        if self.mesh is None or not op.sharding:
            return self.sizes
        from energylens.passes.shard import local_dim_sizes  # passes sit above the cost model

        return {**self.sizes, **local_dim_sizes(op, self.sizes, self.mesh)}

    def visit(self, op: Op) -> OpWork:
        self.local = self.op_sizes(op)
        try:
            return super().visit(op)
        finally:
            self.local = self.sizes

    # -- helpers -------------------------------------------------------------------------------
    def numel(self, v: Value) -> float:
        return _numel(v.type, self.local)

    def nbytes(self, v: Value) -> float:
        return self.numel(v) * v.type.itemsize

    def _fused_pointwise_input(self, op: Op, v: Value) -> bool:
        return isinstance(op, (Elementwise, Reduce)) and v.name in self._pointwise

    def _read_bytes(self, op: Op, v: Value) -> float:
        if _on_chip(v) or self._fused_pointwise_input(op, v):
            return 0.0
        if op.fusion_group is not None and self._group_of.get(v.name) == op.fusion_group:
            return 0.0
        return self.nbytes(v)

    def _write_bytes(self, op: Op) -> float:
        r = op.result
        if _on_chip(r):
            return 0.0
        if isinstance(op, (Elementwise, Reduce)) and self._only_pointwise_users.get(r.name, False):
            return 0.0
        if op.fusion_group is not None and self._consumers.get(r.name) == {op.fusion_group}:
            return 0.0
        return self.nbytes(r)

    def _kernels(self, op: Op) -> float:
        if any(_on_chip(v) for v in op.operands):
            return 0.0  # continues the fused attention kernel
        if any(self._fused_pointwise_input(op, v) for v in op.operands):
            return 0.0  # continues a fused pointwise chain
        if op.fusion_group is not None:
            if op.fusion_group in self._group_seen:
                return 0.0
            self._group_seen.add(op.fusion_group)
        return 1.0

    def _ep_full_slots(self, op: Op) -> float:
        """How many times its local expert slots an expert-parallel MoE op's activations span.

        vLLM's fused MoE under expert parallelism (``expert_map``: the all-gather/reduce-scatter
        backend the shard pass prices) keeps its intermediate buffers for every token's top-k slots:
        its GEMMs write zeros for the slots of other GPUs' experts, and the activation and the top-k
        sum run over all of them. So that traffic does not shrink with ep; the weights and FLOPs do.
        1 when the op's expert dim ``e`` is not sharded.
        """
        if "e" not in self.local or "e" not in self.sizes:
            return 1.0
        return self.sizes["e"] / self.local["e"]

    def _work(self, op: Op, *, tc_flops: float = 0.0, vec_flops: float = 0.0, hbm_bytes: float,
              rows: float = 0.0, peak: float | None = None, tile_flops: Any = 0.0) -> OpWork:
        kv = 1.0 if any("K" in v.type.dims and "S" not in v.type.dims for v in op.operands) else 0.0
        moe_calls = 1.0 if isinstance(op, Gather) and op.fn == "dispatch" else 0.0  # one per fused-MoE call
        return OpWork(tc_flops=tc_flops, vec_flops=vec_flops, hbm_bytes=hbm_bytes, rows=rows,
                      peak_flops_per_s=peak or self.gpu.peak_flops_per_s("bf16"), kv=kv,
                      kernels=self._kernels(op), seqs=self.local.get("B", 1.0) * kv, moe_calls=moe_calls,
                      tile_flops=tile_flops)

    # -- one method per op kind ----------------------------------------------------------------
    def einsum(self, op: Einsum) -> OpWork:
        if len(op.operands) != 2:
            raise EstimateError(f"einsum %{op.result.name}: only binary einsums are priced, got {op.spec!r}")
        ldims = op.letter_dims
        ins, out = op.letters
        sizes = dict(self.local)
        contracted = {ldims[c] for c in "".join(ins) if c not in out}
        if "S" in contracted and "K" not in ldims.values():
            sizes["S"] = 1.0  # last-position lm_head: one row per sequence
        space = math.prod(sizes[ldims[c]] for c in dict.fromkeys(out + "".join(ins)))
        flops = 2.0 * space
        if op.causal:
            s, k = self.local.get("S", 1.0), self.local.get("K", 1.0)
            sk = np.maximum(s * k, 1e-30)
            flops = flops * np.clip((s * k - s * (s - 1) / 2) / sk, 0.0, 1.0)
        a, b = (set(x) for x in ins)
        m = math.prod(sizes[ldims[c]] for c in out if c in a and c not in b)
        n = math.prod(sizes[ldims[c]] for c in out if c in b and c not in a)
        rows = np.minimum(m, n)
        reads = [self._read_bytes(op, v) * (sizes["S"] / self.local["S"] if "S" in v.type.dims else 1.0)
                 for v in op.operands]
        if all("e" in v.type.dims for v in op.operands):  # MoE experts: only the experts hit
            # Global expert count and token count: under ep a GPU holds e/ep experts, so the mean
            # GPU reads the global fraction of its expert weights (a skewed routing hits fewer)
            num_e = float(self.graph.attr.get("num_experts", 0) or self.sizes.get("e", 0.0))
            top_k = float(self.graph.attr.get("top_k", 0) or 0)
            if not num_e or not top_k:
                raise EstimateError(f"MoE einsum %{op.result.name} needs graph attrs num_experts and top_k")
            tokens = self.local["C"] * num_e / top_k if "C" in self.local else self.local["B"] * self.local["S"]
            hit = _distinct_experts(num_e, top_k, tokens * self.hit_token_scale, self.hit_shares)
            reads = [r * hit / num_e if v.name in self.params else r for r, v in zip(reads, op.operands, strict=True)]
            rows = tokens * top_k / np.maximum(hit, 1e-9)
        dtype = next((v.type.dtype for v in op.operands if v.name in self.params), op.operands[0].type.dtype)
        if any(v.type.dtype == "fp8" for v in op.operands):
            dtype = "fp8"
        tile_flops = 0.0
        if all("e" in v.type.dims for v in op.operands) and dtype in ("bf16", "f16") and "m" in self.local:
            # vLLM 0.11 fused MoE without a tuned config: each expert hit computes whole tiles.
            # The tile follows the step's tokens M (``tokens`` above carries the ep straggler's excess);
            # fp8 (block or per-channel) runs other default tiles: not modelled.
            step_tokens = self.local.get("B", 1.0) * self.local.get("S", 1.0)
            tile = default_tile_rows(self.gpu.name, self.local["e"], self.local["m"], step_tokens)
            per_expert = tokens * top_k / num_e
            tile_flops = flops * padded_rows_per_expert(per_expert, tile) / np.maximum(per_expert, 1e-9)
        write = self._write_bytes(op)
        if all("e" in v.type.dims for v in op.operands):
            write = write * self._ep_full_slots(op)  # zeros written for other GPUs' experts' slots
        return self._work(op, tc_flops=flops, hbm_bytes=sum(reads) + write, rows=rows,
                          peak=self.gpu.peak_flops_per_s(dtype), tile_flops=tile_flops)

    def elementwise(self, op: Elementwise) -> OpWork:
        per = ELEMENTWISE_FLOPS.get(op.fn, 1.0)
        return self._work(op, vec_flops=per * self.numel(op.result),
                          hbm_bytes=sum(self._read_bytes(op, v) for v in op.operands) + self._write_bytes(op))

    def reduce(self, op: Reduce) -> OpWork:
        per = REDUCE_FLOPS.get(op.fn, 2.0)
        full = self._ep_full_slots(op) if "e" in op.result.type.dims else 1.0  # MoE activation: every slot
        return self._work(op, vec_flops=per * self.numel(op.operands[0]),  # FLOPs on zeros: negligible
                          hbm_bytes=(sum(self._read_bytes(op, v) for v in op.operands) + self._write_bytes(op)) * full)

    def gather(self, op: Gather) -> OpWork:
        if op.fn == "scatter":  # KV-cache write: read the new rows, write them into the table
            new = op.operands[-1] if len(op.operands) > 1 else op.result
            moved = 2.0 * self.nbytes(new)
        elif op.fn == "combine":  # MoE combine: read every expert output (every slot under ep), write the tokens
            moved = (sum(self.nbytes(v) * (self._ep_full_slots(op) if "e" in v.type.dims else 1.0) for v in op.operands)
                     + self.nbytes(op.result))
        else:  # read the picked rows, write them; read the indices
            moved = 2.0 * self.nbytes(op.result) + sum(self.nbytes(v) for v in op.operands[1:])
        return self._work(op, hbm_bytes=moved)

    def collective(self, op: Collective) -> OpWork:
        raise EstimateError(f"collective {op.fn} over {op.axis!r} (%{op.result.name}) cannot be priced yet: "
                            "multi-GPU plans come with the communication model (issue 4)")


@dataclass(frozen=True)
class PricedOp:
    """An op, how many times it runs, its work and its cost per execution."""

    op: Op
    count: int
    work: OpWork
    cost: OpCost


def price_work(work: OpWork, gpu: GPUSpec, profile: Profile) -> OpCost:
    t, static_j, flop_j, byte_j = op_energy(work, op_time_s(work, gpu, profile), gpu, profile)
    return OpCost(time_s=float(t), flops=float(work.flops), hbm_bytes=float(work.hbm_bytes),
                  static_j=float(static_j), flop_j=float(flop_j), byte_j=float(byte_j))


class CostAnalysis(Interpreter[OpCost]):
    """Prices each op on ``gpu`` with ``profile``: one method per op kind returning an ``OpCost``.

    >>> # CostAnalysis(graph, {"B": 8, "S": 1, "K": 1024}, get_gpu("H100"), load_profile("H100")).run()
    """

    def __init__(self, graph: Graph, binding: Mapping[str, float], gpu: GPUSpec, profile: Profile):
        super().__init__(graph, binding)
        self.work = WorkAnalysis(graph, binding, gpu)
        self.gpu, self.profile = gpu, profile

    def _price(self, work: OpWork) -> OpCost:
        return price_work(work, self.gpu, self.profile)

    def einsum(self, op: Einsum) -> OpCost:
        return self._price(self.work.einsum(op))

    def elementwise(self, op: Elementwise) -> OpCost:
        return self._price(self.work.elementwise(op))

    def reduce(self, op: Reduce) -> OpCost:
        return self._price(self.work.reduce(op))

    def gather(self, op: Gather) -> OpCost:
        return self._price(self.work.gather(op))

    def collective(self, op: Collective) -> OpCost:
        return self._price(self.work.collective(op))


def price_graph(graph: Graph, binding: Mapping[str, float], gpu: GPUSpec, profile: Profile,
                select: Callable[[Op], bool] | None = None) -> list[PricedOp]:
    """Work and cost of every op (that ``select`` keeps) of ``graph`` under ``binding``."""
    works = WorkAnalysis(graph, binding, gpu).run(select)
    return [PricedOp(op, count, w, price_work(w, gpu, profile)) for op, count, w in works]
