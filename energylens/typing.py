"""Shared types of energylens: what a user asks for and the typed records estimates return.

Units are in field names (``_s`` seconds, ``_j`` joules, ``_w`` watts, ``_bytes`` bytes).
All records are frozen dataclasses with ``to_dict()`` for scripts and JSON.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

from energylens.errors import InvalidTypeError, InvalidWorkloadError

__all__ = [
    "Workload",
    "Cluster",
    "Parallel",
    "SLO",
    "OpCost",
    "OpEstimate",
    "PhaseEstimate",
    "MemoryEstimate",
    "ServingEstimate",
    "Estimate",
    "PlanGraphs",
    "Record",
    "expect_type",
]


def _positive_int(record: Any, name: str) -> None:
    """Check that field ``name`` of a frozen ``record`` is a positive integer; store it as an ``int``
    (a numpy integer is accepted: counts often come out of arrays)."""
    value = getattr(record, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise InvalidWorkloadError(f"{type(record).__name__}.{name} must be a positive integer, got {value!r}")
    object.__setattr__(record, name, int(value))


def expect_type(name: str, value: Any, cls: type, *, optional: bool = False) -> None:
    """Raise ``InvalidTypeError`` unless ``value`` is a ``cls`` (or None when ``optional``).

    Checked at the API entry points so a wrong type is one clear line, not an AttributeError deep inside.

    >>> expect_type("cluster", "H100-SXM", Cluster)
    Traceback (most recent call last):
    energylens.errors.InvalidTypeError: cluster must be an el.Cluster, got str 'H100-SXM'; use el.Cluster('H100-SXM')
    """
    if isinstance(value, cls) or (optional and value is None):
        return
    import energylens

    where = "el" if cls.__name__ in energylens.__all__ else cls.__module__
    want = f"{where}.{cls.__name__}" + (" (or None for the default)" if optional else "")
    hint = ""
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        hint = f"; use el.{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in value.items())})"
    elif isinstance(value, str) and cls is Cluster:
        hint = f"; use el.Cluster({value!r})"
    raise InvalidTypeError(f"{name} must be an {want}, got {type(value).__name__} {value!r}{hint}")


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Record:
    """Mixin: ``to_dict()`` turns a (nested) dataclass record into plain data.

    Derived properties listed in ``_derived`` (``itl_s``, ``total_bytes``...) are included.
    """

    _derived: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        for name in self._derived:
            out[name] = _plain(getattr(self, name))
        return out


@dataclass(frozen=True)
class Workload(Record):
    """A batch of ``batch`` sequences with ``prompt_len`` prompt tokens and ``output_len`` output tokens.

    >>> Workload(batch=16, prompt_len=2048, output_len=512).decode_context_len
    2304
    """

    batch: int = 1
    prompt_len: int = 1024
    output_len: int = 256
    #: Coefficient of variation of the output lengths (std / mean). Under continuous batching a
    #: request holds its batch slot for as long as it generates, so the running batch is
    #: length-biased: its mean KV length is ``prompt_len + output_len * (1 + cv**2) / 2``
    #: (``serving_context_len``). 1.0 (exponential-like spread, as chat and reasoning traces
    #: have) by default; 0 for fixed-length benchmarks.
    output_len_cv: float = 1.0
    #: Share of each prompt's tokens whose KV the engine finds in its prefix cache in steady-state
    #: serving (vLLM's automatic prefix caching; a multi-turn chat's request carries the earlier
    #: turns). Those tokens are not prefilled again: a new prompt computes ``prefill_len`` tokens,
    #: which attend to the whole prompt. 0 by default. The KV cache is still counted as private
    #: per sequence (the memory check stays conservative), and ``estimate``'s ``prefill`` phase is
    #: a cold batch (no hits).
    prefix_cache_hit: float = 0.0

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_len", "output_len"):
            _positive_int(self, name)
        for name, high, closed in (("output_len_cv", 10, True), ("prefix_cache_hit", 1, False)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise InvalidTypeError(f"Workload.{name} must be a number, got {type(v).__name__} {v!r}")
            if not (0 <= v <= high if closed else 0 <= v < high):
                raise InvalidWorkloadError(
                    f"Workload.{name} must be a number in [0, {high}{']' if closed else ')'}, got {v!r}")
            object.__setattr__(self, name, float(v))  # a numpy scalar becomes a plain float (to_dict, JSON)

    @property
    def prefill_len(self) -> float:
        """Prompt tokens a new request computes in steady-state serving: those not found in the
        prefix cache, ``prompt_len * (1 - prefix_cache_hit)`` (at least one: the last token's
        logits are always computed)."""
        return max(1.0, self.prompt_len * (1.0 - self.prefix_cache_hit))

    @property
    def decode_context_len(self) -> int:
        """Mean KV length of a decode step: prompt_len + output_len / 2."""
        return self.prompt_len + self.output_len // 2

    @property
    def serving_context_len(self) -> float:
        """Mean KV length of a step of steady-state continuous batching (length-biased batch):
        ``prompt_len + output_len * (1 + output_len_cv**2) / 2``, before any KV-capacity limit."""
        return self.prompt_len + self.output_len * (1.0 + self.output_len_cv ** 2) / 2.0


@dataclass(frozen=True)
class Parallel(Record):
    """Parallelism in vLLM's meaning: dense layers use tp x dp GPUs; experts are spread with ep over them."""

    tp: int = 1
    ep: int = 1
    dp: int = 1

    def __post_init__(self) -> None:
        for name in ("tp", "ep", "dp"):
            _positive_int(self, name)

    @property
    def num_gpus(self) -> int:
        return self.tp * self.dp


