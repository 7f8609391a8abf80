"""MoE: expected distinct experts and expert einsums that read only the experts hit."""

from __future__ import annotations

import pytest

from energylens.costmodel.analysis import WorkAnalysis
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.moe import expected_distinct_experts
from energylens.errors import EstimateError
from energylens.ir.core import Decl, Einsum, Graph, TensorType, Value


@pytest.mark.parametrize("E,k,T", [(128, 8, 1), (128, 8, 8), (64, 2, 100), (8, 2, 3)])
def test_distinct_experts_formula(E, k, T):
    assert expected_distinct_experts(E, k, T) == pytest.approx(E * (1 - (1 - k / E) ** T))


def test_distinct_experts_limits():
    assert expected_distinct_experts(128, 8, 0) == 0
    assert expected_distinct_experts(128, 8, 1) == pytest.approx(8)
    assert expected_distinct_experts(128, 8, 1e5) == pytest.approx(128)
    vals = [expected_distinct_experts(128, 8, t) for t in (1, 2, 8, 64, 512)]
    assert vals == sorted(vals) and all(v <= 128 for v in vals)


def test_bad_routing_raises():
    with pytest.raises(EstimateError):
        expected_distinct_experts(8, 9, 1)


def expert_graph():
    x = Value("x", TensorType(("e", "C", "h"), "bf16"))
    w = Value("w", TensorType(("e", "h", "m"), "bf16"))
    op = Einsum(result=Value("y", TensorType(("e", "C", "m"), "bf16")), operands=(x, w), spec="ech,ehm->ecm")
    return Graph(name="moe", dims=(("B", None), ("S", None), ("K", None), ("C", "B*S*8/128"), ("e", 128),
                                   ("h", 2048), ("m", 768)),
                 decls=(Decl(w, "param"), Decl(x, "input")), body=(op,), outputs=("y",),
                 attrs=(("num_experts", "128"), ("top_k", "8")))


@pytest.mark.parametrize("tokens", [1, 8, 64, 4096])
def test_expert_einsum_reads_only_hit_experts(tokens):
    (_, _, w) = WorkAnalysis(expert_graph(), {"B": tokens, "S": 1, "K": 1}, get_gpu("H100")).run()[0]
    hit = expected_distinct_experts(128, 8, tokens)
    weight = hit * 2048 * 768 * 2
    acts = tokens * 8 * (2048 + 768) * 2
    assert w.hbm_bytes == pytest.approx(weight + acts)
    assert w.tc_flops == pytest.approx(2 * tokens * 8 * 2048 * 768)
    assert w.rows == pytest.approx(tokens * 8 / hit)
