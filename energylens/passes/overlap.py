"""The ``overlap`` pass: run collectives on the communication stream, concurrently with compute.

Two modes, chosen by whether a window is given:

* **Explicit window** (``Overlap(start=2, end=4, comm_sms=8)``, flat graphs only). A *kernel* of
  the graph body is one op, or a run of consecutive ops that share a ``fusion_group`` (one launched
  kernel). The pass takes the collective (by default the first ``Collective`` on stream 0 outside
  any fusion group), moves it just before kernel ``start`` of the remaining kernels, puts it on
  stream 1 with ``sm_share = comm_sms / total_sms``, and gives every op of kernels ``start..end``
  (inclusive) ``sm_share = 1 - comm_sms / total_sms``. The collective is synchronised after the
  last of them.
* **Model** (``Overlap(comm_sms=16)``: no ``start``/``end``; pipeline ``overlap{comm_sms=16}``),
  for sharded traced graphs with ``Repeat`` regions. Every tensor-parallel collective (axis
  ``tp``, on a mesh with ``tp > 1``) goes on stream 1 with ``sm_share = comm_sms / total_sms``, and
  the compute ops it overlaps get ``sm_share = 1 - comm_sms / total_sms``: the ops after it up to
  the next collective of its region, wrapping round to the region's start (the next layer); no op
  moves. Those ops read the collective's result, so the window is not a dependence inside one
  batch: the step runs as two interleaved nano-batches (as NanoFlow and Kareus run it), and the
  ops overlapped are the other nano-batch's, one op behind. The explicit-window mode, which has one
  batch, refuses such a window instead. This pass decides the schedule: ``energylens.estimate(comm_sms=...)`` and the search plan
  their graphs through it, and the cost model only reads it back from the annotations
  (``costmodel.plan.overlap_windows``). A graph not sharded with ``tp > 1`` is an error (nothing to
  overlap: shard first).

Either way the window is readable from the IR: a stream-1 collective, then ops with an
``sm_share`` below 1. The block size of each overlapped collective's kernel is recorded in
``Graph.attrs`` as ``overlap.<collective>.block_size``.

# identity: moving a collective whose operands are defined earlier and whose result is used only
# after the window, or changing only streams and SM shares, does not change what the graph computes.

>>> from energylens.ir.text import EXAMPLE, parse_graph
>>> from energylens.passes import run_pipeline
>>> g = run_pipeline(parse_graph(EXAMPLE), "shard{tp=2},overlap{comm_sms=16}")
>>> [(op.kind, op.stream) for op, _ in g.walk()]
[('einsum', 0), ('einsum', 0), ('collective', 1), ('elementwise', 0)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from energylens.errors import EnergylensError, InvalidWorkloadError
from energylens.ir.core import Collective, Graph, Op, Repeat
from energylens.passes.shard import mesh_of

__all__ = ["Overlap", "kernels_of", "count_runs", "window_after", "overlap_regions"]


def kernels_of(ops: tuple[Op, ...]) -> list[list[int]]:
    """Indices of ``ops`` grouped into kernels (consecutive ops of one non-None fusion group)."""
    groups: list[list[int]] = []
    for i, op in enumerate(ops):
        if groups and op.fusion_group is not None and ops[groups[-1][-1]].fusion_group == op.fusion_group:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def count_runs(counts: Sequence[int]) -> list[list[int]]:
    """Indices of ``counts`` grouped into maximal runs of equal consecutive values: the regions of
    the model-mode schedule (a ``Repeat``'s ops, or the top-level ops between Repeats).

    >>> count_runs([1, 80, 80, 80, 1, 1])
    [[0], [1, 2, 3], [4, 5]]
    """
    runs: list[list[int]] = []
    for i, c in enumerate(counts):
        if runs and counts[runs[-1][-1]] == c:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def window_after(n: int, pos: int, takes: Callable[[int], bool]) -> list[int]:
    """Positions after ``pos`` in a region of ``n`` ops, wrapping round to its start (the next
    layer), for as long as ``takes(position)`` holds: a collective's overlap window.

    >>> window_after(5, 3, lambda j: j != 1)
    [4, 0]
    """
    out = []
    for step in range(1, n):
        j = (pos + step) % n
        if not takes(j):
            break
        out.append(j)
    return out


def overlap_regions(graph: Graph) -> list[list[tuple[int, int | None]]]:
    """Regions of the model-mode schedule (``count_runs``) as op addresses ``(body index, index in
    its Repeat)``, in ``graph.walk()`` order; top-level ops have index ``None``."""
    addrs: list[tuple[int, int | None]] = []
    counts: list[int] = []
    for b, item in enumerate(graph.body):
        if isinstance(item, Repeat):
            addrs += [(b, k) for k in range(len(item.ops))]
            counts += [item.count] * len(item.ops)
        else:
            addrs.append((b, None))
            counts.append(1)
    return [[addrs[i] for i in run] for run in count_runs(counts)]


@dataclass(frozen=True, kw_only=True)
class Overlap:
    """Overlap collectives with compute, ``comm_sms`` SMs to each collective (keyword options).

    ``start``, ``end``: explicit window of kernels ``start..end`` (inclusive) of a flat graph for one
    collective; both None (the default): model mode, every ``tp`` collective overlapped with the ops
    after it in its region (see the module docstring). ``total_sms``: SMs of the GPU (A100: 108).
    ``collective``: explicit mode only, result name of the collective to move (None: the first
    stream-0 collective outside a fusion group). ``comm_block_size``: threads per block of the
    collective kernel, recorded in the graph's attrs.
    """

    name: ClassVar[str] = "overlap"
    start: int | None = None
    end: int | None = None
    comm_sms: int
    comm_block_size: int = 1024
    total_sms: int = 108
    collective: str | None = None

    def __post_init__(self) -> None:
        if (self.start is None) != (self.end is None):
            raise InvalidWorkloadError(f"overlap: give both start and end (an explicit window) or neither "
                                       f"(model mode), got start={self.start}, end={self.end}")
        if self.start is not None and self.end is not None and not 0 <= self.start <= self.end:
            raise InvalidWorkloadError(f"overlap window must satisfy 0 <= start <= end, got {self.start}..{self.end}")
        if self.start is None and self.collective is not None:
            raise InvalidWorkloadError("overlap: `collective` picks the collective of an explicit window; "
                                       "give start and end too, or drop it (model mode overlaps every tp collective)")
        if self.total_sms < 2:  # the range below would read "1..-1"
            raise InvalidWorkloadError(f"overlap: total_sms must be the GPU's SM count (>= 2), got {self.total_sms}")
        if not 0 < self.comm_sms < self.total_sms:
            raise InvalidWorkloadError(
                f"overlap{{comm_sms={self.comm_sms}}}: the collective's SMs must be in 1..{self.total_sms - 1} of the "
                f"GPU's total_sms={self.total_sms}{' (the default: an A100)' if self.total_sms == 108 else ''}; "
                f"for another GPU give its count, e.g. overlap{{comm_sms=16,total_sms=132}} on an H100")
        if self.comm_block_size <= 0:
            raise InvalidWorkloadError(f"comm_block_size must be > 0 threads, got {self.comm_block_size}")

    @property
    def share(self) -> float:
        """SM share of the collective (``comm_sms / total_sms``)."""
        return self.comm_sms / self.total_sms

    def __call__(self, graph: Graph) -> Graph:
        if self.start is None:
            return self._model(graph)
        return self._window(graph)

    # -- model mode: every tp collective, with the ops after it in its region

    def _model(self, graph: Graph) -> Graph:
        def op_at(a: tuple[int, int | None]) -> Op:
            item = graph.body[a[0]]
            return item.ops[a[1]] if isinstance(item, Repeat) else item  # type: ignore[return-value]

        if mesh_of(graph)["tp"] <= 1:  # a tp collective over one GPU costs nothing: nothing to hide
            raise InvalidWorkloadError(
                "overlap found no tensor-parallel collective to overlap: the graph is not sharded with tp > 1 "
                "(run shard first, e.g. 'shard{tp=2},fuse,overlap{comm_sms=16}')")
        new: dict[tuple[int, int | None], Op] = {}
        names: list[str] = []
        for run in overlap_regions(graph):
            ops = [op_at(a) for a in run]
            for pos, op in enumerate(ops):
                if not isinstance(op, Collective) or op.axis != "tp":
                    continue
                # the window: the ops after it up to the next collective of its region, wrapping round
                # to the region's start (costmodel.plan.overlap_windows reads it back from sm_share)
                window = window_after(len(run), pos, lambda j, ops=ops: not isinstance(ops[j], Collective))
                if not window:
                    continue
                new[run[pos]] = dataclasses.replace(op, stream=1, sm_share=self.share)
                for j in window:
                    new[run[j]] = dataclasses.replace(ops[j], sm_share=1 - self.share)
                names.append(op.result.name)
        if not names:
            return graph
        body: list[Op | Repeat] = []
        for b, item in enumerate(graph.body):
            if isinstance(item, Repeat):
                ops_ = tuple(new.get((b, k), op) for k, op in enumerate(item.ops))
                body.append(dataclasses.replace(item, ops=ops_) if ops_ != item.ops else item)
            else:
                body.append(new.get((b, None), item))
        keys = {f"overlap.{n}.block_size" for n in names}
        attrs = tuple(a for a in graph.attrs if a[0] not in keys) + tuple(
            (f"overlap.{n}.block_size", str(self.comm_block_size)) for n in dict.fromkeys(names))
        return dataclasses.replace(graph, body=tuple(body), attrs=attrs)

    # -- explicit window: one collective, moved before kernel ``start`` of a flat graph

    def _window(self, graph: Graph) -> Graph:
        assert self.start is not None and self.end is not None
        if any(isinstance(x, Repeat) for x in graph.body):
            raise EnergylensError("overlap: an explicit window (start, end) needs a flat graph without Repeat "
                                  "regions; drop start/end to overlap every tp collective of a model")
        body: tuple[Op, ...] = graph.body  # type: ignore[assignment]
        idx = self._find(body)
        coll = body[idx]
        rest = body[:idx] + body[idx + 1:]
        kernels = kernels_of(rest)
        if self.end >= len(kernels):
            raise InvalidWorkloadError(
                f"overlap window {self.start}..{self.end} is past the last kernel ({len(kernels) - 1})")
        users = [k for k, kern in enumerate(kernels)
                 if any(coll.result.name in {v.name for v in rest[i].operands} for i in kern)]
        if users and min(users) <= self.end:
            raise InvalidWorkloadError(f"overlap: %{coll.result.name} is used by kernel {min(users)}, "
                                       f"inside the window {self.start}..{self.end}")
        src = coll.operands[0].name
        made = [k for k, kern in enumerate(kernels) if any(rest[i].result.name == src for i in kern)]
        if made and made[0] >= self.start:  # launched before kernel start, it needs its operand by then
            raise InvalidWorkloadError(f"overlap: %{coll.result.name} reads %{src}, which kernel {made[0]} makes: "
                                       f"the window must start after it (start >= {made[0] + 1}), got start={self.start}")
        share = self.share
        window = {i for kern in kernels[self.start:self.end + 1] for i in kern}
        new_ops = [dataclasses.replace(op, sm_share=1 - share) if i in window else op
                   for i, op in enumerate(rest)]
        at = kernels[self.start][0]
        new_coll = dataclasses.replace(coll, stream=1, sm_share=share)
        new_body = tuple(new_ops[:at]) + (new_coll,) + tuple(new_ops[at:])
        key = f"overlap.{coll.result.name}.block_size"
        attrs = tuple(a for a in graph.attrs if a[0] != key) + ((key, str(self.comm_block_size)),)
        return dataclasses.replace(graph, body=new_body, attrs=attrs)

    def _find(self, body: tuple[Op, ...]) -> int:
        for i, op in enumerate(body):
            if not isinstance(op, Collective):
                continue
            if self.collective is None and op.stream == 0 and op.fusion_group is None:
                return i
            if self.collective is not None and op.result.name == self.collective:
                return i
        what = f"%{self.collective}" if self.collective else "a stream-0 collective outside a fusion group"
        raise InvalidWorkloadError(f"overlap: the graph has no {what} to overlap")