@dataclass(frozen=True)
class Cluster(Record):
    """``num_gpus`` GPUs of one kind (a name from ``energylens gpus``) and their interconnect (None:
    the GPU's default, ``api.default_interconnect``: NVLink where its collectives were measured, else
    PCIe; the cluster holds the name it resolved to)."""

    gpu: str
    num_gpus: int = 1
    interconnect: str | None = None

    def __post_init__(self) -> None:
        _positive_int(self, "num_gpus")
        from energylens.api import default_interconnect
        from energylens.costmodel.comm import normalize_interconnect
        from energylens.costmodel.hardware import get_gpu  # validates the name, lists the choices

        spec = get_gpu(self.gpu)
        object.__setattr__(self, "gpu", spec.name)
        object.__setattr__(self, "interconnect", default_interconnect(spec) if self.interconnect is None
                           else normalize_interconnect(self.interconnect))  # nvlink4 -> nvlink, as GPU names


@dataclass(frozen=True)
class SLO(Record):
    """Latency targets: inter-token latency and time to first token, in milliseconds (None: no target)."""

    itl_ms: float | None = None
    ttft_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("itl_ms", "ttft_ms"):
            v = getattr(self, name)
            # NaN compares False with every latency: it would pass ``> 0`` and then reject every plan
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                                  or not math.isfinite(v) or v <= 0):
                raise InvalidWorkloadError(f"SLO.{name} must be a positive finite number of milliseconds "
                                           f"(or None: no target), got {v!r}")


@dataclass(frozen=True)
class OpCost(Record):
    """Cost of one execution of one op; energy kept in its parts (static, per FLOP, per byte)."""

    _derived: ClassVar[tuple[str, ...]] = ("energy_j",)

    time_s: float
    flops: float
    hbm_bytes: float
    static_j: float
    flop_j: float
    byte_j: float

    @property
    def energy_j(self) -> float:
        return self.static_j + self.flop_j + self.byte_j


@dataclass(frozen=True)
class OpEstimate(Record):
    """One row of the per-op table: an op of a phase, its source, and its cost over all its repetitions."""

    phase: str
    name: str
    kind: str
    source: str
    count: int
    flops: float
    hbm_bytes: float
    time_s: float
    energy_j: float


@dataclass(frozen=True)
class PhaseEstimate(Record):
    """Prefill of the whole batch, or one decode step of the batch.

    ``avg_power_w`` is the total over all GPUs of the plan. For decode, ``itl_s`` is the step
    time and ``energy_per_token_j`` the step energy divided by the batch.
    """

    _derived: ClassVar[tuple[str, ...]] = ("itl_s", "energy_per_token_j")

    name: str
    latency_s: float
    energy_j: float
    avg_power_w: float
    flops: float
    hbm_bytes: float
    static_j: float
    dynamic_j: float
    tokens: int
    comm_j: float = 0.0   # communication energy above static (inside dynamic_j)
    wait_j: float = 0.0   # static energy of GPUs waiting for the expert straggler (inside static_j)

    @property
    def itl_s(self) -> float:
        return self.latency_s

    @property
    def energy_per_token_j(self) -> float:
        return self.energy_j / self.tokens


