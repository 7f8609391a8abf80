"""The MoE pass: the routing distribution of the expert einsums, and the expert load it implies.

``Moe(routing, skew, histogram, seed)`` records how tokens are routed to experts in the graph's
attributes (``routing``, ``routing_skew``, ``routing_histogram``, ``routing_seed``); the expert
einsums (ops whose operands all carry the expert dim ``e``, over ``C`` tokens per expert) are
the ops it describes. The cost model turns it into per-rank token counts with ``expert_load`` and
prices the straggler: under expert parallelism every GPU waits for the most loaded one, burning
static power meanwhile. A graph without experts is returned unchanged.

Routing models:

* ``uniform``: each routed token picks experts uniformly; per-expert counts are multinomial, drawn
  anew each step: the straggler is the expected most-loaded rank over ``ROUTING_DRAWS`` draws.
* ``zipf``: expert popularity ~ 1 / rank^skew (rank order shuffled over the experts with the
  seed, so hot experts do not all sit on rank 0); counts multinomial with those probabilities.
* ``histogram``: measured per-expert counts (or probabilities), rescaled to the token count.

>>> load = expert_load(4096, 128, 8, 8, "uniform", seed=0)
>>> len(load.per_rank), round(sum(load.per_rank))
(8, 32768)
>>> 1.0 <= load.straggler < 1.05
True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from energylens.errors import ConfigError
from energylens.ir.core import Einsum, Graph, Op
from energylens.passes.manager import register_pass
from energylens.typing import Record

__all__ = ["Moe", "ExpertLoad", "Routing", "expert_load", "expert_ops", "routing_of", "routing_shares", "straggler_shares",
           "hot_rank_shares", "graph_expert_load"]

Routing = Literal["uniform", "zipf", "histogram"]
_ROUTINGS = ("uniform", "zipf", "histogram")


def _check(routing: str, skew: float, histogram: Sequence[float] | None, num_experts: int | None = None,
           top_k: int | None = None) -> None:
    if routing not in _ROUTINGS:
        raise ConfigError(f"unknown routing {routing!r}; valid: {', '.join(_ROUTINGS)}")
    if not math.isfinite(skew) or skew < 0:
        raise ConfigError(f"routing skew must be a finite number >= 0 (0: uniform popularity), got {skew}")
    if routing == "histogram":
        if not histogram:
            raise ConfigError("routing='histogram' needs histogram=[count per expert, ...]")
        bad = [(i, c) for i, c in enumerate(histogram) if not math.isfinite(c) or c < 0]
        if bad:
            raise ConfigError(f"histogram counts must be finite numbers >= 0; entry {bad[0][0]} is {bad[0][1]}")
        if num_experts is not None and len(histogram) != num_experts:
            raise ConfigError(f"histogram has {len(histogram)} entries but the model has {num_experts} experts")
        hit = sum(c > 0 for c in histogram)
        if top_k is not None and hit < top_k:  # a token picks top_k distinct experts
            raise ConfigError(f"histogram has {hit} experts with tokens, but each token goes to top_k={top_k} "
                              f"distinct experts: at least {top_k} counts must be > 0")
        if hit == 0:
            raise ConfigError("histogram counts must have a positive sum")
    elif histogram:
        raise ConfigError(f"histogram=... is only used with routing='histogram', not {routing!r}")


@register_pass
@dataclass(frozen=True)
class Moe:
    """Annotate a MoE graph with its routing distribution (see the module docstring)."""

    name: ClassVar[str] = "moe"
    routing: Routing = "uniform"
    skew: float = 1.0
    histogram: tuple[float, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.histogram is not None and not isinstance(self.histogram, tuple | str):
            # a list or an array reads naturally; the pass is hashed (plan caches), so a tuple of floats
            try:
                object.__setattr__(self, "histogram", tuple(float(c) for c in self.histogram))
            except (TypeError, ValueError):
                raise ConfigError(f"histogram must be numbers, one per expert, got {self.histogram!r}") from None
        if isinstance(self.routing, str) and self.routing.lower() in _ROUTINGS:  # any case, as GPU names
            object.__setattr__(self, "routing", self.routing.lower())
        _check(self.routing, self.skew, self.histogram)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ConfigError(f"routing seed must be an integer >= 0, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.skew != 1.0 and self.routing != "zipf":  # it would be ignored
            raise ConfigError(f"skew={self.skew} is only used with routing='zipf', not {self.routing!r}")

    def __call__(self, graph: Graph) -> Graph:
        if not expert_ops(graph):
            return graph
        experts = int(graph.attr.get("num_experts", graph.dim_sizes.get("e") or 0)) or None
        top_k = int(graph.attr["top_k"]) if "top_k" in graph.attr else None
        _check(self.routing, self.skew, self.histogram, experts, top_k)
        new = {"routing": self.routing, "routing_seed": str(self.seed)}
        if self.routing == "zipf":
            new["routing_skew"] = repr(float(self.skew))
        if self.routing == "histogram":
            new["routing_histogram"] = ",".join(repr(float(c)) for c in self.histogram or ())
        keep = tuple((k, v) for k, v in graph.attrs if not k.startswith("routing"))
        return dataclasses.replace(graph, attrs=keep + tuple(new.items()))


def expert_ops(graph: Graph) -> list[Op]:
    """The expert einsums: every operand carries the expert dim ``e`` (and the result too)."""
    return [op for op, _ in graph.walk()
            if isinstance(op, Einsum) and all("e" in v.type.dims for v in (*op.operands, op.result))]


def routing_of(graph: Graph) -> tuple[Routing, float, tuple[float, ...] | None, int]:
    """(routing, skew, histogram, seed) recorded by ``Moe``; ``("uniform", 1.0, None, 0)`` if none."""
    a = graph.attr
    hist = tuple(float(c) for c in a["routing_histogram"].split(",")) if "routing_histogram" in a else None
    return (a.get("routing", "uniform"), float(a.get("routing_skew", 1.0)), hist,  # type: ignore[return-value]
            int(a.get("routing_seed", 0)))


@dataclass(frozen=True)
class ExpertLoad(Record):
    """Routed token-slots per expert and per EP rank, and the straggler factor (max rank / mean)."""

    per_expert: tuple[float, ...]
    per_rank: tuple[float, ...]
    straggler: float

    @property
    def max_rank_tokens(self) -> float:
        return max(self.per_rank)


def _probabilities(num_experts: int, top_k: int, routing: str, skew: float,
                   histogram: tuple[float, ...] | None, rng: np.random.Generator) -> np.ndarray:
    if routing == "uniform":
        p = np.full(num_experts, 1.0 / num_experts)
    elif routing == "zipf":
        p = 1.0 / np.arange(1, num_experts + 1) ** skew
        p = rng.permutation(p)
    else:
        p = np.asarray(histogram, dtype=float)
    p = p / p.sum()
    # A token picks top_k *distinct* experts: no expert gets more than 1/top_k of the slots.
    cap = 1.0 / top_k
    for _ in range(num_experts):
        over = p > cap
        if not over.any():
            break
        excess = (p[over] - cap).sum()
        p[over] = cap
        under = ~over & (p < cap)
        p[under] += excess * p[under] / p[under].sum()
    return p


#: Routing draws the straggler is averaged over: each step routes its tokens anew, so a step's
#: mean time sees the expected most-loaded rank, not one draw's (whose max varies ~10% at decode).
ROUTING_DRAWS = 64


@functools.lru_cache(maxsize=4096)
def _load(num_tokens: int, num_experts: int, top_k: int, ep: int, routing: str, skew: float,
          histogram: tuple[float, ...] | None, seed: int) -> ExpertLoad:
    rng = np.random.default_rng(seed)
    p = _probabilities(num_experts, top_k, routing, skew, histogram, rng)
    slots = num_tokens * top_k
    draws = rng.multinomial(slots, p, size=ROUTING_DRAWS).astype(float)   # (draws, experts)
    ranks = draws.reshape(ROUTING_DRAWS, ep, num_experts // ep).sum(axis=2)
    mean = slots / ep
    straggler = float(ranks.max(axis=1).mean() / mean) if mean > 0 else 1.0
    counts = slots * p  # the expected loads
    per_rank = counts.reshape(ep, num_experts // ep).sum(axis=1)
    return ExpertLoad(tuple(counts.tolist()), tuple(per_rank.tolist()), straggler)


def expert_load(num_tokens: int, num_experts: int, top_k: int, ep: int, routing: Routing | str = "uniform",
                seed: int = 0, *, skew: float = 1.0, histogram: Sequence[float] | None = None) -> ExpertLoad:
    """Expected token-slots routed to each expert and each of ``ep`` ranks (experts placed
    contiguously), and the straggler.

    ``num_tokens`` tokens each go to ``top_k`` distinct experts (``num_tokens * top_k`` slots in
    all). ``straggler`` = expected max rank load / mean rank load over ``ROUTING_DRAWS`` multinomial
    draws (1.0: balanced); under EP every rank waits for the most loaded one. Deterministic for a
    given ``seed`` (which also places zipf's popular experts).
    """
    if num_experts <= 0 or not 0 < top_k <= num_experts:
        raise ConfigError(f"MoE routing needs 0 < top_k <= num_experts, got top_k={top_k}, num_experts={num_experts}")
    if ep <= 0 or num_experts % ep:
        raise ConfigError(f"ep={ep} does not divide the {num_experts} experts")
    if num_tokens < 0:
        raise ConfigError(f"num_tokens must be >= 0, got {num_tokens}")
    hist = tuple(float(c) for c in histogram) if histogram is not None else None
    _check(routing, skew, hist, num_experts, top_k)
    return _load(int(num_tokens), num_experts, top_k, ep, routing, float(skew), hist, seed)


def routing_shares(graph: Graph) -> tuple[float, ...] | None:
    """Each expert's share of the token-slots under the routing ``Moe`` recorded on ``graph``
    (None: uniform routing, or not a MoE graph)."""
    routing, skew, hist, seed = routing_of(graph)
    a = graph.attr
    if routing == "uniform" or "num_experts" not in a or "top_k" not in a:
        return None
    experts, top_k = int(a["num_experts"]), int(a["top_k"])
    return tuple(c / top_k for c in expert_load(1, experts, top_k, 1, routing, seed, skew=skew,
                                                histogram=hist).per_expert)


def straggler_shares(graph: Graph, ep: int) -> tuple[float, ...] | None:
    """The token-slot shares of the experts on the most loaded of ``ep`` ranks, repeated for every
    rank (``hot_rank_shares``); None for uniform routing."""
    shares = routing_shares(graph)
    return shares if shares is None or ep <= 1 else hot_rank_shares(shares, ep)


def hot_rank_shares(shares: Sequence[float], ep: int) -> tuple[float, ...]:
    """The shares of the experts on the rank with the largest total (experts placed contiguously
    over ``ep`` ranks), repeated ``ep`` times: what the straggler's experts see, in the form the
    cost model takes shares (``expected_distinct_experts`` over them counts ``ep`` x its hits).

    >>> hot_rank_shares([0.125, 0.5, 0.125, 0.25], 2)
    (0.125, 0.5, 0.125, 0.5)
    """
    n = len(shares) // ep
    return tuple(max((tuple(shares[i * n:(i + 1) * n]) for i in range(ep)), key=sum)) * ep


def graph_expert_load(graph: Graph, num_tokens: int, ep: int) -> ExpertLoad:
    """``expert_load`` with the routing the ``Moe`` pass recorded on ``graph`` (uniform if none)."""
    routing, skew, hist, seed = routing_of(graph)
    a = graph.attr
    try:
        experts, top_k = int(a["num_experts"]), int(a["top_k"])
    except KeyError:
        raise ConfigError(f"graph {graph.name!r} has no num_experts/top_k attributes (not a MoE model)") from None
    return expert_load(num_tokens, experts, top_k, ep, routing, seed, skew=skew, histogram=hist)
