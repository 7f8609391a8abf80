"""Parameter counts of a traced graph (weights declared as ``param``, times their region's count).

>>> from energylens.ir.text import EXAMPLE, parse_graph
>>> param_count(parse_graph(EXAMPLE)) >= 0
True
"""

from __future__ import annotations

from energylens.ir.core import Decl, Graph

__all__ = ["param_count", "active_param_count", "is_expert_param"]


def _numel(g: Graph, d: Decl) -> int:
    sizes = g.dim_sizes
    n = 1
    for dim in d.value.type.dims:
        s = sizes.get(dim)
        if not isinstance(s, int):
            raise ValueError(f"param %{d.value.name} has dim {dim!r} of non-constant size {s!r}")
        n *= s
    return n


def is_expert_param(d: Decl) -> bool:
    """A routed expert's weight: it has the expert dim ``e`` and lives under ``experts``."""
    return d.role == "param" and "e" in d.value.type.dims and ".experts." in f".{d.value.name}."


def param_count(graph: Graph) -> int:
    """Number of weights: every ``param`` declaration's elements x its region's count."""
    return sum(_numel(graph, d) * count for d, count in graph.all_decls() if d.role == "param")


def active_param_count(graph: Graph) -> int:
    """Weights used per token: expert weights scaled by ``top_k / num_experts`` (graph attrs)."""
    attrs = graph.attr
    if "num_experts" not in attrs:
        return param_count(graph)
    frac = int(attrs["top_k"]) / int(attrs["num_experts"])
    total = 0.0
    for d, count in graph.all_decls():
        if d.role != "param":
            continue
        n = _numel(graph, d) * count
        total += n * frac if is_expert_param(d) else n
    return round(total)
