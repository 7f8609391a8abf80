"""The ``overlap`` pass: run a collective on the communication stream, concurrently with compute.

A *kernel* of the graph body is one op, or a run of consecutive ops that share a ``fusion_group``
(one launched kernel). ``Overlap(start, end, comm_sms)`` takes the collective (by default the first
``Collective`` on stream 0 outside any fusion group), moves it just before kernel ``start`` of the
remaining kernels, puts it on stream 1 with ``sm_share = comm_sms / total_sms``, and gives every op
of kernels ``start..end`` (inclusive) ``sm_share = 1 - comm_sms / total_sms``. The window is thus
readable from the IR: the stream-1 collective, then the ops with an ``sm_share`` below 1; the
collective is synchronised after the last of them. The block size of the collective's kernel is
recorded in ``Graph.attrs`` as ``overlap.<collective>.block_size``.

# identity: moving a collective whose operands are defined earlier and whose result is used only
# after the window does not change what the graph computes.

>>> # Overlap(start=2, end=4, comm_sms=8)(graph) -> new graph; ``graph`` is unchanged
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from energylens.errors import EnergylensError, InvalidWorkloadError
from energylens.ir.core import Collective, Graph, Op, Repeat

__all__ = ["Overlap", "kernels_of"]


def kernels_of(ops: tuple[Op, ...]) -> list[list[int]]:
    """Indices of ``ops`` grouped into kernels (consecutive ops of one non-None fusion group)."""
    groups: list[list[int]] = []
    for i, op in enumerate(ops):
        if groups and op.fusion_group is not None and ops[groups[-1][-1]].fusion_group == op.fusion_group:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@dataclass(frozen=True)
class Overlap:
    """Overlap one collective with compute kernels ``start..end`` (inclusive), ``comm_sms`` SMs to it.

    ``total_sms``: SMs of the GPU (A100: 108). ``collective``: result name of the collective to move
    (None: the first stream-0 collective outside a fusion group). Applies to the top-level body.
    """

    name: ClassVar[str] = "overlap"
    start: int
    end: int
    comm_sms: int
    comm_block_size: int = 1024
    total_sms: int = 108
    collective: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise InvalidWorkloadError(f"overlap window must satisfy 0 <= start <= end, got {self.start}..{self.end}")
        if not 0 < self.comm_sms < self.total_sms:
            raise InvalidWorkloadError(f"comm_sms must be in 1..{self.total_sms - 1}, got {self.comm_sms}")
        if self.comm_block_size <= 0:
            raise InvalidWorkloadError(f"comm_block_size must be > 0 threads, got {self.comm_block_size}")

    def __call__(self, graph: Graph) -> Graph:
        if any(isinstance(x, Repeat) for x in graph.body):
            raise EnergylensError("overlap: graphs with Repeat regions are not supported yet; "
                                  "apply it to the flat block")
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
        share = self.comm_sms / self.total_sms
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
