"""Shard pass: golden IR, FLOPs conservation, identity at tp=ep=dp=1, purity, errors, cost helpers."""

from __future__ import annotations

import copy
import math

import pytest
from test_pass_graphs import llama_decode, moe_decode, traced

from energylens.errors import ShardingError
from energylens.ir.core import Collective, Einsum, Graph
from energylens.ir.text import parse_graph, print_graph
from energylens.ir.verify import verify_graph
from energylens.passes.shard import (
    Shard,
    check_parallel,
    collective_bytes,
    local_dim_sizes,
    mesh_of,
    replication,
    valid_ep_values,
    valid_tp_values,
)
from energylens.typing import Parallel

BINDING = {"B": 4, "S": 1, "K": 64}


@pytest.fixture(scope="module")
def llama() -> Graph:
    return traced("tiny_llama_config")


@pytest.fixture(scope="module")
def qwen_moe() -> Graph:
    return traced("tiny_qwen3_moe_config")


def _collectives(g: Graph) -> list[tuple[str, str]]:
    return [(op.fn, op.axis) for op, _ in g.walk() if isinstance(op, Collective)]


# -- golden before/after --------------------------------------------------------------------------

def test_golden_llama_tp2(llama: Graph, golden) -> None:
    golden("pass_llama_decode", print_graph(llama))
    out = Shard(tp=2)(llama)
    verify_graph(out)
    golden("pass_shard_tp2_llama_decode", print_graph(out))


def test_golden_moe_tp2_ep2(qwen_moe: Graph, golden) -> None:
    golden("pass_qwen3_moe_decode", print_graph(qwen_moe))
    out = Shard(tp=2, ep=2)(qwen_moe)
    verify_graph(out)
    golden("pass_shard_tp2_ep2_qwen3_moe_decode", print_graph(out))


def test_golden_moe_dp2_ep2(qwen_moe: Graph, golden) -> None:
    out = Shard(dp=2, ep=2)(qwen_moe)
    verify_graph(out)
    golden("pass_shard_dp2_ep2_qwen3_moe_decode", print_graph(out))


def _moe_block(g: Graph) -> list[Collective]:
    return [op for op, c in g.walk() if isinstance(op, Collective) and op.source.module.startswith("model.layers.mlp")]


def test_tiny_qwen3_moe_tp2_ep2_is_one_all_reduce(qwen_moe: Graph) -> None:
    out = Shard(tp=2, ep=2)(qwen_moe)
    assert not [op for op, _ in out.walk() if isinstance(op, Collective) and op.fn == "all_to_all"]
    (ar,) = _moe_block(out)
    assert (ar.fn, ar.axis, ar.result.type.dims) == ("all_reduce", "tp", ("B", "S", "h"))
    sizes, mesh = out.bind(**BINDING), mesh_of(out)
    assert collective_bytes(ar, sizes, mesh) == 4 * 1 * sizes["h"] * 2      # [B, S, h] bf16, every token


def test_tiny_qwen3_moe_dp2_ep2_gathers_and_reduce_scatters(qwen_moe: Graph) -> None:
    out = Shard(tp=1, dp=2, ep=2)(qwen_moe)
    block = _moe_block(out)
    assert {(op.fn, op.axis) for op in block} == {("all_gather", "dp"), ("reduce_scatter", "dp")}
    sizes, mesh = out.bind(**BINDING), mesh_of(out)
    hidden = [op for op in block if op.result.type.dims == ("B", "S", "h")]
    assert [op.fn for op in hidden] == ["all_gather", "reduce_scatter"]     # around the experts
    assert all(collective_bytes(op, sizes, mesh) == 4 * 1 * sizes["h"] * 2 for op in hidden)
    names = [op.result.name for op, _ in out.walk()]
    experts = [i for i, n in enumerate(names) if n in ("moe_experts", "moe_experts_down")]
    assert names.index(hidden[0].result.name) < min(experts) and max(experts) < names.index(hidden[1].result.name)


