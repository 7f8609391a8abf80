"""Bundled model configs and load_config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from energylens.errors import ConfigError, UnknownNameError
from energylens.models import ModelSpec, config_dict, list_models, load_config

REQUIRED = [
    "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
    "meta-llama/Llama-3.1-405B-Instruct", "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
    "Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B", "Qwen/Qwen3-14B", "Qwen/Qwen3-32B", "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-235B-A22B-Instruct-2507", "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8",
    "meta-llama/Llama-3.1-405B-Instruct-FP8", "nvidia/Llama-3.1-70B-Instruct-FP8",
]


def test_all_required_models_are_bundled() -> None:
    assert set(REQUIRED) <= set(list_models())
    for name in list_models():
        spec = load_config(name)
        assert spec.name == name and spec.family in ("llama", "qwen3", "qwen3_moe")


@pytest.mark.parametrize("alias,name,config", [
    ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", None),
    ("META-LLAMA/llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", None),
    ("llama-3.1-70b-instruct", "meta-llama/Llama-3.1-70B-Instruct", None),
    ("qwen3-30b-a3b-instruct-2507", "Qwen/Qwen3-30B-A3B-Instruct-2507", None),
    # Qwen ids without -Instruct(-2507) name no repo: the bundled checkpoint
    ("Qwen/Qwen3-Coder-480B-A35B", "Qwen/Qwen3-Coder-480B-A35B-Instruct", None),
    ("qwen3-4b-2507", "Qwen/Qwen3-4B-Instruct-2507", None),
    # another checkpoint with a bundled architecture keeps its own id (exports serve it)
    ("meta-llama/Meta-Llama-3.1-405B", "meta-llama/Meta-Llama-3.1-405B", "meta-llama/Llama-3.1-405B-Instruct"),
    ("llama-3.1-70b", "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct"),  # the base model
    # Meta's fp8 base checkpoint (fbgemm_fp8, as its Instruct twin): it was served as the Instruct id
    ("meta-llama/Llama-3.1-405B-FP8", "meta-llama/Llama-3.1-405B-FP8", "meta-llama/Llama-3.1-405B-Instruct-FP8"),
    # Thinking-2507 checkpoints: the Instruct-2507 architecture with other weights
    ("Qwen/Qwen3-30B-A3B-Thinking-2507", "Qwen/Qwen3-30B-A3B-Thinking-2507", "Qwen/Qwen3-30B-A3B-Instruct-2507"),
    ("qwen3-235b-a22b-thinking-2507-fp8", "Qwen/Qwen3-235B-A22B-Thinking-2507-FP8",
     "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"),
    ("Qwen/Qwen3-4B-Thinking-2507", "Qwen/Qwen3-4B-Thinking-2507", "Qwen/Qwen3-4B-Instruct-2507"),
    ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "Qwen/Qwen3-Coder-30B-A3B-Instruct", "Qwen/Qwen3-30B-A3B-Instruct-2507"),
    ("qwen3-coder-30b-a3b-instruct", "Qwen/Qwen3-Coder-30B-A3B-Instruct", "Qwen/Qwen3-30B-A3B-Instruct-2507"),
    # a bundled id is its own checkpoint even when another id would alias to it
    ("Qwen/Qwen3-4B", "Qwen/Qwen3-4B", None),
    ("qwen3-4b", "Qwen/Qwen3-4B", None),
    ("Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B", None),  # the original checkpoint: 40,960 positions
    ("Qwen/Qwen3-235B-A22B-FP8", "Qwen/Qwen3-235B-A22B-FP8", None),
])
def test_aliases(alias: str, name: str, config: str | None) -> None:
    """``name``: the checkpoint (what exports serve); ``config``: the bundled file it uses (None: ``name``'s)."""
    spec = load_config(alias)
    assert spec.name == name
    assert Path(spec.source).name == (config or name).replace("/", "--", 1) + ".json"


@pytest.mark.parametrize("asked,name,base", [
    ("Qwen/Qwen3-8B-FP8", "Qwen/Qwen3-8B-FP8", "Qwen/Qwen3-8B"),
    ("qwen3-14b-fp8", "Qwen/Qwen3-14B-FP8", "Qwen/Qwen3-14B"),
    ("Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", "Qwen/Qwen3-30B-A3B-Instruct-2507"),
    ("qwen3-30b-a3b-thinking-2507-fp8", "Qwen/Qwen3-30B-A3B-Thinking-2507-FP8", "Qwen/Qwen3-30B-A3B-Thinking-2507"),
    ("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8",
     "Qwen/Qwen3-Coder-480B-A35B-Instruct"),
])
def test_qwen_fp8_twins(asked: str, name: str, base: str) -> None:
    """Qwen's -FP8 checkpoints: the bf16 config plus the quantization_config of Qwen3-32B-FP8."""
    spec, bf16 = load_config(asked), load_config(base)
    assert spec.name == name and spec.quantization == "fp8" and bf16.quantization is None
    assert spec.quant_config == load_config("Qwen/Qwen3-32B-FP8").quant_config
    assert {k: v for k, v in spec.config.items() if k != "quantization_config"} == bf16.config
    for unknown in ("meta-llama/Llama-3.1-8B-Instruct-FP8", "Qwen/Qwen3-9B-FP8", "llama-3.1-8b-instruct-fp8"):
        with pytest.raises(UnknownNameError):
            load_config(unknown)


def test_config_values() -> None:
    l1 = load_config("meta-llama/Llama-3.2-1B-Instruct")
    assert (l1.get("hidden_size"), l1.get("num_hidden_layers"), l1.get("head_dim")) == (2048, 16, 64)
    assert l1.get("tie_word_embeddings") is True and l1.get("rope_scaling")["factor"] == 32.0
    q = load_config("Qwen/Qwen3-235B-A22B-Instruct-2507")
    assert q.is_moe and q.get("num_experts") == 128 and q.get("max_position_embeddings") == 262144
    for original in ("Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B", "Qwen/Qwen3-235B-A22B-FP8"):  # not the 2507 ones
        assert load_config(original).get("max_position_embeddings") == 40960
    assert load_config("Qwen/Qwen3-14B").get("intermediate_size") == 17408
    q4 = load_config("Qwen/Qwen3-4B-Instruct-2507")
    assert (q4.get("hidden_size"), q4.get("num_hidden_layers"), q4.get("rope_theta")) == (2560, 36, 5000000)
    assert q4.get("tie_word_embeddings") is True


def test_fp8_specs() -> None:
    assert load_config("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8").quantization == "fp8"
    assert load_config("meta-llama/Llama-3.1-405B-Instruct-FP8").quantization == "fp8"
    nv = load_config("nvidia/Llama-3.1-70B-Instruct-FP8")
    assert nv.quantization == "fp8" and nv.quant_config["quantization"]["exclude_modules"] == ["lm_head"]
    assert load_config("meta-llama/Llama-3.1-70B-Instruct").quantization is None


def test_unknown_model_suggests() -> None:
    with pytest.raises(UnknownNameError) as exc:
        load_config("llama-3.1-9b")
    assert exc.value.suggestion == "meta-llama/Llama-3.1-8B-Instruct"
    assert "Qwen/Qwen3-8B" in str(exc.value)
    # a Llama FP8 name without its publisher: say whose ids are priced, not "did you mean the bf16 one"
    for name in ("Llama-3.1-8B-Instruct-FP8", "meta-llama/Llama-3.1-8B-Instruct-FP8"):
        with pytest.raises(UnknownNameError, match=r"Meta publishes no FP8 checkpoint of "
                           r"meta-llama/Llama-3.1-8B-Instruct; .*RedHatAI/, neuralmagic/ or nvidia/"):
            load_config(name)
    assert load_config("RedHatAI/Llama-3.1-8B-Instruct-FP8").quantization == "fp8"


def test_local_dir_and_file(tmp_path) -> None:
    from energylens.testing import tiny_llama_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_llama_config()))
    assert load_config(str(tmp_path)).get("hidden_size") == 64
    assert load_config(tmp_path / "config.json").family == "llama"
    assert load_config(str(tmp_path)).name == str(tmp_path)  # what `vllm serve` takes for a local model
    # a saved config's _name_or_path is where its author saved it from: the folder is what vLLM can serve
    (tmp_path / "config.json").write_text(json.dumps(tiny_llama_config() | {"_name_or_path": "/opt/ckpt/m"}))
    assert load_config(str(tmp_path)).name == str(tmp_path)
    (tmp_path / "m.json").write_text(json.dumps(tiny_llama_config() | {"_name_or_path": "org/model"}))
    assert load_config(tmp_path / "m.json").name == "org/model"  # a bare file: its own name


