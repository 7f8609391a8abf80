"""The plan protocol the exporters read, and the checks they share."""

from __future__ import annotations

import numbers
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from energylens.costmodel.comm import GPUS_PER_NODE
from energylens.errors import InvalidTypeError, InvalidWorkloadError, ShardingError
from energylens.passes.shard import ep_size_error, expert_parallel_sizes
from energylens.typing import Parallel, Record

if TYPE_CHECKING:
    from energylens.models import ModelSpec

__all__ = ["PlanLike", "PlanSpec", "QUANTIZATIONS", "check_plan", "has_experts", "model_note", "weight_quantization", "model_spec", "clock_note", "node_gpus", "on_each_node"]

QUANTIZATIONS: tuple[str, ...] = ("fp8",)
"""Quantizations a plan may carry (None: the checkpoint's dtype, usually bf16)."""


@runtime_checkable
class PlanLike(Protocol):
    """What an exporter reads from a plan (the search's Plan satisfies it)."""

    model: str
    gpu: str
    num_gpus: int
    parallel: Parallel
    max_num_seqs: int
    max_model_len: int
    fused: bool
    comm_sms: int | None
    gpu_clock_mhz: int | None
    quantization: str | None
    sequence_parallel: bool


@dataclass(frozen=True)
class PlanSpec(Record):
    """A plan as the exporters need it.

    ``parallel`` has vLLM's meaning: attention and dense layers on ``tp x dp`` GPUs (``tp``-way
    tensor parallel inside each of ``dp`` replicas); experts spread ``ep``-way over the same GPUs.
    ``max_num_seqs`` is the batch (sequences in flight) per replica, ``max_model_len`` the longest
    request (prompt + output tokens) the engine accepts; ``request_len`` the workload's prompt +
    output tokens (None: not known).
    ``comm_sms`` is the number of SMs given to communication kernels when communication overlaps
    compute (None: no overlap); ``gpu_clock_mhz`` the locked graphics clock (None: default).
    ``moe``: the model has routed experts (exporters emit expert settings only then; ``ep > 1``
    implies it); None: read from the model's config when ``model`` is a known id or config file.
    ``kv_cache_tokens``: tokens one replica's KV cache holds (None: unknown); Megatron's static
    inference cache must hold every request at its maximum length within it.
    ``config``: the model the plan was priced on (``Plan.to_spec`` sets it); None: what ``model`` names.
    """

    model: str
    gpu: str
    num_gpus: int
    parallel: Parallel
    max_num_seqs: int
    max_model_len: int
    fused: bool = True
    comm_sms: int | None = None
    gpu_clock_mhz: int | None = None
    quantization: str | None = None
    sequence_parallel: bool = False
    moe: bool | None = None
    kv_cache_tokens: int | None = None
    request_len: int | None = None
    #: the model the plan was priced on, when it is not simply what ``model`` names (a config file,
    #: dict or ``PretrainedConfig`` whose ``_name_or_path`` is a checkpoint id): a traced model or
    #: anything ``load_config`` reads. The checks use it; a note says where ``model`` differs.
    config: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``config`` is the priced config's fields where ``model`` does not name that
        config (a saved plan is checked against it again), else None."""
        from energylens.models import config_dict

        out = super().to_dict()
        priced, named, _ = _configs(self)
        keep = priced is not None and priced.family != "custom" and (named is None or _differences(priced, named))
        out["config"] = config_dict(priced.config) if keep else None
        return out

    @classmethod
    def from_dict(cls, data: Any) -> PlanSpec:
        """The plan of ``to_dict``'s data (a saved plan: ``compile --json`` keeps it under ``"spec"``).
        Raises ``InvalidTypeError`` naming missing or unknown fields; the exporters check the values."""
        if not isinstance(data, dict):
            raise InvalidTypeError(f"a plan must be a JSON object of PlanSpec fields, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]
        unknown, missing = sorted(set(data) - set(names)), [n for n in required if n not in data]
        if unknown or missing:
            def listed(what: str, keys: list[str]) -> list[str]:
                return [f"{what} {', '.join(f'plan.{k}' for k in keys)}"] if keys else []

            raise InvalidTypeError(f"not a plan ({'; '.join(listed('unknown', unknown) + listed('missing', missing))}): "
                                   "give `compile --json` output or the fields of energylens.export.PlanSpec")
        par = data["parallel"]
        if not isinstance(par, dict) or set(par) != {"tp", "ep", "dp"}:
            raise InvalidTypeError(f"plan.parallel must be {{\"tp\": .., \"ep\": .., \"dp\": ..}}, got {par!r}")
        par = Parallel(**par)
        return cls(**dict(data, parallel=par))


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise InvalidWorkloadError(f"plan.{name} must be a positive integer, got {value!r}")


def clock_commands(plan: PlanLike) -> tuple[str, str] | None:
    """The commands (root) that set the plan's GPU clock and undo it, or None at the default clock.

    NVIDIA: ``nvidia-smi -i 0,..,n-1 -lgc F,F`` on the plan's ``n`` GPUs, the first ``n`` that vLLM
    and ``torchrun`` take (undo ``nvidia-smi -i ... -rgc``); the node's other GPUs keep their clocks.
    A plan over more than one node runs the command on each node, on the GPUs of a full one
    (``node_gpus``; a last node with fewer GPUs locks only those).
    AMD: ``rocm-smi -d 0 .. n-1 --setperfdeterminism F``, performance-determinism mode
    with F the highest graphics clock, which any other performance level ends (undo ``rocm-smi
    --setperflevel auto``).
    """
    f = plan.gpu_clock_mhz
    if f is None:
        return None
    from energylens.costmodel.hardware import get_gpu

    n = node_gpus(plan)[0]
    if get_gpu(plan.gpu).vendor == "amd":
        ids = " ".join(str(i) for i in range(n))
        return f"rocm-smi -d {ids} --setperfdeterminism {f}", f"rocm-smi -d {ids} --setperflevel auto"
    ids = ",".join(str(i) for i in range(n))
    return f"nvidia-smi -i {ids} -lgc {f},{f}", f"nvidia-smi -i {ids} -rgc"


def node_gpus(plan: PlanLike) -> tuple[int, ...]:
    """GPUs the plan uses on each node of ``GPUS_PER_NODE``, filled in rank order with whole
    tensor-parallel groups (a group of tp <= 8 stays inside a node, where its collectives were priced
    over NVLink); a last node may hold fewer.

    >>> from types import SimpleNamespace as Plan
    >>> from energylens.typing import Parallel
    >>> node_gpus(Plan(num_gpus=4, parallel=Parallel(tp=4))), node_gpus(Plan(num_gpus=12, parallel=Parallel(tp=4, dp=3)))
    ((4,), (8, 4))
    >>> node_gpus(Plan(num_gpus=12, parallel=Parallel(tp=6, dp=2))), node_gpus(Plan(num_gpus=32, parallel=Parallel(tp=16, dp=2)))
    ((6, 6), (8, 8, 8, 8))
    """
    tp = plan.parallel.tp
    per_node = min(GPUS_PER_NODE if tp > GPUS_PER_NODE else tp * (GPUS_PER_NODE // tp), plan.num_gpus)
    full, rest = divmod(plan.num_gpus, per_node)
    return (per_node,) * full + ((rest,) if rest else ())


def on_each_node(per_node: tuple[int, ...]) -> str:
    """Where a clock command for the first node's GPUs runs: '' on one node."""
    if len(per_node) == 1:
        return ""
    last = "" if per_node[-1] == per_node[0] else f" (GPUs 0-{per_node[-1] - 1} only on the last)"
    return f" on each of the {len(per_node)} nodes{last}"