@dataclass(frozen=True)
class MemoryEstimate(Record):
    """Memory per GPU, in bytes; ``capacity_bytes`` is what vLLM may fill (0.9 of the GPU's HBM,
    ``costmodel.serving.GPU_MEMORY_UTILIZATION``)."""

    _derived: ClassVar[tuple[str, ...]] = ("total_bytes",)

    weights_bytes: float
    kv_cache_bytes: float
    activation_bytes: float
    capacity_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes


@dataclass(frozen=True)
class ServingEstimate(Record):
    """Steady-state continuous batching with chunked prefill (as vLLM serves), per plan.

    ``batch`` is the sequences that run: the workload's, or fewer where prefilling new prompts
    cannot keep it full or the KV cache cannot hold it (``kv_limited``: vLLM preempts the rest;
    ``costmodel.serving.running_batch``).

    Each decode step of ``batch`` sequences also carries on average ``prefill_tokens_per_step``
    prefill tokens (``batch * prefill_len / output_len``: ``Workload.prefill_len``; with dp replicas, over all of them, each
    replica stepping on its own ``batch / dp`` sequences). ``median_itl_s`` is the time of the step
    with the median prefill load; ``mean_step_s`` the mean step time; ``avg_power_w`` the total
    over all GPUs; ``energy_per_output_token_j`` counts prefill energy too. With ``output_len=1``
    no request has an inter-token gap: ``median_itl_s`` is then only that median step's time (the
    reports print "-", and an ITL target is refused).
    """

    _derived: ClassVar[tuple[str, ...]] = ("output_tokens_per_s",)

    batch: int
    prompt_len: int
    output_len: int
    prefill_tokens_per_step: float
    median_prefill_tokens_per_step: float
    median_itl_s: float
    mean_step_s: float
    avg_power_w: float
    energy_per_output_token_j: float
    static_j_per_output_token: float
    #: share of the ``batch`` running sequences that yield a token each step (1 unless a prompt is
    #: longer than the step's token budget: ``costmodel.serving.served_share``)
    served_share: float = 1.0
    #: whether the KV cache, not prefill, keeps ``batch`` below the workload's (its capacity holds
    #: no more sequences at the running batch's mean context)
    kv_limited: bool = False

    @property
    def output_tokens_per_s(self) -> float:
        return self.batch * self.served_share / self.mean_step_s


@dataclass(frozen=True)
class Estimate(Record):
    """What ``energylens.estimate`` returns: per phase, memory and the per-op table."""

    model: str
    gpu: str
    num_gpus: int
    workload: Workload
    parallel: Parallel
    prefill: PhaseEstimate
    decode: PhaseEstimate
    memory: MemoryEstimate
    ops: tuple[OpEstimate, ...] = field(default=())
    serving: ServingEstimate | None = None
    profile: str = ""  # where the cost-model profile came from, in one line (Provenance.summary)
    graphs: PlanGraphs | None = field(default=None, repr=False, compare=False)
    clock_mhz: int | None = None  # the locked SM clock priced (None: the default clock)

    @property
    def graph(self) -> Any:
        """The rewritten decode graph of the plan (``print(est.graph)`` shows its IR text)."""
        return self.graphs.decode if self.graphs is not None else None


@dataclass(frozen=True)
class PlanGraphs(Record):
    """The IR of a plan after its pipeline: ``prefill`` and ``decode`` graphs (``energylens.ir.Graph``).

    ``str()`` is the IR text of both; ``to_dict()`` keeps only the pipeline (the IR is large).
    """

    pipeline: str
    prefill: Any = field(repr=False)
    decode: Any = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline}

    def __str__(self) -> str:
        from energylens.ir.text import print_graph

        return f"// pipeline: {self.pipeline}\n{print_graph(self.prefill)}\n{print_graph(self.decode)}"
