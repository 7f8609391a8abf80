"""Microbenchmarks for the cost model's coefficients: GEMMs, HBM copies, elementwise and norm
kernels, attention, idle and static power, and compute slowed by SMs held by a concurrent kernel.

A benchmark is a ``Bench`` (kind + JSON-able parameters); ``run_bench`` times (and meters) it and
returns one plain-data result, which ``energylens.runtime.measure`` writes as one JSON line. The
shapes come from the supported models' configs: the GEMMs of every linear layer at decode token
counts (the batch) and prefill token counts (batch x prompt), and the attention of each head
layout at several KV lengths.

>>> from energylens.runtime.meter import NullMeter
>>> b = Bench("gemm", {"m": 8, "n": 16, "k": 32, "dtype": "float32"})
>>> r = run_bench(b, device="cpu", meter=NullMeter(), min_window_s=0.0, repeats=1)
>>> r["status"], r["derived"]["flops"]
('ok', 8192)
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from energylens.errors import UnknownNameError
from energylens.models import attention_shape
from energylens.runtime.meter import Meter
from energylens.runtime.timing import Timing, time_windows

__all__ = [
    "Bench",
    "KINDS",
    "gemm_shapes",
    "attention_layouts",
    "suite_benches",
    "run_bench",
]

KINDS = (
    "gemm", "hbm_copy", "elementwise", "norm", "attention_prefill", "attention_decode", "idle", "static",
    "sm_contention",
)


@dataclass(frozen=True)
class Bench:
    """One microbenchmark: a kind (one of ``KINDS``) and its parameters (sizes, dtype, sources)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnknownNameError("microbenchmark kind", self.kind, KINDS)

    @property
    def key(self) -> str:
        """Stable identity (kind + parameters except the informative ``sources``)."""
        p = {k: v for k, v in self.params.items() if k != "sources"}
        return f"{self.kind}:{json.dumps(p, sort_keys=True, separators=(',', ':'))}"


# ---- shapes from model configs -------------------------------------------------------------------
def _cfg(model: Any) -> tuple[str, dict[str, Any]]:
    from energylens.models import config_dict, load_config

    spec = load_config(model)
    return spec.name, dict(config_dict(spec.config))


def _linears(d: dict[str, Any]) -> list[tuple[str, int, int, float]]:
    """(op, n, k, tokens factor) of every linear layer of a decoder (HF weights are (out, in))."""
    h = int(d["hidden_size"])
    nh, nkv, hd = attention_shape(d)
    out = [("q_proj", nh * hd, h, 1.0), ("kv_proj", nkv * hd, h, 1.0), ("o_proj", h, nh * hd, 1.0)]
    if d.get("num_experts"):
        e, top, mi = int(d["num_experts"]), int(d["num_experts_per_tok"]), int(d["moe_intermediate_size"])
        out += [("router", e, h, 1.0), ("expert_gate_up", mi, h, top / e), ("expert_down", h, mi, top / e)]
    else:
        i = int(d["intermediate_size"])
        out += [("gate_up_proj", i, h, 1.0), ("down_proj", h, i, 1.0)]
    return out


