"""The HF frontend: tracing on meta, regions, param counts, FP8, errors, the IR cache."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from energylens.errors import ShardingError, UnknownNameError, UnsupportedOpError
from energylens.frontends.hf import ModelIR, cache_key, trace, trace_model
from energylens.ir.core import Einsum, Gather, Reduce, Repeat
from energylens.ir.stats import active_param_count, param_count
from energylens.ir.verify import verify_graph
from energylens.models import load_config
from energylens.testing import tiny_llama_config, tiny_qwen3_config, tiny_qwen3_moe_config


@pytest.mark.parametrize("model,total,active", [
    ("meta-llama/Llama-3.1-8B-Instruct", 8.03e9, None),
    ("meta-llama/Llama-3.1-70B-Instruct", 70.6e9, None),
    ("meta-llama/Llama-3.1-405B-Instruct", 405.9e9, None),
    ("Qwen/Qwen3-30B-A3B-Instruct-2507", 30.5e9, 3.3e9),
    ("Qwen/Qwen3-235B-A22B-Instruct-2507", 235e9, 22e9),
    ("meta-llama/Llama-3.2-1B-Instruct", 1.24e9, None),
    ("Qwen/Qwen3-Coder-480B-A35B-Instruct", 480e9, 35e9),
])
def test_param_counts_match_published(model: str, total: float, active: float | None) -> None:
    ir = trace_model(model, cache=False)
    for g in (ir.prefill, ir.decode):
        assert param_count(g) == pytest.approx(total, rel=0.01)
        # published active counts are rounded to two digits (Qwen3-30B-A3B: 3.35 B -> "3.3 B")
        assert active_param_count(g) == pytest.approx(active or total, rel=0.01 if active is None else 0.02)


@pytest.mark.parametrize("model,non_embedding", [("Qwen/Qwen3-1.7B", 1.4e9), ("Qwen/Qwen3-4B-Instruct-2507", 3.6e9)])
def test_small_qwen3_non_embedding_counts(model: str, non_embedding: float) -> None:
    """Their model cards give totals to one decimal (1.7B, 4.0B), so check the non-embedding counts."""
    ir = trace_model(model, cache=False)
    cfg = load_config(model)
    assert cfg.get("tie_word_embeddings") is True  # one vocab x hidden matrix serves embedding and lm_head
    assert param_count(ir.decode) - cfg.get("vocab_size") * cfg.get("hidden_size") == pytest.approx(non_embedding, rel=0.01)


@pytest.mark.parametrize("cfg", [tiny_llama_config, tiny_qwen3_config, tiny_qwen3_moe_config])
def test_tiny_graphs_verify_and_round_trip(cfg) -> None:
    from energylens.ir.text import parse_graph, print_graph

    ir = trace_model(cfg(), cache=False)
    assert isinstance(ir, ModelIR)
    for phase in ("prefill", "decode"):
        g = ir.phase(phase)
        verify_graph(g)
        for op, _ in g.walk():
            op.verify()
        assert parse_graph(print_graph(g)) == g
        assert g.attr["phase"] == phase
        regions = [b for b in g.body if isinstance(b, Repeat)]
        assert len(regions) == 1 and regions[0].count == 2
        assert {d.role for d in regions[0].decls} == {"param", "cache"}
        # both attention einsums (scores Q K^T and P V, the two that span S x K) skip the masked half in prefill
        attention = [op for op, _ in g.walk()
                     if isinstance(op, Einsum) and any("K" in v.type.dims for v in (*op.operands, op.result))]
        assert len(attention) == 2 and all(op.causal == (phase == "prefill") for op in attention)
        softmax = [op for op, _ in g.walk() if isinstance(op, Reduce) and op.fn == "softmax" and op.dims == ("K",)]
        assert len(softmax) == 1
        lm_head = [op for op, _ in g.walk() if op.source.module == "lm_head"]
        assert len(lm_head) == 1 and lm_head[0].result.type.dims == ("B", "v")
        assert any(isinstance(op, Gather) and op.fn == "scatter" and op.dim == "K" for op, _ in g.walk())


def test_moe_structure() -> None:
    g = trace_model(tiny_qwen3_moe_config(), cache=False).decode
    assert g.attr["num_experts"] == "8" and g.attr["top_k"] == "2"
    assert g.dim_sizes["C"] == "B*S*2/8"
    experts = [op for op, _ in g.walk() if isinstance(op, Einsum) and "e" in op.result.type.dims and "C" in
               op.result.type.dims]
    assert len(experts) == 2
    assert any(isinstance(op, Reduce) and op.fn == "topk" for op, _ in g.walk())
    assert g.bind(B=4, S=1, K=100)["C"] == pytest.approx(1.0)


def test_gqa_keeps_kv_heads() -> None:
    g = trace_model(tiny_llama_config(), cache=False).prefill
    scores = next(op for op, _ in g.walk() if isinstance(op, Einsum) and op.causal)
    assert scores.result.type.dims == ("B", "g", "r", "S", "K")
    assert scores.operands[1].type.dims == ("B", "g", "K", "d")  # K is not repeated


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 16), (4, 1, 16), (1, 1, 64), (8, 8, 8)])
@pytest.mark.parametrize("make", [tiny_llama_config, tiny_qwen3_config])
def test_mha_mqa_and_one_head_trace_and_check_tp(make, heads: int, kv_heads: int, head_dim: int) -> None:
    """MHA (no KV group; also with head_dim = KV heads), MQA (one KV head: a size-1 dim) and a single
    head (head_dim = hidden) trace with the module's parameter count, tp is checked against the
    attention heads, and a valid tp splits the query heads (the einsum FLOPs stay those of tp=1 but
    for MQA's one KV head, copied to every GPU as vLLM does)."""
    import torch
    import transformers

    from energylens.passes.shard import Shard, local_dim_sizes, mesh_of, valid_tp_values

    cfg = make() | {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim}
    hf_cfg = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        expected = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(hf_cfg).parameters())
    g = trace_model(cfg, cache=False).decode
    assert param_count(g) == expected
    assert valid_tp_values(g, 8) == [t for t in (1, 2, 4, 8) if heads % t == 0]
    with pytest.raises(ShardingError, match=rf"tp={2 * heads} does not divide the model's {heads} attention heads"):
        Shard(tp=2 * heads)(g)
    def q_flops(graph) -> float:  # per GPU
        sizes, mesh = graph.bind(B=4, S=1, K=64), mesh_of(graph)
        return sum(math.prod(local_dim_sizes(op, sizes, mesh)[d] for d in op.all_dims) for op, _ in graph.walk()
                   if isinstance(op, Einsum) and op.source.module.endswith("q_proj"))

    tp = max(valid_tp_values(g, 8))
    sharded = Shard(tp=tp)(g)
    assert q_flops(sharded) == pytest.approx(q_flops(g) / tp)  # per GPU: the query heads are split


