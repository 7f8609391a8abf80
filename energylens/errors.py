"""Typed exceptions of energylens.

Every error a user can cause is an ``EnergylensError``: its message says what was wrong, the
valid choices, and what to try. The CLI prints the message on one line and exits with code 2.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = [
    "EnergylensError",
    "UnknownNameError",
    "InvalidWorkloadError",
    "InvalidTypeError",
    "ConfigError",
    "DoesNotFitError",
    "UnsupportedOpError",
    "VerificationError",
    "ParseError",
    "EstimateError",
    "ShardingError",
    "DeviceUnavailableError",
    "closest",
]


class EnergylensError(Exception):
    """Base class of all errors caused by bad input or an unsupported request."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``name`` (case-insensitive), or None when none is close: the longest
    choice that ``name`` starts with (``Qwen/Qwen3-8B-Instruct`` -> ``Qwen/Qwen3-8B``), else the
    closest spelling among the choices of the same first word (``H100 94GB`` -> an H100), if any.

    >>> closest("Qwen/Qwen3-8B-Instruct", ["Qwen/Qwen3-8B", "Qwen/Qwen3-4B-Instruct-2507"])
    'Qwen/Qwen3-8B'
    >>> closest("H100 94GB", ["A100-SXM4-40GB", "H100-SXM", "H100-PCIe"])
    'H100-SXM'
    """
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    key = name.lower()
    if key in lowered:
        return lowered[key]

    def bare(s: str) -> str:  # an HF id without its org: the org says who published it, not what it is
        return s.rsplit("/", 1)[-1]

    stems = [c for c in lowered if key.startswith(c) or bare(key).startswith(bare(c))]
    if stems:
        return lowered[max(stems, key=lambda c: len(bare(c)))]
    first = re.split(r"[-_ .]", bare(key), maxsplit=1)[0]
    family = [c for c in lowered if re.split(r"[-_ .]", bare(c), maxsplit=1)[0] == first] or list(lowered)
    match = difflib.get_close_matches(bare(key), [bare(c) for c in family], n=1, cutoff=0.4)
    return next((lowered[c] for c in family if bare(c) == match[0]), None) if match else None


class UnknownNameError(EnergylensError, KeyError):
    """A name (model, GPU, pass, dataset...) that is not in its registry."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], hint: str | None = None):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        self.suggestion = closest(name, self.choices)
        said = f" {hint}" if hint else f" Did you mean {self.suggestion!r}?" if self.suggestion else ""
        super().__init__(f"unknown {kind} {name!r}.{said} Valid {kind} names: {', '.join(self.choices)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InvalidWorkloadError(EnergylensError, ValueError):
    """A workload, cluster or option with an impossible value (batch <= 0, ...)."""


class InvalidTypeError(EnergylensError, TypeError):
    """An argument of the wrong type (a str where an ``el.Cluster`` is expected, a dict for a ``Workload``...)."""


class ConfigError(EnergylensError, ValueError):
    """A model config that cannot be read or lacks a field the model needs."""


class DoesNotFitError(EnergylensError):
    """A plan whose memory per GPU exceeds the GPU's capacity."""

    def __init__(self, message: str, required_bytes: float, capacity_bytes: float):
        self.required_bytes, self.capacity_bytes = required_bytes, capacity_bytes
        super().__init__(message)


class UnsupportedOpError(EnergylensError):
    """An aten op (or IR op) that a lowering or an estimator does not know."""


class VerificationError(EnergylensError):
    """An IR graph that breaks an invariant (the message names the op and the rule)."""


class ParseError(EnergylensError, ValueError):
    """IR text that does not parse (the message gives the line and column)."""


class EstimateError(EnergylensError):
    """A cost query outside what the cost model can price (never silently 0)."""


class ShardingError(EnergylensError, ValueError):
    """An impossible sharding (tp not dividing heads, more GPUs than the cluster, ...)."""


class DeviceUnavailableError(EnergylensError):
    """A runtime request that needs a GPU, NVML or a permission this machine lacks."""