def test_malformed_json_names_file(tmp_path) -> None:
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_config(str(p))


def test_missing_field_names_field(tmp_path) -> None:
    from energylens.testing import tiny_llama_config

    cfg = tiny_llama_config()
    del cfg["hidden_size"]
    p = tmp_path / "m.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"m\.json.*hidden_size"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="model_type"):
        load_config({"hidden_size": 1})


def test_pretrained_config_and_dict() -> None:
    from transformers import LlamaConfig

    from energylens.testing import tiny_llama_config

    spec = load_config(LlamaConfig(**{k: v for k, v in tiny_llama_config().items() if k != "model_type"}))
    assert isinstance(spec, ModelSpec) and spec.family == "llama" and spec.get("hidden_size") == 64
    assert load_config(tiny_llama_config()).get("num_attention_heads") == 4


def test_import_does_not_import_torch() -> None:
    code = ("import sys, energylens.models, energylens.frontends.hf; energylens.models.load_config('qwen3-8b'); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


# ---- bad input: a clear ConfigError naming the field and the valid choices -------------------------------

def test_transformers5_qwen3_moe_config_names_experts_num_local_experts() -> None:
    from transformers import Qwen3MoeConfig

    spec = load_config(Qwen3MoeConfig())  # transformers 5: `num_experts` is stored as `num_local_experts`
    assert spec.is_moe and spec.get("num_experts") == 128
    from energylens.testing import tiny_qwen3_moe_config

    cfg = tiny_qwen3_moe_config()
    cfg["num_local_experts"] = cfg.pop("num_experts")  # a config.json saved by transformers 5
    assert load_config(cfg).get("num_experts") == 8


@pytest.mark.parametrize("field,value,match", [
    ("mlp_only_layers", [0, 1], r"mlp_only_layers \[0, 1\].*must be \[\]"),
    ("decoder_sparse_step", 2, r"decoder_sparse_step 2.*must be 1"),
    ("num_experts_per_tok", 9, r"num_experts_per_tok 9 exceeds num_experts 8.*1\.\.8"),
    ("num_local_experts", 16, r"num_experts 8 and num_local_experts 16 disagree"),
])
def test_moe_layers_must_all_be_moe(field: str, value, match: str) -> None:
    from energylens.testing import tiny_qwen3_moe_config

    with pytest.raises(ConfigError, match=match):  # one traced layer would silently price them all as it
        load_config(tiny_qwen3_moe_config() | {field: value})


def test_only_silu_gating_is_priced() -> None:
    from energylens.testing import tiny_llama_config

    with pytest.raises(ConfigError, match=r"hidden_act 'gelu' is not supported; it must be 'silu'"):
        load_config(tiny_llama_config() | {"hidden_act": "gelu"})


def test_one_expert_is_refused_and_moe_keys_of_a_dense_family_ignored() -> None:
    from energylens.testing import tiny_llama_config, tiny_qwen3_moe_config

    with pytest.raises(ConfigError, match=r"num_experts 1 is not a mixture of experts; it must be >= 2"):
        load_config(tiny_qwen3_moe_config() | {"num_experts": 1, "num_experts_per_tok": 1})
    stray = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    assert not load_config(tiny_llama_config() | stray).is_moe  # transformers builds it dense, so is it priced


def test_layer_types_must_be_uniform_full_attention() -> None:
    from energylens.testing import tiny_qwen3_config

    assert load_config(tiny_qwen3_config() | {"layer_types": ["full_attention"] * 2}).family == "qwen3"
    with pytest.raises(ConfigError, match=r"layer_types mixes.*'sliding_attention'.*same type"):
        load_config(tiny_qwen3_config() | {"layer_types": ["full_attention", "sliding_attention"]})
    with pytest.raises(ConfigError, match=r"'sliding_attention' is not supported.*full_attention"):
        load_config(tiny_qwen3_config() | {"layer_types": ["sliding_attention"] * 2})
    with pytest.raises(ConfigError, match=r"one type per layer"):
        load_config(tiny_qwen3_config() | {"layer_types": ["full_attention"] * 3})


@pytest.mark.parametrize("quant,match", [
    ({"quant_method": "awq", "bits": 4}, r"quantization 'awq' is not supported; supported: fp8"),
    ({"quantization": {"quant_algo": "NVFP4"}}, r"quantization 'NVFP4' is not supported; supported: fp8"),
])
def test_only_fp8_quantization(quant, match: str, tmp_path) -> None:
    from energylens.testing import tiny_llama_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_llama_config()))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(quant))
    with pytest.raises(ConfigError, match=match):  # never priced as bf16
        load_config(str(tmp_path))
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_llama_config() | {"quantization_config": quant})
    fp8 = {"quantization": {"quant_algo": "FP8"}}
    assert load_config(tiny_llama_config() | {"quantization_config": fp8}).quantization == "fp8"


