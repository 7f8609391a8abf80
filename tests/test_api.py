"""energylens.estimate: phases, serving view, memory, per-op table, to_dict, errors."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

import energylens as el
from energylens.errors import DoesNotFitError, EnergylensError
from energylens.ir.core import (
    Decl,
    Einsum,
    Elementwise,
    Gather,
    Graph,
    Reduce,
    Repeat,
    Source,
    TensorType,
    Value,
)


def V(name, dims, dtype="bf16"):
    return Value(name, TensorType(tuple(dims), dtype))


def tiny(phase):
    """A 2-layer toy decoder following docs/ir.md (hand-built; no frontend needed)."""
    dims = (("B", None), ("S", None), ("K", None), ("h", 256), ("f", 512), ("v", 1000), ("g", 2), ("r", 2),
            ("d", 64))
    emb, ids, head = V("emb", ("v", "h")), V("input_ids", ("B", "S"), "i64"), V("head", ("h", "v"))
    x = V("x", ("B", "S", "h"))
    wq, wk, wv, wo = V("wq", ("h", "g", "r", "d")), V("wk", ("h", "g", "d")), V("wv", ("h", "g", "d")), V("wo", ("g", "r", "d", "h"))
    w1, w2 = V("w1", ("h", "f")), V("w2", ("f", "h"))
    q, k, v = V("q", ("B", "g", "r", "S", "d")), V("k", ("B", "S", "g", "d")), V("v", ("B", "S", "g", "d"))
    src = Source("aten.linear", "model.layers.self_attn")
    ops = [Reduce(result=V("n", ("B", "S", "h")), operands=(x,), fn="rms_norm", dims=("h",)),
           Einsum(result=q, operands=(V("n", ("B", "S", "h")), wq), spec="bsh,hgrd->bgrsd", source=src),
           Einsum(result=k, operands=(V("n", ("B", "S", "h")), wk), spec="bsh,hgd->bsgd", source=src),
           Einsum(result=v, operands=(V("n", ("B", "S", "h")), wv), spec="bsh,hgd->bsgd", source=src)]
    decls = [Decl(wq, "param"), Decl(wk, "param"), Decl(wv, "param"), Decl(wo, "param"), Decl(w1, "param"),
             Decl(w2, "param")]
    if phase == "decode":
        kc, vc = V("kc", ("B", "g", "K", "d")), V("vc", ("B", "g", "K", "d"))
        decls += [Decl(kc, "cache"), Decl(vc, "cache")]
        ops += [Gather(result=V("kc2", ("B", "g", "K", "d")), operands=(kc, k), dim="K", fn="scatter"),
                Gather(result=V("vc2", ("B", "g", "K", "d")), operands=(vc, v), dim="K", fn="scatter")]
        K, Vv = V("kc2", ("B", "g", "K", "d")), V("vc2", ("B", "g", "K", "d"))
    else:
        K, Vv = V("ka", ("B", "g", "K", "d")), V("va", ("B", "g", "K", "d"))
        decls += [Decl(K, "input"), Decl(Vv, "input")]
    ops += [Einsum(result=V("s", ("B", "g", "r", "S", "K")), operands=(q, K), spec="bgrsd,bgkd->bgrsk",
                   causal=phase == "prefill"),
            Reduce(result=V("p", ("B", "g", "r", "S", "K")), operands=(V("s", ("B", "g", "r", "S", "K")),),
                   fn="softmax", dims=("K",)),
            Einsum(result=V("o", ("B", "g", "r", "S", "d")), operands=(V("p", ("B", "g", "r", "S", "K")), Vv),
                   spec="bgrsk,bgkd->bgrsd", causal=phase == "prefill"),
            Einsum(result=V("a", ("B", "S", "h")), operands=(V("o", ("B", "g", "r", "S", "d")), wo),
                   spec="bgrsd,grdh->bsh"),
            Einsum(result=V("m", ("B", "S", "f")), operands=(V("a", ("B", "S", "h")), w1), spec="bsh,hf->bsf"),
            Elementwise(result=V("m2", ("B", "S", "f")), operands=(V("m", ("B", "S", "f")),), fn="silu"),
            Einsum(result=V("y", ("B", "S", "h")), operands=(V("m2", ("B", "S", "f")), w2), spec="bsf,fh->bsh")]
    body = (Gather(result=x, operands=(emb, ids), dim="v", source=Source("aten.embedding", "model.embed_tokens")),
            Repeat(name="layers", count=2, decls=tuple(decls), ops=tuple(ops), init="x", carry="y"),
            Einsum(result=V("logits", ("B", "v")), operands=(V("y", ("B", "S", "h")), head), spec="bsh,hv->bv",
                   source=Source("aten.linear", "lm_head")))
    return Graph(name=phase, dims=dims, decls=(Decl(emb, "param"), Decl(ids, "input"), Decl(head, "param")),
                 body=body, outputs=("logits",), attrs=(("model", "toy/tiny"), ("phase", phase)))


TOY = SimpleNamespace(prefill=tiny("prefill"), decode=tiny("decode"))


def test_estimate_on_hand_built_model():
    wl = el.Workload(batch=4, prompt_len=512, output_len=64)
    est = el.estimate(TOY, el.Cluster("H100"), wl)
    assert est.model == "toy/tiny" and est.gpu == "H100-SXM"
    assert est.prefill.tokens == 4 * 512 and est.decode.tokens == 4
    assert est.decode.itl_s == est.decode.latency_s > 0
    assert est.decode.energy_per_token_j == pytest.approx(est.decode.energy_j / 4)
    for ph in (est.prefill, est.decode):
        assert ph.energy_j == pytest.approx(ph.static_j + ph.dynamic_j)
        assert ph.avg_power_w <= el.Cluster("H100").num_gpus * 700 + 1e-6
    # the toy's kernels are launch-bound: a 2048-token prefill does far more work than a decode
    # step but takes about as long
    assert est.prefill.flops > 100 * est.decode.flops and est.prefill.latency_s > 0.9 * est.decode.latency_s
    s = est.serving
    assert s.median_itl_s >= est.decode.itl_s * 0.99 and s.mean_step_s >= s.median_itl_s * 0.99
    assert s.energy_per_output_token_j > 0 and 0 < s.avg_power_w <= 700
    assert est.memory.total_bytes == pytest.approx(est.memory.weights_bytes + est.memory.kv_cache_bytes
                                                   + est.memory.activation_bytes)
    phases = {o.phase for o in est.ops}
    assert phases == {"prefill", "decode"}
    assert sum(o.time_s for o in est.ops if o.phase == "decode") == pytest.approx(est.decode.latency_s)
    assert any(o.source == "lm_head" for o in est.ops)


def test_to_dict_is_plain_data_with_derived_fields():
    est = el.estimate(TOY, el.Cluster("B200"), el.Workload(batch=2, prompt_len=64, output_len=32))
    d = est.to_dict()
    json.dumps(d)
    assert d["decode"]["itl_s"] == est.decode.itl_s
    assert d["decode"]["energy_per_token_j"] == est.decode.energy_per_token_j
    assert d["memory"]["total_bytes"] == est.memory.total_bytes
    assert d["serving"]["output_tokens_per_s"] == pytest.approx(est.serving.output_tokens_per_s)
    assert isinstance(d["ops"], list) and {"name", "source", "flops", "hbm_bytes", "time_s", "energy_j"} <= set(d["ops"][0])


def test_multi_gpu_plan_on_hand_built_model():
    wl = el.Workload(batch=2, prompt_len=64, output_len=32)
    one = el.estimate(TOY, el.Cluster("H100", num_gpus=2), wl)   # no parallel: one GPU of the two
    assert one.num_gpus == 1
    two = el.estimate(TOY, el.Cluster("H100", num_gpus=2), wl, el.Parallel(tp=2))
    assert two.num_gpus == 2 and two.decode.comm_j > 0
    assert "collective.all_reduce[tp]" in str(two.graphs)
    with pytest.raises(EnergylensError, match="cluster has 1"):
        el.estimate(TOY, el.Cluster("H100"), wl, el.Parallel(tp=2))


def test_real_model_does_not_fit():
    with pytest.raises(DoesNotFitError) as exc:
        el.estimate("meta-llama/Llama-3.1-70B-Instruct", el.Cluster("H100-SXM"),
                    el.Workload(batch=8, prompt_len=1024, output_len=256))
    assert "Llama-3.1-70B-Instruct needs" in str(exc.value) and "H100-SXM has 72.0 GiB for it (90% of 80.0 GiB" in str(exc.value)


def test_check_memory_false_prices_an_over_memory_batch():
    # ML.ENERGY ran Llama-3.1-8B on one H100 at a mean batch of 691 (prefix caching shares KV blocks);
    # private KV caches for that batch would not fit, so the default estimate refuses it
    cluster, wl = el.Cluster("H100-SXM"), el.Workload(batch=691, prompt_len=634, output_len=397)
    with pytest.raises(DoesNotFitError):
        el.estimate("meta-llama/Llama-3.1-8B-Instruct", cluster, wl)
    est = el.estimate("meta-llama/Llama-3.1-8B-Instruct", cluster, wl, check_memory=False)
    assert est.memory.total_bytes > est.memory.capacity_bytes  # memory still reports the unshared need
    # priced (KV length capped at the cache's capacity): a longer step, less energy per token than batch 256
    small = el.estimate("meta-llama/Llama-3.1-8B-Instruct", cluster, el.Workload(batch=256, prompt_len=634,
                                                                                 output_len=397))
    assert math.isfinite(est.serving.median_itl_s) and est.serving.median_itl_s > small.serving.median_itl_s
    assert est.serving.energy_per_output_token_j < small.serving.energy_per_output_token_j


def test_check_memory_false_with_weights_over_memory_keeps_the_context():
    """Weights alone past the GPU leave no KV capacity to cap the context at: the serving step keeps
    the workload's context (a cap of 0 tokens priced no KV traffic: longer prompts cost nothing)."""
    one = el.Cluster("H100-SXM")
    itl = [el.estimate("meta-llama/Llama-3.1-70B-Instruct", one, el.Workload(batch=32, prompt_len=p, output_len=256),
                       check_memory=False).serving.median_itl_s for p in (1024, 8192)]
    assert itl[1] > itl[0] * 1.1