def clock_note(plan: PlanLike, engine: str) -> str | None:
    """The note that the plan's GPU clock is not a setting of ``engine`` ("a vLLM argument", "a
    Megatron setting") and the commands that lock and unlock it; None at the default clock."""
    clock = clock_commands(plan)
    if clock is None:
        return None
    return (f"GPU clock {plan.gpu_clock_mhz} MHz is not {engine}: lock it before serving with `{clock[0]}`"
            f"{on_each_node(node_gpus(plan))} (needs root; undo with `{clock[1]}`)")


#: config fields that change what is priced or served; a priced config that differs from the named
#: checkpoint's in one of them is not that checkpoint
_ARCHITECTURE = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "vocab_size", "num_experts", "num_experts_per_tok",
                 "moe_intermediate_size", "max_position_embeddings")


def _configs(plan: PlanLike) -> tuple[ModelSpec | None, ModelSpec | None, str | None]:
    """(the config the plan was priced on, or None when the plan does not carry one; the config
    ``plan.model`` names, or None; why that one cannot be read)."""
    from energylens.errors import EnergylensError
    from energylens.models import load_config

    given = getattr(plan, "config", None)
    priced = None
    if _is_traced(given):
        priced = getattr(given, "spec", None)  # a traced model without a spec: its name's config
    elif given is not None:
        try:
            priced = load_config(given)
        except EnergylensError as exc:
            raise InvalidTypeError(f"plan.config must be the model the plan was priced on (a traced model, a config "
                                   f"file, dict or PretrainedConfig) or None, got {type(given).__name__} "
                                   f"{str(given)[:80]!r}: {str(exc).split(' Valid ')[0][:200]}") from None
    try:
        return priced, load_config(plan.model), None
    except EnergylensError as exc:
        return priced, None, str(exc).split(" Valid ")[0]  # the error and its closest name, not the list of all