def _compressed_tensors(weights: dict, activations: dict | None) -> dict:
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": activations}}}


def test_fp8_block() -> None:
    """The weight block an fp8 checkpoint scales together: Qwen's 128x128, none for per-channel schemes."""
    from energylens.testing import tiny_llama_config

    assert load_config("Qwen/Qwen3-8B-FP8").fp8_block == (128, 128)
    assert load_config("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8").fp8_block == (128, 128)
    assert load_config("meta-llama/Llama-3.1-405B-Instruct-FP8").fp8_block is None
    assert load_config("nvidia/Llama-3.1-70B-Instruct-FP8").fp8_block is None
    assert load_config("Qwen/Qwen3-8B").fp8_block is None
    f8 = {"num_bits": 8, "type": "float"}
    blocked = _compressed_tensors(f8 | {"strategy": "block", "block_structure": [128, 128]}, f8)
    assert load_config(tiny_llama_config() | {"quantization_config": blocked}).fp8_block == (128, 128)


def test_compressed_tensors_fp8() -> None:
    """RedHatAI-style compressed-tensors checkpoints: W8A8-FP8 is fp8; anything else is refused, by name."""
    from energylens.testing import tiny_llama_config

    f8 = {"num_bits": 8, "type": "float", "strategy": "channel"}
    spec = load_config(tiny_llama_config() | {"quantization_config": _compressed_tensors(f8, f8)})
    assert spec.quantization == "fp8"
    for weights, acts, scheme in ((f8, None, "w8a16 (float weights, bf16 activations)"),
                                  ({"num_bits": 4, "type": "int"}, None, "w4a16 (int weights, bf16 activations)"),
                                  (f8, {"num_bits": 8, "type": "int"}, "w8a8 (float weights, int activations)")):
        with pytest.raises(ConfigError, match=rf"'compressed-tensors {re.escape(scheme)}' is not supported.*W8A8-FP8"):
            load_config(tiny_llama_config() | {"quantization_config": _compressed_tensors(weights, acts)})
    partial = _compressed_tensors(f8, f8)
    partial["config_groups"]["group_0"]["targets"] = ["re:.*mlp.*"]
    with pytest.raises(ConfigError, match=r"targets \['re:.\*mlp.\*'\]; supported: groups that target 'Linear'"):
        load_config(tiny_llama_config() | {"quantization_config": partial})
    with pytest.raises(ConfigError, match=r"config_groups\['g'\] has no weights scheme"):
        load_config(tiny_llama_config() | {"quantization_config": {"quant_method": "compressed-tensors",
                                                                     "config_groups": {"g": None}}})


