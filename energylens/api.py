"""The public entry point: ``estimate`` latency, power, energy and memory of a model on a cluster.

>>> import energylens as el
>>> est = el.estimate("meta-llama/Llama-3.1-8B-Instruct", el.Cluster("H100"),
...                   el.Workload(batch=64, prompt_len=634, output_len=400))   # doctest: +SKIP
>>> est.decode.itl_s, est.serving.energy_per_output_token_j                    # doctest: +SKIP
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from energylens.costmodel.analysis import PricedOp, price_graph
from energylens.costmodel.hardware import GPUSpec, get_gpu
from energylens.costmodel.memory import check_fits, memory_estimate
from energylens.costmodel.profile import Profile, load_profile
from energylens.costmodel.serving import serving_estimate
from energylens.errors import EnergylensError
from energylens.ir.core import Graph
from energylens.typing import Cluster, Estimate, OpEstimate, Parallel, PhaseEstimate, Workload

__all__ = ["estimate", "resolve_model"]


@functools.lru_cache(maxsize=32)
def _trace_by_name(model: str) -> Any:
    from energylens.frontends.hf import trace_model  # imports torch: only when a model is traced

    return trace_model(model)


def resolve_model(model: Any) -> Any:
    """A traced model (anything with ``.prefill`` and ``.decode`` graphs) for an HF id or a traced model.

    Model ids are traced once per process and cached.
    """
    if hasattr(model, "prefill") and hasattr(model, "decode"):
        return model
    if isinstance(model, str):
        return _trace_by_name(model)
    from energylens.frontends.hf import trace_model

    return trace_model(model)


def _phase(name: str, ops: list[PricedOp], tokens: int, num_gpus: int) -> PhaseEstimate:
    t = sum(p.count * p.cost.time_s for p in ops)
    static = sum(p.count * p.cost.static_j for p in ops) * num_gpus
    dyn = sum(p.count * (p.cost.flop_j + p.cost.byte_j) for p in ops) * num_gpus
    return PhaseEstimate(name=name, latency_s=t, energy_j=static + dyn, avg_power_w=(static + dyn) / t,
                         flops=sum(p.count * p.cost.flops for p in ops) * num_gpus,
                         hbm_bytes=sum(p.count * p.cost.hbm_bytes for p in ops) * num_gpus,
                         static_j=static, dynamic_j=dyn, tokens=tokens)


def _op_rows(phase: str, ops: list[PricedOp]) -> list[OpEstimate]:
    return [OpEstimate(phase=phase, name=p.op.result.name, kind=p.op.kind,
                       source=p.op.source.module or p.op.source.aten, count=p.count,
                       flops=p.count * p.cost.flops, hbm_bytes=p.count * p.cost.hbm_bytes,
                       time_s=p.count * p.cost.time_s, energy_j=p.count * p.cost.energy_j) for p in ops]


def _model_name(model: Any, graph: Graph) -> str:
    return graph.attr.get("model") or (model if isinstance(model, str) else type(model).__name__)


def estimate(model: Any, cluster: Cluster, workload: Workload, parallel: Parallel | None = None, *,
             profiles: str | Path | None = None, profile: Profile | None = None) -> Estimate:
    """Latency, power, energy and memory of serving ``model`` on ``cluster`` for ``workload``.

    ``model`` is an HF id of a bundled model (``energylens.models``), or an already traced model.
    ``est.prefill`` is the prefill of the whole batch; ``est.decode`` one decode step of ``batch``
    sequences at the mean context ``prompt_len + output_len/2`` (``itl_s``, ``energy_per_token_j``);
    ``est.serving`` the steady state of continuous batching with chunked prefill (median ITL, power,
    energy per output token with prefill included); ``est.memory`` bytes per GPU; ``est.ops`` the
    per-op table. Powers are totals over all GPUs. ``profiles`` is a folder of profile JSONs to use
    instead of the bundled ones (or pass one ``profile``).

    Raises ``DoesNotFitError`` when the plan does not fit in memory, ``EstimateError`` for an op the
    cost model cannot price, ``UnknownNameError`` for an unknown model or GPU.
    """
    parallel = parallel or Parallel()
    if cluster.num_gpus > 1 or parallel.tp > 1 or parallel.ep > 1 or parallel.dp > 1:
        raise EnergylensError(
            f"multi-GPU plans are not supported yet (cluster has {cluster.num_gpus} GPUs, "
            f"tp={parallel.tp} ep={parallel.ep} dp={parallel.dp}); estimate on one GPU for now "
            "(the communication model and sharding come with issue 4)")
    gpu: GPUSpec = get_gpu(cluster.gpu)
    prof = profile or load_profile(gpu, profiles)
    traced = resolve_model(model)
    prefill_g, decode_g = traced.prefill, traced.decode
    name = _model_name(model, decode_g)
    mem = memory_estimate(prefill_g, decode_g, workload, gpu, num_gpus=cluster.num_gpus)
    check_fits(mem, name, gpu)
    b, s = workload.batch, workload.prompt_len
    pre_ops = price_graph(prefill_g, {"B": b, "S": s, "K": s}, gpu, prof)
    dec_ops = price_graph(decode_g, {"B": b, "S": 1, "K": workload.decode_context_len}, gpu, prof)
    return Estimate(
        model=name, gpu=gpu.name, num_gpus=cluster.num_gpus, workload=workload, parallel=parallel,
        prefill=_phase("prefill", pre_ops, b * s, cluster.num_gpus),
        decode=_phase("decode", dec_ops, b, cluster.num_gpus),
        memory=mem,
        ops=tuple(_op_rows("prefill", pre_ops) + _op_rows("decode", dec_ops)),
        serving=serving_estimate(prefill_g, decode_g, workload, gpu, prof, num_gpus=cluster.num_gpus),
        profile=f"{prof.provenance.method}: {prof.provenance.data}",
    )
