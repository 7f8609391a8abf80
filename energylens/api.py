"""The public entry point: ``estimate`` latency, power, energy and memory of a model on a cluster.

>>> import energylens as el
>>> est = el.estimate("meta-llama/Llama-3.1-8B-Instruct", el.Cluster("H100"),
...                   el.Workload(batch=64, prompt_len=634, output_len=400))   # doctest: +SKIP
>>> est.decode.itl_s, est.serving.energy_per_output_token_j                    # doctest: +SKIP
"""

from __future__ import annotations

import functools
import numbers
from pathlib import Path
from typing import Any

from energylens.costmodel.analysis import PricedOp
from energylens.costmodel.clock import locked_clock
from energylens.costmodel.hardware import GPUSpec, get_gpu
from energylens.costmodel.memory import check_fits, request_kv_bytes
from energylens.costmodel.plan import PlanPricer, pipeline_text, plan_graph, plan_memory
from energylens.costmodel.profile import Profile, load_profile
from energylens.costmodel.serving import serving_estimate
from energylens.errors import ConfigError, InvalidTypeError, InvalidWorkloadError, ShardingError
from energylens.ir.core import Graph
from energylens.models import max_context
from energylens.passes.moe import Moe
from energylens.passes.overlap import Overlap
from energylens.passes.shard import check_parallel
from energylens.typing import (
    Cluster,
    Estimate,
    OpEstimate,
    Parallel,
    PhaseEstimate,
    PlanGraphs,
    Workload,
    expect_type,
)

__all__ = ["estimate", "resolve_model", "default_interconnect", "check_context",
           "check_comm_sms", "model_name"]


@functools.lru_cache(maxsize=32)
def _trace_by_name(model: str, stamp: tuple[Any, ...] = ()) -> Any:
    from energylens.frontends.hf import trace_model  # imports torch: only when a model is traced

    return trace_model(model)


def _file_stamp(model: str) -> tuple[Any, ...]:
    """(name, contents) of the config files a local model path reads (empty for a hub id): a config
    edited in the same process is traced again, not taken from the cache."""
    path = Path(model).expanduser()  # as load_config reads it
    if path.is_dir():
        path = path / "config.json"
    # the ModelOpt file load_config reads beside it: hf_quant_config.json, or <stem>.hf_quant_config.json
    quant = path.with_name("hf_quant_config.json" if path.name == "config.json" else path.stem + ".hf_quant_config.json")
    return tuple((f.name, f.read_bytes()) for f in (path, quant) if f.is_file() and f.stat().st_size < 2**20)


def resolve_model(model: Any) -> Any:
    """A traced model (anything with ``.prefill`` and ``.decode`` graphs) for an HF id or a traced model.

    Model ids are traced once per process and cached (a local config, until its file changes).
    """
    if hasattr(model, "prefill") and hasattr(model, "decode"):
        return model
    if isinstance(model, str):
        return _trace_by_name(model, _file_stamp(model))
    from energylens.frontends.hf import trace_model

    return trace_model(model)


def _phase(name: str, ops: list[PricedOp], tokens: int, num_gpus: int) -> PhaseEstimate:
    """Totals of a phase over the plan's ``num_gpus`` GPUs (``ops`` carry one GPU's cost)."""
    t = sum(p.count * p.cost.time_s for p in ops)
    static = sum(p.count * p.cost.static_j for p in ops) * num_gpus
    dyn = sum(p.count * (p.cost.flop_j + p.cost.byte_j) for p in ops) * num_gpus
    return PhaseEstimate(name=name, latency_s=t, energy_j=static + dyn, avg_power_w=(static + dyn) / t,
                         flops=sum(p.count * p.cost.flops for p in ops) * num_gpus,
                         hbm_bytes=sum(p.count * p.cost.hbm_bytes for p in ops) * num_gpus,
                         static_j=static, dynamic_j=dyn, tokens=tokens,
                         comm_j=sum(p.count * getattr(p, "comm_j", 0.0) for p in ops) * num_gpus,
                         wait_j=sum(p.count * getattr(p, "wait_j", 0.0) for p in ops) * num_gpus)


