"""Memory per GPU: weights + KV cache + activations, checked against the memory vLLM may use.

* weights: every ``param`` declaration (repeated regions counted ``count`` times);
* KV cache: every ``cache`` declaration of the decode graph at ``batch`` sequences and the mean
  context of the workload (``prompt_len + output_len/2``: the steady state of continuous batching,
  where sequences are at all stages of their output);
* activations: the largest working set of one prefill op (its non-weight operands and result;
  attention scores stay on chip) over one chunk of prefill: ``min(batch / dp * prompt_len, 8192)``
  tokens per replica, vLLM's default chunked-prefill token budget.

The capacity is ``GPU_MEMORY_UTILIZATION`` (0.9, vLLM's default, which the vLLM export sets) of each
GPU's HBM: the same limit the plan search applies (``serving.kv_capacity_tokens``, which caps the
serving model's KV length, uses the same share but splits the weights evenly over the GPUs and
leaves out the activations: a slightly larger cache than ``Plan.kv_cache_tokens``).

>>> gib(80 * 2**30)
'80.0 GiB'
"""

from __future__ import annotations

from typing import Any

from energylens.costmodel.analysis import _numel, _on_chip
from energylens.costmodel.hardware import GPUSpec
from energylens.costmodel.serving import GPU_MEMORY_UTILIZATION, MAX_NUM_BATCHED_TOKENS
from energylens.errors import DoesNotFitError
from energylens.ir.core import Graph
from energylens.typing import MemoryEstimate, Workload

__all__ = ["memory_estimate", "check_fits", "gib", "memory_line", "weight_split", "usable_bytes", "kv_bytes_per_token",
           "request_kv_bytes"]


def usable_bytes(gpu: GPUSpec) -> float:
    """Bytes of one GPU's HBM that vLLM may fill (``GPU_MEMORY_UTILIZATION`` of it)."""
    return gpu.hbm_capacity_bytes * GPU_MEMORY_UTILIZATION


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def memory_line(mem: MemoryEstimate) -> str:
    """One line of the memory per GPU, in GiB like the memory error (what the CLI reports print)."""
    return (f"memory per GPU: {gib(mem.total_bytes)} of {gib(mem.capacity_bytes)} (weights {gib(mem.weights_bytes)}, "
            f"KV cache {gib(mem.kv_cache_bytes)}, activations {gib(mem.activation_bytes)})")


def weights_bytes(graph: Graph) -> float:
    return sum(weight_split(graph))


def weight_split(graph: Graph) -> tuple[float, float]:
    """Bytes of the graph's non-expert weights and of its expert weights (params with dim ``e``)."""
    sizes = graph.bind(B=1, S=1, K=1)
    split = [0.0, 0.0]
    for d, n in graph.all_decls():
        if d.role == "param":
            split["e" in d.value.type.dims] += _numel(d.value.type, sizes) * d.value.type.itemsize * n
    return split[0], split[1]


def kv_cache_bytes(decode: Graph, batch: float, context_len: float) -> float:
    sizes = decode.bind(B=batch, S=1, K=context_len)
    return sum(_numel(d.value.type, sizes) * d.value.type.itemsize * n
               for d, n in decode.all_decls() if d.role == "cache")


def activation_bytes(prefill: Graph, batch: float, prompt_len: float) -> float:
    sizes = prefill.bind(B=batch, S=prompt_len, K=prompt_len)
    params = {d.value.name for d, _ in prefill.all_decls() if d.role in ("param", "cache")}
    peak = 0.0
    for op, _ in prefill.walk():
        live = [v for v in (*op.operands, op.result) if v.name not in params and not _on_chip(v)]
        peak = max(peak, sum(_numel(v.type, sizes) * v.type.itemsize for v in live))
    return peak


