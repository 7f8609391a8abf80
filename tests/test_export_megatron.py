"""Megatron-Core export: names accepted by megatron-core's own dataclasses, mapping, errors.

Needs ``megatron-core`` (pure Python; the ``dev`` extra installs it); skipped when it is absent.
Where megatron-core is installed but cannot be imported (a torch it does not support), the field
names are read from its installed source files with ``ast`` instead.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import warnings
from pathlib import Path

import pytest

from energylens.errors import InvalidWorkloadError, ShardingError
from energylens.export import PlanSpec, megatron_extras, to_megatron
from energylens.export.megatron import UB_FPROP_LAYERS
from energylens.export.plan import has_experts
from energylens.typing import Parallel

if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.core") is None:
    pytest.skip(
        "megatron-core is not installed (pip install 'megatron-core>=0.16,<0.17')", allow_module_level=True
    )

MCORE = Path(importlib.util.find_spec("megatron.core").origin).parent


def _import_mcore():
    """(ModelParallelConfig, TransformerConfig, InferenceWrapperConfig, initialize_model_parallel) or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import (
                InferenceWrapperConfig,
            )
            from megatron.core.model_parallel_config import ModelParallelConfig
            from megatron.core.parallel_state import initialize_model_parallel
            from megatron.core.transformer.transformer_config import TransformerConfig
    except Exception:  # installed but not importable with this torch: fall back to its source text
        return None
    return ModelParallelConfig, TransformerConfig, InferenceWrapperConfig, initialize_model_parallel


MC = _import_mcore()


def _ast_fields(relpath: str, cls: str) -> set[str]:
    tree = ast.parse((MCORE / relpath).read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def mpc_fields() -> set[str]:
    if MC:
        return {f.name for f in dataclasses.fields(MC[0])}
    return _ast_fields("model_parallel_config.py", "ModelParallelConfig")


def transformer_fields() -> set[str]:
    if MC:
        return {f.name for f in dataclasses.fields(MC[1])}
    return mpc_fields() | _ast_fields("transformer/transformer_config.py", "TransformerConfig")


def inference_fields() -> set[str]:
    if MC:
        return {f.name for f in dataclasses.fields(MC[2])}
    return _ast_fields(
        "inference/model_inference_wrappers/inference_wrapper_config.py", "InferenceWrapperConfig"
    )


def init_params() -> set[str]:
    if MC:
        return set(inspect.signature(MC[3]).parameters)
    tree = ast.parse((MCORE / "parallel_state.py").read_text())
    fn = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "initialize_model_parallel"
    )
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs}


def te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def plan(tp: int = 1, ep: int = 1, dp: int = 1, **kw) -> PlanSpec:
    base = dict(
        model="Qwen/Qwen3-30B-A3B",
        gpu="H100-SXM",
        num_gpus=tp * dp,
        parallel=Parallel(tp=tp, ep=ep, dp=dp),
        max_num_seqs=64,
        max_model_len=1280,
    )
    base.update(kw)
    return PlanSpec(**base)


PLANS = [
    plan(),
    plan(tp=8, fused=False),
    plan(tp=8, sequence_parallel=True, comm_sms=16, fused=False),
    plan(tp=4, dp=2, ep=8, comm_sms=20, sequence_parallel=True, fused=False),
    plan(tp=4, dp=2, ep=1, fused=False),
    plan(tp=2, dp=4, ep=8, quantization="fp8", gpu_clock_mhz=1410),
]
IDS = [f"tp{p.parallel.tp}ep{p.parallel.ep}dp{p.parallel.dp}" for p in PLANS]


def needs_te(cfg: dict) -> bool:
    """Fields whose TransformerConfig validation imports Transformer Engine."""
    return bool(cfg.get("apply_rope_fusion") or cfg.get("fp8") or cfg.get("moe_permute_fusion"))


@pytest.mark.parametrize("p", PLANS, ids=IDS)
def test_names_are_megatron_fields(p: PlanSpec) -> None:
    cfg = to_megatron(p)
    assert set(cfg) <= transformer_fields(), set(cfg) - transformer_fields()
    ex = megatron_extras(p)
    assert set(ex.initialize_model_parallel) <= init_params()
    assert set(ex.inference_wrapper) <= inference_fields()


