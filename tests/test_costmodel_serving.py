"""Steady-state serving: Poisson prefill mixture and medians."""

from __future__ import annotations

import dataclasses

import pytest

from energylens.costmodel.serving import (
    MAX_MIXTURE_ENTRIES,
    MAX_NUM_BATCHED_TOKENS,
    poisson_median,
    prefill_mixture,
    prefill_tokens_per_step,
    running_batch,
)
from energylens.typing import Workload


@pytest.mark.parametrize("lam,median", [(0.0, 0), (0.5, 0), (0.7, 1), (1.0, 1), (2.6, 2), (10.0, 10)])
def test_poisson_median(lam, median):
    assert poisson_median(lam) == median


@pytest.mark.parametrize("batch", [1, 8, 128, 1024])
def test_mixture_is_a_distribution_with_the_right_mean(batch):
    wl = Workload(batch=batch, prompt_len=634, output_len=400)
    mix = prefill_mixture(wl)
    assert sum(w for w, _ in mix) == pytest.approx(1.0)
    mean = sum(w * t for w, t in mix)
    assert mean == pytest.approx(min(batch * 634 / 400, MAX_NUM_BATCHED_TOKENS - batch), rel=0.02)
    assert all(t <= MAX_NUM_BATCHED_TOKENS - batch for _, t in mix)


def test_rare_arrivals_leave_median_step_pure_decode():
    assert prefill_tokens_per_step(Workload(batch=8, prompt_len=634, output_len=400), median=True) == 0
    assert prefill_tokens_per_step(Workload(batch=800, prompt_len=634, output_len=400), median=True) > 0


def test_running_batch_is_length_biased_and_capped_by_kv_capacity():
    from energylens.costmodel.serving import serving_context_len

    fixed = Workload(batch=8, prompt_len=600, output_len=400, output_len_cv=0.0)
    spread = Workload(batch=8, prompt_len=600, output_len=400)  # default cv 1: exponential-like
    assert serving_context_len(fixed) == pytest.approx(800)  # prompt + output/2
    assert serving_context_len(spread) == pytest.approx(1000)  # long requests hold slots longer
    assert serving_context_len(spread, kv_capacity=4000) == pytest.approx(500)  # 8 seqs share 4000 tokens


def test_kv_capacity_limits_the_running_batch_not_the_context():
    """A running sequence's KV stays until it finishes, so vLLM preempts what the cache cannot hold:
    fewer sequences run at their mean context (the context of a sequence does not shrink)."""
    wl = Workload(batch=8, prompt_len=600, output_len=400)  # mean context 1000 tokens
    assert running_batch(wl, kv_capacity=8000) == 8
    assert running_batch(wl, kv_capacity=5500) == 5
    assert running_batch(wl, replicas=2, kv_capacity=5500) == 4  # 2 replicas of 2750 tokens: 2 each
    assert running_batch(wl, kv_capacity=10.0) == 1  # one sequence always runs (memory checks it fits)