@pytest.mark.parametrize("patch,match", [
    ({"head_dim": 0}, r"'head_dim' must be a positive integer, got 0"),
    ({"num_key_value_heads": -2}, r"'num_key_value_heads' must be a positive integer, got -2"),
    ({"rope_scaling": {"rope_type": "bogus"}}, r"rope_type 'bogus' is not supported; supported: default, .*llama3"),
    ({"attention_bias": True}, r"attention_bias=true is not supported"),
    ({"mlp_bias": True}, r"mlp_bias=true is not supported"),
    # another family's config names its fields otherwise: its model_type is the error, not a field
    ({"model_type": "gpt2", "hidden_size": None}, r"model_type 'gpt2' is not supported; supported: llama, qwen3"),
])
def test_bad_field_values(patch, match: str) -> None:
    from energylens.testing import tiny_llama_config

    with pytest.raises(ConfigError, match=match):
        load_config(tiny_llama_config() | patch)


def test_rope_types_match_transformers() -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from energylens.models import ROPE_TYPES

    assert set(ROPE_TYPES) == set(ROPE_INIT_FUNCTIONS) | {"default"}


def test_non_utf8_file_names_file(tmp_path) -> None:
    p = tmp_path / "config.json"
    p.write_bytes(b'{"model_type": "llama", "x": "\xff"}')
    with pytest.raises(ConfigError, match=r"config\.json is not valid UTF-8"):
        load_config(str(p))