def test_fp8_weights() -> None:
    def dtypes(model: str) -> dict[str, str]:
        g = trace_model(model, cache=False).decode
        return {d.value.name: d.value.type.dtype for d, _ in g.all_decls()}

    q = dtypes("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8")
    assert q["model.layers.mlp.experts.gate_up_proj"] == "fp8" and q["model.layers.self_attn.q_proj.weight"] == "fp8"
    assert q["model.layers.mlp.gate.weight"] == "bf16" and q["lm_head.weight"] == "bf16"
    assert q["model.embed_tokens.weight"] == "bf16"
    m = dtypes("meta-llama/Llama-3.1-405B-Instruct-FP8")
    assert m["model.layers.mlp.down_proj.weight"] == "fp8" and m["model.layers.self_attn.q_proj.weight"] == "bf16"
    nv = dtypes("nvidia/Llama-3.1-70B-Instruct-FP8")
    assert nv["model.layers.self_attn.o_proj.weight"] == "fp8" and nv["lm_head.weight"] == "bf16"
    assert nv["model.layers.self_attn.key_cache"] == "fp8"


def test_oracle_every_linear_is_one_einsum() -> None:
    """A real tiny 2-layer Llama on CPU: every nn.Linear is one einsum with matching dims, and the
    einsum computes what the Linear computes (torch.einsum on random inputs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = tiny_llama_config()
    mt = cfg.pop("model_type")
    module = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **cfg), dtype=torch.float32)
    ir = trace_model(module)
    g = ir.prefill
    sizes = g.bind(B=2, S=3, K=3)
    einsums = {op.source.module: (op, n) for op, n in g.walk() if isinstance(op, Einsum) and op.source.module}
    linears = {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) == 15
    count: dict[str, int] = {}
    torch.manual_seed(0)
    for name, lin in linears.items():
        key = name.replace("layers.0.", "layers.").replace("layers.1.", "layers.")
        op, n = einsums[key]
        count[key] = n
        w = op.operands[1]
        shape = [int(sizes[d]) for d in w.type.dims]
        assert torch.Size(shape).numel() == lin.weight.numel()
        # numerical oracle: x @ W^T via the IR spec, with W reshaped to the IR's weight dims
        x_dims = op.operands[0].type.dims
        x = torch.randn([int(sizes[d]) for d in x_dims])
        if set(x_dims) & set(w.type.dims) == {"h"}:  # input has h as its only contracted dim
            got = torch.einsum(op.spec, x, lin.weight.detach().reshape(shape))
            ref = torch.nn.functional.linear(x, lin.weight.detach())
            assert torch.allclose(got.reshape(ref.shape), ref, atol=1e-4)
    assert sum(count.values()) == len(linears) and count["model.layers.mlp.gate_proj"] == 2
    assert einsums["lm_head"][0].spec == "bh,vh->bv"  # last position only: no S in lm_head


def test_unknown_aten_op_names_op_and_module() -> None:
    import torch

    class Cum(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(100, 32)
            self.proj = torch.nn.Linear(32, 100)

        def forward(self, input_ids):  # type: ignore[no-untyped-def]
            return self.proj(torch.cumsum(self.emb(input_ids), dim=1))

    with pytest.raises(UnsupportedOpError, match=r"aten\.cumsum\.default"):
        trace_model(Cum())


def test_generic_module_traces() -> None:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(100, 32)
            self.proj = torch.nn.Linear(32, 100, bias=False)

        def forward(self, input_ids):  # type: ignore[no-untyped-def]
            return self.proj(torch.nn.functional.silu(self.emb(input_ids)))

    ir = trace_model(Tiny())
    verify_graph(ir.prefill)
    assert [op.kind for op, _ in ir.prefill.walk()] == ["gather", "elementwise", "einsum"]
    assert param_count(ir.prefill) == 2 * 100 * 32
    # its dimensions have no role names, so tensor parallelism would split nothing: refused, not priced
    # as 8 GPUs repeating the model; compile keeps tp=1, and the workload's length as the vLLM limit
    import energylens as el
    from energylens.errors import ShardingError
    from energylens.passes.shard import valid_tp_values

    cluster, wl = el.Cluster("H100-SXM", num_gpus=2), el.Workload(batch=2, prompt_len=64, output_len=16)
    with pytest.raises(ShardingError, match="tp=2 splits nothing in 'Tiny.decode'.*use tp=1"):
        el.estimate(ir, cluster, wl, el.Parallel(tp=2))
    assert valid_tp_values(ir.decode) == [1]
    plan = el.compile(ir, cluster, wl, objective="latency")
    assert plan.parallel.tp == 1 and plan.max_model_len == 80


def test_trace_phase_and_errors() -> None:
    g = trace(tiny_qwen3_config(), "decode", cache=False)
    assert g.attr["phase"] == "decode"
    with pytest.raises(UnknownNameError):
        trace(tiny_qwen3_config(), "train")
    with pytest.raises(UnknownNameError):
        trace_model("no-such-model")


def test_cache_round_trip_without_torch(tmp_path) -> None:
    env = {**os.environ, "ENERGYLENS_CACHE": str(tmp_path)}
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(tiny_llama_config()))
    code = ("import sys; from energylens.frontends.hf import trace_model; "
            "from energylens.ir.text import print_graph; "
            f"ir = trace_model({str(cfg_path)!r}); "
            "print('torch' in sys.modules); print(print_graph(ir.decode))")
    cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    key = cache_key(load_config(str(cfg_path)))
    assert (tmp_path / "ir" / key / "prefill.eir").is_file()
    warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert cold.startswith("True") and warm.startswith("False")
    assert cold.split("\n", 1)[1] == warm.split("\n", 1)[1]


def test_transformers5_configs_trace() -> None:
    """PretrainedConfigs of transformers 5: Qwen3 has `layer_types` (trimmed with the layers), Qwen3-MoE
    names its expert count `num_local_experts`."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    small = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "vocab_size": 128, "num_hidden_layers": 3}
    ir = trace_model(Qwen3Config(**small), cache=False)
    assert len(Qwen3Config(**small).layer_types) == 3
    assert next(b for b in ir.decode.body if isinstance(b, Repeat)).count == 3
    moe = trace_model(Qwen3MoeConfig(**small, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32),
                      cache=False)
    assert moe.decode.attr["num_experts"] == "8" and moe.decode.dim_sizes["e"] == 8


