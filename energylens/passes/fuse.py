"""The fuse pass: which ops share one kernel, so that the values between them never touch HBM.

``Fuse()`` assigns ``fusion_group`` ids (one id per kernel; ops left alone keep ``None``). It
never changes what is computed, only where intermediates live. Groups never cross a region
boundary nor contain a collective or a gather. Patterns, applied in this order to ops not yet
grouped:

1. **Attention**: scores einsum -> (pointwise) -> softmax over K -> (pointwise) -> probs x V
   einsum is one kernel (FlashAttention): the S x K scores never touch HBM.
2. **Sibling GEMMs**: linear einsums (one operand a weight) that read the same activation run as
   one GEMM over concatenated weights (vLLM's QKV and gate_up projections).
3. **Epilogues**: pointwise consumers of a GEMM group's results (SiLU gating, residual add, RoPE,
   casts) whose other operands exist before the group starts are applied to the output tile
   before it is stored, when that keeps a GEMM result on chip.
4. **Prologues**: pointwise and row-reduction producers of a GEMM group's input (RMSNorm, casts)
   whose results only that group consumes are computed as the GEMM loads its input.
5. **Chains**: remaining runs of pointwise ops and reductions (norm statistics, softmax, routing)
   become one kernel each.

Semantics for the cost model (``on_chip_values``, ``kernels``): a value whose producer and every
consumer share one fusion group, and that is not a graph output or a region's carry or init,
never touches HBM; a kernel reads each value it takes from outside once and writes each value it
produces that something outside it uses.

>>> from energylens.ir.text import EXAMPLE, parse_graph
>>> g = Fuse()(parse_graph(EXAMPLE))
>>> [(op.result.name, op.fusion_group) for op, _ in g.walk()]
[('x1', None), ('x2', 0), ('x3', 0)]
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

from energylens.ir.core import Einsum, Elementwise, Graph, Op, Reduce, Repeat, Value
from energylens.passes.manager import register_pass

__all__ = ["Fuse", "Kernel", "kernels", "on_chip_values", "fused_hbm_bytes"]

_OUTSIDE = -1  # a consumer outside the block (another block, a graph output, a region's carry)


@register_pass
@dataclass(frozen=True)
class Fuse:
    """Assign fusion groups (see the module docstring for the patterns).

    ``attention``, ``gemm``: turn the attention and GEMM-centred patterns on or off; ``chains``:
    fuse the remaining pointwise/reduction runs.
    """

    name: ClassVar[str] = "fuse"
    attention: bool = True
    gemm: bool = True
    chains: bool = True

    def __call__(self, graph: Graph) -> Graph:
        consumers = _consumers(graph)
        decls = {d.value.name for d, _ in graph.all_decls()}
        top = [item for item in graph.body if not isinstance(item, Repeat)]
        assign: dict[int, int] = {}  # id(op) -> (block-local) group key
        sizes: dict[tuple[int, int], int] = defaultdict(int)
        blocks = [top] + [list(item.ops) for item in graph.body if isinstance(item, Repeat)]
        for b, ops in enumerate(blocks):
            for i, gid in _Block(ops, consumers, decls, self).run().items():
                assign[id(ops[i])] = gid
                sizes[(b, gid)] += 1
        block_of = {id(op): b for b, ops in enumerate(blocks) for op in ops}
        ids: dict[tuple[int, int], int] = {}

        def number(op: Op) -> Op:  # groups numbered in program order; a group of one is no group
            key = (block_of[id(op)], assign[id(op)]) if id(op) in assign else None
            gid = None
            if key is not None and sizes[key] > 1:
                gid = ids.setdefault(key, len(ids))
            return op if op.fusion_group == gid else dataclasses.replace(op, fusion_group=gid)

        body: list[Op | Repeat] = []
        for item in graph.body:
            if isinstance(item, Repeat):
                body.append(dataclasses.replace(item, ops=tuple(number(op) for op in item.ops)))
            else:
                body.append(number(item))
        return dataclasses.replace(graph, body=tuple(body))


def _consumers(graph: Graph) -> dict[str, list[tuple[int, Op]]]:
    """Value -> [(block id, consumer op)]; outputs, carries and inits count as outside consumers."""
    out: dict[str, list[tuple[int, Op]]] = defaultdict(list)
    block = 0
    for item in graph.body:
        if isinstance(item, Repeat):
            block += 1
            for op in item.ops:
                for v in op.operands:
                    out[v.name].append((block, op))
            out[item.carry].append((_OUTSIDE, item.ops[0] if item.ops else None))  # type: ignore[arg-type]
            out[item.init].append((_OUTSIDE, item.ops[0] if item.ops else None))   # type: ignore[arg-type]
        else:
            for v in item.operands:
                out[v.name].append((0, item))
    for name in graph.outputs:
        out[name].append((_OUTSIDE, None))  # type: ignore[arg-type]
    return out


class _Block:
    """Fusion of one block (the top-level ops, or one region's ops): op index -> group id."""

    def __init__(self, ops: list[Op], consumers: dict[str, list[tuple[int, Op]]], decls: set[str], opts: Fuse):
        self.ops, self.decls, self.opts = ops, decls, opts
        self.index = {id(op): i for i, op in enumerate(ops)}
        self.producer = {op.result.name: i for i, op in enumerate(ops)}
        # consumers inside this block as indices; anything else as _OUTSIDE
        self.users: dict[str, list[int]] = {}
        for op in ops:
            name = op.result.name
            self.users[name] = [self.index.get(id(c), _OUTSIDE) if b != _OUTSIDE else _OUTSIDE
                                for b, c in consumers.get(name, [])]
        self.group: dict[int, int] = {}
        self.members: dict[int, set[int]] = defaultdict(set)
        self.next = 0

    # -- helpers -------------------------------------------------------------------------------
    def new_group(self, idx: set[int]) -> int:
        gid = self.next
        self.next += 1
        for i in idx:
            self.group[i] = gid
        self.members[gid] |= idx
        return gid

    def add(self, gid: int, i: int) -> None:
        self.group[i] = gid
        self.members[gid].add(i)

    def free(self, i: int) -> bool:
        return i not in self.group

    def only_used_by(self, name: str, idx: set[int]) -> bool:
        users = self.users.get(name, [])
        return bool(users) and all(u in idx for u in users)

    def is_linear(self, op: Op) -> bool:
        return isinstance(op, Einsum) and any(v.name in self.decls for v in op.operands)

    def early(self, v: Value, gid: int) -> bool:
        """Is ``v`` available before group ``gid``'s first op (a declaration or an earlier result)?"""
        p = self.producer.get(v.name)
        return p is None or p < min(self.members[gid])

    # -- patterns ------------------------------------------------------------------------------
    def attention(self) -> None:
        # softmax(q k^T) v in one kernel (FlashAttention): scores are produced tile by tile and
        # normalised with an online softmax, so the S x K matrix never touches HBM.
        for i, op in enumerate(self.ops):
            if not (isinstance(op, Reduce) and op.fn == "softmax" and self.free(i)):
                continue
            chain, j = {i}, self.producer.get(op.operands[0].name)
            while j is not None and isinstance(self.ops[j], Elementwise) and self.free(j) \
                    and len(self.ops[j].operands) >= 1 and self.only_used_by(self.ops[j].result.name, chain):
                chain.add(j)
                j = self.producer.get(self.ops[j].operands[0].name)
            if j is None or not self.free(j) or self.is_linear(self.ops[j]) or not isinstance(self.ops[j], Einsum) \
                    or not self.only_used_by(self.ops[j].result.name, chain):
                continue
            scores = j
            k, cur = i, op.result.name
            while True:
                users = self.users.get(cur, [])
                if len(users) != 1 or users[0] == _OUTSIDE or not self.free(users[0]):
                    k = -1
                    break
                k = users[0]
                if isinstance(self.ops[k], Einsum):
                    break
                if not isinstance(self.ops[k], Elementwise):
                    k = -1
                    break
                chain.add(k)
                cur = self.ops[k].result.name
            av = self.ops[k] if k >= 0 else None
            if av is None or self.is_linear(av) or not set(op.dims) <= set(av.contracted_dims):  # type: ignore[union-attr]
                continue
            self.new_group(chain | {scores, k})

    def gemms(self) -> list[int]:
        # GEMMs reading the same activation run as one GEMM over concatenated weights (QKV,
        # gate_up): the activation is read once.
        seen: dict[str, int] = {}
        gids: list[int] = []
        for i, op in enumerate(self.ops):
            if not (self.is_linear(op) and self.free(i)):
                continue
            act = next((v.name for v in op.operands if v.name not in self.decls), None)
            if act is None:
                continue
            if act in seen and all(self.early(v, seen[act]) for v in op.operands):
                self.add(seen[act], i)  # its other operands exist before the group starts (weights)
            else:
                seen[act] = self.new_group({i})
                gids.append(seen[act])
        return gids

    def prologue(self, gid: int) -> None:
        # rms_norm(x) * w (and casts) fuse into the next GEMM's prologue: the row statistics
        # are computed as the GEMM streams x in, so x is read once and x_normed is never stored.
        work = [v.name for i in list(self.members[gid]) for v in self.ops[i].operands]
        while work:
            p = self.producer.get(work.pop())
            if p is None or not self.free(p) or not isinstance(self.ops[p], Elementwise | Reduce):
                continue
            if not self.only_used_by(self.ops[p].result.name, self.members[gid]):
                continue
            self.add(gid, p)
            work.extend(v.name for v in self.ops[p].operands)

    def epilogue(self, gid: int) -> None:
        # f(gemm_out, y) applied to the output tile before it is stored (SiLU gating, residual
        # add, RoPE, casts): valid when every other operand y exists before the GEMM starts, and
        # worth it only when some GEMM result then stays on chip (else it just adds a write).
        members = self.members[gid]
        cand: set[int] = set()
        changed = True
        while changed:
            changed = False
            for i, op in enumerate(self.ops):
                if i in cand or not (self.free(i) and isinstance(op, Elementwise)) or i < min(members):
                    continue
                inside = [v for v in op.operands if self.producer.get(v.name) in members | cand]
                if inside and all(v in inside or self.early(v, gid) for v in op.operands):
                    cand.add(i)
                    changed = True
        changed = True
        while changed:
            changed = False
            for i in sorted(cand):
                if not any(self.producer.get(v.name) in members | cand
                           and self.only_used_by(v.name, members | cand) for v in self.ops[i].operands):
                    cand.discard(i)
                    changed = True
        for i in cand:
            self.add(gid, i)

    def chains(self) -> None:
        # Pointwise ops and row reductions in a row (norm statistics, softmax, routing) run as one
        # kernel: their intermediates stay in registers.
        chain_of: dict[int, int] = {}
        for i, op in enumerate(self.ops):
            if not (self.free(i) and isinstance(op, Elementwise | Reduce)):
                continue
            target = None
            for v in op.operands:
                p = self.producer.get(v.name)
                if p is not None and p in chain_of:
                    target = chain_of[p]
                    break
            if target is not None and all(self.producer.get(v.name) in self.members[target]
                                          or self.early(v, target) for v in op.operands):
                self.add(target, i)
                chain_of[i] = target
            else:
                chain_of[i] = self.new_group({i})

    def run(self) -> dict[int, int]:
        if self.opts.attention:
            self.attention()
        if self.opts.gemm:
            gids = self.gemms()
            for gid in gids:
                self.epilogue(gid)
            for gid in gids:
                self.prologue(gid)
        if self.opts.chains:
            self.chains()
        return self.group


# ---------------------------------------------------------------------------------------------
# Cost-side semantics


def on_chip_values(graph: Graph) -> frozenset[str]:
    """Names of the values that never touch HBM: producer and all consumers in one fusion group.

    Graph outputs, a region's init and carry, and values without consumers are always in HBM.
    """
    group_of = {op.result.name: op.fusion_group for op, _ in graph.walk()}
    users = _consumers(graph)
    out = set()
    for name, gid in group_of.items():
        if gid is None:
            continue
        cons = users.get(name, [])
        if cons and all(b != _OUTSIDE and c.fusion_group == gid for b, c in cons):
            out.add(name)
    return frozenset(out)


@dataclass(frozen=True)
class Kernel:
    """One kernel launch: its ops, the values it reads from and writes to HBM, and how often it runs."""

    group: int | None
    ops: tuple[Op, ...]
    reads: tuple[Value, ...]
    writes: tuple[Value, ...]
    count: int


def kernels(graph: Graph) -> Iterator[Kernel]:
    """The graph's kernels in program order (an unfused op is a kernel of its own).

    ``reads``: distinct values a kernel takes from outside itself (weights, caches, inputs,
    other kernels' results), each once; ``writes``: its results that something outside it uses
    (or that leave the graph or the region). Per-op byte rules (a scatter writes only the new
    rows, a GEMM may re-read tiles) are the cost model's.
    """
    on_chip = on_chip_values(graph)
    items: list[tuple[list[Op], int]] = []
    for item in graph.body:
        if isinstance(item, Repeat):
            items.append((list(item.ops), item.count))
        else:
            items.append(([item], 1))
    # merge consecutive top-level singletons into one list per block, keeping order
    blocks: list[tuple[list[Op], int]] = []
    for ops, count in items:
        if blocks and count == 1 and blocks[-1][1] == 1 and len(ops) == 1:
            blocks[-1][0].extend(ops)
        else:
            blocks.append((ops, count))
    for ops, count in blocks:
        groups: dict[int, list[Op]] = {}
        order: list[tuple[int | None, list[Op]]] = []
        for op in ops:
            if op.fusion_group is None:
                order.append((None, [op]))
            elif op.fusion_group in groups:
                groups[op.fusion_group].append(op)
            else:
                groups[op.fusion_group] = [op]
                order.append((op.fusion_group, groups[op.fusion_group]))
        for gid, members in order:
            produced = {op.result.name for op in members}
            reads: dict[str, Value] = {}
            for op in members:
                for v in op.operands:
                    if v.name not in produced:
                        reads.setdefault(v.name, v)
            writes = tuple(op.result for op in members if op.result.name not in on_chip)
            yield Kernel(gid, tuple(members), tuple(reads.values()), writes, count)


def fused_hbm_bytes(kernel: Kernel, sizes: Mapping[str, float]) -> float:
    """HBM bytes a kernel moves at least: each read and each write once, with dims at ``sizes``.

    ``sizes``: dim -> size (global from ``Graph.bind``, or per GPU from
    ``energylens.passes.shard.local_dim_sizes``).
    """
    return sum(math.prod(sizes[d] for d in v.type.dims) * v.type.itemsize
               for v in (*kernel.reads, *kernel.writes))
