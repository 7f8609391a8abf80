"""Hand-built graphs for the pass tests (IR text, written as the frontend lays models out).

They do not depend on the frontend, so the pass tests stay stable while it evolves; tests on
traced models are in the same test files and run when the frontend is importable.
"""

from __future__ import annotations

from energylens.ir.core import Graph
from energylens.ir.text import parse_graph

__all__ = ["LLAMA_DECODE", "MOE_DECODE", "llama_decode", "moe_decode", "traced"]

_ATTN = """\
    %sq = elementwise.pow %x : f32[B,S,h]
    %ms = reduce.mean[h] %sq : f32[B,S]
    %rs = elementwise.rsqrt %ms : f32[B,S]
    %xn = elementwise.mul %x, %rs : f32[B,S,h]
    %xw = elementwise.mul %xn, %model.layers.input_layernorm.weight : bf16[B,S,h]
    %q = einsum "bsh,hgrd->bsgrd" %xw, %model.layers.self_attn.q_proj.weight : bf16[B,S,g,r,d]
    %k = einsum "bsh,hgd->bsgd" %xw, %model.layers.self_attn.k_proj.weight : bf16[B,S,g,d]
    %v = einsum "bsh,hgd->bsgd" %xw, %model.layers.self_attn.v_proj.weight : bf16[B,S,g,d]
    %qr = elementwise.rope %q, %positions : bf16[B,S,g,r,d]
    %kr = elementwise.rope %k, %positions : bf16[B,S,g,d]
    %kc = gather.scatter[K] %cache_k, %kr, %positions : bf16[B,g,K,d]
    %vc = gather.scatter[K] %cache_v, %v, %positions : bf16[B,g,K,d]
    %scores = einsum "bsgrd,bgkd->bgrsk" %qr, %kc : f32[B,g,r,S,K]
    %probs = reduce.softmax[K] %scores : f32[B,g,r,S,K]
    %ctx = einsum "bgrsk,bgkd->bsgrd" %probs, %vc : bf16[B,S,g,r,d]
    %o = einsum "bsgrd,grdh->bsh" %ctx, %model.layers.self_attn.o_proj.weight : bf16[B,S,h]
    %x1 = elementwise.add %x, %o : bf16[B,S,h]
    %sq2 = elementwise.pow %x1 : f32[B,S,h]
    %ms2 = reduce.mean[h] %sq2 : f32[B,S]
    %rs2 = elementwise.rsqrt %ms2 : f32[B,S]
    %xn2 = elementwise.mul %x1, %rs2 : f32[B,S,h]
    %xw2 = elementwise.mul %xn2, %model.layers.post_attention_layernorm.weight : bf16[B,S,h]
"""

_ATTN_DECLS = """\
    param %model.layers.input_layernorm.weight : bf16[h]
    param %model.layers.self_attn.q_proj.weight : bf16[h,g,r,d]
    param %model.layers.self_attn.k_proj.weight : bf16[h,g,d]
    param %model.layers.self_attn.v_proj.weight : bf16[h,g,d]
    param %model.layers.self_attn.o_proj.weight : bf16[g,r,d,h]
    param %model.layers.post_attention_layernorm.weight : bf16[h]
    cache %cache_k : bf16[B,g,K,d]
    cache %cache_v : bf16[B,g,K,d]
"""

_HEAD = """\
  %sqf = elementwise.pow %y : f32[B,S,h]
  %msf = reduce.mean[h] %sqf : f32[B,S]
  %rsf = elementwise.rsqrt %msf : f32[B,S]
  %xnf = elementwise.mul %y, %rsf : f32[B,S,h]
  %xwf = elementwise.mul %xnf, %model.norm.weight : bf16[B,S,h]
  %last = gather[S] %xwf, %last_index : bf16[B,h]
  %logits = einsum "bh,vh->bv" %last, %lm_head.weight : bf16[B,v]
  return %logits
}
"""