@pytest.mark.parametrize("rope", [
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "longrope", "factor": 2.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
     "original_max_position_embeddings": 64},
])
def test_runtime_rope_types_trace_as_fixed_rope(rope) -> None:
    """dynamic / longrope pick frequencies from the sequence length at run time (torch.export failed
    on dynamic with a raw trace error, and longrope's aten.max had no lowering): the work is that of
    RoPE with fixed frequencies, so they are traced as such."""
    base = trace_model(tiny_llama_config(), cache=False)
    ir = trace_model({**tiny_llama_config(), "rope_scaling": rope}, cache=False)
    assert param_count(ir.decode) == param_count(base.decode)
    assert [op.kind for op, _ in ir.decode.walk()] == [op.kind for op, _ in base.decode.walk()]


def test_top_1_routing_keeps_its_size_1_expert_slot_dim() -> None:
    """num_experts_per_tok = 1: the top-k weights' dim x has size 1, and broadcasting dropped its
    name on the normalised weights (a verifier error on Qwen3-30B-A3B's config with top-1)."""
    cfg = {**load_config("Qwen/Qwen3-30B-A3B-Instruct-2507").config, "num_experts_per_tok": 1}
    ir = trace_model(cfg, cache=False)
    verify_graph(ir.decode)
    assert ir.decode.attr["top_k"] == "1"