def test_estimate_runs_what_the_kv_cache_holds_unless_told_the_batch_was_held():
    import energylens as el
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.plan import plan_graph
    from energylens.costmodel.serving import kv_capacity_tokens
    from energylens.frontends.hf import trace_model

    model, gpu = "meta-llama/Llama-3.1-8B-Instruct", el.Cluster("H100-SXM")
    wl = el.Workload(batch=224, prompt_len=1024, output_len=2048)  # fits at prompt + output/2, not at its
    cap = kv_capacity_tokens(plan_graph(trace_model(model).decode), get_gpu("H100-SXM"))  # mean context
    est = el.estimate(model, gpu, wl)
    assert est.serving.kv_limited and est.serving.batch == int(cap // wl.serving_context_len) < 224
    fits = el.estimate(model, gpu, dataclasses.replace(wl, batch=est.serving.batch)).serving
    assert not fits.kv_limited and fits.energy_per_output_token_j == pytest.approx(est.serving.energy_per_output_token_j)
    held = el.estimate(model, gpu, wl, check_memory=False).serving  # a measured run held 224
    assert held.batch == 224 and not held.kv_limited


def test_output_len_cv_is_validated():
    from energylens.errors import InvalidWorkloadError

    with pytest.raises(InvalidWorkloadError):
        Workload(batch=8, prompt_len=600, output_len=400, output_len_cv=-1.0)


@pytest.mark.parametrize(("hit", "match"), [(-0.1, r"must be a number in \[0, 1\)"), (1.0, r"must be a number in \[0, 1\)"),
                                          (True, "must be a number, got bool True"),
                                          ("0.5", "must be a number, got str '0.5'")])
def test_prefix_cache_hit_is_validated(hit, match):
    from energylens.errors import EnergylensError

    with pytest.raises(EnergylensError, match=r"prefix_cache_hit " + match):
        Workload(batch=8, prompt_len=600, output_len=400, prefix_cache_hit=hit)


def test_prefix_cache_hits_are_not_prefilled_again():
    """A request whose earlier turns are cached computes only the rest of its prompt: fewer prefill
    tokens per step, less energy per token; the attention of those tokens still spans the whole
    prompt, and the pure-decode median step and the cold batch prefill are unchanged."""
    import energylens as el

    base = Workload(batch=256, prompt_len=1000, output_len=250)
    hit = Workload(batch=256, prompt_len=1000, output_len=250, prefix_cache_hit=0.6)
    assert hit.prefill_len == pytest.approx(400)
    assert prefill_tokens_per_step(hit) == pytest.approx(0.4 * prefill_tokens_per_step(base))
    assert sum(w * t for w, t in prefill_mixture(hit)) == pytest.approx(256 * 400 / 250, rel=1e-6)
    a, b = (el.estimate("Qwen/Qwen3-0.6B", el.Cluster("H100-SXM"), wl) for wl in (base, hit))
    assert b.serving.energy_per_output_token_j < a.serving.energy_per_output_token_j
    assert b.serving.mean_step_s < a.serving.mean_step_s
    assert b.serving.median_itl_s < a.serving.median_itl_s  # lam > ln 2: the median step carries prefill
    assert b.prefill == a.prefill and b.decode == a.decode
    # not a 400-token prompt: the running sequences hold all 1000 prompt tokens of KV, and the
    # computed tokens attend to the whole prompt
    short = el.estimate("Qwen/Qwen3-0.6B", el.Cluster("H100-SXM"), Workload(batch=256, prompt_len=400, output_len=250))
    assert b.serving.mean_step_s > short.serving.mean_step_s


def test_cached_prefix_tokens_are_attended_not_computed():
    """The prefill attention of a prompt with a cached prefix: its ``prefill_len`` last tokens
    attend causally to the whole prompt, S*K - S*(S-1)/2 query-key pairs per head."""
    from energylens.api import resolve_model
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.plan import plan_graph
    from energylens.costmodel.profile import load_profile
    from energylens.costmodel.serving import step_ops

    traced, gpu = resolve_model("Qwen/Qwen3-0.6B"), get_gpu("H100-SXM")
    pre, dec = plan_graph(traced.prefill), plan_graph(traced.decode)

    def prefill_attention_flops(prompt_len, prefill_len, prompts=2.0):
        ops = step_ops(pre, dec, 8, 1500, prompt_len, prompts * prefill_len, gpu, load_profile(gpu),
                       prefill_len=prefill_len)
        return sum(p.count * p.work.flops for p in ops if getattr(p.op, "causal", False))  # QK^T and PV

    s, k = 400.0, 1000.0
    full = prefill_attention_flops(k, k)  # a fresh 1000-token prompt: k*(k+1)/2 pairs
    assert prefill_attention_flops(k, s) == pytest.approx(full * (s * k - s * (s - 1) / 2) / (k * (k + 1) / 2))


def test_kv_capacity_leaves_room_for_weights():
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.serving import GPU_MEMORY_UTILIZATION, kv_capacity_tokens
    from energylens.ir.core import Decl, Einsum, Gather, Graph, Repeat, TensorType, Value

    def v(name, dims):
        return Value(name, TensorType(tuple(dims), "bf16"))

    h, layers, g, d = 4096, 32, 8, 128
    x, w, kc, new = v("x", ("B", "S", "h")), v("w", ("h", "h")), v("kc", ("B", "g", "K", "d")), v("kn", ("B", "S", "g", "d"))
    region = Repeat(name="layers", count=layers, decls=(Decl(w, "param"), Decl(kc, "cache")),
                    ops=(Einsum(result=v("y", ("B", "S", "h")), operands=(x, w), spec="bsh,hk->bsk"),
                         Gather(result=v("kc2", ("B", "g", "K", "d")), operands=(kc, new), dim="K", fn="scatter")),
                    init="x", carry="y")
    graph = Graph(name="decode", dims=(("B", None), ("S", None), ("K", None), ("h", h), ("g", g), ("d", d)),
                  decls=(Decl(x, "input"), Decl(new, "input")), body=(region,), outputs=("y",))
    gpu = get_gpu("H100-SXM")
    weights, per_token = layers * h * h * 2, layers * g * d * 2
    expected = (gpu.hbm_capacity_bytes * GPU_MEMORY_UTILIZATION - weights) / per_token
    assert kv_capacity_tokens(graph, gpu) == pytest.approx(expected)


def test_kv_capacity_of_a_plan_counts_each_gpus_own_weights():
    """dp replicas each hold all the dense weights: two replicas hold twice one replica's tokens,
    not the tokens of the weights split over both GPUs (which overcounted tp=4, dp=2 by 42%); tp
    splits the weights, so two GPUs of tp hold more than twice one GPU's tokens."""
    import energylens as el
    from energylens.api import resolve_model
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.plan import plan_graph
    from energylens.costmodel.serving import kv_capacity_tokens

    gpu, decode = get_gpu("H100-SXM"), resolve_model("meta-llama/Llama-3.1-8B-Instruct").decode

    def cap(**par: int) -> float:
        return kv_capacity_tokens(plan_graph(decode, el.Parallel(**par), True, "uniform"), gpu)

    assert cap(dp=2) == pytest.approx(2 * cap())
    assert cap(tp=2, dp=2) == pytest.approx(2 * cap(tp=2))
    assert cap(tp=2) > 2 * cap()


@pytest.mark.parametrize("batch,prompt,output", [(1000, 16, 1), (900, 128, 1), (4096, 8, 2), (9000, 100, 1), (64, 1, 1)])
def test_mixture_many_arrivals_per_step(batch, prompt, output):
    """Short outputs put many new prompts in each step: the Poisson terms must not underflow, and the
    counts that fill the token budget are one entry at the budget."""
    wl = Workload(batch=batch, prompt_len=prompt, output_len=output)
    mix = prefill_mixture(wl)
    budget = max(0, MAX_NUM_BATCHED_TOKENS - batch)
    assert sum(w for w, _ in mix) == pytest.approx(1.0)
    assert all(0 <= t <= budget for _, t in mix)
    assert sum(w * t for w, t in mix) == pytest.approx(min(batch / output * prompt, budget), rel=0.05)
    assert len(mix) <= MAX_MIXTURE_ENTRIES  # each entry is priced: many counts merge into groups


def test_estimate_with_one_output_token_per_request():
    import energylens as el

    est = el.estimate("Qwen/Qwen3-0.6B", el.Cluster("H100-SXM"), el.Workload(batch=1000, prompt_len=16, output_len=1))
    # every step retires its whole batch: only as many run as the budget can prefill (b + 16 b <= 8192)
    assert est.serving.batch == MAX_NUM_BATCHED_TOKENS // 17
    assert est.serving.prefill_tokens_per_step == pytest.approx(est.serving.batch * 16)


def test_prefill_bound_workload_runs_a_smaller_batch_and_prices_every_prompt():
    """Long prompts and short outputs: the budget left after the decode tokens cannot admit requests
    as fast as they finish, so fewer sequences run, and no prompt token goes unpriced."""
    import energylens as el

    wl = el.Workload(batch=128, prompt_len=2048, output_len=16, output_len_cv=0)
    est = el.estimate("meta-llama/Llama-3.1-8B-Instruct", el.Cluster("H100-SXM"), wl)
    s = est.serving
    assert s.batch == running_batch(wl) == MAX_NUM_BATCHED_TOKENS * 16 // (16 + 2048) < 128
    assert s.prefill_tokens_per_step == pytest.approx(s.batch * 2048 / 16)  # arrivals x prompt, all computed
    # the prefill energy alone bounds the energy per output token from below
    assert s.energy_per_output_token_j > est.prefill.energy_j / (wl.batch * wl.output_len)
    assert s.output_tokens_per_s < wl.batch * wl.output_len / est.prefill.latency_s


def test_capped_steps_carry_their_prompts_over():
    """A step whose arrivals exceed the budget leaves the rest to later steps: the mean prefill per
    step is the arrivals' (batch / output_len x prompt), not less."""
    wl = Workload(batch=64, prompt_len=4096, output_len=64)
    mix = prefill_mixture(wl)
    assert sum(w for w, _ in mix) == pytest.approx(1.0)
    assert sum(w * t for w, t in mix) == pytest.approx(64 / 64 * 4096)
    assert max(t for _, t in mix) == MAX_NUM_BATCHED_TOKENS - 64


def test_decode_attention_kernel_floor():
    """A decode-attention call costs at least the measured kernels' floor (attn_kernel_overhead_s);
    the KV-cache write (no FLOPs) and other kernels keep kernel_overhead_s."""
    from energylens.costmodel.compute import OpWork, op_time_s
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.profile import load_profile

    gpu = get_gpu("H100-SXM")
    prof = load_profile(gpu)
    assert prof.attn_kernel_overhead_s == pytest.approx(11.6e-6)
    tiny = dict(vec_flops=0.0, hbm_bytes=1e3, rows=1.0, peak_flops_per_s=1e15, kernels=1.0, seqs=1.0)
    attention = OpWork(tc_flops=1e3, kv=1.0, **tiny)
    kv_write = OpWork(tc_flops=0.0, kv=1.0, **tiny)
    assert op_time_s(attention, gpu, prof) >= 11.6e-6
    assert op_time_s(kv_write, gpu, prof) < 5e-6
    assert op_time_s(attention, gpu, prof.with_params(attn_kernel_overhead_s=None)) < 5e-6


def test_moe_call_overhead_once_per_fused_moe_call():
    """Each MoE layer's dispatch pays moe_call_overhead_s once (H100: the kernel table's 28 us), per
    GPU and layer; dense models pay nothing, and a profile without it (None) adds nothing."""
    import energylens as el
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.profile import load_profile

    prof = load_profile(get_gpu("H100-SXM"))
    assert prof.moe_call_overhead_s == pytest.approx(28e-6)
    wl = el.Workload(batch=8, prompt_len=128, output_len=32)
    moe, dense = "Qwen/Qwen3-30B-A3B-Instruct-2507", "meta-llama/Llama-3.1-8B-Instruct"

    def itl(model: str, p) -> float:
        return el.estimate(model, el.Cluster("H100-SXM"), wl, profile=p).decode.itl_s

    none = prof.with_params(moe_call_overhead_s=None)
    assert itl(moe, prof) - itl(moe, none) == pytest.approx(48 * 28e-6, rel=1e-6)  # 48 MoE layers
    assert itl(dense, prof) == itl(dense, none)


@pytest.mark.parametrize("batch", [16, 256, 2048])
def test_lockstep_replicas_step_at_the_busiest_ones_load(batch):
    """MoE replicas step together: the step's prefill load is the largest of the replicas' counts."""
    from energylens.costmodel.serving import lockstep_weights

    wl = Workload(batch=batch, prompt_len=634, output_len=400)
    mix = prefill_mixture(wl, replicas=4)
    busiest = lockstep_weights(mix, 4)
    assert sum(busiest) == pytest.approx(1.0)
    own_mean = sum(w * t for w, t in mix)
    assert sum(w * t for w, (_, t) in zip(busiest, mix, strict=True)) >= own_mean
    for median in (False, True):
        alone = prefill_tokens_per_step(wl, median=median, replicas=4)
        assert prefill_tokens_per_step(wl, median=median, replicas=4, lockstep=True) >= alone
    assert prefill_tokens_per_step(wl, median=True, replicas=1, lockstep=True) == prefill_tokens_per_step(wl, median=True)


def test_rare_arrivals_keep_their_prefill_in_the_mixture():
    """A replica with ~1e-3 arrivals per step: the tail beyond the coverage is one entry at its mean."""
    wl = Workload(batch=16, prompt_len=2000, output_len=2000)
    mix = prefill_mixture(wl, replicas=8)
    assert sum(w * t for w, t in mix) == pytest.approx(prefill_tokens_per_step(wl, replicas=8), rel=1e-9)


def test_lockstep_median_is_the_busiest_replicas():
    """8 replicas with 0.1 arrivals each: P(all idle) = exp(-0.8) < 1/2, so the median step has a prompt."""
    wl = Workload(batch=8 * 40, prompt_len=634, output_len=400)  # 40 sequences a replica: lam = 0.1
    assert prefill_tokens_per_step(wl, median=True, replicas=8) == 0
    assert prefill_tokens_per_step(wl, median=True, replicas=8, lockstep=True) == 634 * 8