def _op_rows(phase: str, ops: list[PricedOp], num_gpus: int = 1) -> list[OpEstimate]:
    """Per-op rows: time on the critical path; FLOPs, bytes and energy summed over the plan's GPUs."""
    return [OpEstimate(phase=phase, name=p.op.result.name, kind=p.op.kind,
                       source=p.op.source.module or p.op.source.aten, count=p.count,
                       flops=p.count * p.cost.flops * num_gpus, hbm_bytes=p.count * p.cost.hbm_bytes * num_gpus,
                       time_s=p.count * p.cost.time_s, energy_j=p.count * p.cost.energy_j * num_gpus) for p in ops]


def model_name(model: Any, graph: Graph) -> str:
    """The name reports and exports give a model: its config's checkpoint id (``ModelSpec.name``)."""
    return graph.attr.get("model") or (model if isinstance(model, str) else type(model).__name__)


def default_interconnect(gpu: GPUSpec) -> str:
    """NVLink for the SXM parts whose collectives were measured; PCIe otherwise (the H100 PCIe's
    NVLink bridge joins pairs only, and unmeasured fabrics would have nothing to be priced from)."""
    from energylens.costmodel.comm import has_peer_tables

    return "nvlink" if has_peer_tables(gpu) else "pcie"


def check_comm_sms(comm_sms: Any, gpu: GPUSpec) -> None:
    """``comm_sms`` must be None (no overlap) or an SM count the GPU can spare (1 .. SMs - 1)."""
    if comm_sms is not None and (isinstance(comm_sms, bool) or not isinstance(comm_sms, numbers.Integral)):
        # "16", 16.0, True: a wrong type, not a bad count
        raise InvalidTypeError(f"comm_sms must be an SM count (an int) or None, got {type(comm_sms).__name__} {comm_sms!r}")
    if comm_sms is not None and not 0 < comm_sms < gpu.compute_units:
        raise ConfigError(f"comm_sms must be an SM count in 1..{gpu.compute_units - 1} on {gpu.name} "
                          f"(or None: no overlap), got {comm_sms!r}")


def _check_batch_and_routing(workload: Workload, parallel: Parallel, routing: Any, decode: Graph) -> None:
    """Each data-parallel replica runs a whole ``batch / dp >= 1`` sequences (as ``compile`` searches
    them); a routing other than uniform needs experts to route to."""
    b, dp = workload.batch, parallel.dp
    if b < dp:
        raise ShardingError(f"batch={b} is smaller than dp={dp}: each data-parallel replica "
                            f"needs at least one sequence; use batch >= {dp} or dp <= {b}")
    if b % dp:  # vLLM's replicas each run max_num_seqs = batch / dp sequences
        lo = b - b % dp
        raise ShardingError(f"batch={b} is not a multiple of dp={dp}: each data-parallel "
                            f"replica runs batch / dp sequences; use batch={lo} or {lo + dp}")
    kind = routing.routing if isinstance(routing, Moe) else routing.lower() if isinstance(routing, str) else routing
    if kind != "uniform" and not decode.has_experts:
        raise ConfigError(f"routing={routing!r} applies to MoE models, and {decode.attr.get('model', 'this model')} "
                          "has no experts; leave routing at 'uniform'")


def check_context(traced: Any, workload: Workload, name: str) -> int | None:
    """The model's maximum context in tokens (None: its config does not say); raise
    ``InvalidWorkloadError`` when ``prompt_len + output_len`` exceeds it (the config's
    ``max_position_embeddings``): it would be priced, and exported to vLLM as a ``--max-model-len``
    that vLLM refuses."""
    got = max_context(getattr(traced, "spec", None))
    total = workload.prompt_len + workload.output_len
    if got is not None and total > got[0]:
        raise InvalidWorkloadError(
            f"prompt_len + output_len = {workload.prompt_len} + {workload.output_len} = {total} tokens exceeds "
            f"{name}'s maximum context of {got[0]} tokens ({got[1]}); use a shorter prompt or output")
    return None if got is None else got[0]