def gemm_shapes(
    models: Iterable[Any], decode_tokens: Sequence[int], prefill_tokens: Sequence[int]
) -> list[dict[str, Any]]:
    """GEMM shapes ``y[m, n] = x[m, k] @ W[n, k]^T`` of the models' linear layers, deduplicated.

    ``m`` is a decode token count (the batch) or a prefill token count (batch x prompt); MoE expert
    GEMMs get the mean tokens per expert (``m * top_k / num_experts``, at least 1). The LM head is
    taken at decode counts only (prefill computes the last token's logits). ``sources`` lists
    "model:op" for each shape.

    >>> [s["m"] for s in gemm_shapes(["Llama-3.2-1B"], [1], [])][:3]
    [1, 1, 1]
    """
    shapes: dict[tuple[int, int, int], list[str]] = {}
    for model in models:
        name, d = _cfg(model)
        short = ("tiny:" if name.startswith("tiny:") else "") + name.split("/")[-1]
        ops = _linears(d)
        for m_tok, phase in [(m, "decode") for m in decode_tokens] + [(m, "prefill") for m in prefill_tokens]:
            rows = [(op, n, k, f) for op, n, k, f in ops]
            if phase == "decode":
                rows.append(("lm_head", int(d["vocab_size"]), int(d["hidden_size"]), 1.0))
            for op, n, k, f in rows:
                m = max(1, round(m_tok * f))
                shapes.setdefault((m, n, k), []).append(f"{short}:{op}:{phase}")
    return [{"m": m, "n": n, "k": k, "sources": sorted(set(src))} for (m, n, k), src in sorted(shapes.items())]


def attention_layouts(models: Iterable[Any]) -> list[dict[str, Any]]:
    """Distinct (query heads, KV heads, head dim) of the models, with the models that use them."""
    layouts: dict[tuple[int, int, int], list[str]] = {}
    for model in models:
        name, d = _cfg(model)
        key = attention_shape(d)
        layouts.setdefault(key, []).append(("tiny:" if name.startswith("tiny:") else "") + name.split("/")[-1])
    return [{"heads": a, "kv_heads": b, "head_dim": c, "sources": s} for (a, b, c), s in sorted(layouts.items())]


def suite_benches(suite: str, device: str, models: Sequence[Any], dtype: str) -> dict[str, list[Bench]]:
    """The microbenchmarks of a suite, grouped in parts ("gemm", "memory", "attention", "power").

    ``quick`` on a GPU is a few shapes of the first model; ``full`` sweeps every model's shapes;
    on a CPU the sizes are small (the models are then tiny configs) and the power parts are skipped
    by ``run_bench`` with a reason.
    """
    gpu = device.startswith("cuda")
    if suite not in ("quick", "full"):
        raise UnknownNameError("suite", suite, ("quick", "full"))
    quick = suite == "quick"
    if gpu:
        dec, pre = ((1, 64), (2048,)) if quick else ((1, 8, 32, 64, 128, 256), (512, 2048, 8192, 16384))
        gemm_models = models[:1] if quick else models
        copy_bytes = [2**24, 2**30] if quick else [2**p for p in range(20, 32, 2)]
        tokens, hiddens = ((64, 8192), (4096,)) if quick else ((1, 64, 2048, 16384), (2048, 4096))
        pre_shapes = [(1, 2048)] if quick else [(1, 2048), (1, 8192), (8, 1024), (4, 4096)]
        dec_batches, dec_kv = ((1, 64), (2048,)) if quick else ((1, 16, 64, 256), (512, 2048, 8192, 32768))
        sm_blocks = (0, 8, 32) if quick else (0, 2, 4, 8, 16, 32, 64)
        idle_s = 2.0 if quick else 5.0
    else:
        dec, pre = (1, 8), (64,)
        gemm_models = models[:1] if quick else models
        copy_bytes = [2**16, 2**22]
        tokens, hiddens = (8, 256), (64,)
        pre_shapes = [(1, 64)]
        dec_batches, dec_kv = (1, 4), (64,)
        sm_blocks = (0, 8)
        idle_s = 0.5
    dt = {"dtype": dtype}
    parts: dict[str, list[Bench]] = {"gemm": [], "memory": [], "attention": [], "power": []}
    for s in gemm_shapes(gemm_models, dec, pre):
        parts["gemm"].append(Bench("gemm", {**s, **dt}))
    for n in copy_bytes:
        parts["memory"].append(Bench("hbm_copy", {"bytes": n, **dt}))
    for t in tokens:
        for h in hiddens:
            for op in ("add", "silu_mul"):
                parts["memory"].append(Bench("elementwise", {"op": op, "tokens": t, "hidden": h, **dt}))
            for op in ("rms_norm_hf", "rms_norm_fused"):
                parts["memory"].append(Bench("norm", {"op": op, "tokens": t, "hidden": h, **dt}))
    layouts = attention_layouts(models[:1] if quick else models)
    for lay in layouts:
        for b, s in pre_shapes:
            parts["attention"].append(Bench("attention_prefill", {**lay, "batch": b, "seq": s, **dt}))
        for b in dec_batches:
            for kv in dec_kv:
                if b * kv * lay["kv_heads"] * lay["head_dim"] * 2 * 2 > 16 * 2**30:
                    continue  # K and V over 16 GiB: no real decode batch holds that
                parts["attention"].append(Bench("attention_decode", {**lay, "batch": b, "kv_len": kv, **dt}))
    parts["power"].append(Bench("idle", {"seconds": idle_s}))
    parts["power"].append(Bench("static", {"seconds": idle_s}))
    sm_gemm = gemm_shapes(models[:1], [], [pre[0]])
    big = max(sm_gemm, key=lambda s: s["m"] * s["n"] * s["k"])
    for k in sm_blocks:
        parts["power"].append(Bench("sm_contention", {"m": big["m"], "n": big["n"], "k": big["k"], "blocks": k, **dt}))
    return parts