def test_real_model_estimate():
    est = el.estimate("meta-llama/Llama-3.1-8B-Instruct", el.Cluster("H100"),
                      el.Workload(batch=8, prompt_len=634, output_len=400))
    # decode of an 8B model at batch 8 streams ~16 GB of weights: a few ms on an H100
    assert 0.004 < est.serving.median_itl_s < 0.02
    assert 14e9 < est.memory.weights_bytes < 18e9


def test_gpus_without_measured_nvlink_tables_default_to_pcie():
    """H100-PCIe has an NVLink bridge (pairs only) but no collective tables: tp=2 is priced over PCIe."""
    wl = el.Workload(batch=8, prompt_len=256, output_len=64)
    est = el.estimate("meta-llama/Llama-3.2-1B-Instruct", el.Cluster("H100-PCIe", num_gpus=2), wl, el.Parallel(tp=2))
    pcie = el.estimate("meta-llama/Llama-3.2-1B-Instruct", el.Cluster("H100-PCIe", num_gpus=2, interconnect="pcie"),
                       wl, el.Parallel(tp=2))
    assert est.decode.comm_j == pcie.decode.comm_j > 0
    with pytest.raises(el.errors.EstimateError, match="--interconnect pcie"):
        el.estimate("meta-llama/Llama-3.2-1B-Instruct", el.Cluster("H100-PCIe", num_gpus=2, interconnect="nvlink"),
                    wl, el.Parallel(tp=2))