@pytest.mark.parametrize("tied", [True, False])
def test_fp8_lm_head_stays_bf16(tied: bool) -> None:
    """vLLM quantizes no lm_head (an embedding layer to it), tied or not, listed in the skips or not
    (Qwen3-32B-FP8 lists none)."""
    cfg = tiny_qwen3_config() | {"tie_word_embeddings": tied, "quantization_config": {"quant_method": "fp8"}}
    g = trace_model(cfg, cache=False).decode
    dtypes = {d.value.name: d.value.type.dtype for d, _ in g.all_decls()}
    assert dtypes["model.layers.self_attn.q_proj.weight"] == "fp8"
    assert {t for n, t in dtypes.items() if "embed" in n or "lm_head" in n} == {"bf16"}


def test_compressed_tensors_ignore_patterns() -> None:
    """compressed-tensors' ``ignore`` list: module names and ``re:`` patterns (matched from the start,
    as vLLM's ``re.match``) stay bf16."""
    f8 = {"num_bits": 8, "type": "float"}
    qc = {"quant_method": "compressed-tensors",
          "ignore": ["lm_head", "re:.*mlp\\.gate$", "re:.*self_attn\\.o_pr", "re:mlp\\.experts"],
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": f8, "input_activations": f8}}}
    g = trace_model(tiny_qwen3_moe_config() | {"quantization_config": qc}, cache=False).decode
    dtypes = {d.value.name: d.value.type.dtype for d, _ in g.all_decls()}
    assert dtypes["model.layers.self_attn.q_proj.weight"] == "fp8" and dtypes["model.layers.mlp.experts.gate_up_proj"] == "fp8"
    assert dtypes["model.layers.self_attn.o_proj.weight"] == "bf16" and dtypes["model.layers.mlp.gate.weight"] == "bf16"
    # "re:mlp\.experts" does not match "model.layers.N.mlp.experts" from its start: the experts stay fp8


def test_derived_qwen_fp8_prices_as_the_published_checkpoint() -> None:
    """Qwen3-30B-A3B-Instruct-2507-FP8 (derived: bf16 config + Qwen's fp8 section) has the weight
    dtypes of the published Qwen3-30B-A3B-FP8, whose skip list names every norm and router."""
    def dtypes(model: str) -> dict[str, str]:
        return {d.value.name: d.value.type.dtype for d, _ in trace_model(model, cache=False).decode.all_decls()}

    derived, published = dtypes("Qwen/Qwen3-30B-A3B-Instruct-2507-FP8"), dtypes("Qwen/Qwen3-30B-A3B-FP8")
    assert derived == published and derived["model.layers.mlp.experts.down_proj"] == "fp8"


def test_module_that_is_not_a_causal_lm() -> None:
    import torch

    from energylens.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Linear module: a module must be an HF causal LM.*input_ids"):
        trace_model(torch.nn.Linear(4, 4))
    # an HF module without the LM head (or with another head) was rebuilt as the causal LM, head and all
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(**{k: v for k, v in tiny_llama_config().items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        headless = LlamaModel(cfg)
    with pytest.raises(ConfigError, match=r"the LlamaModel module is not a causal LM"):
        trace_model(headless)


def test_a_compiled_or_subclassed_causal_lm_is_still_priced() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    class MyLM(LlamaForCausalLM):
        pass

    cfg = LlamaConfig(**{k: v for k, v in tiny_llama_config().items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        mine = MyLM(cfg)
    assert param_count(trace_model(mine).decode) == param_count(trace_model(torch.compile(mine)).decode) > 0