# ---- running --------------------------------------------------------------------------------------
def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _elt(name: str) -> int:
    import torch

    return torch.empty((), dtype=_dtype(name)).element_size()


def _sync_for(device: str) -> Callable[[], None]:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _summary(t: Timing) -> dict[str, Any]:
    return {
        "iters": t.iters, "repeats": t.repeats, "time_s": t.time_s, "time_s_min": t.time_s_min,
        "time_s_spread": t.time_s_spread, "energy_j": t.energy_j, "avg_power_w": t.avg_power_w,
        "energy_source": t.energy_source, "energy_unavailable_reason": t.unavailable_reason,
    }


def _rates(out: dict[str, Any], time_s: float, energy_j: float | None) -> dict[str, Any]:
    d = dict(out)
    if time_s > 0:
        if d.get("flops"):
            d["tflops_per_s"] = d["flops"] / time_s / 1e12
        if d.get("bytes"):
            d["gb_per_s"] = d["bytes"] / time_s / 1e9
    if energy_j is not None:
        if d.get("flops"):
            d["pj_per_flop"] = energy_j / d["flops"] * 1e12
        if d.get("bytes"):
            d["pj_per_byte"] = energy_j / d["bytes"] * 1e12
    return d


def _work(bench: Bench, device: str) -> tuple[Callable[[], object], dict[str, Any]]:
    """The callable to time and its work (FLOPs, HBM bytes) for the compute and memory kinds."""
    import torch
    import torch.nn.functional as F

    p, dev = bench.params, device
    dt = _dtype(p["dtype"])
    e = _elt(p["dtype"])
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape: int) -> Any:
        return torch.randn(*shape, device=dev, dtype=dt, generator=g)

    if bench.kind == "gemm":
        m, n, k = p["m"], p["n"], p["k"]
        x, w = rnd(m, k), rnd(n, k)
        return (lambda: F.linear(x, w)), {"flops": 2 * m * n * k, "bytes": (m * k + n * k + m * n) * e}
    if bench.kind == "hbm_copy":
        n = p["bytes"] // e
        src, dst = rnd(n), torch.empty(n, device=dev, dtype=dt)
        return (lambda: dst.copy_(src)), {"bytes": 2 * n * e}
    if bench.kind in ("elementwise", "norm"):
        t, h, op = p["tokens"], p["hidden"], p["op"]
        a, b = rnd(t, h), rnd(t, h)
        if op == "add":
            out = torch.empty_like(a)
            return (lambda: torch.add(a, b, out=out)), {"flops": t * h, "bytes": 3 * t * h * e}
        if op == "silu_mul":  # SwiGLU: silu(gate) * up, two kernels (the silu goes through HBM)
            return (lambda: F.silu(a) * b), {"flops": 5 * t * h, "bytes": 5 * t * h * e}
        weight = rnd(h)
        if op == "rms_norm_hf":  # as LlamaRMSNorm: in f32, several kernels

            def hf_norm() -> Any:
                x = a.to(torch.float32)
                var = x.pow(2).mean(-1, keepdim=True)
                return weight * (x * torch.rsqrt(var + 1e-6)).to(dt)

            return hf_norm, {"flops": 4 * t * h, "bytes": 2 * t * h * e}
        if op == "rms_norm_fused":
            return (lambda: F.rms_norm(a, (h,), weight, 1e-6)), {"flops": 4 * t * h, "bytes": 2 * t * h * e}
        raise UnknownNameError(f"{bench.kind} op", op, ("add", "silu_mul", "rms_norm_hf", "rms_norm_fused"))
    if bench.kind in ("attention_prefill", "attention_decode"):
        nh, nkv, d, b = p["heads"], p["kv_heads"], p["head_dim"], p["batch"]
        if bench.kind == "attention_prefill":
            s = p["seq"]
            q, k, v = rnd(b, nh, s, d), rnd(b, nkv, s, d), rnd(b, nkv, s, d)
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
            flops = 2 * 2 * b * nh * s * s * d // 2  # QK^T and PV, half of the square (causal)
            return fn, {"flops": flops, "bytes": (2 * b * nh * s * d + 2 * b * nkv * s * d) * e}
        kv = p["kv_len"]
        q, k, v = rnd(b, nh, 1, d), rnd(b, nkv, kv, d), rnd(b, nkv, kv, d)
        fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
        return fn, {"flops": 2 * 2 * b * nh * kv * d, "bytes": (2 * b * nkv * kv * d + 2 * b * nh * d) * e}
    raise AssertionError(bench.kind)


