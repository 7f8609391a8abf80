"""MoE pass and expert-load model: golden IR, routing distributions, straggler factor, errors."""

from __future__ import annotations

import pytest
from test_pass_graphs import llama_decode, moe_decode, traced

from energylens.errors import ConfigError
from energylens.ir.text import print_graph
from energylens.ir.verify import verify_graph
from energylens.passes.moe import Moe, expert_load, expert_ops, graph_expert_load, routing_of


def test_golden_moe(golden) -> None:
    out = Moe(routing="zipf", skew=1.2, seed=3)(traced("tiny_qwen3_moe_config"))
    verify_graph(out)
    golden("pass_moe_zipf_qwen3_moe_decode", print_graph(out))


def test_annotates_routing() -> None:
    g = moe_decode()
    assert [op.result.name for op in expert_ops(g)] == ["egate", "eup", "edown"]
    out = Moe(routing="histogram", histogram=(1, 1, 1, 1, 2, 2, 2, 8))(g)
    assert routing_of(out) == ("histogram", 1.0, (1, 1, 1, 1, 2, 2, 2, 8), 0)
    assert routing_of(g) == ("uniform", 1.0, None, 0)
    assert list(out.body) == list(g.body)                      # ops untouched
    assert Moe()(llama_decode()) == llama_decode()             # dense: nothing to annotate
    with pytest.raises(ConfigError, match="3 entries but the model has 8 experts"):
        Moe(routing="histogram", histogram=(1, 2, 3))(g)


def test_expert_load_counts_and_straggler() -> None:
    u = expert_load(100_000, 128, 8, 8, "uniform", seed=0)
    assert sum(u.per_expert) == sum(u.per_rank) == 800_000
    assert 1.0 <= u.straggler < 1.01                            # many tokens: balanced
    small = expert_load(16, 128, 8, 8, "uniform", seed=0)
    assert small.straggler > u.straggler                        # few tokens: lumpy
    z = expert_load(100_000, 128, 8, 8, "zipf", seed=0, skew=1.2)
    assert z.straggler > 1.2
    assert expert_load(100_000, 128, 8, 8, "zipf", seed=0, skew=1.2) == z      # deterministic
    assert expert_load(4096, 128, 8, 1, "zipf", seed=0).straggler == 1.0         # one rank: nobody waits
    h = expert_load(1000, 4, 1, 2, "histogram", histogram=[3, 1, 0, 0])
    assert h.per_rank[1] == 0 and h.straggler == 2.0
    # a token picks distinct experts: an expert expects at most num_tokens slots
    capped = expert_load(100_000, 8, 2, 2, "zipf", skew=5.0)
    assert max(capped.per_expert) <= 100_000 * 1.01


def test_graph_expert_load_uses_annotation() -> None:
    g = Moe(routing="zipf", skew=1.5, seed=1)(moe_decode())
    assert graph_expert_load(g, 4096, 2) == expert_load(4096, 8, 2, 2, "zipf", 1, skew=1.5)


def test_expert_load_errors() -> None:
    with pytest.raises(ConfigError, match="ep=3 does not divide the 128 experts"):
        expert_load(10, 128, 8, 3)
    with pytest.raises(ConfigError, match="unknown routing 'pareto'"):
        expert_load(10, 128, 8, 2, "pareto")
    with pytest.raises(ConfigError, match="needs histogram"):
        Moe(routing="histogram")


def test_histogram_must_be_finite_and_cover_top_k_experts() -> None:
    """NaN passed the old `c < 0` check and fewer than top_k experts with tokens divided by zero
    in the top_k cap: both reached numpy as a traceback."""
    with pytest.raises(ConfigError, match="entry 1 is nan"):
        Moe(routing="histogram", histogram=(1.0, float("nan"), 1.0))
    with pytest.raises(ConfigError, match="entry 0 is inf"):
        expert_load(10, 4, 2, 1, "histogram", histogram=[float("inf"), 1, 1, 1])
    with pytest.raises(ConfigError, match="3 experts with tokens, but each token goes to top_k=8"):
        expert_load(10, 16, 8, 2, "histogram", histogram=[1, 1, 1] + [0] * 13)
    with pytest.raises(ConfigError, match="skew must be a finite number"):
        Moe(routing="zipf", skew=float("nan"))
