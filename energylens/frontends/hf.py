"""HF model -> torch.export (meta device) -> einsum IR, with an on-disk cache of the IR text.

The model is built from its config on the meta device with one decoder layer, exported for
prefill and for decode (both with a static KV cache: prefill writes the cache and attends
causally over it), and lowered to the IR by ``frontends.aten``. The traced layer becomes a
``Repeat`` region with ``count = num_hidden_layers``.

Traced sizes: ``B``, ``S`` and ``K`` are traced with distinct primes that no model dimension
uses, then named back to the symbols (decode is traced with a few new tokens, so ``S`` stays
distinct from size-1 axes; it is bound to 1 at estimate time).

Cache: IR text under ``$ENERGYLENS_CACHE`` (default ``~/.cache/energylens``) in
``ir/<key>/{prefill,decode}.eir``, keyed by a hash of the config, the energylens version, the
frontend version and the torch/transformers versions (read with importlib.metadata). A cache hit
imports neither torch nor transformers.

>>> ir = trace_model("meta-llama/Llama-3.1-8B-Instruct")      # doctest: +SKIP
>>> ir.decode.attr["phase"]                                     # doctest: +SKIP
'decode'
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from energylens.errors import ConfigError, UnsupportedOpError
from energylens.ir.core import Decl, Graph, Op, Repeat
from energylens.models import MODEL_TYPES, ModelSpec, attention_shape, config_dict, load_config

__all__ = ["ModelIR", "trace_model", "trace", "cache_dir", "cache_key", "PHASES", "FRONTEND_VERSION"]

#: Bump when the lowering changes, so cached IR text is re-traced.
FRONTEND_VERSION = "3"


@functools.cache
def _lowering_source_hash() -> str:
    """Hash of this file and aten.py: any change to the lowering invalidates cached traces."""
    here = Path(__file__).parent
    data = b"".join((here / f).read_bytes() for f in ("hf.py", "aten.py"))
    return hashlib.sha256(data).hexdigest()[:16]
PHASES = ("prefill", "decode")
_PRIMES = (5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101)


@dataclass(frozen=True)
class ModelIR:
    """A traced model: its spec and the IR of its two phases."""

    spec: ModelSpec
    prefill: Graph
    decode: Graph

    def phase(self, name: str) -> Graph:
        return {"prefill": self.prefill, "decode": self.decode}[name]


# ---- cache ------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Root of the on-disk cache (``$ENERGYLENS_CACHE`` or ``~/.cache/energylens``)."""
    return Path(os.environ.get("ENERGYLENS_CACHE") or Path.home() / ".cache" / "energylens")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(spec: ModelSpec) -> str:
    """Hash of the config, quantization, energylens/frontend versions and torch/transformers versions."""
    payload = {
        "config": config_dict(spec.config), "quant": spec.quant_config, "name": spec.name,
        "energylens": _version("energylens"), "frontend": FRONTEND_VERSION,
        "lowering": _lowering_source_hash(),
        "torch": _version("torch"), "transformers": _version("transformers"),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _text_module() -> Any:
    try:
        from energylens.ir import text
    except ImportError:
        return None
    if not (hasattr(text, "print_graph") and hasattr(text, "parse_graph")):
        return None
    return text


def _cache_load(key: str) -> dict[str, Graph] | None:
    text = _text_module()
    if text is None:
        return None
    folder = cache_dir() / "ir" / key
    try:
        return {p: text.parse_graph((folder / f"{p}.eir").read_text()) for p in PHASES}
    except (OSError, Exception):  # a missing or stale file: trace again
        return None


def _cache_store(key: str, graphs: dict[str, Graph]) -> None:
    text = _text_module()
    if text is None:
        return
    folder = cache_dir() / "ir" / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for p, g in graphs.items():
            s = text.print_graph(g)
            if text.parse_graph(s) != g:  # never cache what does not round-trip
                return
            tmp = folder / f".{p}.eir.{os.getpid()}"
            tmp.write_text(s)
            tmp.replace(folder / f"{p}.eir")
    except OSError:
        pass


# ---- public API ---------------------------------------------------------------------------------------

def trace_model(model: Any, *, cache: bool = True) -> ModelIR:
    """Trace ``model`` (HF id, local path, ``PretrainedConfig``, dict or ``nn.Module``) to IR.

    Both phases are traced on the meta device with one decoder layer. ``cache=False`` skips the
    on-disk IR cache (read and write).

    >>> ir = trace_model("llama-3.1-8b")                       # doctest: +SKIP
    >>> sum(1 for _ in ir.prefill.walk())                      # doctest: +SKIP
    """
    if _is_module(model):
        return _trace_module(model)
    spec = load_config(model)
    cacheable = cache and isinstance(spec.config, dict)
    key = cache_key(spec) if cacheable else ""
    graphs = _cache_load(key) if cacheable else None
    if graphs is None:
        graphs = _trace_spec(spec)
        if cacheable:
            _cache_store(key, graphs)
    return ModelIR(spec=spec, prefill=graphs["prefill"], decode=graphs["decode"])


def trace(model: Any, phase: str, *, cache: bool = True) -> Graph:
    """The IR of one phase (``"prefill"`` or ``"decode"``) of ``model``."""
    if phase not in PHASES:
        from energylens.errors import UnknownNameError

        raise UnknownNameError("phase", phase, PHASES)
    return trace_model(model, cache=cache).phase(phase)


def _is_module(model: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


# ---- building and exporting ------------------------------------------------------------------------

def _ints(d: Any) -> set[int]:
    out: set[int] = set()
    if isinstance(d, dict):
        for v in d.values():
            out |= _ints(v)
    elif isinstance(d, (list, tuple)):
        for v in d:
            out |= _ints(v)
    elif isinstance(d, int) and not isinstance(d, bool):
        out.add(d)
    return out


def _roles(spec: ModelSpec) -> dict[str, int]:
    """Model dimension atoms and their sizes."""
    c = spec.get
    h = c("hidden_size")
    q, g, d = attention_shape(spec)
    roles = {"h": h, "v": c("vocab_size"), "f": c("intermediate_size"), "g": g, "d": d}
    if q != g:
        if q % g:
            raise ConfigError(f"model config {spec.source}: num_attention_heads {q} is not a multiple of "
                              f"num_key_value_heads {g}")
        roles["r"] = q // g
    if spec.is_moe:
        roles |= {"e": c("num_experts"), "m": c("moe_intermediate_size"), "x": c("num_experts_per_tok"), "u": 2}
    return roles


def _trace_sizes(spec: ModelSpec, roles: dict[str, int]) -> dict[str, int]:
    """Distinct primes for B, S (prefill), S (decode) and K that no model size uses."""
    taken = _ints(config_dict(spec.config)) | set(roles.values())
    for a in list(roles.values()):
        for b in list(roles.values()):
            taken.add(a * b)
    free = [p for p in _PRIMES if p not in taken]
    if len(free) < 4:
        raise ConfigError(f"cannot pick trace sizes distinct from the model sizes of {spec.name}")
    return {"B": free[1], "S": free[2], "Sd": free[0], "K": free[3]}


_MOE_OP = None


def _moe_op() -> Any:
    """Register ``energylens::moe_experts`` (an opaque experts op with a shape-only meta kernel)."""
    global _MOE_OP
    if _MOE_OP is not None:
        return _MOE_OP
    import torch

    schema = "(Tensor hidden, Tensor top_k_index, Tensor top_k_weights, Tensor gate_up_proj, Tensor down_proj) -> Tensor"

    @torch.library.custom_op("energylens::moe_experts", mutates_args=(), schema=schema)
    def moe_experts(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj):  # type: ignore[no-untyped-def]
        out = torch.zeros_like(hidden)
        for t in range(hidden.shape[0]):
            for j in range(top_k_index.shape[1]):
                e = int(top_k_index[t, j])
                gate, up = (gate_up_proj[e] @ hidden[t]).chunk(2)
                out[t] += top_k_weights[t, j] * (down_proj[e] @ (torch.nn.functional.silu(gate) * up))
        return out

    @moe_experts.register_fake
    def _(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj):  # type: ignore[no-untyped-def]
        return torch.empty_like(hidden)

    _MOE_OP = torch.ops.energylens.moe_experts.default
    return _MOE_OP


def _patch_experts(model: Any) -> None:
    op = _moe_op()
    for mod in model.modules():
        if type(mod).__name__.endswith("Experts") and hasattr(mod, "gate_up_proj") and hasattr(mod, "down_proj"):
            def forward(hidden_states, top_k_index, top_k_weights, _m=mod):  # type: ignore[no-untyped-def]
                return op(hidden_states, top_k_index, top_k_weights.to(hidden_states.dtype),
                          _m.gate_up_proj, _m.down_proj)

            mod.forward = forward


#: RoPE types whose frequencies depend on the sequence length at run time (traced as default RoPE).
_RUNTIME_ROPE = ("dynamic", "longrope")


def _build(spec: ModelSpec, num_layers: int = 1) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = json.loads(json.dumps(config_dict(spec.config), default=str))  # deep copy: transformers mutates it
    d.pop("quantization_config", None)
    for k in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"):
        d.pop(k, None)
    model_type = d.pop("model_type")
    d["num_hidden_layers"] = num_layers
    for key in ("max_window_layers",):
        if key in d:
            d[key] = min(d[key], num_layers)
    # RoPE variants differ only in their frequencies, not in the work: "dynamic" and "longrope" pick
    # them from the sequence length at run time, which torch.export cannot trace, so they are traced
    # as fixed-frequency RoPE (the context limit stays the config's, read before this)
    for key in ("rope_scaling", "rope_parameters"):
        rope = d.get(key)
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in _RUNTIME_ROPE:
            d[key] = {k: v for k, v in rope.items() if k in ("rope_theta",)} | {"rope_type": "default"}
    # per-layer lists must match the traced layer count (load_config checked that they are uniform)
    for key in ("layer_types", "mlp_layer_types"):
        if isinstance(d.get(key), list):
            d[key] = d[key][:num_layers]
    try:
        cfg = AutoConfig.for_model(model_type, **d)
        cfg._attn_implementation = "sdpa"
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    except Exception as exc:  # transformers validates the values, or fails on them while building
        msg = " ".join(str(exc).split())
        raise ConfigError(f"model config {spec.source} is not accepted by transformers: "
                          f"{type(exc).__name__}: {msg}") from exc
    model.eval()
    _patch_experts(model)
    return model


class _Steps:
    """Export wrappers (created lazily so that this module does not import torch)."""

    cls: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.cls is not None:
            return cls.cls
        import torch
        from transformers import StaticCache

        class Step(torch.nn.Module):
            """One forward step of an HF causal LM over a static KV cache; logits of the last position."""

            def __init__(self, m: Any, batch: int, cache_len: int):
                super().__init__()
                self.m = m
                c = m.config
                self.cache = StaticCache(config=c, max_cache_len=cache_len)
                _, kv_heads, head_dim = attention_shape(c)
                self.cache.early_initialization(batch, kv_heads, head_dim, torch.bfloat16, torch.device("meta"))

            def forward(self, input_ids: Any, cache_position: Any) -> Any:
                for layer in self.cache.layers:
                    layer.cumulative_length.copy_(cache_position[0])
                return self.m(input_ids=input_ids, cache=self.cache, use_cache=True,
                              logits_to_keep=1).logits

        cls.cls = Step
        return Step


def _export(model: Any, batch: int, seq: int, cache_len: int) -> Any:
    import torch

    step = _Steps.get()(model, batch, cache_len)
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    pos = torch.arange(seq, dtype=torch.long, device="meta")
    with torch.no_grad():
        return torch.export.export(step, (ids, pos), strict=False)


# ---- naming -----------------------------------------------------------------------------------------------

_LAYER = re.compile(r"(^|\.)layers\.(\d+)(?=\.|$)")


def _strip_wrapper(path: str) -> str:
    path = re.sub(r"^L\['self'\]\.", "", path)
    return path[2:] if path.startswith("m.") else ("" if path == "m" else path)


def _region_name(name: str) -> str:
    """``model.layers.0.mlp`` -> ``model.layers.mlp`` (layer index dropped inside the region)."""
    return _LAYER.sub(r"\1layers", name)


def _module_path(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") if hasattr(node, "meta") else None
    if not stack:
        return ""
    return _strip_wrapper(list(stack.values())[-1][0])


def _param_axes_for(spec: ModelSpec, roles: dict[str, int]) -> Any:
    heads = ("g", "r") if "r" in roles else ("g",)

    def axes(name: str, shape: tuple[int, ...]) -> tuple[tuple[str, ...], ...] | None:
        leaf = name.rsplit(".", 2)
        mod, kind = (leaf[-2], leaf[-1]) if len(leaf) >= 2 else ("", leaf[-1])
        table: dict[str, tuple[tuple[str, ...], ...]] = {
            "embed_tokens": (("v",), ("h",)), "lm_head": (("v",), ("h",)),
            "q_proj": ((*heads, "d"), ("h",)), "k_proj": (("g", "d"), ("h",)), "v_proj": (("g", "d"), ("h",)),
            "o_proj": (("h",), (*heads, "d")),
            "gate_proj": (("f",), ("h",)), "up_proj": (("f",), ("h",)), "down_proj": (("h",), ("f",)),
            "q_norm": (("d",),), "k_norm": (("d",),),
            "input_layernorm": (("h",),), "post_attention_layernorm": (("h",),), "norm": (("h",),),
        }
        if mod == "experts":
            table = {"gate_up_proj": (("e",), ("u", "m"), ("h",)), "down_proj": (("e",), ("h",), ("m",))}
            out = table.get(kind)
        elif mod == "gate" and kind == "weight" and spec.is_moe:
            out = (("e",), ("h",))
        elif kind == "weight":
            out = table.get(mod)
        else:
            out = None
        if out is None:
            return None
        out = tuple(tuple(a for a in ax if roles[a] != 1) for ax in out)  # a size-1 dim is no axis
        sizes = tuple(_prod(roles, ax) for ax in out)
        if sizes != shape:
            return None  # unexpected layout: name by size
        return out

    return axes


def _prod(roles: dict[str, int], atoms: tuple[str, ...]) -> int:
    n = 1
    for a in atoms:
        n *= roles[a]
    return n


def _param_dtype_for(spec: ModelSpec, num_layers: int) -> Any:
    """FP8 checkpoints: weights of quantized linear layers are fp8 (the majority over the layers).

    The lm_head stays bf16: vLLM's ``ParallelLMHead`` is an embedding layer, which none of its fp8
    methods (``fp8``, ``fbgemm_fp8``, ModelOpt, compressed-tensors) quantizes, listed or not.
    """
    if spec.quantization != "fp8":
        return lambda name, traced: traced
    qc = spec.quant_config or {}
    if "quantization" in qc:  # NVIDIA ModelOpt hf_quant_config.json
        skip = list(qc["quantization"].get("exclude_modules") or [])
    else:  # HF fp8 / fbgemm_fp8 name modules; compressed-tensors ignores names and "re:" patterns
        skip = list(qc.get("modules_to_not_convert") or qc.get("ignore") or [])

    exact = {s for s in skip if "*" not in s and not s.startswith("re:")}
    globs = [re.compile(s.replace(".", r"\.").replace("*", ".*")) for s in skip if "*" in s and not s.startswith("re:")]
    patterns = [re.compile(s[3:]) for s in skip if s.startswith("re:")]  # compressed-tensors: re.match, as vLLM

    def skipped(module: str) -> bool:
        parts = module.split(".")
        if any(".".join(parts[:i]) in exact for i in range(1, len(parts) + 1)):
            return True
        return any(p.fullmatch(module) for p in globs) or any(p.match(module) for p in patterns)

    def dtype(name: str, traced: str) -> str:
        module, _, kind = name.rpartition(".")
        leaf = module.rsplit(".", 1)[-1]
        if not (leaf.endswith("_proj") or leaf == "experts"):  # norms, embedding, router, lm_head
            return traced
        if _LAYER.search(module) and "layers.0" in module:
            layers = [module.replace("layers.0", f"layers.{i}", 1) for i in range(num_layers)]
            kept = sum(skipped(m) for m in layers)
            return traced if kept * 2 > num_layers else "fp8"
        return traced if skipped(module) else "fp8"

    return dtype


def _cache_dtype(spec: ModelSpec) -> str | None:
    return "fp8" if spec.kv_cache_fp8 else None


# ---- lowering -----------------------------------------------------------------------------------------------

def _lower(ep: Any, spec: ModelSpec | None, phase: str, sizes: list[tuple[str, int]], param_axes: Any,
           param_dtype: Any, cache_dtype: str | None, region: bool) -> tuple[list, list, list[str]]:
    from energylens.frontends.aten import LOWERINGS, Lowerer, Ref, _dtype, _shape

    sig = ep.graph_signature
    params = dict(sig.inputs_to_parameters)
    graph = ep.graph
    region_of = (lambda path: bool(_LAYER.search(path))) if region else (lambda path: False)

    lw = Lowerer(phase=phase, sizes=sizes, param_axes=param_axes, param_dtype=param_dtype,
                 cache_dtype=cache_dtype, module_path=_module_path, region_of=region_of,
                 strip_param=_region_name)
    caches = {n.args[0] for n in graph.nodes
              if n.op == "call_function" and str(n.target).startswith("aten.index_copy")}
    for node in graph.nodes:
        lw.node = node
        if node.op == "placeholder":
            name = node.name
            if name in params:
                hf = _strip_wrapper(params[name])
                inreg = bool(_LAYER.search(hf)) and region
                shape = _shape(node)
                axes = param_axes(hf, shape) or lw.axes_by_size(shape)
                pname = _region_name(hf) if inreg else hf
                v = lw.declare(pname, tuple(a for ax in axes for a in ax),
                               param_dtype(hf, _dtype(node)), "param", inreg)
                lw.refs[node] = Ref(v, axes, v.type.dtype)
            elif node in caches:
                # a layer's KV cache: [B, g, K, d], named by position (g and d may have one size)
                shape = _shape(node)
                axes = (tuple(() if s == 1 else (lw.atom(s, prefer=(role,)),)
                              for s, role in zip(shape, ("B", "g", "K", "d"), strict=True))
                        if len(shape) == 4 else lw.axes_by_size(shape))
                which = "key" if sum(1 for c in caches if c.name < node.name) % 2 == 0 else "value"
                v = lw.declare(f"model.layers.self_attn.{which}_cache" if region else f"{which}_cache",
                               tuple(a for ax in axes for a in ax), cache_dtype or _dtype(node), "cache", region)
                lw.refs[node] = Ref(v, axes, v.type.dtype)
            elif name == "input_ids":
                axes = lw.axes_by_size(_shape(node), prefer=("B", "S"))
                v = lw.declare("input_ids", tuple(a for ax in axes for a in ax), "i64", "input", False)
                lw.refs[node] = Ref(v, axes, "i64")
            else:  # buffers, lifted constants, other user inputs: folded index/constant data
                val = node.meta.get("val")
                lw.refs[node] = lw.const(node) if hasattr(val, "shape") else Ref(None, (), "i64")
            continue
        if node.op == "output":
            outs = [lw.refs[a] for a in node.args[0] if a is not None and hasattr(a, "op")]
            out_names = [r.value.name for r in outs if isinstance(r, Ref) and r.value is not None]
            break
        if node.op != "call_function":
            raise UnsupportedOpError(f"{node.op} {node.target} in module {_module_path(node)!r} is not supported")
        fn = LOWERINGS.get(str(node.target))
        if fn is None:
            raise UnsupportedOpError(
                f"aten op {node.target} (from HF module {_module_path(node) or '<top>'!r}) has no lowering to "
                f"the IR; known ops: {len(LOWERINGS)} (see energylens.frontends.aten.LOWERINGS)")
        lw.refs[node] = fn(lw, node)
    return lw.ops, lw.decls, out_names, lw.atom_size  # type: ignore[return-value]


def _dce(ops: list[tuple[Op, bool]], outputs: list[str]) -> list[tuple[Op, bool]]:
    live = set(outputs)
    kept = []
    for op, reg in reversed(ops):
        if op.result.name in live:
            kept.append((op, reg))
            live |= {v.name for v in op.operands}
    return kept[::-1]


def _assemble(name: str, phase: str, ops: list[tuple[Op, bool]], decls: list[tuple[Decl, bool]],
              outputs: list[str], dims: list[tuple[str, Any]], attrs: dict[str, str], count: int) -> Graph:
    ops = _dce(ops, outputs)
    used = {v.name for op, _ in ops for v in op.operands}
    decls = [(d, r) for d, r in decls if d.value.name in used]
    reg_ops = [op for op, r in ops if r]
    if not reg_ops:
        body: list[Any] = [op for op, _ in ops]
        gdecls = tuple(d for d, _ in decls)
    else:
        first = next(i for i, (_, r) in enumerate(ops) if r)
        last = max(i for i, (_, r) in enumerate(ops) if r)
        reg_names = {op.result.name for op in reg_ops}
        pre = [op for op, _ in ops[:first]]
        post = [op for op, _ in ops[last + 1:]]
        for op, r in ops[first:last + 1]:
            if not r:
                if any(v.name in reg_names for v in op.operands):
                    raise UnsupportedOpError(f"op %{op.result.name} ({op.source.module}) lies between decoder "
                                             "layer ops and uses them; cannot form the layer region")
                pre.append(op)
        defined_before = {op.result.name for op in pre}
        inits = sorted({v.name for op in reg_ops for v in op.operands if v.name in defined_before})
        carries = sorted({v.name for op in post for v in op.operands if v.name in reg_names}
                         | ({o for o in outputs if o in reg_names}))
        if len(inits) != 1 or len(carries) != 1:
            raise UnsupportedOpError(f"the decoder layer region must take one hidden state and give one; "
                                     f"it takes {inits} and gives {carries}")
        region = Repeat(name="layers", count=count, decls=tuple(d for d, r in decls if r), ops=tuple(reg_ops),
                        init=inits[0], carry=carries[0])
        body = [*pre, region, *post]
        gdecls = tuple(d for d, r in decls if not r)
    used_dims = {a for d, _ in decls for a in d.value.type.dims} | \
        {a for op, _ in ops for v in (op.result, *op.operands) for a in v.type.dims}
    missing = sorted(used_dims - {n for n, _ in dims})
    if missing:
        raise UnsupportedOpError(f"{name}: could not name the model dims {missing} (sizes found by tracing)")
    # a size-1 model dim names no axis but stays declared: the shard pass reads the head counts off the dims
    g = Graph(name=name, dims=tuple((n, s) for n, s in dims if n in used_dims or s == 1), decls=gdecls, body=tuple(body),
              outputs=tuple(outputs), attrs=tuple(sorted(attrs.items())))
    for op, _ in g.walk():
        op.verify()
    return g


def _trace_spec(spec: ModelSpec) -> dict[str, Graph]:
    roles = _roles(spec)
    ts = _trace_sizes(spec, roles)
    nl = int(spec.get("num_hidden_layers"))
    model = _build(spec, num_layers=1)
    param_axes = _param_axes_for(spec, roles)
    param_dtype = _param_dtype_for(spec, nl)
    attrs = {"model": spec.name}
    if spec.is_moe:
        attrs |= {"num_experts": str(roles["e"]), "top_k": str(roles["x"])}
    if spec.quantization:
        attrs["quantization"] = spec.quantization
    if spec.fp8_block:
        attrs["fp8_block"] = "x".join(map(str, spec.fp8_block))
    if spec.fp8_moe_refine and spec.is_moe:
        attrs["fp8_moe_refine"] = "1"
    role_order = ["d", "h", "v", "f", "m", "e", "x", "g", "r", "u"]
    out = {}
    for phase in PHASES:
        seq = ts["S"] if phase == "prefill" else ts["Sd"]
        sizes = [("B", ts["B"]), ("S", seq), ("K", ts["K"])] + [(a, roles[a]) for a in role_order if a in roles]
        ep = _export(model, ts["B"], seq, ts["K"])
        ops, decls, outs, atom_size = _lower(ep, spec, phase, sizes, param_axes, param_dtype, _cache_dtype(spec),
                                             region=True)
        dims: list[tuple[str, Any]] = [("B", None), ("S", None), ("K", None)]
        if spec.is_moe:
            dims.append(("C", f"B*S*{roles['x']}/{roles['e']}"))
        dims += [(a, roles[a]) for a in role_order if a in roles]
        out[phase] = _assemble(f"{_graph_name(spec.name)}.{phase}", phase, ops, decls, outs, dims,
                               attrs | {"phase": phase}, nl)
    return out


def _graph_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", name.split("/")[-1])


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a logger for the duration (the error raised instead says what went wrong)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _trace_module(module: Any) -> ModelIR:
    """Trace an ``nn.Module``: an HF ``PreTrainedModel`` is re-built from its config on meta; any other
    module must map ``input_ids [B, S]`` to logits and is exported as is (no region, no KV cache)."""
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict") and hasattr(cfg, "model_type"):
        # rebuilt as the causal LM its config describes: a headless or other-headed module of the same
        # config (LlamaModel, ...ForSequenceClassification) would be priced with an lm_head it lacks
        inner = getattr(module, "_orig_mod", module)  # torch.compile's wrapper forwards to the module
        if not any(c.__name__.endswith("ForCausalLM") for c in type(inner).__mro__):
            raise ConfigError(f"the {type(inner).__name__} module is not a causal LM (no ...ForCausalLM class): "
                              "energylens prices text generation; give the ...ForCausalLM module of this "
                              "config, or the config itself")
        spec = load_config(cfg)
        graphs = _trace_spec(spec)
        return ModelIR(spec=spec, prefill=graphs["prefill"], decode=graphs["decode"])
    import torch

    spec = ModelSpec(name=type(module).__name__, config={}, family="custom")
    out = {}
    for phase, seq in (("prefill", 17), ("decode", 3)):
        ids = torch.zeros(5, seq, dtype=torch.long)
        try:
            with torch.no_grad(), _quiet("torch._subclasses.fake_tensor"):  # it logs the failure's traceback
                ep = torch.export.export(module, (ids,), strict=False)
        except Exception as exc:  # a module that does not take token ids: say what is accepted
            msg = " ".join(str(exc).split())[:200]
            raise ConfigError(
                f"cannot trace the {type(module).__name__} module: a module must be an HF causal LM "
                f"(model_type one of: {', '.join(MODEL_TYPES)}) or map input_ids [B, S] (int64) to "
                f"logits; exporting it failed with {type(exc).__name__}: {msg}") from exc
        sizes = [("B", 5), ("S", seq)]
        ops, decls, outs, atom_size = _lower(ep, None, phase, sizes, lambda n, s: None, lambda n, t: t, None,
                                             region=False)
        dims = [("B", None), ("S", None)] + [(a, s) for a, s in atom_size.items() if a not in ("B", "S")]
        out[phase] = _assemble(f"{spec.name}.{phase}", phase, ops, decls, outs, dims,
                               {"model": spec.name, "phase": phase}, 1)
    return ModelIR(spec=spec, prefill=out["prefill"], decode=out["decode"])