def run_bench(
    bench: Bench,
    *,
    device: str,
    meter: Meter,
    warmup: int = 2,
    repeats: int = 3,
    min_window_s: float | None = None,
) -> dict[str, Any]:
    """Run one benchmark; returns ``{"kind", "params", "status", "result", "derived", "windows"}``.

    ``status`` is "ok", or "skipped" with a ``reason`` (e.g. a power benchmark without an energy
    meter, SM contention without a GPU and Triton). Times and energies in ``result`` are per call.
    """
    base: dict[str, Any] = {"kind": bench.kind, "params": bench.params}
    if min_window_s is None:
        min_window_s = 0.2 if device.startswith("cuda") else 0.01
    if bench.kind in ("idle", "static"):
        if not meter.energy_available:
            return {**base, "status": "skipped", "reason": f"{bench.kind} power needs an energy meter "
                    f"({meter.unavailable_reason})"}
        return {**base, **_run_power(bench, device, meter, repeats)}
    if bench.kind == "sm_contention":
        return {**base, **_run_contention(bench, device, meter, warmup, repeats, min_window_s)}
    fn, work = _work(bench, device)
    copies = _copies(work, device)
    if copies > 1:  # each call on other buffers: a replay reads HBM, not the L2 the last call filled
        fn = rotating([fn] + [_work(bench, device)[0] for _ in range(copies - 1)])
    fn, calls, graph_note = _graphed(fn, device, period=copies)
    timing = time_windows(fn, meter, bench.key, warmup=warmup, repeats=repeats, min_window_s=min_window_s,
                          sync=_sync_for(device))
    timing = _per_call(timing, calls)
    result = {**_summary(timing), "calls_per_iter": calls, "cuda_graph": device.startswith("cuda") and not graph_note,
              "buffer_copies": copies, "rotated_bytes": copies * int(work.get("bytes") or 0)}
    if graph_note:
        result["note"] = graph_note
    return {
        **base, "status": "ok", "result": result, "derived": _rates(work, timing.time_s, timing.energy_j),
        "windows": [w.to_dict() for w in timing.windows],
    }


