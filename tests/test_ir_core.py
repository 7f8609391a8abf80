"""IR core types: sizes, binding, einsum letters and contracted dims, walking regions."""

from __future__ import annotations

import pytest

from energylens.errors import VerificationError
from energylens.ir.core import (
    DTYPE_BYTES,
    OP_KINDS,
    Decl,
    Einsum,
    Graph,
    Reduce,
    Repeat,
    TensorType,
    Value,
    eval_size,
)
from energylens.testing import tiny_llama_config, tiny_qwen3_config, tiny_qwen3_moe_config


def v(name: str, *dims: str, dtype: str = "bf16") -> Value:
    return Value(name, TensorType(dims, dtype))


def test_eval_size() -> None:
    assert eval_size(64, "h", {}) == 64.0
    assert eval_size(None, "B", {"B": 8}) == 8.0
    assert eval_size("B*S", "T", {"B": 8, "S": 3}) == 24.0
    assert eval_size("B*S*8/128", "C", {"B": 4, "S": 32}) == 8.0
    assert eval_size("B*S*2/8", "C", {"B": 1, "S": 1}) == 0.25  # expected tokens per expert may be fractional
    with pytest.raises(VerificationError, match="'B' is not bound"):
        eval_size(None, "B", {})
    with pytest.raises(VerificationError, match="uses 'S', which is not bound"):
        eval_size("B*S", "T", {"B": 2})


def test_bind() -> None:
    g = Graph("g", (("B", None), ("S", None), ("K", None), ("T", "B*S"), ("e", 8), ("C", "T*2/e"), ("h", 64)),
              (), (), ())
    sizes = g.bind(B=4, S=16, K=1024)
    assert sizes == {"B": 4, "S": 16, "K": 1024, "T": 64, "e": 8, "C": 16, "h": 64}
    with pytest.raises(VerificationError, match="'K' is not bound"):
        g.bind(B=1, S=1)


def test_dtypes() -> None:
    assert TensorType(("h",), "fp8").itemsize == 1
    assert set(DTYPE_BYTES) == {"f32", "bf16", "f16", "fp8", "i64", "i32", "i8", "bool"}
    with pytest.raises(VerificationError, match="unknown dtype 'bf17'"):
        TensorType(("h",), "bf17")
    assert set(OP_KINDS) == {"einsum", "elementwise", "reduce", "gather", "collective"}


def test_einsum_letters_and_contracted_dims() -> None:
    op = Einsum(result=v("y", "B", "S", "f"), operands=(v("x", "B", "S", "h"), v("w", "h", "f")), spec="bsh,hf->bsf")
    op.verify()
    assert op.letters == (["bsh", "hf"], "bsf")
    assert op.letter_dims == {"b": "B", "s": "S", "h": "h", "f": "f"}
    assert op.contracted_dims == ("h",)
    assert op.all_dims == ("B", "S", "f", "h")
    attn = Einsum(result=v("p", "B", "g", "r", "S", "K"),
                  operands=(v("q", "B", "S", "g", "r", "d"), v("k", "B", "g", "K", "d")),
                  spec="bsgrd,bgkd->bgrsk", causal=True)
    attn.verify()
    assert attn.contracted_dims == ("d",)


@pytest.mark.parametrize("spec, result_dims, needle", [
    ("bsh,hf", ("B", "S", "f"), "malformed spec"),
    ("bsh->bsh", ("B", "S", "h"), "has 1 inputs, op has 2"),
    ("bs,hf->bsf", ("B", "S", "f"), "'bs' has 2 letters but %x has dims"),
    ("bsh,hb->bsb", ("B", "S", "B"), "letter 'b' stands for both 'B' and 'f'"),
    ("bsh,hf->bsq", ("B", "S", "f"), "output letters 'bsq' must be distinct input letters"),
    ("bsh,hf->bff", ("B", "f", "f"), "output letters"),
])
def test_einsum_verify_errors(spec: str, result_dims: tuple[str, ...], needle: str) -> None:
    op = Einsum(result=v("y", *result_dims), operands=(v("x", "B", "S", "h"), v("w", "h", "f")), spec=spec)
    with pytest.raises(VerificationError) as info:
        op.verify()
    assert needle in str(info.value) and "einsum %y" in str(info.value)


def test_op_verify_sharding_and_sm_share() -> None:
    base = dict(result=v("y", "B", "f"), operands=(v("x", "B", "h"), v("w", "h", "f")), spec="bh,hf->bf")
    Einsum(**base, sharding=(("f", "tp"),), sm_share=1.0).verify()
    with pytest.raises(VerificationError, match="sharded dim 'q'"):
        Einsum(**base, sharding=(("q", "tp"),)).verify()
    with pytest.raises(VerificationError, match="sm_share 0"):
        Einsum(**base, sm_share=0.0).verify()
    with pytest.raises(VerificationError, match="reduced dims"):
        Reduce(result=v("s", "B"), operands=(v("x", "B", "h"),), fn="sum", dims=("q",)).verify()


def test_walk_and_all_decls_count_repetitions() -> None:
    x, w = v("x", "B", "h"), v("w", "h", "h2")
    body_op = Reduce(result=v("n", "B", "h"), operands=(x,), fn="rms_norm", dims=("h",))
    layer_op = Reduce(result=v("z", "B", "h"), operands=(x,), fn="rms_norm", dims=("h",))
    g = Graph("g", (("B", None), ("h", 4), ("h2", 4)), (Decl(x, "input"),),
              (body_op, Repeat("layers", 3, (Decl(w, "param"),), (layer_op,), "x", "z")), ("z",))
    assert [(op.result.name, n) for op, n in g.walk()] == [("n", 1), ("z", 3)]
    assert [(d.value.name, n) for d, n in g.all_decls()] == [("x", 1), ("w", 3)]


@pytest.mark.parametrize("make, model_type", [
    (tiny_llama_config, "llama"), (tiny_qwen3_config, "qwen3"), (tiny_qwen3_moe_config, "qwen3_moe"),
])
def test_tiny_configs(make, model_type: str) -> None:  # type: ignore[no-untyped-def]
    cfg = make()
    assert cfg["model_type"] == model_type and len(cfg["architectures"]) == 1
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "vocab_size", "num_hidden_layers", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
                "max_position_embeddings"):
        assert key in cfg, key
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 64
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    if model_type == "qwen3_moe":
        for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                    "mlp_only_layers", "norm_topk_prob"):
            assert key in cfg, key
    cfg["hidden_size"] = 1  # a fresh dict every call
    assert make()["hidden_size"] == 64


def test_testing_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, energylens.testing; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