def _is_traced(model: Any) -> bool:
    """A traced model (``resolve_model``'s test): it has both phases' graphs."""
    return hasattr(model, "prefill") and hasattr(model, "decode")


def _priced_label(plan: PlanLike, priced: ModelSpec | None, named: ModelSpec | None) -> str:
    """How errors name the model: ``plan.model``, or the priced config where that is another model."""
    if priced is None or (named is not None and not _differences(priced, named)):
        return plan.model
    return f"the config the plan was priced on ({priced.source})"


def model_spec(plan: PlanLike) -> ModelSpec | None:
    """The config the plan was priced on (``plan.config``), else the one ``plan.model`` names (a
    bundled id, an FP8 twin's, a config file or directory); None when neither can be read."""
    priced, named, _ = _configs(plan)
    return priced or named


def _differences(priced: ModelSpec, named: ModelSpec) -> list[str]:
    out = [f"{k} {b} there, {a} priced" for k in _ARCHITECTURE
           if (a := priced.get(k)) is not None and (b := named.get(k)) is not None and a != b]
    if priced.quantization != named.quantization:
        out.append(f"weights {named.quantization or 'bf16'} there, {priced.quantization or 'bf16'} priced")
    return out


def model_note(plan: PlanLike) -> str | None:
    """The note that the model the exporters name is not the one checked and priced: ``plan.model``
    names a checkpoint whose config energylens cannot read (a typo, a model it does not know, a
    missing path), so nothing model-specific was checked unless the plan carries the config it was
    priced on; or it names a checkpoint whose config differs from the priced one. None otherwise."""
    priced, named, why = _configs(plan)
    if priced is None and named is None:
        return (f"{plan.model}'s config cannot be read ({why}), so the plan was not checked against the model "
                "(heads, experts, context, fp8 blocks)")
    if named is None:
        return (f"{plan.model}'s config cannot be read ({why}): the plan was checked against the config it was "
                f"priced on ({priced.source}), so serve that config's checkpoint")
    diff = _differences(priced, named) if priced is not None and named is not None else []
    if diff:
        return (f"{plan.model} is not the model the plan was priced on ({priced.source}): its config differs "
                f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); serve the checkpoint the priced "
                "config belongs to in its place")
    return None


def weight_quantization(plan: PlanLike) -> str | None:
    """The plan's weight quantization: ``plan.quantization``, or the checkpoint's where the plan says
    none (an FP8 checkpoint is served in fp8 whatever the plan left unset)."""
    if plan.quantization is not None:
        return plan.quantization
    spec = model_spec(plan)
    return spec.quantization if spec is not None else None


def has_experts(plan: PlanLike) -> bool:
    """Whether ``plan``'s model has routed experts: its ``moe`` if set (a ``PlanLike`` need not have
    one), else ``ep > 1`` or the model's config; a model whose config cannot be read counts as dense."""
    moe = getattr(plan, "moe", None)
    if moe is not None:
        return bool(moe)
    if plan.parallel.ep > 1:
        return True
    spec = model_spec(plan)
    return spec is not None and spec.is_moe