#: Bytes the copies of a small benchmark's buffers span together: four times the largest L2 of the
#: GPUs here (B200, 126 MB), so a buffer is evicted before it is used again.
ROTATE_BYTES = 512 * 2**20
#: At most this many copies (a tiny kernel would otherwise allocate thousands).
MAX_COPIES = 64


def _copies(work: dict[str, Any], device: str) -> int:
    """Copies of a benchmark's buffers to rotate through on a GPU so that their bytes together exceed
    ``ROTATE_BYTES`` (1: large enough alone, or a CPU).

    >>> _copies({"bytes": 32 * 2**20}, "cuda:0"), _copies({"bytes": 2**30}, "cuda:0"), _copies({"bytes": 8}, "cpu")
    (16, 1, 1)
    """
    nbytes = work.get("bytes") or 0
    if not device.startswith("cuda") or nbytes <= 0 or nbytes >= ROTATE_BYTES:
        return 1
    return min(MAX_COPIES, math.ceil(ROTATE_BYTES / nbytes))


def rotating(fns: list[Callable[[], object]]) -> Callable[[], object]:
    """One callable that runs ``fns`` in turn, one per call.

    >>> calls = []
    >>> f = rotating([lambda: calls.append(0), lambda: calls.append(1)])
    >>> for _ in range(3): f()
    >>> calls
    [0, 1, 0]
    """
    it = itertools.cycle(fns)
    return lambda: next(it)()


def _per_call(t: Timing, calls: int) -> Timing:
    if calls == 1:
        return t
    return replace(t, iters=t.iters * calls, time_s=t.time_s / calls, time_s_min=t.time_s_min / calls,
                   energy_j=None if t.energy_j is None else t.energy_j / calls)


def _graphed(fn: Callable[[], object], device: str, period: int = 1) -> tuple[Callable[[], object], int, str | None]:
    """On a GPU, ``fn`` called ``calls`` times inside one CUDA graph, so that small kernels are timed
    back to back rather than at the pace of Python's launches; ``calls`` is a multiple of ``period``
    (the buffer copies ``fn`` rotates through), so consecutive replays keep the rotation's order.
    Returns (replay, calls, note)."""
    if not device.startswith("cuda"):
        return fn, 1, None
    import torch

    try:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        one = (time.perf_counter() - t0) / 10
        calls = max(1, min(256, math.ceil(2e-3 / max(one, 1e-7))))  # a replay of >= ~2 ms of launches
        calls = period * math.ceil(calls / period)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        torch.cuda.synchronize()
    except Exception as exc:  # a kernel that cannot be captured is timed eagerly, and says so
        return fn, 1, f"CUDA graph capture failed, eager: {type(exc).__name__}: {exc}"[:300]
    return graph.replay, calls, None


def _run_power(bench: Bench, device: str, meter: Meter, repeats: int) -> dict[str, Any]:
    """Idle: nothing runs. Static: one SM spins (``torch.cuda._sleep``), so clocks are up but
    almost no dynamic energy is spent. Windows of ``seconds`` each, after a settling pause."""
    import torch

    seconds = float(bench.params["seconds"])
    sync = _sync_for(device)
    if bench.kind == "static" and not hasattr(torch.cuda, "_sleep"):
        return {"status": "skipped", "reason": "this torch build has no torch.cuda._sleep spin kernel"}
    sync()
    time.sleep(min(2.0, seconds / 2))  # let the previous work's power decay
    windows = []
    for _ in range(repeats):
        with meter.window(bench.key) as w:
            if bench.kind == "idle":
                time.sleep(seconds)
            else:
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    torch.cuda._sleep(1_000_000)  # about 0.5 ms of one SM spinning
                    torch.cuda.synchronize()
        windows.append(w.record)
    timing = Timing.from_windows(windows, 1)
    return {"status": "ok", "result": _summary(timing), "derived": {}, "windows": [x.to_dict() for x in windows]}


