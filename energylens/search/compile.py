"""``compile``: search the plan space of a model on a cluster and pick the plan with least energy.

The space is every structural variant ``(tp, ep, dp, fused)`` that can run the model on up to
the cluster's GPUs (``tp x dp <= num_gpus``; ``dp`` any size up to 8, then powers of two and
``num_gpus // tp``; ``ep`` 1 or ``tp x dp``, the expert-parallel sizes vLLM runs), times the knobs
priced as arrays (``evaluate.py``): batch size (concurrent sequences, up to the workload's batch;
vLLM's ``max_num_seqs`` per replica is ``batch / dp``), GPU clock, and the SMs given to overlapped
communication (``None``: no overlap). Plans that do not fit in 90% of GPU memory are dropped. Every
plan is priced as ``energylens.estimate`` would price it. A plan that leaves GPUs unused does not
count them: they are free for other work, so the least-energy plan is often the fewest GPUs that
meet the SLO.

Among the plans that meet the SLO (median ITL of steady-state serving, and TTFT = prefill of the
whole batch), ``objective="energy"`` picks the least energy per output token (prefill included),
``"latency"`` the least ITL; ties (to 1 ppm) go to the other metric, then to the larger running
batch (``costmodel.serving.running_batch``), then to the smaller ``max_num_seqs``. The Pareto
frontiers (energy per token vs ITL; prefill energy per token vs TTFT) are over all fitting plans.

>>> import energylens as el
>>> plan = el.compile("meta-llama/Llama-3.1-70B-Instruct", el.Cluster("H100-SXM", num_gpus=8),
...                   workload=el.Workload(batch=64, prompt_len=1024, output_len=256),
...                   slo=el.SLO(itl_ms=40))                     # doctest: +SKIP
>>> plan.parallel, plan.to_vllm()["tensor_parallel_size"]      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import io
import numbers
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from energylens.costmodel.clock import ClockModel, search_clocks
from energylens.costmodel.hardware import GPUSpec, get_gpu
from energylens.costmodel.memory import kv_bytes_per_token, usable_bytes, weight_split
from energylens.costmodel.profile import Profile, load_profile
from energylens.costmodel.serving import GPU_MEMORY_UTILIZATION
from energylens.errors import (
    DoesNotFitError,
    EnergylensError,
    InvalidWorkloadError,
    ShardingError,
)
from energylens.export.plan import QUANTIZATIONS
from energylens.passes.shard import check_parallel, valid_ep_values, valid_tp_values
from energylens.search.evaluate import (
    Knobs,
    Variant,
    VariantPrices,
    price_variant,
)
from energylens.search.pareto import pareto_mask
from energylens.typing import SLO, Cluster, Estimate, Parallel, PlanGraphs, Record, Workload, expect_type

__all__ = ["compile", "Plan", "PlanPoint", "Pareto", "SearchSpace", "InfeasibleSLOError",
           "DEFAULT_COMM_SMS", "DEFAULT_NUM_CLOCKS", "search"]

#: Share of the modelled KV-cache tokens an exported ``--max-model-len`` may claim, and vLLM's KV block.
KV_HEADROOM, KV_BLOCK_TOKENS = 0.9, 16
#: SM counts offered to overlapped communication (None: collectives in series, NCCL default).
DEFAULT_COMM_SMS: tuple[int | None, ...] = (None, 8, 16, 32)
#: Clocks searched, from half the maximum boost clock to the maximum (``ClockModel.grid``; None:
#: every 15 MHz step, the granularity of ``nvidia-smi -lgc``).
DEFAULT_NUM_CLOCKS: int | None = None

Objective = Literal["energy", "latency"]


class InfeasibleSLOError(EnergylensError):
    """No plan meets the SLO; the message names the best achievable ITL / TTFT."""


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class PlanPoint(Record):
    """One searched plan and its metrics (energies per token over all GPUs; times in seconds)."""

    tp: int
    ep: int
    dp: int
    fused: bool
    batch: int
    comm_sms: int | None
    clock_mhz: int
    itl_s: float
    ttft_s: float
    energy_per_token_j: float
    prefill_energy_per_token_j: float
    power_w: float
    memory_bytes: float


@dataclass(frozen=True)
class Pareto(Record):
    """A Pareto frontier: ``rows`` sorted by the latency ``x`` (``itl_s`` or ``ttft_s``)."""

    x: str
    y: str
    rows: tuple[PlanPoint, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PlanPoint]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> PlanPoint:
        return self.rows[i]


_METRICS = ("itl_s", "ttft_s", "energy_per_token_j", "prefill_energy_per_token_j", "power_w", "memory_bytes")
#: columns of a SearchSpace: the knobs, "running" (the sequences serving runs of the batch:
#: ``costmodel.serving.running_batch``) and the metrics of PlanPoint
_COLS = ("tp", "ep", "dp", "fused", "batch", "running", "comm_sms", "clock_mhz", *_METRICS)


@dataclass(frozen=True)
class SearchSpace:
    """Every fitting plan that was priced, as columns (numpy arrays, one entry per plan)."""

    cols: dict[str, np.ndarray]
    plans_evaluated: int
    variants: int
    search_s: float
    #: the least memory per GPU of any plan tried (fitting or not): what the smallest plan needs
    least_memory_bytes: float = float("inf")

    def __len__(self) -> int:
        return len(self.cols["itl_s"])

    def point(self, i: int) -> PlanPoint:
        c = self.cols
        sms = int(c["comm_sms"][i])
        return PlanPoint(tp=int(c["tp"][i]), ep=int(c["ep"][i]), dp=int(c["dp"][i]), fused=bool(c["fused"][i]),
                         batch=int(c["batch"][i]), comm_sms=None if sms == 0 else sms,
                         clock_mhz=int(c["clock_mhz"][i]),
                         **{k: float(c[k][i]) for k in _METRICS})

    def frontier(self, x: str, y: str) -> Pareto:
        m = np.flatnonzero(pareto_mask(self.cols[x], self.cols[y]))
        m = m[np.argsort(self.cols[x][m], kind="stable")]
        return Pareto(x=x, y=y, rows=tuple(self.point(int(i)) for i in m))


@dataclass(frozen=True)
class Plan(Record):
    """The chosen plan, its estimate, rewritten IR and the searched frontiers.

    ``batch`` is the number of sequences served concurrently by the whole plan (each of the ``dp``
    replicas runs ``max_num_seqs = batch / dp``); ``clock_mhz`` the locked GPU clock
    (``gpu_clock_mhz`` is None at the default, maximum clock); ``comm_sms`` the SMs given to
    overlapped communication (None: no overlap). ``estimate`` is ``energylens.estimate`` of exactly
    this plan; ``graph`` the rewritten IR (``print(plan.graph)``); ``pareto`` the energy-per-token
    vs ITL frontier and ``prefill_pareto`` the prefill energy per token vs TTFT one.
    """

    _derived: ClassVar[tuple[str, ...]] = ("max_num_seqs", "max_model_len", "kv_cache_tokens", "gpu_clock_mhz")

    model: str
    gpu: str
    num_gpus: int
    workload: Workload
    slo: SLO
    objective: str
    parallel: Parallel
    batch: int
    fused: bool
    comm_sms: int | None
    clock_mhz: int
    estimate: Estimate = field(repr=False)
    graph: PlanGraphs = field(repr=False)
    pareto: Pareto = field(repr=False)
    prefill_pareto: Pareto = field(repr=False)
    plans_evaluated: int = 0
    search_s: float = 0.0
    quantization: str | None = None
    sequence_parallel: bool = False
    space: SearchSpace | None = field(default=None, repr=False, compare=False)
    #: GPUs of the cluster searched (``num_gpus`` is what the plan uses; None: the same).
    cluster_gpus: int | None = None
    #: the model's maximum context in tokens (None: its config does not say)
    max_context: int | None = None
    #: the traced model the plan was priced on (its exports check against it, whatever ``model`` names)
    traced: Any = field(default=None, repr=False, compare=False)

    # -- what exporters read (energylens.export.PlanLike) ---------------------------------------
    @property
    def clock(self) -> int:
        return self.clock_mhz

    @property
    def max_num_seqs(self) -> int:
        return self.batch // self.parallel.dp

    @property
    def max_model_len(self) -> int:
        """The longest request (prompt + output tokens) vLLM is told to accept. With a fixed output
        length (``output_len_cv=0``) that is ``prompt_len + output_len``. When outputs vary, a request
        may run far past the mean, and a limit at the mean would cut it short (or make vLLM refuse
        it): the limit is then what vLLM itself takes by default, the model's maximum context, capped
        by what one replica's KV cache holds (vLLM refuses to start otherwise). A model whose config
        gives no maximum context (a module outside the traced families) keeps the workload's length."""
        wl = self.workload
        need = wl.prompt_len + wl.output_len
        if wl.output_len_cv == 0 or self.max_context is None:
            return need
        # headroom for what vLLM takes that the memory model does not count (CUDA graphs, NCCL
        # buffers), on vLLM's 16-token blocks; the search keeps only plans that hold ``need``
        room = KV_BLOCK_TOKENS * int(KV_HEADROOM * self.kv_cache_tokens // KV_BLOCK_TOKENS)
        return max(need, min(self.max_context, room))

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens one replica's KV cache holds: the memory left per GPU by weights and activations
        over the KV bytes per token per GPU (each GPU holds its share of every token)."""
        mem = self.estimate.memory
        per_token = kv_bytes_per_token(mem.kv_cache_bytes, self.batch, self.parallel.dp, self.workload)
        room = mem.capacity_bytes - mem.weights_bytes - mem.activation_bytes
        return int(room / per_token) if per_token > 0 else 2**31 - 1

    @property
    def gpu_clock_mhz(self) -> int | None:
        return ClockModel.of(get_gpu(self.gpu)).lock(self.clock_mhz)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("space", None)
        out.pop("traced", None)
        out["spec"] = self.to_spec().to_dict()  # what `energylens export` reads back
        return out

    def to_spec(self) -> Any:
        """The exporters' ``PlanSpec`` of this plan."""
        from energylens.export import PlanSpec

        return PlanSpec(model=self.model, gpu=self.gpu, num_gpus=self.num_gpus, parallel=self.parallel,
                        max_num_seqs=self.max_num_seqs, max_model_len=self.max_model_len, fused=self.fused,
                        comm_sms=self.comm_sms, gpu_clock_mhz=self.gpu_clock_mhz,
                        quantization=self.quantization, sequence_parallel=self.sequence_parallel,
                        moe=self.graph is not None and self.graph.decode.has_experts,
                        kv_cache_tokens=self.kv_cache_tokens,
                        request_len=self.workload.prompt_len + self.workload.output_len, config=self.traced)

    def to_vllm(self, cli: bool = False) -> Any:
        """vLLM engine arguments (``cli=True``: the ``vllm serve ...`` command line)."""
        from energylens.export import to_vllm

        return to_vllm(self.to_spec(), cli=cli)  # type: ignore[call-overload]

    def to_megatron(self) -> dict[str, Any]:
        """Megatron-Core ``TransformerConfig`` fields."""
        from energylens.export import to_megatron

        return to_megatron(self.to_spec())

    # -- reports --------------------------------------------------------------------------------
    def report(self, file: Any = None, top: int = 10) -> Report:
        """The chosen plan, a per-phase summary and the top ops by energy, as text that shows as
        itself at the prompt (``print(plan.report())`` in a script); written to ``file`` if given."""
        from rich.console import Console

        from energylens.search.report import render

        if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 0:
            raise InvalidWorkloadError(f"top must be a whole number of ops >= 0, got {top!r}")
        buf = io.StringIO()
        con = Console(file=buf, width=140, record=False, force_terminal=False)
        render(self, con, top=top)
        text = Report(buf.getvalue())
        if file is not None:
            print(text, end="", file=file)
        return text

    def plot(self, path: str | Path) -> Path:
        """Save a Pareto plot (energy per token vs ITL, prefill energy vs TTFT) to ``path`` (PNG, SVG...)."""
        from energylens.search.report import plot

        return plot(self, Path(path))


class Report(str):
    """``Plan.report``'s text; at the prompt it shows as the table, not as a quoted string."""

    def __repr__(self) -> str:
        return str(self).rstrip("\n")


# ---------------------------------------------------------------------------------------------
# Enumeration


def _batch_grid(batch: int, dp: int) -> tuple[int, ...]:
    """Concurrent sequences searched: multiples of ``dp`` up to ``batch``. Per replica: every size
    up to 16, then 8 per octave (step 2 up to 32, 4 up to 64, ...), and the largest.

    >>> _batch_grid(64, 2)
    (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 40, 44, 48, 52, 56, 60, 64)
    """
    cap = batch // dp
    if cap < 1:
        return ()
    per, b = set(), 1
    while b <= cap:
        per.add(b)
        b += max(1, 1 << max(0, b.bit_length() - 4)) if b >= 16 else 1
    return tuple(sorted(x * dp for x in per | {cap}))


def _dp_values(most: int) -> list[int]:
    """Data-parallel sizes searched up to ``most`` replicas: every size up to 8 (so a larger
    cluster's space holds a smaller one's), then powers of two and ``most`` itself.

    >>> _dp_values(6), _dp_values(24)
    ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 16, 24])
    """
    return sorted({*range(1, min(most, 8) + 1), *(1 << k for k in range(most.bit_length())), most})


def variants(traced: Any, num_gpus: int) -> list[Variant]:
    """The structural variants of ``traced`` on up to ``num_gpus`` GPUs (see the module docstring)."""
    dec = traced.decode
    moe = dec.has_experts
    out = []
    for tp in valid_tp_values(dec, up_to=num_gpus):
        for dp in _dp_values(num_gpus // tp):
            eps = sorted({1, tp * dp} & set(valid_ep_values(dec, tp * dp))) if moe else [1]
            for ep in eps:
                par = Parallel(tp=tp, ep=ep, dp=dp)
                try:
                    check_parallel(dec, par, num_gpus=num_gpus)
                except ShardingError:
                    continue
                out.extend(Variant(par, fused, traced.prefill, dec) for fused in (False, True))
    return out


def _quantization(traced: Any) -> str | None:
    """The checkpoint's weight format as the trace recorded it, whatever form the model was given in."""
    q = traced.decode.attr.get("quantization")
    return q if q in QUANTIZATIONS else None


def search(traced: Any, gpu: GPUSpec, num_gpus: int, workload: Workload, profile: Profile, interconnect: str,
           *, comm_sms: Sequence[int | None] = DEFAULT_COMM_SMS, num_clocks: int | None = DEFAULT_NUM_CLOCKS,
           clocks_mhz: Sequence[int] | None = None) -> SearchSpace:
    """Price the whole plan space; return every plan that fits in memory, as columns."""
    t0 = time.perf_counter()
    _check_comm_sms(comm_sms, gpu)
    clocks = search_clocks(num_clocks, clocks_mhz, gpu)
    sms = tuple(None if k is None else int(k) for k in comm_sms)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in _COLS}
    n_plans = 0
    vs = variants(traced, num_gpus)
    # per GPU a plan holds at least dense / tp + experts / (tp x dp) (experts spread over all its GPUs,
    # ep being 1 or tp x dp): variants whose weights alone overflow are skipped before any rewriting
    dense_w, expert_w = weight_split(traced.decode)
    room = usable_bytes(gpu)
    least = float("inf")
    for v in vs:
        batches = _batch_grid(workload.batch, v.parallel.dp)
        p = v.parallel
        weights = dense_w / p.tp + expert_w / (p.tp * p.dp)
        if not batches or weights > room:  # its weights alone do not fit
            least = min(least, weights)
            continue
        r: VariantPrices = price_variant(v, Knobs(batches, clocks, sms if v.has_tp_comm else (None,)),
                                         workload, gpu, profile, interconnect)
        least = min(least, float(np.min(r.required_bytes)))
        ok = r.valid
        n_plans += int(ok.sum())
        bi, fi, ki = np.nonzero(ok)
        if not len(bi):
            continue
        p = v.parallel
        cols["tp"].append(np.full(len(bi), p.tp))
        cols["ep"].append(np.full(len(bi), p.ep))
        cols["dp"].append(np.full(len(bi), p.dp))
        cols["fused"].append(np.full(len(bi), v.fused))
        cols["batch"].append(np.asarray(batches)[bi])
        cols["running"].append(np.asarray(r.extras["running"])[bi])  # what serving runs of each batch
        cols["comm_sms"].append(np.array([k or 0 for k in r.knobs.comm_sms])[ki])
        cols["clock_mhz"].append(np.asarray(clocks)[fi])
        for name, arr in (("itl_s", r.itl_s), ("ttft_s", r.ttft_s), ("energy_per_token_j", r.energy_per_token_j),
                          ("prefill_energy_per_token_j", r.prefill_energy_per_token_j), ("power_w", r.power_w)):
            cols[name].append(arr[bi, fi, ki])
        cols["memory_bytes"].append(r.memory_bytes[bi])
    flat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    return SearchSpace(flat, n_plans, len(vs), time.perf_counter() - t0, least)


# ---------------------------------------------------------------------------------------------
# compile


def _choose(space: SearchSpace, slo: SLO, objective: str) -> int:
    c = space.cols
    ok = np.ones(len(space), dtype=bool)
    if slo.itl_ms is not None:
        ok &= c["itl_s"] * 1e3 <= slo.itl_ms
    if slo.ttft_ms is not None:
        ok &= c["ttft_s"] * 1e3 <= slo.ttft_ms
    if not ok.any():
        targets = (("itl_ms", slo.itl_ms), ("ttft_ms", slo.ttft_ms))
        best_itl = float(c["itl_s"].min()) * 1e3
        best_ttft = float(c["ttft_s"].min()) * 1e3
        both = ""
        if slo.itl_ms is not None and slo.ttft_ms is not None:
            itl_ok = c["itl_s"] * 1e3 <= slo.itl_ms
            if itl_ok.any():
                both = f"; among plans meeting the ITL target the best TTFT is {c['ttft_s'][itl_ok].min() * 1e3:.1f} ms"
        raise InfeasibleSLOError(
            f"no plan meets the SLO ({', '.join(f'{k}={v:g}' for k, v in targets if v is not None)}): the best achievable ITL is "
            f"{best_itl:.2f} ms and the best TTFT {best_ttft:.1f} ms over {space.plans_evaluated} plans{both}. "
            "Relax the SLO, use more or faster GPUs, or a shorter prompt (every batch size down to 1 was searched)")
    idx = np.flatnonzero(ok)
    primary, secondary = (("energy_per_token_j", "itl_s") if objective == "energy"
                          else ("itl_s", "energy_per_token_j"))
    # plans within 1 ppm of the best (dp replicas price alike up to rounding) are tied: the other
    # metric decides (again to 1 ppm), then the larger running batch (more of the workload at the
    # same cost), then the smaller max_num_seqs (above the running batch, prefill cannot fill it)
    x = c[primary][idx]
    idx = idx[x <= x.min() * (1 + 1e-6)]
    y = c[secondary][idx]
    idx = idx[y <= y.min() * (1 + 1e-6)]
    batch, running = c["batch"][idx], c["running"][idx]
    idx, batch = idx[running == running.max()], batch[running == running.max()]
    return int(idx[np.argmin(batch)])


def compile(model: Any, cluster: Cluster, workload: Workload | None = None, *, objective: Objective = "energy",
            slo: SLO | None = None, comm_sms: Sequence[int | None] = DEFAULT_COMM_SMS,
            num_clocks: int | None = DEFAULT_NUM_CLOCKS, clocks_mhz: Sequence[int] | None = None,
            profile: Profile | None = None) -> Plan:
    """Search the plans of ``model`` on ``cluster`` and return the best under ``slo`` (see the module docstring).

    ``objective``: ``"energy"`` (least energy per output token) or ``"latency"`` (least median ITL).
    ``comm_sms``: SM counts for overlapped communication to try (None: no overlap);
    ``num_clocks`` / ``clocks_mhz``: the GPU clocks to try (``clocks_mhz=[f_max]`` searches none).

    Raises ``InfeasibleSLOError`` naming the best achievable ITL when no plan meets ``slo``,
    ``DoesNotFitError`` when no plan fits in memory, ``UnknownNameError`` for an unknown model/GPU.
    """
    from energylens.api import check_context, estimate, model_name, resolve_model

    # types first (a wrong one would be an AttributeError deep inside); SLO checks its own values
    expect_type("cluster", cluster, Cluster)
    expect_type("workload", workload, Workload, optional=True)
    expect_type("slo", slo, SLO, optional=True)
    expect_type("profile", profile, Profile, optional=True)
    workload = workload or Workload()
    slo = slo or SLO()
    if slo.itl_ms is not None and workload.output_len < 2:
        raise InvalidWorkloadError(f"an ITL target (itl_ms={slo.itl_ms:g}) needs output_len >= 2: with output_len="
                                   f"{workload.output_len} there is no inter-token gap; use a TTFT target")
    if objective not in ("energy", "latency"):
        raise InvalidWorkloadError(f"unknown objective {objective!r}; valid: 'energy', 'latency'")
    gpu = get_gpu(cluster.gpu)
    prof = profile or load_profile(gpu)
    interconnect = cluster.interconnect  # resolved and normalised by Cluster, as estimate takes it
    traced = resolve_model(model)
    name = model_name(model, traced.decode)
    max_context = check_context(traced, workload, name)  # before the search: its plans would export a --max-model-len vLLM refuses
    space = search(traced, gpu, cluster.num_gpus, workload, prof, interconnect, comm_sms=comm_sms,
                   num_clocks=num_clocks, clocks_mhz=clocks_mhz)
    if len(space) == 0:
        raise DoesNotFitError(
            f"no plan of {name} fits on {cluster.num_gpus} x {gpu.name} ({GPU_MEMORY_UTILIZATION:.0%} of "
            f"{gpu.hbm_capacity_bytes / 2**30:.0f} GiB each) at any batch size up to {workload.batch}: the smallest "
            f"needs {space.least_memory_bytes / 2**30:.1f} GiB per GPU (with room for one whole request's KV cache); "
            f"use more GPUs{'' if _quantization(traced) == 'fp8' else ', fp8 weights'} or a shorter context",
            required_bytes=space.least_memory_bytes, capacity_bytes=usable_bytes(gpu))
    best = space.point(_choose(space, slo, objective))
    par = Parallel(tp=best.tp, ep=best.ep, dp=best.dp)
    wl = dataclasses.replace(workload, batch=best.batch)
    est = estimate(traced, Cluster(gpu.name, num_gpus=cluster.num_gpus, interconnect=interconnect), wl,
                   par, fused=best.fused, comm_sms=best.comm_sms, profile=prof,
                   clock_mhz=ClockModel.of(gpu).lock(best.clock_mhz))  # None at the default (maximum) clock
    est = _named(est, name)
    return Plan(model=name, gpu=gpu.name, num_gpus=par.num_gpus, workload=workload, slo=slo, objective=objective,
                parallel=par, batch=best.batch, fused=best.fused, comm_sms=best.comm_sms, clock_mhz=best.clock_mhz,
                estimate=est, graph=est.graphs, pareto=space.frontier("itl_s", "energy_per_token_j"),
                prefill_pareto=space.frontier("ttft_s", "prefill_energy_per_token_j"),
                plans_evaluated=space.plans_evaluated, search_s=space.search_s,
                quantization=_quantization(traced), space=space, cluster_gpus=cluster.num_gpus,
                max_context=max_context, traced=traced)


def _named(est: Estimate, name: str) -> Estimate:
    import dataclasses

    return est if est.model == name else dataclasses.replace(est, model=name)


def _check_comm_sms(comm_sms: Any, gpu: GPUSpec) -> None:
    """``comm_sms`` must be a non-empty sequence of what ``estimate`` takes (None or an SM count):
    an empty one left nothing to search and failed inside numpy."""
    from energylens.api import check_comm_sms

    if not isinstance(comm_sms, Sequence) or isinstance(comm_sms, str) or not comm_sms:
        raise InvalidWorkloadError(f"comm_sms must be a non-empty sequence of None (no overlap) or SM counts, "
                                   f"e.g. (None, 16); got {comm_sms!r}")
    for k in comm_sms:
        check_comm_sms(k, gpu)