def test_tiny_qwen3_moe_tp2_ep1_is_one_all_reduce_after_the_combine(qwen_moe: Graph) -> None:
    # vLLM without expert parallelism: experts split on m over tp, the down projection's partial sums
    # pass through the combine and one all_reduce of [tokens, h] sums them (not [e, C, h], top_k x more)
    out = Shard(tp=2)(qwen_moe)
    (ar,) = _moe_block(out)
    assert (ar.fn, ar.axis, ar.result.type.dims) == ("all_reduce", "tp", ("B", "S", "h"))
    assert ar.operands[0].name == "moe_experts_combine.partial"
    sizes, mesh = out.bind(**BINDING), mesh_of(out)
    assert collective_bytes(ar, sizes, mesh) == 4 * 1 * sizes["h"] * 2


@pytest.mark.parametrize("plan", [dict(dp=2), dict(tp=2, dp=2)], ids=["dp=2", "tp=2,dp=2"])
def test_tiny_qwen3_moe_dp2_ep1_gathers_tokens_and_reduce_scatters(qwen_moe: Graph, plan) -> None:
    out = Shard(**plan)(qwen_moe)
    verify_graph(out)
    block = _moe_block(out)
    assert all("e" not in op.result.type.dims for op in block)       # nothing per expert is communicated
    names = [op.result.name for op, _ in out.walk()]
    ops = {op.result.name: op for op, _ in out.walk()}
    assert [o.name for o in ops["moe_experts_dispatch"].operands] == ["mul_14.ag_dp", "topk.ag_dp"]
    assert ops["mul_14.ag_dp"].result.type.dims == ("B", "S", "h")
    combine = names.index("moe_experts_combine.partial")
    after = [(op.fn, op.axis) for op in block if names.index(op.result.name) > combine]
    assert after == [("reduce_scatter", "dp")] + ([("all_reduce", "tp")] if plan.get("tp") else [])
    assert ops["add_11"].sharding == (("B", "dp"),)                   # each replica's own tokens again
    sizes, mesh = out.bind(**BINDING), mesh_of(out)
    hidden = [op for op in block if op.result.type.dims == ("B", "S", "h")]
    assert all(collective_bytes(op, sizes, mesh) == 4 * 1 * sizes["h"] * 2 for op in hidden[:2])


def test_expert_partials_reduced_before_a_nonlinear_consumer() -> None:
    # the rule, not a pattern: a consumer that is not linear in the expert partial sums (here an
    # elementwise op before the combine) gets them all-reduced over etp first, per expert
    text = print_graph(moe_decode()).replace(
        "%moe = gather.combine[e] %edown,", "%edown2 = elementwise.silu %edown : bf16[e,C,h]\n"
        "    %moe = gather.combine[e] %edown2,")
    g = Shard(tp=2)(parse_graph(text))
    verify_graph(g)
    ops = {op.result.name: op for op, _ in g.walk()}
    assert (ops["edown"].fn, ops["edown"].axis) == ("all_reduce", "etp")
    assert ops["edown"].operands[0].name == "edown.partial"
    assert ops["moe"].operands[0].name == "edown2"                    # the combine's result is whole