_KERNEL: Any = None


def _persistent_copy_kernel() -> Any:
    """A Triton kernel whose ``grid`` blocks copy a buffer ``loops`` times: it holds exactly that many
    SMs' worth of blocks for its whole run, as a collective's communication kernel does."""
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl

        @triton.jit(do_not_specialize=["loops"])  # one compiled kernel for every loop count
        def persistent_copy(src, dst, n, loops, BLOCK: tl.constexpr):  # noqa: N803
            pid = tl.program_id(0)
            nprog = tl.num_programs(0)
            for _ in range(loops):
                for start in range(pid * BLOCK, n, nprog * BLOCK):
                    offs = start + tl.arange(0, BLOCK)
                    mask = offs < n
                    tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)

        _KERNEL = persistent_copy
    return _KERNEL


def _run_contention(
    bench: Bench, device: str, meter: Meter, warmup: int, repeats: int, min_window_s: float
) -> dict[str, Any]:
    """GEMM time alone and while a persistent copy kernel with ``blocks`` blocks runs on a second stream."""
    if not device.startswith("cuda"):
        return {"status": "skipped", "reason": "SM contention needs a GPU (a copy kernel on a second stream)"}
    try:
        _persistent_copy_kernel()
    except ImportError:
        return {"status": "skipped", "reason": "SM contention needs Triton (shipped with CUDA builds of torch)"}
    import torch

    p = bench.params
    blocks = int(p["blocks"])
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    if blocks >= sms:
        return {"status": "skipped", "reason": f"{blocks} blocks >= the GPU's {sms} SMs"}
    gemm = Bench("gemm", {k: p[k] for k in ("m", "n", "k", "dtype")})
    fn, work = _work(gemm, device)
    alone = time_windows(fn, meter, bench.key + ":alone", warmup=warmup, repeats=repeats,
                         min_window_s=min_window_s, sync=torch.cuda.synchronize)
    out: dict[str, Any] = {"status": "ok", "alone": _summary(alone), "sms": sms}
    if blocks == 0:
        out["result"] = _summary(alone)
        out["derived"] = _rates(work, alone.time_s, alone.energy_j)
        out["windows"] = [w.to_dict() for w in alone.windows]
        return out
    kernel = _persistent_copy_kernel()
    n = 64 * 2**20  # 64 Mi elements (128 MiB in bf16): larger than L2, so the copy uses HBM
    src = torch.randn(n, device=device, dtype=_dtype(p["dtype"]))
    dst = torch.empty_like(src)
    side = torch.cuda.Stream()

    def launch(loops: int) -> None:
        with torch.cuda.stream(side):
            kernel[(blocks,)](src, dst, n, loops, BLOCK=4096, num_warps=8)

    launch(2)  # compile and warm up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    launch(4)
    torch.cuda.synchronize()
    per_loop = (time.perf_counter() - t0) / 4
    gemm_window = alone.time_s * alone.iters
    loops = max(1, math.ceil(1.5 * gemm_window / max(per_loop, 1e-9)))  # outlasts the GEMMs
    windows, gemm_times = [], []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with meter.window(bench.key) as w:
            launch(loops)
            start.record()
            for _ in range(alone.iters):
                fn()
            end.record()
        windows.append(w.record)
        gemm_times.append(start.elapsed_time(end) / 1000 / alone.iters)
    gemm_times.sort()
    contended = gemm_times[len(gemm_times) // 2]
    window = Timing.from_windows(windows, 1)
    out["result"] = {
        "time_s": contended, "slowdown": contended / alone.time_s, "copy_loops": loops,
        "copy_time_s_per_loop_alone": per_loop, "window": _summary(window),
    }
    out["derived"] = _rates(work, contended, None)
    out["windows"] = [w.to_dict() for w in windows]
    return out
