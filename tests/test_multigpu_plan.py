"""Multi-GPU plans: properties of ``estimate`` with tp/ep/dp and of ``plan_work`` (issue 4)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import energylens as el
from energylens.api import resolve_model
from energylens.costmodel.analysis import WorkAnalysis, price_graph
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.memory import memory_estimate
from energylens.costmodel.plan import PlanPricer, plan_graph, plan_work
from energylens.costmodel.profile import load_profile
from energylens.costmodel.serving import serving_estimate
from energylens.ir.core import Collective
from energylens.passes.moe import Moe, graph_expert_load
from energylens.passes.overlap import Overlap
from energylens.passes.shard import mesh_of

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
MOE = "Qwen/Qwen3-30B-A3B-Instruct-2507"
H100 = el.Cluster("H100", num_gpus=8)
WL = el.Workload(batch=64, prompt_len=634, output_len=400)
GPU = get_gpu("H100")
PROF = load_profile(GPU)


def _phases(est: el.typing.Estimate) -> tuple:
    return (est.prefill, est.decode, est.serving, est.memory)


# -- tp = ep = dp = 1 is the single-GPU estimate -----------------------------------------------------

@pytest.mark.parametrize("model", [LLAMA, MOE])
def test_trivial_plan_equals_single_gpu_estimate(model: str) -> None:
    one = el.estimate(model, el.Cluster("H100"), WL)
    assert _phases(el.estimate(model, el.Cluster("H100"), WL, el.Parallel(1, 1, 1))) == _phases(one)
    assert _phases(el.estimate(model, H100, WL, el.Parallel())) == _phases(one)   # idle GPUs not counted
    assert one.num_gpus == 1


def test_trivial_unfused_plan_equals_single_gpu_pricing() -> None:
    """fused=False, one GPU: exactly the single-GPU interpreters on the traced graphs."""
    traced = resolve_model(LLAMA)
    est = el.estimate(LLAMA, el.Cluster("H100"), WL, el.Parallel(), fused=False)
    dec = price_graph(traced.decode, {"B": 64, "S": 1, "K": WL.decode_context_len}, GPU, PROF)
    assert est.decode.latency_s == sum(p.count * p.cost.time_s for p in dec)
    assert est.decode.energy_j == pytest.approx(sum(p.count * p.cost.energy_j for p in dec), rel=1e-12)
    assert est.serving == serving_estimate(traced.prefill, traced.decode, WL, GPU, PROF)
    assert est.memory == memory_estimate(traced.prefill, traced.decode, WL, GPU)


# -- FLOPs are conserved up to replication ----------------------------------------------------------

@pytest.mark.parametrize(("model", "par"), [
    (LLAMA, el.Parallel(tp=2)), (LLAMA, el.Parallel(tp=4, dp=2)), (LLAMA, el.Parallel(tp=8)),
    (MOE, el.Parallel(tp=2, ep=2)), (MOE, el.Parallel(tp=4)), (MOE, el.Parallel(tp=2, dp=2, ep=4)),
])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_sum_of_local_flops_is_global_flops_times_replication(model: str, par: el.Parallel, phase: str) -> None:
    raw = getattr(resolve_model(model), phase)
    binding = {"B": 16, "S": 128 if phase == "prefill" else 1, "K": 512}
    recs = [r for r in plan_work(raw, par, binding, gpu=GPU) if r.cls != "comm"]
    glob = WorkAnalysis(raw, binding, GPU).run()
    assert len(recs) == len(glob)
    for r, (op, count, w) in zip(recs, glob, strict=True):
        assert r.op.kind == op.kind and r.count == count
        assert float(r.work.flops) * par.num_gpus == pytest.approx(float(w.flops) * r.replication, rel=1e-9), op
    assert any(r.replication > 1 for r in recs)          # norms etc. are replicated under tp
    assert any(r.replication == 1 and float(r.work.flops) > 0 for r in recs)


def test_plan_work_is_vectorised_over_batch_sizes() -> None:
    raw = resolve_model(MOE).decode
    bs = np.array([1.0, 8.0, 64.0, 256.0])
    vec = plan_work(raw, el.Parallel(tp=2, ep=2), {"B": bs, "S": 1, "K": 1024}, gpu=GPU)
    for i, b in enumerate(bs):
        one = plan_work(raw, el.Parallel(tp=2, ep=2), {"B": float(b), "S": 1, "K": 1024}, gpu=GPU)
        for rv, r1 in zip(vec, one, strict=True):
            for f in ("tc_flops", "vec_flops", "hbm_bytes", "rows", "kernels"):
                assert np.broadcast_to(getattr(rv.work, f), bs.shape)[i] == pytest.approx(float(getattr(r1.work, f)))
                assert np.broadcast_to(getattr(rv.max_work, f), bs.shape)[i] == pytest.approx(
                    float(getattr(r1.max_work, f)))
            assert np.broadcast_to(rv.comm_bytes, bs.shape)[i] == pytest.approx(float(r1.comm_bytes))
    classes = {r.cls for r in vec}
    assert {"gemm", "attention", "memory", "expert", "comm"} <= classes


# -- the static floor ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "par", "kw"), [
    (LLAMA, el.Parallel(tp=2), {}), (LLAMA, el.Parallel(tp=4, dp=2), {}), (LLAMA, el.Parallel(tp=4), {"comm_sms": 16}),
    (MOE, el.Parallel(tp=2, ep=2), {"routing": "zipf"}), (MOE, el.Parallel(tp=4, ep=4), {"comm_sms": 8}),
])
def test_energy_never_below_static_floor(model: str, par: el.Parallel, kw: dict) -> None:
    est = el.estimate(model, H100, WL, par, **kw)
    n, static_w = par.num_gpus, PROF.static_power_w
    assert est.num_gpus == n
    for ph in (est.prefill, est.decode):
        assert ph.energy_j >= n * static_w * ph.latency_s * (1 - 1e-9)
        assert ph.energy_j == pytest.approx(ph.static_j + ph.dynamic_j)
        assert ph.avg_power_w <= n * GPU.tdp_w
    assert est.serving.avg_power_w >= n * static_w * (1 - 1e-9)


# -- tensor parallelism on Llama --------------------------------------------------------------------

def test_llama_tp2_halves_weights_and_adds_two_all_reduces_per_layer() -> None:
    one = el.estimate(LLAMA, H100, WL)
    two = el.estimate(LLAMA, H100, WL, el.Parallel(tp=2))
    assert two.memory.weights_bytes / one.memory.weights_bytes == pytest.approx(0.5, abs=0.01)
    assert two.memory.kv_cache_bytes / one.memory.kv_cache_bytes == pytest.approx(0.5, abs=1e-6)
    dec = two.graphs.decode
    region = [(op, c) for op, c in dec.walk() if c > 1]
    ars = [op for op, _ in region if isinstance(op, Collective) and op.fn == "all_reduce" and op.axis == "tp"]
    assert len(ars) == 2 and region[0][1] == 32
    assert two.decode.comm_j > 0 and two.decode.itl_s < one.decode.itl_s
    assert "collective.all_reduce[tp]" in str(two.graphs) and "shard{tp=2,ep=1,dp=1},fuse" in str(two.graphs)
    json.dumps(two.to_dict())
    assert two.to_dict()["graphs"] == {"pipeline": two.graphs.pipeline}


def test_data_parallel_replicas_each_serve_their_share() -> None:
    half = el.estimate(LLAMA, el.Cluster("H100"), el.Workload(batch=32, prompt_len=634, output_len=400))
    dp2 = el.estimate(LLAMA, H100, WL, el.Parallel(dp=2))
    assert dp2.decode.itl_s == pytest.approx(half.decode.itl_s, rel=1e-9)
    assert dp2.decode.energy_j == pytest.approx(2 * half.decode.energy_j, rel=1e-9)
    assert dp2.memory.kv_cache_bytes == pytest.approx(half.memory.kv_cache_bytes)
    # serving: each replica schedules its own steps (arrivals, token budget, host time per sequence)
    assert dp2.serving.median_itl_s == pytest.approx(half.serving.median_itl_s, rel=1e-9)
    assert dp2.serving.energy_per_output_token_j == pytest.approx(half.serving.energy_per_output_token_j, rel=1e-9)
    assert dp2.serving.avg_power_w == pytest.approx(2 * half.serving.avg_power_w, rel=1e-9)


# -- experts ------------------------------------------------------------------------------------------

def test_expert_parallel_is_vllms_all_reduce_not_all_to_all() -> None:
    def colls(par: el.Parallel) -> list[tuple[str, str]]:
        g = plan_graph(resolve_model(MOE).decode, par)
        return [(op.fn, op.axis) for op, _ in g.walk()
                if isinstance(op, Collective) and op.source.module.startswith("model.layers.mlp")]
    assert colls(el.Parallel(tp=2, ep=2)) == [("all_reduce", "tp")]       # vLLM: no all-to-all
    assert ("reduce_scatter", "dp") in colls(el.Parallel(tp=2, dp=2, ep=4))
    est = el.estimate(MOE, H100, WL, el.Parallel(tp=2, ep=2))
    assert any(o.kind == "collective" and o.name == "moe_experts_combine" and o.time_s > 0 for o in est.ops)
    assert mesh_of(est.graphs.decode)["ep"] == 2


def test_ep_with_dp_prices_gathered_tokens_and_their_straggler() -> None:
    # tp=2, dp=2, ep=4: the MoE collectives carry [tokens, h] bf16 (h = 2048): the dp all_gather and
    # reduce_scatter all 64 gathered tokens, the tp all_reduce this replica's 32; the straggler is
    # the max over the 4 GPUs of the slots routed to their own experts, over all 64 tokens
    par, moe = el.Parallel(tp=2, dp=2, ep=4), Moe(routing="zipf", skew=1.2)
    ir = resolve_model(MOE).decode
    recs = plan_work(ir, par, {"B": 64, "S": 1, "K": 1024}, gpu=get_gpu("H100"), routing=moe)
    comm = [(r.comm_fn, r.comm_axis, r.comm_bytes) for r in recs if r.cls == "comm"
            and r.op.result.type.dims == ("B", "S", "h") and r.op.source.module.startswith("model.layers.mlp")]
    assert comm == [("all_gather", "dp", 64 * 2048 * 2), ("reduce_scatter", "dp", 64 * 2048 * 2),
                    ("all_reduce", "tp", 32 * 2048 * 2)]
    strag = {r.straggler for r in recs if r.cls == "expert"}
    assert strag == {graph_expert_load(plan_graph(ir, par, routing=moe), 64, 4).straggler} and strag != {1.0}


def test_zipf_straggler_is_slower_and_burns_waiting_energy() -> None:
    # 1024 sequences hit every expert under either routing: the same expert work, with a straggler
    par, wl = el.Parallel(tp=4, ep=4), dataclasses.replace(WL, batch=1024)
    uni = el.estimate(MOE, H100, wl, par)
    skew = el.estimate(MOE, H100, wl, par, routing=Moe(routing="zipf", skew=1.2))
    assert skew.decode.latency_s > uni.decode.latency_s
    assert skew.decode.wait_j > uni.decode.wait_j > 0
    assert skew.serving.median_itl_s > uni.serving.median_itl_s
    # the dynamic energy of the expert work is the same; the extra energy is waiting at static power
    assert skew.decode.energy_j - uni.decode.energy_j == pytest.approx(
        skew.decode.static_j - uni.decode.static_j, rel=0.05)


def test_overlap_uses_the_contended_schedule() -> None:
    par = el.Parallel(tp=4)
    wl = el.Workload(batch=16, prompt_len=2048, output_len=256)
    serial = el.estimate(LLAMA, H100, wl, par)
    lapped = el.estimate(LLAMA, H100, wl, par, comm_sms=16)
    assert lapped.prefill.latency_s != serial.prefill.latency_s
    lapped_g = plan_graph(resolve_model(LLAMA).prefill, par, overlap=Overlap(comm_sms=16, total_sms=GPU.compute_units))
    ops = PlanPricer(comm_sms=16)(lapped_g, {"B": 16, "S": 2048, "K": 2048}, GPU, PROF)
    comm = [p for p in ops if p.cls == "comm" and p.op.axis == "tp" and p.count > 1]
    # a large prefill all-reduce mostly hides behind the other nano-batch's compute
    solo = PlanPricer()(plan_graph(resolve_model(LLAMA).prefill, par), {"B": 16, "S": 2048, "K": 2048}, GPU, PROF)
    solo_comm = [p for p in solo if p.cls == "comm" and p.op.axis == "tp" and p.count > 1]
    assert sum(p.cost.time_s for p in comm) < sum(p.cost.time_s for p in solo_comm)


def test_op_table_adds_up_to_the_phase_over_all_gpus() -> None:
    est = el.estimate(MOE, H100, WL, el.Parallel(tp=2, ep=2))
    dec = [o for o in est.ops if o.phase == "decode"]
    assert sum(o.time_s for o in dec) == pytest.approx(est.decode.latency_s)
    assert sum(o.energy_j for o in dec) == pytest.approx(est.decode.energy_j)
    assert sum(o.flops for o in dec) == pytest.approx(est.decode.flops)


def test_expert_parallel_moe_activations_span_every_slot() -> None:
    """vLLM's fused MoE under ep keeps its intermediate buffers for every top-k slot (zeros for other
    GPUs' experts; activation and top-k sum over all): those bytes do not shrink with ep, while
    the expert FLOPs and weights do."""
    raw = resolve_model(MOE).decode
    binding = {"B": 64, "S": 1, "K": 512}
    one = {r.op.result.name: r.work for r in plan_work(raw, el.Parallel(), binding, gpu=GPU, fused=False)}
    ep2 = {r.op.result.name: r.work for r in plan_work(raw, el.Parallel(tp=2, ep=2), binding, gpu=GPU, fused=False)}
    assert float(ep2["moe_experts_swiglu"].hbm_bytes) == pytest.approx(float(one["moe_experts_swiglu"].hbm_bytes))
    for name in ("moe_experts", "moe_experts_down"):
        assert float(ep2[name].tc_flops) == pytest.approx(float(one[name].tc_flops) / 2)
        assert float(one[name].hbm_bytes) / 2 < float(ep2[name].hbm_bytes) < float(one[name].hbm_bytes)


def test_skewed_routing_reads_fewer_expert_weights_with_and_without_ep() -> None:
    """Under ep the mean GPU reads the global share of its experts: zipf reads fewer there too."""
    two, wl = el.Cluster("H100-SXM", num_gpus=2), el.Workload(batch=8)
    for par in (el.Parallel(tp=2), el.Parallel(tp=2, ep=2), el.Parallel(dp=2, ep=2)):
        uni = el.estimate(MOE, two, wl, par)
        skew = el.estimate(MOE, two, wl, par, routing="zipf")
        assert skew.decode.hbm_bytes < 0.8 * uni.decode.hbm_bytes, par
        assert skew.decode.energy_j < uni.decode.energy_j, par


def test_skewed_routing_without_ep_reads_fewer_expert_weights() -> None:
    """A hot set of experts takes most tokens: a small decode batch hits fewer distinct experts
    than under uniform routing and reads fewer expert weights; a large batch hits nearly all."""
    one = el.Cluster("H100-SXM", num_gpus=1)
    zipf = Moe(routing="zipf", skew=1.2)

    def ratio(batch: int) -> float:
        wl = el.Workload(batch=batch, prompt_len=256, output_len=64)
        uni, skew = el.estimate(MOE, one, wl), el.estimate(MOE, one, wl, routing=zipf)
        assert skew.decode.latency_s < uni.decode.latency_s
        return skew.decode.hbm_bytes / uni.decode.hbm_bytes

    small, large = ratio(2), ratio(256)
    assert small < large < 1.0 and large > 0.95


def test_a_vocab_tp_does_not_divide_is_still_split() -> None:
    """vLLM pads the vocabulary to a multiple of 64 and splits the embedding and lm_head over tp;
    a vocab of 32001 (a fine-tune's added token) was left whole on every GPU (+11% weights at tp=4)."""
    from energylens.testing import tiny_llama_config

    def weights(vocab: int) -> float:
        cfg = {**tiny_llama_config(), "vocab_size": vocab}
        return el.estimate(cfg, el.Cluster("H100-SXM", num_gpus=4), el.Workload(batch=4, prompt_len=8, output_len=4),
                           el.Parallel(tp=4)).memory.weights_bytes

    # two more rows of embedding and lm_head (64 wide, bf16), split four ways; left whole they were 25 KB
    assert weights(130) - weights(128) == pytest.approx(2 * 2 * 64 * 2 / 4)


def test_collective_groups_across_nodes_go_over_infiniband() -> None:
    """tp groups are neighbouring GPUs, whole on a node; dp (and expert) groups take GPUs tp apart, so on
    more GPUs than one node holds they cross nodes and are priced over InfiniBand, not NVLink."""
    from energylens.costmodel.comm import collective_time_s
    from energylens.costmodel.plan import price_ops

    traced = resolve_model(MOE)
    binding = {"B": 64, "S": 1, "K": 1024}
    for par, crosses in ((el.Parallel(tp=4, ep=16, dp=4), {"tp": False, "dp": True}),
                         (el.Parallel(tp=4, ep=8, dp=2), {"tp": False, "dp": False})):
        recs = [r for r in plan_work(traced.decode, par, binding, gpu=GPU) if r.cls == "comm"]
        assert {r.comm_axis for r in recs} == set(crosses)
        for r in recs:
            assert r.comm_across_nodes == crosses[r.comm_axis]
            link = "ib" if crosses[r.comm_axis] else "nvlink"
            want = collective_time_s(r.comm_fn, float(r.comm_bytes), r.comm_gpus, GPU.name, link)[0]
            assert price_ops([r], 1, GPU, PROF).time_s[0, 0, 0] == want