def _chunk(workload: Workload, dp: int = 1) -> tuple[float, float]:
    """(sequences, tokens each) of one chunked-prefill step of the workload, over ``dp`` replicas:
    each replica prefills its own chunk of up to ``MAX_NUM_BATCHED_TOKENS`` tokens of its
    ``batch / dp`` sequences (the sequences are those of all replicas, which a dp-sharded graph splits)."""
    tokens = min(workload.batch / dp * workload.prompt_len, MAX_NUM_BATCHED_TOKENS)
    return dp * tokens / workload.prompt_len, float(workload.prompt_len)


def memory_estimate(prefill: Graph, decode: Graph, workload: Workload, gpu: GPUSpec,
                    num_gpus: int = 1) -> MemoryEstimate:
    """Bytes per GPU of weights, KV cache and activations (everything split evenly over ``num_gpus``)."""
    return MemoryEstimate(
        weights_bytes=weights_bytes(decode) / num_gpus,
        kv_cache_bytes=kv_cache_bytes(decode, workload.batch, workload.decode_context_len) / num_gpus,
        activation_bytes=activation_bytes(prefill, *_chunk(workload)) / num_gpus,
        capacity_bytes=usable_bytes(gpu),
    )


def kv_bytes_per_token(kv_bytes: Any, batch: Any, dp: int, workload: Workload) -> Any:
    """KV-cache bytes per GPU of one token, from ``kv_bytes``, the running batch's (``batch / dp``
    sequences per replica at the mean context)."""
    return kv_bytes / (batch / dp * workload.decode_context_len)


def request_kv_bytes(kv_bytes: Any, batch: Any, dp: int, workload: Workload) -> Any:
    """KV-cache bytes per GPU of one whole request (``prompt_len + output_len`` tokens), from
    ``kv_bytes`` as ``kv_bytes_per_token`` takes it. vLLM refuses to start unless its cache holds one
    request of its maximum length."""
    return kv_bytes_per_token(kv_bytes, batch, dp, workload) * (workload.prompt_len + workload.output_len)


def check_fits(mem: MemoryEstimate, model: str, gpu: GPUSpec, fp8: bool = False, request_bytes: float = 0.0) -> None:
    """Raise ``DoesNotFitError`` saying by how much ``mem`` exceeds the GPU's capacity (``fp8``: the
    weights are fp8 already, so the hint does not suggest them), or by how much one whole request's
    KV cache (``request_bytes``, ``request_kv_bytes``) does next to the weights and activations."""
    fixed = mem.weights_bytes + mem.activation_bytes
    if mem.total_bytes <= mem.capacity_bytes and fixed + request_bytes > mem.capacity_bytes:
        raise DoesNotFitError(
            f"{model}: one whole request's KV cache needs {gib(request_bytes)} per GPU, but next to the weights "
            f"({gib(mem.weights_bytes)}) and activations ({gib(mem.activation_bytes)}) {gpu.name} has "
            f"{gib(mem.capacity_bytes - fixed)} left of its {gib(mem.capacity_bytes)}: vLLM would refuse to start. "
            "Try more GPUs (tp) or a shorter context", required_bytes=fixed + request_bytes,
            capacity_bytes=mem.capacity_bytes)
    if mem.total_bytes <= mem.capacity_bytes:
        return
    over = mem.total_bytes - mem.capacity_bytes
    hint = "more GPUs (tp) or a smaller batch" if fp8 else "more GPUs (tp), fp8 weights, or a smaller batch"
    raise DoesNotFitError(
        f"{model} needs {gib(mem.total_bytes)} per GPU (weights {gib(mem.weights_bytes)}, KV cache "
        f"{gib(mem.kv_cache_bytes)}, activations {gib(mem.activation_bytes)}) but {gpu.name} has "
        f"{gib(mem.capacity_bytes)} for it ({GPU_MEMORY_UTILIZATION:.0%} of {gib(gpu.hbm_capacity_bytes)}, vLLM's "
        f"gpu_memory_utilization): {gib(over)} over. Try {hint}",
        required_bytes=mem.total_bytes, capacity_bytes=mem.capacity_bytes)
