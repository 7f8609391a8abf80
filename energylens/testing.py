"""Seeded random IR graphs and tiny model configs for tests (no torch, no network).

``random_graph(seed)`` builds a valid random einsum graph (every op kind, ``repeat`` regions,
sharding, fusion groups, streams, SM shares, sources, odd strings); ``graphs()`` is the same
generator as a hypothesis strategy, so failures shrink. ``tiny_*_config()`` return small
configs of the supported architectures with the keys of their HF ``config.json``.

>>> from energylens.ir.verify import verify_graph
>>> verify_graph(random_graph(0))
>>> tiny_llama_config()["model_type"]
'llama'
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from energylens.ir.core import (
    DTYPE_BYTES,
    Collective,
    Decl,
    DimSize,
    Einsum,
    Elementwise,
    Gather,
    Graph,
    Op,
    Reduce,
    Repeat,
    Source,
    TensorType,
    Value,
)
from energylens.ir.verify import KernelCollectives

__all__ = [
    "random_graph",
    "graphs",
    "tiny_llama_config",
    "tiny_qwen3_config",
    "tiny_qwen3_moe_config",
]

T = TypeVar("T")

_MODEL_DIMS = ("h", "f", "v", "q", "g", "d", "e", "m", "x", "r", "hq", "hk")
_SIZES = (1, 2, 4, 8, 16, 64, 128)
_AXES = ("tp", "ep", "dp")
_EW_FNS = ("add", "mul", "sub", "div", "silu", "rsqrt", "pow", "rope", "cast", "exp", "neg")
_REDUCE_FNS = ("sum", "max", "mean", "softmax", "rms_norm", "topk")
_KEEPS_DIMS = ("softmax", "rms_norm")
_COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
_TEXTS = ("aten.mm", "aten.embedding", "model.layers.0.mlp.up_proj", "", "with \"quotes\" and \\ slash",
          "new\nline\ttab", "ünïcödé ✓", "a @ b {c = d}")
_GRAPH_NAMES = ("tiny_llama", "g", "decode", "odd name/with-slash", "x.y")
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class _Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...
    def boolean(self, p: float = 0.5) -> bool: ...
    def fraction(self) -> float: ...
    def text(self) -> str: ...


class _RandomChooser:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def boolean(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def fraction(self) -> float:
        return self.rng.choice((0.25, 0.5, 1.0, 1 - self.rng.random()))

    def text(self) -> str:
        return self.rng.choice(_TEXTS)


class _DrawChooser:
    def __init__(self, draw: Callable[[Any], Any], st: Any):
        self.draw, self.st = draw, st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def boolean(self, p: float = 0.5) -> bool:
        return self.draw(self.st.booleans())

    def fraction(self) -> float:
        return self.draw(self.st.floats(min_value=0.0, max_value=1.0, exclude_min=True))

    def text(self) -> str:
        return self.draw(self.st.one_of(self.st.sampled_from(_TEXTS), self.st.text(max_size=12)))


def _choice(c: _Chooser, seq: Sequence[T]) -> T:
    return seq[c.integer(0, len(seq) - 1)]


def _sample(c: _Chooser, seq: Sequence[T], lo: int, hi: int) -> list[T]:
    """Distinct elements of ``seq`` (between lo and hi of them, in a random order)."""
    pool = list(seq)
    out: list[T] = []
    for _ in range(min(hi, len(pool))):
        if len(out) >= lo and not c.boolean():
            break
        out.append(pool.pop(c.integer(0, len(pool) - 1)))
    return out


class _Builder:
    def __init__(self, c: _Chooser, max_ops: int):
        self.c, self.max_ops = c, max_ops
        self.counter = 0
        self.kernels = KernelCollectives()  # the verifier's rule on fusion groups and collectives
        self.has_collectives = False
        self.dims: list[tuple[str, DimSize]] = [("B", None), ("S", None), ("K", None), ("T", "B*S")]
        for name in _sample(c, _MODEL_DIMS, 2, 6):
            self.dims.append((name, _choice(c, _SIZES)))
        if c.boolean():
            self.dims.append(("C", _choice(c, ("B*S*2/8", "T*2/8", "T/4"))))
        self.dim_names = [n for n, _ in self.dims]

    def fresh(self, prefix: str = "x") -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def type(self, max_rank: int = 3) -> TensorType:
        return TensorType(tuple(_sample(self.c, self.dim_names, 0, max_rank)), _choice(self.c, tuple(DTYPE_BYTES)))

    def common(self, dims: set[str]) -> dict[str, Any]:
        c = self.c
        fields: dict[str, Any] = {}
        if dims and c.boolean(0.4):
            fields["sharding"] = tuple((d, _choice(c, _AXES)) for d in _sample(c, sorted(dims), 1, 2))
        if c.boolean(0.3):
            fields["fusion_group"] = c.integer(0, 5)
        if c.boolean(0.2):
            fields["stream"] = 1  # kept on collectives only (``_op``): stream 1 is the communication stream
        if c.boolean(0.2):
            fields["sm_share"] = c.fraction()
        if c.boolean(0.4):
            fields["source"] = Source(c.text(), c.text())
        return fields

    def op(self, scope: list[Value]) -> Op:
        """A random op over ``scope`` that keeps the verifier's fusion rule: no collective in a fusion
        group, and none between the ops of one (an op of a group never reads a collective of a value
        its own group produced)."""
        return self._fusion_rule(self._op(scope))

    def _fusion_rule(self, op: Op) -> Op:
        """``op`` without its fusion group where the group would break the verifier's rule."""
        if op.fusion_group is not None and (isinstance(op, Collective) or self.kernels.inside(op)):
            op = dataclasses.replace(op, fusion_group=None)
        self.kernels.add(op)
        return op

    def _op(self, scope: list[Value]) -> Op:
        c = self.c
        kind = _choice(c, ("einsum", "einsum", "elementwise", "reduce", "gather", "collective"))
        dtype = _choice(c, tuple(DTYPE_BYTES))
        name = self.fresh()
        if kind == "reduce" and any(v.type.dims for v in scope):
            x = _choice(c, [v for v in scope if v.type.dims])
            fn = _choice(c, _REDUCE_FNS)
            rdims = tuple(_sample(c, x.type.dims, 1, 2))
            out = x.type.dims if fn in _KEEPS_DIMS else tuple(d for d in x.type.dims if d not in rdims)
            operands = (x, *_sample(c, scope, 0, 1))
            result = Value(name, TensorType(out, dtype))
            return Reduce(result=result, operands=operands, fn=fn, dims=rdims,
                          **self._compute(self._dims(result, operands)))
        if kind == "gather" and any(v.type.dims for v in scope):
            table = _choice(c, [v for v in scope if v.type.dims])
            ids = _choice(c, scope)
            dim = _choice(c, table.type.dims)
            fn = _choice(c, ("gather", "gather", "scatter"))
            if fn == "scatter":
                rtype = table.type
            else:
                rest = tuple(d for d in table.type.dims if d != dim and d not in ids.type.dims)
                rtype = TensorType(ids.type.dims + rest, table.type.dtype)
            result = Value(name, rtype)
            return Gather(result=result, operands=(table, ids), dim=dim, fn=fn,
                          **self._compute(self._dims(result, (table, ids))))
        if kind == "collective":
            self.has_collectives = True
            x = _choice(c, scope)
            result = Value(name, x.type)
            return Collective(result=result, operands=(x,), fn=_choice(c, _COLLECTIVES), axis=_choice(c, _AXES),
                              **self.common(self._dims(result, (x,))))
        if kind == "elementwise":
            operands = tuple(_choice(c, scope) for _ in range(c.integer(1, 3)))
            out = tuple(dict.fromkeys(d for v in operands for d in v.type.dims))
            result = Value(name, TensorType(out, dtype))
            return Elementwise(result=result, operands=operands, fn=_choice(c, _EW_FNS),
                               **self._compute(self._dims(result, operands)))
        operands = tuple(_choice(c, scope) for _ in range(c.integer(1, 3)))
        letter: dict[str, str] = {}
        for v in operands:
            for d in v.type.dims:
                letter.setdefault(d, _LETTERS[len(letter)])
        ins = ",".join("".join(letter[d] for d in v.type.dims) for v in operands)
        out_dims = tuple(_sample(c, list(letter), 0, len(letter)))
        spec = f"{ins}->{''.join(letter[d] for d in out_dims)}"
        result = Value(name, TensorType(out_dims, dtype))
        return Einsum(result=result, operands=operands, spec=spec, causal=c.boolean(0.2),
                      **self._compute(self._dims(result, operands)))

    def _compute(self, dims: set[str]) -> dict[str, Any]:
        """``common`` fields of a compute op: on the compute stream."""
        return {**self.common(dims), "stream": 0}

    @staticmethod
    def _dims(result: Value, operands: Sequence[Value]) -> set[str]:
        return {d for v in (result, *operands) for d in v.type.dims}

    def decls(self, roles: Sequence[str], lo: int, hi: int, prefix: str) -> list[Decl]:
        return [Decl(Value(self.fresh(prefix), self.type()), _choice(self.c, roles))  # type: ignore[arg-type]
                for _ in range(self.c.integer(lo, hi))]

    def repeat(self, scope: list[Value]) -> tuple[Repeat, Value]:
        c = self.c
        init = _choice(c, scope)
        decls = self.decls(("param", "param", "cache"), 0, 3, "model.layers.w")
        inner = [*scope, *(d.value for d in decls)]
        ops: list[Op] = []
        for _ in range(c.integer(0, max(1, self.max_ops // 3))):
            ops.append(self.op(inner))
            inner.append(ops[-1].result)
        last = inner[-1]
        operands = (init, last) if set(last.type.dims) <= set(init.type.dims) and last is not init else (init,)
        carry = Value(self.fresh(), init.type)
        ops.append(self._fusion_rule(Elementwise(result=carry, operands=operands, fn="add",
                                                 **self._compute(set(init.type.dims)))))
        name = _choice(c, ("layers", "decoder", "odd region"))
        return Repeat(name, c.integer(1, 80), tuple(decls), tuple(ops), init.name, carry.name), carry

    def graph(self) -> Graph:
        c = self.c
        decls = self.decls(("input",), 1, 2, "in") + self.decls(("param", "param", "cache"), 1, 3, "model.p")
        scope = [d.value for d in decls]
        body: list[Op | Repeat] = []
        produced: list[Value] = []
        for _ in range(c.integer(1, self.max_ops)):
            if c.boolean(0.15):
                region, carry = self.repeat(scope)
                body.append(region)
                scope.append(carry)
                produced.append(carry)
            else:
                body.append(self.op(scope))
                scope.append(body[-1].result)  # type: ignore[union-attr]
                produced.append(scope[-1])
        outputs = tuple(v.name for v in _sample(c, produced or scope, 1, 2))
        attrs: list[tuple[str, str]] = []
        if self.has_collectives or c.boolean(0.2):  # a collective's axis must span 2+ GPUs of the mesh
            attrs.append(("mesh", ",".join(f"{a}=2" for a in _AXES)))
        if c.boolean(0.7):
            attrs.append(("model", c.text()))
            attrs.append(("phase", _choice(c, ("prefill", "decode"))))
        if c.boolean(0.2):
            attrs.append(("odd key", c.text()))
        return Graph(_choice(c, _GRAPH_NAMES), tuple(self.dims), tuple(decls), tuple(body), outputs, tuple(attrs))


def random_graph(seed: int, *, max_ops: int = 12) -> Graph:
    """A valid random einsum graph, the same for the same seed.

    It holds up to ``max_ops`` top-level items (ops or ``repeat`` regions) of every op kind, with
    random dtypes, sharding, fusion groups, streams, SM shares, sources and attributes.

    >>> random_graph(3) == random_graph(3)
    True
    """
    return _Builder(_RandomChooser(seed), max_ops).graph()


def graphs(*, max_ops: int = 12) -> Any:
    """A hypothesis strategy of valid random graphs (the generator of ``random_graph``, shrinkable).

    Needs hypothesis (a dev dependency), imported only when called.
    """
    from hypothesis import strategies as st

    @st.composite
    def _graphs(draw: Callable[[Any], Any]) -> Graph:
        return _Builder(_DrawChooser(draw, st), max_ops).graph()

    return _graphs()


# ---------------------------------------------------------------------------------------------
# Tiny configs of the supported architectures (keys as in the models' HF config.json)


def tiny_llama_config() -> dict[str, Any]:
    """A 2-layer Llama 3.1 (hidden 64, 4 heads, 2 KV heads, head dim 16, vocab 128), bf16."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 64,
        "head_dim": 16,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
        "mlp_bias": False,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 128, "rope_type": "llama3"},
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128,
    }


def tiny_qwen3_config() -> dict[str, Any]:
    """A 2-layer Qwen3 dense (hidden 64, 4 heads, 2 KV heads, head dim 16, vocab 128), bf16."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
        "max_window_layers": 2,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 128,
    }


def tiny_qwen3_moe_config() -> dict[str, Any]:
    """A 2-layer Qwen3-MoE (hidden 64, 8 experts, top-2, expert intermediate 32, vocab 128), bf16."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_sparse_step": 1,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
        "max_window_layers": 2,
        "mlp_only_layers": [],
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 128,
    }
