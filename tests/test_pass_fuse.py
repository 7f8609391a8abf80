"""Fuse pass: golden IR, FlashAttention grouping, prologue/epilogue patterns, HBM semantics, purity."""

from __future__ import annotations

import copy

import pytest
from test_pass_graphs import llama_decode, moe_decode, traced

from energylens.ir.core import Collective, Gather, Graph
from energylens.ir.text import print_graph
from energylens.ir.verify import verify_graph
from energylens.passes.fuse import Fuse, fused_hbm_bytes, kernels, on_chip_values
from energylens.passes.shard import Shard


def _groups(g: Graph) -> dict[str, int | None]:
    return {op.result.name: op.fusion_group for op, _ in g.walk()}


@pytest.mark.parametrize("config", ["tiny_llama_config", "tiny_qwen3_moe_config"])
def test_golden_fuse(config: str, golden) -> None:
    g = traced(config)
    out = Fuse()(g)
    verify_graph(out)
    name = "llama" if "llama" in config else "qwen3_moe"
    golden(f"pass_fuse_{name}_decode", print_graph(out))


def test_golden_fuse_after_shard(golden) -> None:
    out = Fuse()(Shard(tp=2)(traced("tiny_llama_config", "prefill")))
    verify_graph(out)
    golden("pass_shard_tp2_fuse_llama_prefill", print_graph(out))


def test_attention_is_one_kernel_and_scores_stay_on_chip() -> None:
    g = Fuse()(llama_decode())
    grp = _groups(g)
    assert grp["scores"] is not None and grp["scores"] == grp["probs"] == grp["ctx"]
    chip = on_chip_values(g)
    assert {"scores", "probs"} <= chip and "ctx" not in chip


def test_gemm_patterns() -> None:
    grp = _groups(Fuse()(llama_decode()))
    # rms_norm prologue + q/k/v as one GEMM + RoPE epilogue
    assert grp["sq"] == grp["xw"] == grp["q"] == grp["k"] == grp["v"] == grp["qr"] == grp["kr"]
    # SiLU gating epilogue of gate_up
    assert grp["gate"] == grp["up"] == grp["act"] == grp["gu"]
    # residual add epilogue of the down projection; o_proj likewise
    assert grp["down"] == grp["y"] and grp["o"] == grp["x1"]
    assert grp["down"] != grp["gate"]
    # the scatter (KV-cache write) and gathers stay on their own
    assert grp["kc"] is None and grp["x"] is None


def test_collectives_and_gathers_never_fused() -> None:
    g = Fuse()(Shard(tp=2, ep=2)(moe_decode()))
    verify_graph(g)
    for op, _ in g.walk():
        if isinstance(op, Collective | Gather):
            assert op.fusion_group is None, op.result.name
    # the residual add after an all_reduce cannot be the GEMM's epilogue
    grp = _groups(g)
    assert grp["x1"] != grp["o.partial"]


def test_fuse_is_pure_and_idempotent() -> None:
    g = moe_decode()
    before = copy.deepcopy(g)
    once = Fuse()(g)
    assert g == before
    assert Fuse()(once) == once
    assert Fuse()(Fuse(attention=False, gemm=False, chains=False)(g)) == once


def test_fuse_changes_only_fusion_groups() -> None:
    g = llama_decode()
    out = Fuse()(g)
    for (a, _), (b, _) in zip(g.walk(), out.walk(), strict=True):
        assert a.__class__ is b.__class__ and a.result == b.result and a.operands == b.operands


def test_kernels_read_and_write_once() -> None:
    g = Fuse()(llama_decode())
    ks = list(kernels(g))
    attn = next(k for k in ks if any(op.result.name == "scores" for op in k.ops))
    assert [v.name for v in attn.writes] == ["ctx"]
    assert {v.name for v in attn.reads} == {"qr", "kc", "vc"}
    qkv = next(k for k in ks if any(op.result.name == "q" for op in k.ops))
    assert [v.name for v in qkv.reads].count("xw") == 0 and "x" in [v.name for v in qkv.reads]
    sizes = g.bind(B=2, S=1, K=8)
    # the attention kernel moves q, the two caches and the output, never the B x g x r x S x K scores
    q_bytes = 2 * (2 * 1 * 2 * 2 * 16)                       # qr read and ctx written: [B,S,g,r,d] bf16
    b = 2 * q_bytes + 2 * 2 * (2 * 2 * 8 * 16)
    assert fused_hbm_bytes(attn, sizes) == b
    assert sum(k.count for k in ks) < sum(1 for _ in llama_decode().walk())
