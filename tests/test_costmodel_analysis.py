"""Cost analysis on hand-built IR graphs: roofline limits, attention, fusion, unknown ops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from energylens.costmodel.analysis import CostAnalysis, WorkAnalysis, price_graph
from energylens.costmodel.compute import gemm_efficiency, op_time_s
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.profile import default_profile
from energylens.errors import EstimateError
from energylens.ir.core import Collective, Decl, Einsum, Elementwise, Graph, Op, Reduce, TensorType, Value

GPU = get_gpu("H100-SXM")
PROF = default_profile(GPU)


def V(name, dims, dtype="bf16"):
    return Value(name, TensorType(tuple(dims), dtype))


def linear_graph(h=8192, f=8192):
    x, w = V("x", ("B", "S", "h")), V("w", ("h", "f"))
    op = Einsum(result=V("y", ("B", "S", "f")), operands=(x, w), spec="bsh,hf->bsf")
    return Graph(name="g", dims=(("B", None), ("S", None), ("K", None), ("h", h), ("f", f)),
                 decls=(Decl(w, "param"), Decl(x, "input")), body=(op,), outputs=("y",))


def test_gemv_is_bandwidth_bound():
    g = linear_graph()
    (p,) = price_graph(g, {"B": 1, "S": 1, "K": 1}, GPU, PROF)
    weight_bytes = 8192 * 8192 * 2
    mem_t = p.cost.hbm_bytes / (GPU.hbm_bandwidth_bytes_per_s * PROF.mem_efficiency)
    assert p.cost.hbm_bytes == pytest.approx(weight_bytes + 2 * 8192 * 2)
    assert p.cost.time_s == pytest.approx(mem_t + PROF.kernel_overhead_s)
    assert p.cost.flops == pytest.approx(2 * 8192 * 8192)


def test_big_gemm_is_compute_bound_near_peak():
    g = linear_graph()
    (p,) = price_graph(g, {"B": 8, "S": 4096, "K": 1}, GPU, PROF)
    flops = 2 * 8 * 4096 * 8192 * 8192
    eff = gemm_efficiency(8192, PROF)  # rows = min(M = 8*4096 tokens, N = 8192 features)
    roofline = flops / (GPU.bf16_dense_tflops * 1e12 * eff) + PROF.kernel_overhead_s
    assert op_time_s(p.work, GPU, PROF) == pytest.approx(roofline)
    assert p.cost.time_s >= roofline * (1 - 1e-12)  # the TDP cap may stretch it, never shorten it
    assert eff > 0.99 * PROF.compute_efficiency


def test_efficiency_grows_with_rows():
    effs = [gemm_efficiency(r, PROF) for r in (1, 8, 64, 512, 4096)]
    assert effs == sorted(effs) and effs[-1] <= PROF.compute_efficiency


def attention_graph(causal):
    q, k, v = V("q", ("B", "g", "r", "S", "d")), V("k", ("B", "g", "K", "d")), V("v", ("B", "g", "K", "d"))
    s = V("s", ("B", "g", "r", "S", "K"))
    p = V("p", ("B", "g", "r", "S", "K"))
    ops = (Einsum(result=s, operands=(q, k), spec="bgrsd,bgkd->bgrsk", causal=causal),
           Reduce(result=p, operands=(s,), fn="softmax", dims=("K",)),
           Einsum(result=V("o", ("B", "g", "r", "S", "d")), operands=(p, v), spec="bgrsk,bgkd->bgrsd"))
    return Graph(name="a", dims=(("B", None), ("S", None), ("K", None), ("g", 8), ("r", 4), ("d", 128)),
                 decls=(Decl(q, "input"), Decl(k, "input"), Decl(v, "input")), body=ops, outputs=("o",))


def test_attention_scores_stay_on_chip_and_decode_reads_kv():
    g = attention_graph(causal=False)
    work = WorkAnalysis(g, {"B": 4, "S": 1, "K": 4096}, GPU).run()
    kv_bytes = 4 * 8 * 4096 * 128 * 2
    scores, softmax, pv = (w for _, _, w in work)
    assert scores.hbm_bytes == pytest.approx(kv_bytes + 4 * 32 * 128 * 2)  # q + K, no scores written
    assert softmax.hbm_bytes == 0 and softmax.kernels == 0 and pv.kernels == 0
    assert scores.kv == 1
    total_t = sum(c.time_s for _, _, c in CostAnalysis(g, {"B": 4, "S": 1, "K": 4096}, GPU, PROF).run())
    assert total_t >= 2 * kv_bytes / GPU.hbm_bandwidth_bytes_per_s  # K and V both streamed


def test_causal_halves_prefill_attention_flops():
    full = WorkAnalysis(attention_graph(False), {"B": 1, "S": 2048, "K": 2048}, GPU).run()[0][2]
    causal = WorkAnalysis(attention_graph(True), {"B": 1, "S": 2048, "K": 2048}, GPU).run()[0][2]
    assert causal.tc_flops / full.tc_flops == pytest.approx(0.5, abs=0.01)


def test_pointwise_chain_is_fused():
    x, w = V("x", ("B", "S", "h")), V("w", ("h", "f"))
    a, b = V("a", ("B", "S", "h"), "f32"), V("b", ("B", "S", "h"))
    ops = (Elementwise(result=a, operands=(x,), fn="cast"), Elementwise(result=b, operands=(a,), fn="cast"),
           Einsum(result=V("y", ("B", "S", "f")), operands=(b, w), spec="bsh,hf->bsf"))
    g = Graph(name="g", dims=(("B", None), ("S", None), ("K", None), ("h", 64), ("f", 64)),
              decls=(Decl(w, "param"), Decl(x, "input")), body=ops, outputs=("y",))
    first, second, _ = (w for _, _, w in WorkAnalysis(g, {"B": 1, "S": 16, "K": 1}, GPU).run())
    assert first.kernels == 1 and second.kernels == 0
    assert first.hbm_bytes == pytest.approx(16 * 64 * 2)  # reads x; its f32 result stays on chip
    assert second.hbm_bytes == pytest.approx(16 * 64 * 2)  # writes b for the GEMM


@dataclass(frozen=True, slots=True, kw_only=True)
class Mystery(Op):
    kind: ClassVar[str] = "mystery"


def test_unknown_op_kind_raises_not_zero():
    x = V("x", ("B", "S", "h"))
    g = Graph(name="g", dims=(("B", None), ("S", None), ("K", None), ("h", 8)), decls=(Decl(x, "input"),),
              body=(Mystery(result=V("y", ("B", "S", "h")), operands=(x,)),), outputs=("y",))
    with pytest.raises(EstimateError, match="no cost rule for op kind 'mystery'"):
        price_graph(g, {"B": 1, "S": 1, "K": 1}, GPU, PROF)


def test_collective_is_not_priced_silently():
    x = V("x", ("B", "S", "h"))
    op = Collective(result=V("y", ("B", "S", "h")), operands=(x,), fn="all_reduce", axis="tp")
    g = Graph(name="g", dims=(("B", None), ("S", None), ("K", None), ("h", 8)), decls=(Decl(x, "input"),),
              body=(op,), outputs=("y",))
    with pytest.raises(EstimateError, match="all_reduce"):
        price_graph(g, {"B": 1, "S": 1, "K": 1}, GPU, PROF)


def test_unbound_symbol_raises():
    with pytest.raises(EstimateError):
        price_graph(linear_graph(), {"B": 1}, GPU, PROF)
