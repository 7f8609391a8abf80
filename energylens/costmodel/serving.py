"""Steady-state serving with continuous batching and chunked prefill (as vLLM serves).

``batch`` sequences decode together; each finishes after ``output_len`` tokens on average, so
``lam = batch / output_len`` new requests join per step: the number joining one step is a Poisson
count ``n`` with mean ``lam``, and that step carries ``n * prefill_len`` prefill tokens next to its
``batch`` decode tokens (capped by the token budget ``max_num_batched_tokens``), on average
``batch * prefill_len / output_len`` (``Workload.prefill_len``: ``prompt_len`` without prefix-cache
hits). One such *mixed step* runs:

* every token-wise op (projections, MLP / experts, norms, ``lm_head``) once over
  ``batch + prefill`` tokens: the weights are read once for both;
* decode attention of ``batch`` sequences over the mean context of the running batch. A request
  holds its slot for as long as it generates, so the batch is length-biased: the mean KV length is
  ``prompt_len + output_len * (1 + cv^2) / 2`` (``Workload.output_len_cv``), not
  ``prompt_len + output_len / 2``; and the batch never holds more KV than the cache has room for
  (``kv_capacity_tokens``: when it would, vLLM preempts, so the batch runs at the capacity);
* prefill attention of the new prompts (causal, ``prompt_len`` each; with prefix-cache hits,
  ``Workload.prefix_cache_hit``, only a prompt's last ``prefill_len`` tokens are computed, each
  attending to the whole prompt);
* plus a fixed step overhead (sync, launch of the step's graphs: the GPU waits) and a per-sequence
  host time (scheduling, sampling bookkeeping, output processing: ``seq_overhead_s x batch``).
  With asynchronous scheduling (vLLM 0.11 ``--async-scheduling``, as ML.ENERGY ran) the host
  prepares step n+1 while the GPU runs step n, so the two overlap: a step takes
  ``(gpu^p + host^p)^(1/p)`` (``step_time_s``; ``p = profile.host_overlap_p``, 1 = in series,
  large = the longer of the two). While the GPU waits on the host it draws ``overhead_power_w``;
  a host-bound step (large batch on a fast GPU) is thus slower *and* draws less power.

New prompts are prefilled only with what the step's token budget leaves after the decode tokens,
so a workload of long prompts and short outputs can retire requests faster than it admits them: the
running batch then settles where the two balance (``running_batch``), below ``batch``. A step whose
arrivals exceed the budget carries the rest over to the next steps, which then take it instead of
running lighter: the mixture keeps the mean prefill tokens per step equal to the arrivals' (no
prompt token goes unpriced).

Data-parallel replicas are separate engines: each steps on its own ``batch / dp`` sequences with
its own arrivals, token budget and host, so a plan's steps are one replica's. A MoE model's
replicas step together (its expert layers span them): a step lasts as long as the busiest
replica's (``lockstep_weights``) and the others wait for it.

Mean time and energy per step are the Poisson-weighted mixture over ``n`` (a step is not linear
in its prefill tokens: a MoE step's distinct experts saturate), giving throughput, power and
energy per output token with prefill included. The median inter-token latency is the step carrying
``max(0, lam - ln 2) * prefill_len`` prefill tokens: ``lam - ln 2`` is the lower bound of the
Poisson median (Choi 1994) used as its continuous version, so pure decode steps set the median
while new requests are rare (``lam < ln 2``) and the prefill share grows smoothly after that
(prefix-cache hits and bursty admission keep real medians at the low side of the integer median).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from energylens.costmodel.analysis import PricedOp, is_attention_op, price_graph
from energylens.costmodel.compute import WORK_FIELDS, OpWork
from energylens.costmodel.hardware import GPUSpec
from energylens.costmodel.plan import state_bytes
from energylens.costmodel.profile import Profile
from energylens.ir.core import Graph
from energylens.typing import ServingEstimate, Workload

__all__ = ["MAX_NUM_BATCHED_TOKENS", "MAX_MIXTURE_ENTRIES", "GPU_MEMORY_UTILIZATION", "kv_capacity_tokens", "serving_context_len", "poisson_quantile", "poisson_median", "prefill_mixture", "running_batch", "served_share", "lockstep_weights", "step_ops", "serving_estimate", "StepCost", "step_cost", "step_time_s"]

#: Token budget per step with chunked prefill: the ML.ENERGY runs' (vLLM's API-server default on
#: H100/H200; 0.33 defaults to 16384 on B200 and 2048 on smaller GPUs, so the vLLM export sets it).
MAX_NUM_BATCHED_TOKENS = 8192
#: vLLM's default ``gpu_memory_utilization``: the share of HBM for weights, activations and KV cache.
GPU_MEMORY_UTILIZATION = 0.9


def kv_capacity_tokens(decode: Graph, gpu: GPUSpec, gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION) -> float:
    """KV-cache tokens the plan's GPUs hold together next to their weights, each GPU filling
    ``gpu_memory_utilization`` of its HBM as vLLM sizes its cache (inf for a graph without a cache).

    ``decode`` is a planned graph (``plan.plan_graph``; a traced one is one GPU): each GPU holds its
    own weights (dense ones replicated over dp, experts spread over ep) and the KV of its replica's
    sequences at its share of the KV heads (replicated where tp exceeds them), as the memory
    estimate counts them (``plan.plan_memory``).
    """
    weights, per_token = state_bytes(decode, decode.bind(B=1, S=1, K=1))  # one token, spread over dp
    if per_token <= 0:
        return math.inf
    return max(gpu.hbm_capacity_bytes * gpu_memory_utilization - weights, 0.0) / per_token


def serving_context_len(workload: Workload, kv_capacity: float = math.inf) -> float:
    """Mean KV length per sequence of a steady-state step: the length-biased mean
    (``Workload.serving_context_len``), capped so that ``batch`` sequences fit in ``kv_capacity``."""
    return float(min(workload.serving_context_len, kv_capacity / workload.batch))


def poisson_quantile(lam: float, q: float) -> int:
    """The smallest ``n`` with ``P(N <= n) >= q`` for ``N`` Poisson with mean ``lam``. Terms in log
    space from ``lam - 8 sqrt(lam)`` (the mass below is < 1e-14), as ``prefill_mixture`` takes them.

    >>> poisson_quantile(0.1, 0.5 ** (1 / 8)), poisson_quantile(0.0, 0.9)
    (1, 0)
    """
    if lam <= 0:
        return 0
    n = max(0, math.floor(lam - 8 * math.sqrt(lam)))
    cdf = 0.0
    while True:
        cdf += math.exp(n * math.log(lam) - lam - math.lgamma(n + 1))
        if cdf >= q:
            return n
        n += 1


def poisson_median(lam: float) -> int:
    """Median of a Poisson count with mean ``lam`` (0 for lam < ln 2)."""
    return poisson_quantile(lam, 0.5)


#: Most entries of ``prefill_mixture``: each is priced once, so many new prompts per step (short
#: outputs) merge neighbouring counts into groups of equal probability.
MAX_MIXTURE_ENTRIES = 16


def running_batch(workload: Workload, replicas: int = 1,
                  max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS, kv_capacity: float = math.inf) -> int:
    """Sequences that run in steady state, over all ``replicas``: ``batch``, unless new prompts cannot
    be prefilled as fast as requests finish, or their KV does not fit. vLLM schedules the running
    decodes first and prefills waiting requests with what the token budget leaves: a replica of
    ``b`` sequences retires ``b / output_len`` requests a step and has ``budget - b`` tokens for
    their successors' ``prefill_len`` each, so above ``budget * output_len / (output_len +
    prefill_len)`` sequences the batch cannot stay full and settles there (every step then fills
    the budget). And a running sequence's KV stays until it finishes, so no more run than
    ``kv_capacity`` (tokens over the plan's GPUs, ``kv_capacity_tokens``) holds at the mean
    context of the running batch (``Workload.serving_context_len``): vLLM preempts the others.

    >>> running_batch(Workload(batch=128, prompt_len=2048, output_len=16, output_len_cv=0))
    63
    >>> running_batch(Workload(batch=64, prompt_len=1024, output_len=256))
    64
    """
    cap = min(max_num_batched_tokens * workload.output_len / (workload.output_len + workload.prefill_len),
              kv_capacity / replicas / workload.serving_context_len)
    if workload.batch / replicas <= cap:
        return workload.batch
    return replicas * max(1, math.floor(cap))


def served_share(workload: Workload, replicas: int = 1,
                 max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS) -> float:
    """Share of the running sequences that produce a token each step: 1, unless even one sequence
    cannot be kept running (a prompt longer than the token budget with very short outputs,
    ``running_batch`` of 1 per replica): the budget then prefills only part of what the finishing
    requests need, and a replica's one slot yields ``(budget - 1) output_len / prefill_len``
    tokens per step.

    >>> served_share(Workload(batch=1, prompt_len=16384, output_len=1, output_len_cv=0))
    0.4999389648437...
    """
    batch = workload.batch / replicas
    need = batch * workload.prefill_len / workload.output_len
    return min(1.0, max(0.0, max_num_batched_tokens - batch) / need) if need > 0 else 1.0


def prefill_mixture(workload: Workload, max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
                    coverage: float = 0.999, replicas: int = 1) -> list[tuple[float, float]]:
    """(probability, prefill tokens) of the steps of steady-state serving: ``n`` new prompts per
    step, ``n`` Poisson with mean ``lam = batch / output_len``, their tokens capped by the step's
    token budget. With ``replicas`` data-parallel replicas each serves ``batch / replicas``
    sequences and schedules its own steps (its own arrivals and token budget): the mixture is one
    replica's, and the tokens are given over all replicas (``replicas`` x one replica's), as the
    planned graphs take them. Every count whose prompts fill the budget is one entry; the tail beyond
    ``coverage`` is one entry at its mean count (so the mixture's mean is exact), and neither is
    merged with others. The prompt tokens the budget cuts from full steps are carried over to the
    lightest steps (``_carry_over``), so the mean is the arrivals' here too. The Poisson terms are taken in log space from ``lam - 8 sqrt(lam)``
    (the mass below is < 1e-14), so a large ``lam`` (many short requests) neither underflows nor
    needs a term per count from 0.

    >>> [(round(w, 3), t) for w, t in prefill_mixture(Workload(batch=2, prompt_len=4000, output_len=1))]
    [(0.033, 4000.0), (0.271, 8000.0), (0.696, 8190.0)]
    """
    batch = workload.batch / replicas
    lam = batch / workload.output_len
    budget = max(0.0, max_num_batched_tokens - batch)
    new = workload.prefill_len  # tokens each new prompt computes (the rest hit the prefix cache)
    n_full = math.ceil(budget / new)  # from n_full prompts on, a step is full
    out, cdf, mean = [], 0.0, 0.0
    n = max(0, math.floor(lam - 8 * math.sqrt(lam)))
    while n < n_full and cdf < coverage:
        p = math.exp(n * math.log(lam) - lam - math.lgamma(n + 1))
        out.append((p, float(n * new) * replicas))
        cdf, mean = cdf + p, mean + p * n
        n += 1
    tail = max(0.0, 1.0 - cdf)
    if n >= n_full:  # every larger count fills the budget
        last = [(tail, float(budget) * replicas)]
    else:  # the counts beyond ``coverage``: one step at their mean count (E[N | N >= n])
        count = max(float(n), (lam - mean) / tail) if tail > 0 else float(n)
        last = [(tail, min(count * new, budget) * replicas)]
    if n >= n_full:
        out, last = _carry_over(out, last[0], lam * new * replicas)
    out = [(w, t) for w, t in out if w > 0]
    last = [(w, t) for w, t in last if w > 0]
    if len(out) + len(last) <= MAX_MIXTURE_ENTRIES:
        return out + last
    # many new prompts per step (short outputs): merge neighbouring counts into groups of about equal
    # probability, each at its mean token count (the mean is kept; each entry costs one pricing)
    groups: list[tuple[float, float]] = []
    cum = w_acc = wt_acc = 0.0
    n_groups, mass = MAX_MIXTURE_ENTRIES - len(last), sum(w for w, _ in out)
    for w, t in out:
        cum, w_acc, wt_acc = cum + w, w_acc + w, wt_acc + w * t
        if cum >= (len(groups) + 1) / n_groups * mass * (1 - 1e-12):
            groups.append((w_acc, wt_acc / w_acc))
            w_acc = wt_acc = 0.0
    if w_acc > 0:
        groups.append((w_acc, wt_acc / w_acc))
    return groups + last


def _carry_over(entries: list[tuple[float, float]], full: tuple[float, float],
                arrivals: float) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(``entries``, [``full``]) with the prompt tokens the budget cut from the full steps carried
    over: the backlog fills the lightest steps (``entries`` are lightest first) up to the budget,
    their weight moving to ``full``, until the mean is ``arrivals`` tokens per step (the arrivals
    never exceed the budget at the ``running_batch``)."""
    w_full, t_full = full
    deficit = arrivals - sum(w * t for w, t in entries) - w_full * t_full
    out = list(entries)
    for i, (w, t) in enumerate(out):
        if deficit <= 1e-9 * arrivals:
            break
        move = min(w, deficit / (t_full - t))
        out[i], w_full = (w - move, t), w_full + move
        deficit -= move * (t_full - t)
    return out, [(w_full, t_full)]


def prefill_tokens_per_step(workload: Workload, median: bool = False,
                            max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS, replicas: int = 1,
                            lockstep: bool = False,
                            mixture: Sequence[tuple[float, float]] | None = None) -> float:
    """Prefill tokens of a mean (or the median) step, over all ``replicas`` (see ``prefill_mixture``).

    The median step of one replica carries ``max(0, lam - ln 2)`` new prompts, the continuous lower
    bound of the Poisson median. ``lockstep`` (replicas of a MoE model, which vLLM steps together):
    the median step is the busiest replica's, the median of the largest of ``replicas`` Poisson
    counts, the smallest ``n`` with ``P(N <= n) ** replicas >= 1/2``. Where at least half the steps
    (of the busiest replica) fill the token budget, counting the prompts carried over from earlier
    full steps (``prefill_mixture``; pass it as ``mixture`` where it is at hand), the median step is
    a full one."""
    batch = workload.batch / replicas
    lam = batch / workload.output_len
    budget = max(0.0, max_num_batched_tokens - batch)
    if not median:
        n = lam
    else:
        if mixture is None:  # tokens x replicas
            mixture = prefill_mixture(workload, max_num_batched_tokens, replicas=replicas)
        full = sum(w for w, t in mixture if t >= budget * replicas)
        if 1 - (1 - min(full, 1.0)) ** (replicas if lockstep else 1) >= 0.5:
            return budget * replicas
        n = float(poisson_quantile(lam, 0.5 ** (1 / replicas))) if lockstep and replicas > 1 else max(0.0, lam - math.log(2))
    return float(min(n * workload.prefill_len, budget)) * replicas


def lockstep_weights(mixture: Sequence[tuple[float, float]], replicas: int) -> list[float]:
    """Weights of ``mixture``'s entries (one replica's, ascending in tokens) as the busiest of
    ``replicas`` replicas stepping together: ``C_j ** replicas - C_(j-1) ** replicas``.

    >>> [round(w, 3) for w in lockstep_weights([(0.5, 0.0), (0.5, 100.0)], 2)]
    [0.25, 0.75]
    """
    out, prev, cum = [], 0.0, 0.0
    for w, _ in mixture:
        cum += w
        out.append(min(cum, 1.0) ** replicas - prev)
        prev = min(cum, 1.0) ** replicas
    return out


def step_ops(prefill: Graph, decode: Graph, batch: float, context_len: float, prompt_len: float,
             prefill_tokens: float, gpu: GPUSpec, profile: Profile,
             price: Callable[..., list[PricedOp]] = price_graph, prefill_len: float | None = None) -> list[PricedOp]:
    """The ops of one mixed step (see the module docstring), each priced once per execution.

    ``prefill_len``: tokens each new prompt computes (``Workload.prefill_len``; None: all
    ``prompt_len``); they are its last ones, attending causally to the whole prompt.

    ``price``: how a graph is priced (``price_graph``, or a multi-GPU plan's
    ``energylens.costmodel.plan.PlanPricer``, whose costs are per GPU).
    """
    tokens = batch + prefill_tokens
    ops = price(decode, {"B": batch, "S": tokens / batch, "K": context_len}, gpu, profile,
                      select=lambda op: not is_attention_op(op))
    ops += price(decode, {"B": batch, "S": 1, "K": context_len}, gpu, profile, select=is_attention_op)
    if prefill_tokens > 0:
        new = prompt_len if prefill_len is None else prefill_len
        ops += price(prefill, {"B": prefill_tokens / new, "S": new, "K": prompt_len},
                     gpu, profile, select=is_attention_op)
    return ops


@dataclass(frozen=True)
class StepCost:
    time_s: float
    energy_j: float
    static_j: float
    flops: float
    hbm_bytes: float


def step_time_s(gpu_s: Any, batch: Any, profile: Profile) -> Any:
    """Time of a step whose kernels take ``gpu_s``: the fixed step overhead plus the GPU time
    combined with the per-sequence host time ``seq_overhead_s x batch`` as
    ``(gpu^p + host^p)^(1/p)`` (``p = host_overlap_p``; see the module docstring). Arrays welcome.

    >>> from energylens.costmodel.profile import default_profile
    >>> from energylens.costmodel.hardware import get_gpu
    >>> prof = default_profile(get_gpu("H100")).with_params(step_overhead_s=0.0, seq_overhead_s=1e-4)
    >>> round(step_time_s(0.01, 100, prof), 6)  # in series: 10 ms + 100 x 0.1 ms
    0.02
    >>> round(step_time_s(0.01, 100, prof.with_params(host_overlap_p=50.0)), 4)  # overlapped: ~max
    0.0101
    """
    p = float(getattr(profile, "host_overlap_p", 1.0))
    host = profile.seq_overhead_s * np.asarray(batch, dtype=float)
    gpu = np.asarray(gpu_s, dtype=float)
    if p == 1.0:
        busy = gpu + host
    else:
        m = np.maximum(np.maximum(gpu, host), 1e-30)
        busy = m * ((gpu / m) ** p + (host / m) ** p) ** (1.0 / p)
    out = busy + profile.step_overhead_s
    return float(out) if out.shape == () else out


def step_cost(ops: Sequence[PricedOp], batch: float, profile: Profile) -> StepCost:
    """Totals of one step: the ops combined with the host overheads (``step_time_s``). While the
    GPU waits on the host no kernel runs: it draws ``profile.overhead_power_w`` (idle with clocks
    up), not its busy static power, so a host-bound step draws little more than idle."""
    gpu_s = sum(p.count * p.cost.time_s for p in ops)
    t = step_time_s(gpu_s, batch, profile)
    static = sum(p.count * p.cost.static_j for p in ops) + profile.overhead_power_w * (t - gpu_s)
    dyn = sum(p.count * (p.cost.flop_j + p.cost.byte_j) for p in ops)
    return StepCost(time_s=t, energy_j=static + dyn, static_j=static,
                    flops=sum(p.count * p.cost.flops for p in ops),
                    hbm_bytes=sum(p.count * p.cost.hbm_bytes for p in ops))


def serving_estimate(prefill: Graph, decode: Graph, workload: Workload, gpu: GPUSpec, profile: Profile,
                     num_gpus: int = 1, price: Callable[..., list[PricedOp]] = price_graph,
                     replicas: int = 1, lockstep: bool = False, hold_batch: bool = False) -> ServingEstimate:
    """Median ITL, power and energy per output token of steady-state continuous batching.

    ``num_gpus``: GPUs of the plan; with a multi-GPU plan, ``price`` is its ``PlanPricer`` (costs
    per GPU, so totals are per-GPU sums x ``num_gpus``) and the graphs are the planned ones.
    ``replicas``: the plan's data-parallel replicas, each scheduling its own steps (``prefill_mixture``).
    ``lockstep``: the replicas step together (a MoE model's, whose expert layers span them): a step
    lasts as long as the busiest replica's (``lockstep_weights``), and the others wait at the power
    drawn during host overheads. The sequences that run are ``running_batch``'s (``batch`` unless
    prefill cannot keep it full or the KV cache cannot hold it); ``ServingEstimate.batch`` is that
    number. ``hold_batch``: ``batch`` is a measured running batch (a run that held it, e.g. with
    prefix caching sharing KV blocks): it is not cut to the KV capacity; the mean KV length is
    capped at the capacity instead (``serving_context_len``), unless the weights leave none.
    """
    kv_cap = kv_capacity_tokens(decode, gpu)
    prefill_bound = running_batch(workload, replicas)
    running = prefill_bound if hold_batch else running_batch(workload, replicas, kv_capacity=kv_cap)
    kv_limited = running < prefill_bound
    workload = dataclasses.replace(workload, batch=running)
    share = served_share(workload, replicas)
    # weights that leave no room for a cache (a held batch priced past the memory check): no capacity
    # to cap at, so the workload's own context (a cap of 0 tokens would price no KV traffic at all)
    ctx = serving_context_len(workload, kv_cap if kv_cap > 0 else math.inf)

    def cost(p: float) -> StepCost:
        ops = step_ops(prefill, decode, workload.batch, ctx, workload.prompt_len, p, gpu, profile, price,
                       prefill_len=workload.prefill_len)
        return step_cost(ops, workload.batch / replicas, profile)  # each replica's host serves its share

    mixture = prefill_mixture(workload, replicas=replicas)
    mix = [(w, cost(p)) for w, p in mixture]
    mean_t, wait_j = sum(w * c.time_s for w, c in mix), 0.0
    if lockstep and replicas > 1:  # a step lasts the busiest replica's; the others wait for it
        busiest_t = sum(w * c.time_s for w, (_, c) in zip(lockstep_weights(mixture, replicas), mix, strict=True))
        mean_t, wait_j = busiest_t, profile.overhead_power_w * (busiest_t - mean_t)
    mean_e = sum(w * c.energy_j for w, c in mix) + wait_j
    mean_static = sum(w * c.static_j for w, c in mix) + wait_j
    p_med = prefill_tokens_per_step(workload, median=True, replicas=replicas, lockstep=lockstep, mixture=mixture)
    return ServingEstimate(
        batch=workload.batch, prompt_len=workload.prompt_len, output_len=workload.output_len,
        prefill_tokens_per_step=sum(w * p for w, p in mixture),
        median_prefill_tokens_per_step=p_med,
        median_itl_s=cost(p_med).time_s, mean_step_s=mean_t,
        avg_power_w=mean_e / mean_t * num_gpus,
        energy_per_output_token_j=mean_e * num_gpus / (workload.batch * share),
        static_j_per_output_token=mean_static * num_gpus / (workload.batch * share), served_share=share,
        kv_limited=kv_limited,
    )


def stack_works(works: Sequence[OpWork]) -> OpWork:
    """One OpWork whose fields are arrays over ``works`` (for vectorised pricing in the fit)."""
    return OpWork(**{f: np.array([float(getattr(w, f)) for w in works]) for f in WORK_FIELDS})