def estimate(model: Any, cluster: Cluster, workload: Workload | None = None, parallel: Parallel | None = None, *,
             fused: bool = True, comm_sms: int | None = None, routing: str | Moe = "uniform",
             profiles: str | Path | None = None, profile: Profile | None = None,
             check_memory: bool = True, clock_mhz: int | None = None) -> Estimate:
    """Latency, power, energy and memory of serving ``model`` on ``cluster`` for ``workload``.

    ``model`` is an HF id of a bundled model (``energylens.models``), or an already traced model.
    ``parallel`` (vLLM's meaning, default one GPU): attention and dense layers on ``tp x dp`` GPUs,
    each of the ``dp`` replicas serving ``batch / dp`` of the sequences; experts spread with ``ep``
    over the same GPUs. The plan is the pipeline ``shard{tp,ep,dp}``, ``fuse`` (when ``fused``),
    ``moe{routing}`` (``routing``: ``uniform``, ``zipf`` or a configured ``Moe`` pass) and, with
    ``comm_sms``, ``overlap{comm_sms}`` (the pass schedules the overlap; the pricer reads it), priced
    per GPU (``energylens.costmodel.plan``): local dim sizes per op, collectives from measured NCCL
    (and vLLM all-reduce) tables on ``cluster.interconnect`` (default: ``default_interconnect``),
    the expert straggler under ep (waiting GPUs burn static power), fused kernels' HBM bytes; with
    ``comm_sms`` set, tensor-parallel collectives overlap compute on that many SMs (contended
    schedule, ``costmodel.overlap``).

    ``workload`` None is the default ``Workload()`` (as in ``compile``).
    ``est.prefill`` is the prefill of the whole batch; ``est.decode`` one decode step of ``batch``
    sequences at the mean context ``prompt_len + output_len/2`` (``itl_s``, ``energy_per_token_j``);
    ``est.serving`` the steady state of continuous batching with chunked prefill (median ITL, power,
    energy per output token with prefill included); ``est.memory`` bytes *per GPU*; ``est.ops`` the
    per-op table (each op over its repetitions: its time on one GPU, its FLOPs, bytes and energy
    summed over the plan's GPUs, so they add up to the phase's); ``est.graphs`` the rewritten IR
    (``print(est.graphs)``). Powers and energies are totals over the ``tp x dp`` GPUs of the plan
    (``est.num_gpus``); GPUs of the cluster outside the plan are not counted (they are free for
    another replica or job). ``profiles`` is a folder of profile JSONs to use instead of the bundled
    ones (or pass one ``profile``); it must exist, and a GPU without a file in it falls back as
    ``load_profile`` says (``est.profile`` names the profile used).

    ``clock_mhz``: the SM clock the GPUs are locked to (``nvidia-smi -lgc``), as ``compile``
    searches it (``Plan.clock_mhz``; None: the default clock), so a compiled plan can be priced
    again here.

    ``check_memory=False`` prices the plan even when ``est.memory`` exceeds the GPU (instead of
    raising ``DoesNotFitError``): for comparing with a measured run whose engine held that batch
    anyway, e.g. vLLM with prefix caching sharing the KV blocks of multi-turn prompts, which this
    memory estimate (one private KV cache per sequence) does not see. The serving view then takes
    ``batch`` as held (not cut to what the KV cache holds, as it is otherwise: ``est.serving.batch``)
    and caps the mean KV length at the cache's capacity (``serving.kv_capacity_tokens``);
    ``est.memory`` reports the unshared need.

    Raises ``ShardingError`` for an impossible plan (tp not dividing the heads, ep not dividing the
    experts, more GPUs than the cluster has), ``DoesNotFitError`` when a GPU's share does not fit in
    memory, ``EstimateError`` for an op the cost model cannot price, ``UnknownNameError`` for an
    unknown model, GPU or interconnect, ``InvalidTypeError`` for an argument of the wrong type,
    ``InvalidWorkloadError`` for a context longer than the model's maximum.
    """
    # types first: a wrong one would otherwise be an AttributeError deep inside
    expect_type("cluster", cluster, Cluster)
    expect_type("workload", workload, Workload, optional=True)
    expect_type("parallel", parallel, Parallel, optional=True)
    expect_type("profile", profile, Profile, optional=True)
    if profiles is not None and not isinstance(profiles, str | Path):
        raise InvalidTypeError(f"profiles must be a folder path (str or Path) or None, got {type(profiles).__name__} "
                               f"{profiles!r}")
    for flag, value in (("fused", fused), ("check_memory", check_memory)):
        if not isinstance(value, bool):  # "no" would be truthy
            raise InvalidTypeError(f"{flag} must be True or False, got {type(value).__name__} {value!r}")
    workload = workload or Workload()
    parallel = parallel or Parallel()
    gpu: GPUSpec = get_gpu(cluster.gpu)
    interconnect = cluster.interconnect
    check_comm_sms(comm_sms, gpu)
    comm_sms = None if comm_sms is None else int(comm_sms)
    prof = profile or load_profile(gpu, profiles)
    clock_mhz = locked_clock(clock_mhz, gpu)  # None: the default clock
    if clock_mhz is not None:
        from energylens.search.evaluate import clock_profile

        prof = clock_profile(prof, gpu, clock_mhz)
    traced = resolve_model(model)
    check_context(traced, workload, model_name(model, traced.decode))
    check_parallel(traced.decode, parallel, num_gpus=cluster.num_gpus)
    _check_batch_and_routing(workload, parallel, routing, traced.decode)
    if comm_sms is not None and parallel.tp == 1:  # the overlap pass overlaps tensor-parallel collectives only
        raise ConfigError(f"comm_sms={comm_sms} but the plan {parallel} has no tensor-parallel collective to "
                          "overlap; use tp > 1 or leave comm_sms unset")
    overlap = None if comm_sms is None else Overlap(comm_sms=comm_sms, total_sms=gpu.compute_units)
    prefill_g = plan_graph(traced.prefill, parallel, fused, routing, overlap)
    decode_g = plan_graph(traced.decode, parallel, fused, routing, overlap)
    name = model_name(model, decode_g)
    n = parallel.num_gpus
    mem = plan_memory(prefill_g, decode_g, workload, gpu)
    if check_memory:
        check_fits(mem, name, gpu, fp8=decode_g.attr.get("quantization") == "fp8",
                   request_bytes=request_kv_bytes(mem.kv_cache_bytes, workload.batch, parallel.dp, workload))
    price = PlanPricer(interconnect=interconnect, comm_sms=comm_sms)
    b, s = workload.batch, workload.prompt_len
    pre_ops = price(prefill_g, {"B": b, "S": s, "K": s}, gpu, prof)
    dec_ops = price(decode_g, {"B": b, "S": 1, "K": workload.decode_context_len}, gpu, prof)
    return Estimate(
        model=name, gpu=gpu.name, num_gpus=n, workload=workload, parallel=parallel,
        prefill=_phase("prefill", pre_ops, b * s, n),
        decode=_phase("decode", dec_ops, b, n),
        memory=mem,
        ops=tuple(_op_rows("prefill", pre_ops, n) + _op_rows("decode", dec_ops, n)),
        serving=serving_estimate(prefill_g, decode_g, workload, gpu, prof, num_gpus=n, price=price,
                                 replicas=parallel.dp, lockstep=decode_g.has_experts, hold_batch=not check_memory),
        profile=prof.provenance.summary(prof.gpu) + ("" if prof.gpu == gpu.name else f", applied to {gpu.name}"),
        graphs=PlanGraphs(pipeline=pipeline_text(parallel, fused, routing, overlap), prefill=prefill_g, decode=decode_g),
        clock_mhz=clock_mhz,
    )

# compile and Plan live in the search stage (above the cost model); re-exported here for ``energylens``.
from energylens.search.compile import Plan, compile  # noqa: E402

__all__ += ["compile", "Plan"]