@pytest.mark.parametrize("plan", [dict(tp=2, ep=2), dict(dp=2, ep=2), dict(tp=2, dp=2, ep=4),
                                  dict(tp=2), dict(dp=2), dict(tp=2, dp=2)],
                         ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_expert_flops_over_gpus_equal_unsharded(qwen_moe: Graph, plan) -> None:
    out = Shard(**plan)(qwen_moe)
    sizes, mesh = out.bind(**BINDING), mesh_of(out)
    gpus, ep = mesh["tp"] * mesh["dp"], mesh["ep"]
    experts = [op for op, _ in out.walk() if isinstance(op, Einsum) and all("e" in v.type.dims for v in op.operands)]
    assert experts
    for op in experts:
        local = local_dim_sizes(op, sizes, mesh)
        assert local["e"] == sizes["e"] / ep and local["C"] == sizes["C"]    # E/ep experts, all gathered tokens
        assert local["m"] == sizes["m"] / mesh["etp"]                         # ep = 1: m split over tp x dp
        assert gpus * 2 * math.prod(local[d] for d in op.all_dims) == 2 * math.prod(sizes[d] for d in op.all_dims)
        assert replication(op, sizes, mesh) == 1


def test_golden_moe_tp2(qwen_moe: Graph, golden) -> None:
    out = Shard(tp=2)(qwen_moe)
    verify_graph(out)
    golden("pass_shard_tp2_qwen3_moe_decode", print_graph(out))


# -- Megatron structure from the rules --------------------------------------------------------------

def test_megatron_llama_one_all_reduce_per_block() -> None:
    g = Shard(tp=2)(llama_decode())
    region = [op for op, count in g.walk() if count == 2]
    # attention and MLP each end in one all_reduce over tp; the embedding is vocab-parallel
    assert [(op.fn, op.axis) for op in region if isinstance(op, Collective)] == [("all_reduce", "tp")] * 2
    assert _collectives(g)[0] == ("all_reduce", "tp")          # vocab-parallel embedding
    assert _collectives(g)[-1] == ("all_gather", "tp")         # vocab-split logits gathered
    ops = {op.result.name: op for op, _ in g.walk()}
    assert ops["q"].sharding == (("g", "tp"),)                # column parallel
    assert ops["gate"].sharding == (("f", "tp"),)
    assert ops["o.partial"].sharding == (("g", "tp"),)        # row parallel -> partial sums
    assert ops["down.partial"].sharding == (("f", "tp"),)
    assert mesh_of(g) == {"tp": 2, "dp": 1, "ep": 1, "etp": 2}


def test_expert_parallel_is_vllms_all_reduce() -> None:
    # vLLM, ep = tp (dp 1): tokens are replicated after attention's all_reduce; each GPU runs its
    # E/ep experts on the tokens routed to them and one all_reduce over tp sums the MoE output
    g = Shard(tp=2, ep=2)(moe_decode())
    region = [(op.fn, op.axis) for op, c in g.walk() if c == 2 and isinstance(op, Collective)]
    assert region == [("all_reduce", "tp"), ("all_reduce", "tp")]
    ops = {op.result.name: op for op, _ in g.walk()}
    assert ops["disp"].sharding == (("e", "ep"),)               # dispatch to the local experts only
    assert ops["egate"].sharding == (("e", "ep"),)
    assert ops["moe.partial"].sharding == (("e", "ep"),)        # combine of local experts: partial sums
    assert ops["moe"].operands[0].type.dims == ("B", "S", "h")
    assert ops["router"].sharding == ()                        # router replicated


def test_expert_parallel_with_dp_gathers_and_reduce_scatters() -> None:
    # vLLM, ep = tp x dp: dispatch = all_gather of the replicas' tokens over dp, combine =
    # reduce_scatter over dp, then the all_reduce over tp within each replica
    g = Shard(tp=2, dp=2, ep=4)(moe_decode())
    verify_graph(g)
    region = [(op.fn, op.axis, op.operands[0].name) for op, c in g.walk() if c == 2 and isinstance(op, Collective)]
    assert region == [("all_reduce", "tp", "o.partial"), ("all_gather", "dp", "xw2"), ("all_gather", "dp", "topk"),
                      ("reduce_scatter", "dp", "moe.partial"), ("all_reduce", "tp", "moe.rs_dp")]
    ops = {op.result.name: op for op, _ in g.walk()}
    assert ops["disp"].operands[0].name == "xw2.ag_dp"
    assert ops["moe"].sharding == (("B", "dp"),)               # each replica's own tokens again
    assert ops["y"].sharding == (("B", "dp"),)


def test_ep_must_be_one_or_all_gpus() -> None:
    # vLLM has no ep < tp x dp (no expert tensor parallelism next to expert parallelism)
    with pytest.raises(ShardingError, match=r"ep=2 with tp x dp = 4 x 1 = 4 GPUs.*valid ep: 1, 4$"):
        Shard(tp=4, ep=2)(moe_decode())
    assert valid_ep_values(moe_decode(), 4) == [1, 4]


def test_data_parallel_splits_batch() -> None:
    g = Shard(tp=1, dp=2)(llama_decode())
    verify_graph(g)
    assert _collectives(g) == []                               # replicas never talk
    assert all(dict(op.sharding).get("B") == "dp" for op, _ in g.walk() if "B" in op.result.type.dims)


def test_kv_heads_replicated_when_tp_exceeds_them() -> None:
    g = Shard(tp=4)(llama_decode())                            # 4 heads, 2 KV heads
    ops = {op.result.name: op for op, _ in g.walk()}
    assert ops["q"].sharding == (("g", "tp"), ("r", "tp"))
    mesh = mesh_of(g)
    sizes = g.bind(**BINDING)
    assert local_dim_sizes(ops["q"], sizes, mesh)["g"] == 1 and local_dim_sizes(ops["q"], sizes, mesh)["r"] == 1
    assert replication(ops["q"], sizes, mesh) == 1
    assert replication(ops["k"], sizes, mesh) == 2             # each KV head on 2 GPUs


# -- properties --------------------------------------------------------------------------------------

PLANS = [dict(tp=2), dict(tp=4), dict(dp=2), dict(tp=2, dp=2), dict(tp=2, ep=2), dict(tp=4, ep=4),
         dict(tp=2, dp=2, ep=4), dict(tp=1, dp=2, ep=2), dict(tp=1, dp=4, ep=4)]


def _einsum_flops(g: Graph, sizes: dict[str, float]) -> float:
    return sum(2 * math.prod(sizes[d] for d in op.all_dims) * n for op, n in g.walk() if isinstance(op, Einsum))


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
@pytest.mark.parametrize("build", [llama_decode, moe_decode], ids=["llama", "moe"])
def test_sharding_conserves_flops(build, plan) -> None:
    g = build()
    if plan.get("ep", 1) > 1 and "e" not in g.dim_sizes:
        pytest.skip("dense model")
    out = Shard(**plan)(g)
    verify_graph(out)
    sizes = out.bind(**BINDING)
    mesh = mesh_of(out)
    gpus = mesh["tp"] * mesh["dp"]
    assert _einsum_flops(out, sizes) == _einsum_flops(g, sizes)
    total = 0.0
    for op, n in out.walk():
        if not isinstance(op, Einsum):
            continue
        local = local_dim_sizes(op, sizes, mesh)
        local_flops = 2 * math.prod(local[d] for d in op.all_dims)
        rep = replication(op, sizes, mesh)
        assert rep >= 1
        # sum over GPUs of the local FLOPs == global FLOPs x redundancy
        assert gpus * local_flops == pytest.approx(2 * math.prod(sizes[d] for d in op.all_dims) * rep)
        total += gpus * local_flops / rep * n
        router = any("e" in v.type.dims and "m" not in v.type.dims for v in op.operands)  # replicated (vLLM)
        if plan.get("tp", 1) <= 2 and not router and any(v.name.startswith("model.layers.") for v in op.operands):
            assert rep == 1, f"{op.result.name} {op.sharding} is computed {rep} times"
    assert total == pytest.approx(_einsum_flops(g, sizes))


@pytest.mark.parametrize("build", [llama_decode, moe_decode])
def test_tp1_is_identity(build) -> None:
    g = build()
    out = Shard()(g)
    assert out == g
    assert _collectives(out) == []
    assert Shard(tp=1, ep=1, dp=1)(g) == g


@pytest.mark.parametrize("plan", PLANS[:6])
def test_shard_does_not_mutate_input(plan) -> None:
    g = moe_decode()
    before = copy.deepcopy(g)
    text = print_graph(g)
    Shard(**plan)(g)
    assert g == before and print_graph(g) == text


def test_traced_models_shard_for_every_plan(llama: Graph, qwen_moe: Graph) -> None:
    for plan in PLANS:
        for g in (llama, qwen_moe):
            if plan.get("ep", 1) > 1 and "e" not in g.dim_sizes:
                continue
            out = Shard(**plan)(g)
            verify_graph(out)
            assert _einsum_flops(out, out.bind(**BINDING)) == _einsum_flops(g, g.bind(**BINDING))


# -- errors ------------------------------------------------------------------------------------------

def test_tp_not_dividing_heads() -> None:
    with pytest.raises(ShardingError, match=r"tp=3 .* 4 attention heads and 2 KV heads.*valid tp: 1, 2, 4"):
        Shard(tp=3)(llama_decode())


def test_ep_not_dividing_experts() -> None:
    with pytest.raises(ShardingError, match=r"ep=6 does not divide the 8 experts; valid ep on 6 GPUs: 1$"):
        Shard(tp=2, dp=3, ep=6)(moe_decode())
    with pytest.raises(ShardingError, match=r"ep=3 with tp x dp = 2 x 3 = 6 GPUs.*valid ep: 1$"):
        check_parallel(moe_decode(), Parallel(tp=2, dp=3, ep=3))


def test_ep_larger_than_gpus_and_dense_ep() -> None:
    with pytest.raises(ShardingError, match=r"ep=4 with tp x dp = 2 x 1 = 2 GPUs.*valid ep: 1, 2$"):
        Shard(tp=2, ep=4)(moe_decode())
    with pytest.raises(ShardingError, match=r"no experts"):
        Shard(tp=2, ep=2)(llama_decode())


def test_check_parallel_cluster_size() -> None:
    with pytest.raises(ShardingError, match=r"tp x dp = 4 x 2 = 8 GPUs, but the cluster has 4"):
        check_parallel(llama_decode(), Parallel(tp=4, dp=2), num_gpus=4)
    check_parallel(llama_decode(), Parallel(tp=4), num_gpus=8)


def test_valid_values() -> None:
    assert valid_tp_values(llama_decode(), up_to=8) == [1, 2, 4]
    assert valid_ep_values(moe_decode(), 8) == [1, 8]
    assert valid_ep_values(moe_decode(), 6) == [1]    # 6 does not divide the 8 experts


# -- cost helpers --------------------------------------------------------------------------------------

def test_collective_bytes() -> None:
    g = Shard(tp=2, ep=4, dp=2)(moe_decode())
    sizes, mesh = g.bind(B=8, S=1, K=64), mesh_of(g)
    coll = {op.result.name: op for op, _ in g.walk() if isinstance(op, Collective)}
    # all_reduce of the attention output: this replica's B/dp sequences x h, bf16
    assert collective_bytes(coll["o"], sizes, mesh) == 8 / 2 * 1 * 64 * 2
    # MoE dispatch all_gather over dp: the gathered [B, S, h] of both replicas
    assert collective_bytes(coll["xw2.ag_dp"], sizes, mesh) == 8 * 1 * 64 * 2
    # combine reduce_scatter over dp: its input, every gathered token; then all_reduce over tp
    assert collective_bytes(coll["moe.rs_dp"], sizes, mesh) == 8 * 1 * 64 * 2
    assert collective_bytes(coll["moe"], sizes, mesh) == 8 / 2 * 1 * 64 * 2
    # logits all_gather: the gathered [B/dp, v] output
    assert collective_bytes(coll["logits"], sizes, mesh) == 8 / 2 * 128 * 2


def test_a_sharded_graph_is_not_sharded_again(llama: Graph) -> None:
    """Sharding twice (through the Python API, which a pipeline string's run-once rule does not see)
    would split values that are already split: twice the collectives, or a dp mesh over tp splits."""
    once = Shard(tp=2)(llama)
    for again in (Shard(tp=2), Shard(dp=2), Shard(tp=1)):
        with pytest.raises(ShardingError, match=r"already sharded \(mesh 'tp=2,dp=1,ep=1,etp=2'\); shard runs once"):
            again(once)
    no_mesh = Graph(once.name, once.dims, once.decls, once.body, once.outputs, ())
    with pytest.raises(ShardingError, match="already sharded \\(collective %"):
        Shard(tp=2)(no_mesh)