def check_plan(plan: PlanLike) -> None:
    """Check what every exporter relies on; raise a user-facing error otherwise.

    - ``tp x dp`` must equal ``num_gpus`` (every GPU of the plan serves the model once);
    - ``ep`` is 1 or ``tp x dp`` (vLLM's meaning, which the shard pass prices: experts spread over
      all tp x dp GPUs, or tensor-sharded over them);
    - counts are positive integers, ``quantization`` is one of :data:`QUANTIZATIONS` or None;
    - ``comm_sms`` and ``gpu_clock_mhz`` are ones the GPU takes; ``request_len <= max_model_len <=
      kv_cache_tokens`` where given (vLLM's start-up check);
    - ``fused`` and ``sequence_parallel`` are bools, ``moe`` a bool or None;
    - where the model's config can be read (``model_spec``): the shard pass's rules on its traced
      graph (``check_parallel``: tp suits its heads, MLP and expert widths and fp8 weight blocks, ep
      its experts; ``estimate``'s rules), ``moe`` agrees with it, fp8 weights run on the GPU, and
      ``max_model_len`` is within its context.
    """
    if not isinstance(plan.parallel, Parallel):
        raise InvalidTypeError(f"plan.parallel must be an energylens Parallel, got {plan.parallel!r}")
    if not isinstance(plan.model, str) or not plan.model.strip():
        raise InvalidTypeError(f"plan.model must be a model id or config path, got {plan.model!r}")
    for name in ("num_gpus", "max_num_seqs", "max_model_len"):
        _positive(name, getattr(plan, name))
    for name, none_ok in (("fused", False), ("sequence_parallel", False), ("moe", True)):
        v = getattr(plan, name, None)
        if not isinstance(v, bool) and not (none_ok and v is None):
            raise InvalidTypeError(f"plan.{name} must be True or False{' (or None)' if none_ok else ''}, got {v!r}")
    for name in ("comm_sms", "gpu_clock_mhz", "kv_cache_tokens", "request_len"):
        if getattr(plan, name, None) is not None:
            _positive(name, getattr(plan, name))
    p = plan.parallel
    if p.tp * p.dp != plan.num_gpus:
        raise ShardingError(
            f"plan uses tp x dp = {p.tp} x {p.dp} = {p.tp * p.dp} GPUs but num_gpus is {plan.num_gpus}; "
            f"tp x dp must equal num_gpus (choose tp and dp with tp*dp == {plan.num_gpus})"
        )
    if p.ep not in expert_parallel_sizes(p.tp, p.dp):  # the shard pass's rule, which the cost model prices
        raise ep_size_error(p.ep, p.tp, p.dp, expert_parallel_sizes(p.tp, p.dp))
    if plan.quantization is not None and plan.quantization not in QUANTIZATIONS:
        raise InvalidWorkloadError(
            f"unknown quantization {plan.quantization!r}; valid: None, {', '.join(map(repr, QUANTIZATIONS))}"
        )
    from energylens.api import check_comm_sms
    from energylens.costmodel.clock import locked_clock
    from energylens.costmodel.hardware import get_gpu
    from energylens.models import max_context

    gpu = get_gpu(plan.gpu)
    check_comm_sms(plan.comm_sms, gpu)
    locked_clock(plan.gpu_clock_mhz, gpu)
    held, need = getattr(plan, "kv_cache_tokens", None), getattr(plan, "request_len", None)
    if need is not None and need > plan.max_model_len:
        raise InvalidWorkloadError(f"plan.request_len {need} exceeds max_model_len {plan.max_model_len}: the engine "
                                   "would refuse the workload's requests")
    if held is not None and plan.max_model_len > held:
        raise InvalidWorkloadError(f"plan.max_model_len {plan.max_model_len} exceeds the {held} tokens its KV cache "
                                   "holds: vLLM refuses to start (one request of that length must fit)")
    if weight_quantization(plan) == "fp8":
        gpu.peak_flops_per_s("fp8")  # EstimateError on a GPU without fp8 tensor cores, as estimate says
    priced, named, _ = _configs(plan)
    spec = priced or named
    if spec is not None:
        who = _priced_label(plan, priced, named)
        limit = max_context(spec)
        if limit is not None and plan.max_model_len > limit[0]:
            raise InvalidWorkloadError(f"plan.max_model_len {plan.max_model_len} exceeds {who}'s {limit[0]} "
                                       f"tokens ({limit[1]}); vLLM refuses it")
        moe = getattr(plan, "moe", None)
        if moe is not None and moe != spec.is_moe:
            raise InvalidWorkloadError(f"plan.moe={moe} but {who} {'has' if spec.is_moe else 'has no'} "
                                       "routed experts; leave moe=None (read from the config)")
        from energylens.api import resolve_model
        from energylens.passes.shard import check_parallel

        # the shard pass's own rules (heads, MLP and expert widths, experts, fp8 weight blocks), which
        # the plan was priced with: a plan that estimate refuses is not exported either
        given = getattr(plan, "config", None)  # a traced model, or a config to trace (None: the named one)
        traced = resolve_model(given if _is_traced(given) else plan.model if priced is None else spec)
        check_parallel(traced.decode, p, num_gpus=plan.num_gpus)