@pytest.mark.skipif(
    MC is None, reason="megatron-core does not import with this torch; names checked with ast"
)
@pytest.mark.parametrize("p", PLANS, ids=IDS)
def test_model_parallel_config_accepts_export(p: PlanSpec) -> None:
    cfg = to_megatron(p)
    mpc = {k: v for k, v in cfg.items() if k in mpc_fields()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = MC[0](**mpc)
    assert built.tensor_model_parallel_size == p.parallel.tp
    assert built.expert_model_parallel_size == p.parallel.ep
    assert built.expert_tensor_parallel_size * p.parallel.ep == p.parallel.tp * p.parallel.dp


@pytest.mark.skipif(
    MC is None, reason="megatron-core does not import with this torch; names checked with ast"
)
@pytest.mark.parametrize("p", PLANS, ids=IDS)
def test_transformer_config_accepts_export(p: PlanSpec) -> None:
    cfg = to_megatron(p)
    if needs_te(cfg) and not te_available():
        pytest.skip("fused RoPE / FP8 / MoE permute fusion are validated through Transformer Engine (absent)")
    experts = {"num_moe_experts": 16} if has_experts(p) else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = MC[1](
            num_layers=2,
            hidden_size=64,
            num_attention_heads=8,
            num_query_groups=8,
            add_bias_linear=False,
            **experts,
            **cfg,
        )
    for key, value in cfg.items():
        assert getattr(built, key) == value, key


def test_data_parallel_is_derived_from_world_size() -> None:
    ex = megatron_extras(plan(tp=4, dp=2, ep=8))
    assert "data_parallel_size" not in to_megatron(plan(tp=4, dp=2, ep=8))
    assert "data_parallel_size" not in mpc_fields()
    assert ex.world_size == 8 and ex.data_parallel_size == 2 and ex.expert_data_parallel_size == 1
    # what Megatron computes in initialize_model_parallel: world_size // (tp * pp * cp)
    init = ex.initialize_model_parallel
    assert ex.world_size // (init["tensor_model_parallel_size"] * init["pipeline_model_parallel_size"]) == 2


def test_expert_layout() -> None:
    assert to_megatron(plan(tp=4, dp=2, ep=8))["expert_tensor_parallel_size"] == 1
    cfg = to_megatron(plan(tp=4, dp=2, ep=1))
    assert cfg["expert_tensor_parallel_size"] == 8 and cfg["moe_token_dispatcher_type"] == "allgather"


def test_dense_model_gets_no_expert_fields() -> None:
    dense = plan(tp=8, model="meta-llama/Llama-3.1-70B-Instruct")  # moe=None: read from the config
    cfg = to_megatron(dense)
    assert not [k for k in cfg if "expert" in k or k.startswith("moe_")], cfg
    assert "moe_token_dispatcher_type" in to_megatron(plan(tp=4, dp=2))  # Qwen3-30B-A3B's config: experts
    assert "expert_model_parallel_size" not in to_megatron(plan(tp=2, model="my/unknown-model"))
    assert "expert_model_parallel_size" in to_megatron(plan(tp=2, model="my/unknown-model", moe=True))
    assert megatron_extras(dense).initialize_model_parallel["expert_tensor_parallel_size"] == 8


def test_moe_dispatch_is_the_priced_allgather() -> None:
    assert to_megatron(plan(tp=4, dp=2, ep=8))["moe_token_dispatcher_type"] == "allgather"


def test_tp_comm_overlap_with_sms() -> None:
    p = plan(tp=8, sequence_parallel=True, comm_sms=16)
    assert to_megatron(p)["tp_comm_overlap"] is True
    ub = megatron_extras(p).tp_comm_overlap_cfg
    assert set(ub) == set(UB_FPROP_LAYERS) and all(
        v == {"num_sm": 16, "set_sm_margin": 1} for v in ub.values()
    )
    no_sp = plan(tp=8, comm_sms=16)
    assert to_megatron(no_sp)["tp_comm_overlap"] is False
    assert megatron_extras(no_sp).tp_comm_overlap_cfg is None
    assert any("comm_sms=16 not applied" in n and "sequence parallelism" in n for n in megatron_extras(no_sp).notes)


def test_ep_overlap_sms_are_a_note_not_deepep() -> None:
    # DeepEP's SM setting belongs to an all-to-all dispatch, not the all-gather the plan priced
    p = plan(tp=4, dp=2, ep=8, comm_sms=19)
    cfg = to_megatron(p)
    assert cfg["moe_token_dispatcher_type"] == "allgather" and "moe_deepep_num_sms" not in cfg
    assert any("moe_deepep_num_sms" in n and "not applied" in n for n in megatron_extras(p).notes)


def test_moe_with_tp_and_ep_needs_sequence_parallel() -> None:
    """Megatron's inference requires sequence parallelism in the MoE layers of tp > 1, ep > 1 models
    and raises NotImplementedError for it anywhere else (TextGenerationController)."""
    assert to_megatron(plan(tp=4, dp=2, ep=8))["sequence_parallel"] is True
    assert to_megatron(plan(tp=1, dp=8, ep=8))["sequence_parallel"] is False
    assert to_megatron(plan(tp=8, ep=1))["sequence_parallel"] is False
    dense = plan(tp=8, model="meta-llama/Llama-3.1-70B-Instruct", sequence_parallel=True)
    assert to_megatron(dense)["sequence_parallel"] is True  # asked for: kept, with a note
    assert any("NotImplementedError" in n for n in megatron_extras(dense).notes)
    assert not any("NotImplementedError" in n for n in megatron_extras(plan(tp=4, dp=2, ep=8)).notes)


def test_moe_replicas_step_together_note() -> None:
    assert any("step together" in n for n in megatron_extras(plan(tp=4, dp=2, ep=8)).notes)
    assert not any("step together" in n for n in megatron_extras(plan(tp=8, ep=8)).notes)


def test_dynamic_engine_limits_are_not_the_static_caches() -> None:
    """MoE over dp replicas runs Megatron's dynamic engine, whose paged cache runs every request: its
    limits are the plan's, not the static cache's cut to full-length requests."""
    kw = dict(kv_cache_tokens=20_000, request_len=1280)
    dyn = megatron_extras(plan(tp=4, dp=2, ep=8, **kw))
    assert dyn.inference_wrapper == {"inference_max_requests": 64, "inference_max_seq_length": 1280}
    # Qwen3-30B-A3B: 48 layers, 4 KV heads of 128 (one per GPU at tp=4), bf16: 24 KiB a token per GPU
    gib = 20_000 * 2 * 48 * 1 * 128 * 2 / 2**30
    assert any(f"DynamicInferenceContext(max_requests=64, max_sequence_length=1280, buffer_size_gb={gib:.2f})" in n
               for n in dyn.notes)
    static = megatron_extras(plan(tp=8, ep=8, **kw))
    assert static.inference_wrapper["inference_max_requests"] == 20_000 // 1280


def test_fp8_keeps_fp8_weights_with_the_checkpoints_recipe() -> None:
    block = to_megatron(plan(tp=4, model="Qwen/Qwen3-235B-A22B-Instruct-2507-FP8", quantization="fp8"))
    assert block["fp8_param"] is True and block["fp8_recipe"] == "blockwise"
    channel = to_megatron(plan(tp=4, model="RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8", quantization="fp8"))
    assert channel["fp8_param"] is True and channel["fp8_recipe"] == "tensorwise"


def test_fp8_kv_cache_is_bf16_in_megatron() -> None:
    """ModelOpt checkpoints store the KV cache in fp8, which the plan prices; Megatron keeps it in bf16."""
    kw = dict(tp=4, quantization="fp8", kv_cache_tokens=100_000, request_len=1280)
    ex = megatron_extras(plan(model="nvidia/Llama-3.1-70B-Instruct-FP8", **kw))
    assert ex.inference_wrapper == {"inference_max_requests": 50_000 // 1280, "inference_max_seq_length": 1280,
                                    "fp8": "e4m3"}  # 64 requests of 1280 tokens would need 81,920
    assert any("bf16" in n for n in ex.notes)
    ours = megatron_extras(plan(model="meta-llama/Llama-3.1-70B-Instruct", **kw))
    assert ours.inference_wrapper["inference_max_requests"] == 64


def test_fusion_fp8_limits_and_clock() -> None:
    cfg = to_megatron(plan(tp=2, dp=4, ep=8, quantization="fp8"))
    assert cfg["fp8"] == "e4m3" and cfg["fp8_param"] is True and cfg["apply_rope_fusion"] is True and cfg["moe_permute_fusion"] is True
    assert not any(v for k, v in to_megatron(plan(fused=False)).items() if k.endswith("_fusion"))
    ex = megatron_extras(plan(gpu_clock_mhz=1200, quantization="fp8"))
    assert ex.inference_wrapper == {
        "inference_max_requests": 64,
        "inference_max_seq_length": 1280,
        "fp8": "e4m3",
    }
    assert ex.gpu_clock_command == "nvidia-smi -i 0 -lgc 1200,1200"
    # AMD: performance-determinism mode caps the graphics clock
    assert megatron_extras(plan(gpu="MI300X", gpu_clock_mhz=1500)).gpu_clock_command == "rocm-smi -d 0 --setperfdeterminism 1500"
    assert ex.to_dict()["world_size"] == 1


@pytest.mark.parametrize(("tp", "dp", "ep"), [(4, 2, 2), (4, 2, 4), (4, 1, 2), (2, 4, 2)])
def test_ep_between_1_and_tp_x_dp_is_rejected_as_by_the_shard_pass(tp: int, dp: int, ep: int) -> None:
    """ep has vLLM's meaning (1 or tp x dp): a Parallel built directly with another ep, which Megatron
    could run (expert tensor parallel tp x dp / ep) but the cost model never priced, is refused."""
    from test_pass_graphs import moe_decode

    from energylens.passes.shard import check_parallel, valid_ep_values

    bad = plan(tp=tp, dp=dp, ep=ep)
    valid = valid_ep_values(moe_decode(), tp * dp)          # 8 experts: [1, tp x dp]
    with pytest.raises(ShardingError, match=f"ep={ep} with tp x dp"):
        check_parallel(moe_decode(), bad.parallel, num_gpus=tp * dp)
    message = f"ep={ep} with tp x dp = {tp} x {dp} = {tp * dp} GPUs: .*; valid ep: {', '.join(map(str, valid))}$"
    with pytest.raises(ShardingError, match=message):
        to_megatron(bad)
    with pytest.raises(ShardingError, match=message):
        megatron_extras(bad)
    for good in valid:                                       # the valid choices it names export
        assert to_megatron(plan(tp=tp, dp=dp, ep=good))["expert_model_parallel_size"] == good


def test_errors() -> None:
    with pytest.raises(ShardingError, match="tp x dp must equal num_gpus"):
        to_megatron(plan(tp=4, dp=2, num_gpus=16))
    with pytest.raises(ShardingError, match=r"ep=3 with tp x dp = 4 x 2 = 8 GPUs: .*; valid ep: 1, 8$"):
        to_megatron(plan(tp=4, dp=2, ep=3))
    with pytest.raises(ShardingError, match="sequence_parallel needs tensor parallelism"):
        to_megatron(plan(tp=1, dp=2, sequence_parallel=True))


def test_ranks_over_several_nodes_launch_per_node() -> None:
    ex = megatron_extras(plan(tp=8, dp=2, model="meta-llama/Llama-3.1-70B-Instruct", gpu_clock_mhz=990))
    assert ex.node_gpus == (8, 8) and ex.launch.startswith("torchrun --nnodes 2 --nproc-per-node 8 on each node,")
    assert ex.gpu_clock_command == "nvidia-smi -i 0,1,2,3,4,5,6,7 -lgc 990,990"
    one = megatron_extras(plan(tp=4, model="meta-llama/Llama-3.1-70B-Instruct"))
    assert one.node_gpus == (4,) and one.launch == "torchrun --nproc-per-node 4"
    # 3 replicas of tp=4 on 12 GPUs: two whole groups on the first node, one on the second (a
    # split of 6 + 6 would put a tp group across the nodes)
    odd = megatron_extras(plan(tp=4, dp=3, model="meta-llama/Llama-3.1-70B-Instruct"))
    assert odd.node_gpus == (8, 4) and "--nproc-per-node 8 on each node (4 on the last)" in odd.launch


def test_block_fp8_recipe_only_where_te_has_block_scaled_gemms() -> None:
    """Transformer Engine's block-scaled fp8 GEMMs need compute capability 9.0: an L40S (8.9) or an
    AMD GPU gets per-tensor scaling, and a note says why."""
    for gpu, recipe in (("H100-SXM", "blockwise"), ("L40S", "tensorwise"), ("MI300X", "tensorwise")):
        spec = plan(tp=2, model="Qwen/Qwen3-32B-FP8", gpu=gpu, quantization="fp8")
        assert to_megatron(spec)["fp8_recipe"] == recipe
        notes = megatron_extras(spec).notes
        assert any("block-scaled GEMMs" in n for n in notes) == (recipe == "tensorwise")


def test_moe_experts_tensor_parallel_without_ep_say_megatron_repeats_them() -> None:
    assert any("dispatches the whole batch" in n for n in megatron_extras(plan(tp=8)).notes)
    assert not any("dispatches the whole batch" in n for n in megatron_extras(plan(tp=8, ep=8)).notes)


def test_megatron_bf16_cache_that_holds_no_request_is_an_error() -> None:
    """A ModelOpt checkpoint's fp8 KV cache holds twice what Megatron's bf16 one does: where that is
    less than one request, the static limits would overflow it."""
    from energylens.errors import InvalidWorkloadError

    p = plan(model="nvidia/Llama-3.1-70B-Instruct-FP8", quantization="fp8", max_num_seqs=1, max_model_len=15_000,
             kv_cache_tokens=19_798, request_len=15_000)
    with pytest.raises(InvalidWorkloadError, match=r"bf16 KV cache holds 9899 tokens .* less than one request of 15000"):
        megatron_extras(p)


def test_megatron_cache_with_fewer_tokens_than_requests_runs_fewer_requests() -> None:
    ex = megatron_extras(plan(model="meta-llama/Llama-3.1-8B-Instruct", max_num_seqs=256, max_model_len=64,
                              kv_cache_tokens=100))
    assert ex.inference_wrapper == {"inference_max_requests": 1, "inference_max_seq_length": 64}


def test_numpy_counts_give_plain_json_and_fp8_needs_the_gpu_whatever_the_model() -> None:
    import json

    import numpy as np

    from energylens.errors import EstimateError
    from energylens.export import to_vllm

    p = plan(tp=np.int64(2), dp=np.int64(1), max_num_seqs=np.int64(64), max_model_len=np.int64(1280),
             num_gpus=np.int64(2), kv_cache_tokens=np.int64(100_000), request_len=np.int64(1280))
    json.dumps(to_vllm(p)), json.dumps(to_megatron(p)), json.dumps(megatron_extras(p).inference_wrapper)
    with pytest.raises(EstimateError, match="A100-SXM-80GB has no fp8 tensor cores"):
        to_megatron(plan(model="someorg/unknown-model", gpu="A100-SXM-80GB", tp=2, quantization="fp8"))
    # request length unknown, fp8 KV halved below the longest request: an error, not an overflowing limit
    with pytest.raises(InvalidWorkloadError, match="bf16 KV cache holds 1000 tokens"):
        megatron_extras(plan(model="nvidia/Llama-3.1-70B-Instruct-FP8", tp=4, quantization="fp8", max_num_seqs=1500,
                             max_model_len=1800, kv_cache_tokens=2000))