def test_config_dict_gives_the_canonical_expert_count() -> None:
    """transformers 5 writes Qwen3-MoE's num_experts as num_local_experts; every reader of config_dict
    (the runtime's tiny configs and microbenchmark shapes too) sees num_experts."""
    from transformers import Qwen3MoeConfig

    from energylens.models import config_dict
    from energylens.runtime.execute import tiny_config

    d = config_dict(Qwen3MoeConfig(num_hidden_layers=2, num_experts=16))
    assert d["num_experts"] == 16
    assert tiny_config(Qwen3MoeConfig(num_hidden_layers=2))["num_experts"] == 8


def test_modelopt_fp8_in_config_json() -> None:
    """Newer ModelOpt exports name the method in config.json: quant_method 'modelopt', quant_algo 'FP8'."""
    base = config_dict(load_config("meta-llama/Llama-3.2-1B-Instruct").config)
    fp8 = load_config({**base, "quantization_config": {"quant_method": "modelopt", "quant_algo": "FP8"}})
    assert fp8.quantization == "fp8"
    kv_only = load_config({**base, "quantization_config": {"quant_method": "modelopt", "quant_algo": None}})
    assert kv_only.quantization is None


def test_qwen_sliding_window_only_from_max_window_layers() -> None:
    """Qwen configs slide only the layers from max_window_layers on: all full attention is accepted."""
    base = config_dict(load_config("Qwen/Qwen3-0.6B").config)
    n = base["num_hidden_layers"]
    load_config({**base, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": n})
    with pytest.raises(ConfigError, match=rf"max_window_layers 0 < num_hidden_layers {n}.*sliding-window attention is not modelled"):
        load_config({**base, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 0})
    moe = config_dict(load_config("Qwen/Qwen3-30B-A3B-Instruct-2507").config)  # its configs have no max_window_layers
    with pytest.raises(ConfigError, match=r"use_sliding_window with sliding_window 4096 \(every layer of a "
                                          r"qwen3_moe model slides\) is not supported"):
        load_config({**{k: v for k, v in moe.items() if k != "max_window_layers"}, "use_sliding_window": True,
                     "sliding_window": 4096})
    # no max_window_layers in a dense config: transformers' default (28) decides which layers slide
    dense = {k: v for k, v in config_dict(load_config("Qwen/Qwen3-8B").config).items() if k != "max_window_layers"}
    load_config({**dense, "num_hidden_layers": 28, "use_sliding_window": True, "sliding_window": 4096})
    with pytest.raises(ConfigError, match=r"max_window_layers 28 < num_hidden_layers 36"):
        load_config({**dense, "use_sliding_window": True, "sliding_window": 4096})
    # transformers' Qwen3-MoE reads no max_window_layers: every layer slides whatever it says
    with pytest.raises(ConfigError, match=r"every layer of a qwen3_moe model slides"):
        load_config({**moe, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 48})


def test_unsupported_quantization_names_the_file_it_is_in(tmp_path) -> None:
    from energylens.testing import tiny_llama_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_llama_config()))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    with pytest.raises(ConfigError, match=r"hf_quant_config.json: quantization 'NVFP4' is not supported"):
        load_config(str(tmp_path))


@pytest.mark.parametrize("asked,base", [
    ("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8", "meta-llama/Llama-3.1-70B-Instruct"),
    ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "meta-llama/Llama-3.1-8B-Instruct"),
    ("nvidia/Llama-3.3-70B-Instruct-FP8", "meta-llama/Llama-3.3-70B-Instruct"),
    ("RedHatAI/Qwen3-8B-FP8-dynamic", "Qwen/Qwen3-8B"),
])
def test_other_publishers_fp8_checkpoints(asked: str, base: str) -> None:
    """Another publisher's FP8 checkpoint of a bundled model: its config, fp8 weights with per-tensor or
    per-channel scales (no weight blocks), and its own id for the exports."""
    spec, bf16 = load_config(asked), load_config(base)
    assert spec.name == asked and spec.quantization == "fp8" and spec.fp8_block is None
    assert {k: v for k, v in spec.config.items() if k != "quantization_config"} == bf16.config