LLAMA_DECODE = f"""\
graph @tiny_llama attributes {{model = "tiny-llama", phase = "decode"}} {{
  dims {{B = ?, S = ?, K = ?, T = B*S, h = 64, v = 128, f = 128, q = 4, g = 2, r = 2, d = 16}}
  input %input_ids : i64[B,S]
  input %positions : i64[B,S]
  input %last_index : i64[B]
  param %model.embed_tokens.weight : bf16[v,h]
  param %model.norm.weight : bf16[h]
  param %lm_head.weight : bf16[v,h]
  %x = gather[v] %model.embed_tokens.weight, %input_ids : bf16[B,S,h]  {{aten = "aten.embedding"}}
  repeat @layers x2 (%x -> %y) {{
{_ATTN_DECLS}\
    param %model.layers.mlp.gate_proj.weight : bf16[h,f]
    param %model.layers.mlp.up_proj.weight : bf16[h,f]
    param %model.layers.mlp.down_proj.weight : bf16[f,h]
{_ATTN}\
    %gate = einsum "bsh,hf->bsf" %xw2, %model.layers.mlp.gate_proj.weight : bf16[B,S,f]
    %up = einsum "bsh,hf->bsf" %xw2, %model.layers.mlp.up_proj.weight : bf16[B,S,f]
    %act = elementwise.silu %gate : bf16[B,S,f]
    %gu = elementwise.mul %act, %up : bf16[B,S,f]
    %down = einsum "bsf,fh->bsh" %gu, %model.layers.mlp.down_proj.weight : bf16[B,S,h]
    %y = elementwise.add %x1, %down : bf16[B,S,h]
  }}
{_HEAD}"""

MOE_DECODE = f"""\
graph @tiny_qwen3_moe attributes {{model = "tiny-qwen3-moe", phase = "decode", num_experts = "8", top_k = "2"}} {{
  dims {{B = ?, S = ?, K = ?, T = B*S, C = B*S*2/8, h = 64, v = 128, q = 4, g = 2, r = 2, d = 16, e = 8, m = 32, x = 2}}
  input %input_ids : i64[B,S]
  input %positions : i64[B,S]
  input %last_index : i64[B]
  param %model.embed_tokens.weight : bf16[v,h]
  param %model.norm.weight : bf16[h]
  param %lm_head.weight : bf16[v,h]
  %x = gather[v] %model.embed_tokens.weight, %input_ids : bf16[B,S,h]  {{aten = "aten.embedding"}}
  repeat @layers x2 (%x -> %y) {{
{_ATTN_DECLS}\
    param %model.layers.mlp.gate.weight : bf16[h,e]
    param %model.layers.mlp.experts.gate_proj : bf16[e,h,m]
    param %model.layers.mlp.experts.up_proj : bf16[e,h,m]
    param %model.layers.mlp.experts.down_proj : bf16[e,m,h]
{_ATTN}\
    %router = einsum "bsh,he->bse" %xw2, %model.layers.mlp.gate.weight : f32[B,S,e]
    %rprobs = reduce.softmax[e] %router : f32[B,S,e]
    %topk = reduce.topk[e] %rprobs : f32[B,S,x]
    %disp = gather.dispatch[S] %xw2, %topk : bf16[e,C,h]
    %egate = einsum "ech,ehm->ecm" %disp, %model.layers.mlp.experts.gate_proj : bf16[e,C,m]
    %eup = einsum "ech,ehm->ecm" %disp, %model.layers.mlp.experts.up_proj : bf16[e,C,m]
    %eact = elementwise.silu %egate : bf16[e,C,m]
    %egu = elementwise.mul %eact, %eup : bf16[e,C,m]
    %edown = einsum "ecm,emh->ech" %egu, %model.layers.mlp.experts.down_proj : bf16[e,C,h]
    %moe = gather.combine[e] %edown, %topk : bf16[B,S,h]
    %y = elementwise.add %x1, %moe : bf16[B,S,h]
  }}
{_HEAD}"""


def llama_decode() -> Graph:
    return parse_graph(LLAMA_DECODE)


def moe_decode() -> Graph:
    return parse_graph(MOE_DECODE)


def test_hand_built_graphs_verify() -> None:
    from energylens.ir.text import print_graph
    from energylens.ir.verify import verify_graph

    for text in (LLAMA_DECODE, MOE_DECODE):
        g = parse_graph(text)
        verify_graph(g)
        assert print_graph(g) == text


def traced(config_name: str, phase: str = "decode") -> Graph:
    """A tiny model traced by the frontend (``tiny_llama_config`` ...); skips when it is unavailable."""
    import pytest

    try:
        from energylens import testing
        from energylens.frontends.hf import trace_model
    except ImportError as e:  # pragma: no cover - the frontend lands separately
        pytest.skip(f"frontend not available: {e}")
    ir = trace_model(getattr(testing, config_name)())
    return ir.decode if phase == "decode" else ir.prefill
