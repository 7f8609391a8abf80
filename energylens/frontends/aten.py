"""Lowering of a torch.export ATen graph to the einsum IR: one lowering function per aten op.

``LOWERINGS`` maps an aten op (``"aten.linear.default"``) to a function ``(Lowerer, node) ->
Ref``. An op the table lacks raises ``UnsupportedOpError`` naming the op and its HF module path.

Naming. Every IR value's dims are *atoms*: model dimensions (``h``, ``g``, ``r``, ``d``, ...) or
symbols (``B``, ``S``, ``K``). An aten axis is a tuple of atoms (``()`` for a size-1 axis; the
flattened query projection ``q*d`` is ``(g, r, d)``). Layout ops (view, reshape, transpose,
permute, expand, unsqueeze, slice of a whole axis...) only regroup or reorder atoms, so they emit
no IR op: an einsum's letters follow its operands' atoms wherever the values were defined.

Index and constant data (integer/bool tensors, attention masks, RoPE tables computed from
buffers) are folded: they become an IR ``input`` only where a real op consumes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from energylens.errors import UnsupportedOpError
from energylens.ir.core import (
    Decl,
    Einsum,
    Elementwise,
    Gather,
    Op,
    Reduce,
    Source,
    TensorType,
    Value,
)

__all__ = ["LOWERINGS", "Ref", "Lowerer", "lowering", "Atoms"]

Atoms = tuple[str, ...]

_DTYPES = {
    "torch.float32": "f32", "torch.bfloat16": "bf16", "torch.float16": "f16", "torch.int64": "i64",
    "torch.int32": "i32", "torch.int8": "i8", "torch.bool": "bool", "torch.float8_e4m3fn": "fp8",
    "torch.uint8": "i8", "torch.float64": "f32",
}


@dataclass(frozen=True)
class Ref:
    """What an fx node lowers to: an IR value (None: folded index/constant data) seen through its axes."""

    value: Value | None
    axes: tuple[Atoms, ...]
    dtype: str

    @property
    def const(self) -> bool:
        return self.value is None

    @property
    def atoms(self) -> Atoms:
        return tuple(a for ax in self.axes for a in ax)


LowerFn = Callable[["Lowerer", Any], "Ref | list[Ref] | None"]
LOWERINGS: dict[str, LowerFn] = {}


def lowering(*targets: str) -> Callable[[LowerFn], LowerFn]:
    """Register a lowering for aten ops (strict: a duplicate raises)."""

    def deco(fn: LowerFn) -> LowerFn:
        for t in targets:
            if t in LOWERINGS:
                raise ValueError(f"duplicate lowering for {t}")
            LOWERINGS[t] = fn
        return fn

    return deco


def _is_node(x: Any) -> bool:
    return hasattr(x, "op") and hasattr(x, "meta")


def _shape(node: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["val"].shape)


def _dtype(node: Any) -> str:
    return _DTYPES.get(str(node.meta["val"].dtype), "f32")


class Lowerer:
    """Walks an exported graph and builds IR ops; hf.py drives it and assembles the Graph.

    ``sizes`` is the size lookup ``[(atom, size), ...]`` in priority order (symbols first);
    ``param_axes(name, shape)`` gives a weight's atoms per axis (None: by size);
    ``param_dtype(name, traced)`` its IR dtype; ``cache_dtype`` the KV cache's.
    """

    def __init__(self, *, phase: str, sizes: list[tuple[str, int]],
                 param_axes: Callable[[str, tuple[int, ...]], tuple[Atoms, ...] | None],
                 param_dtype: Callable[[str, str], str], cache_dtype: str | None,
                 module_path: Callable[[Any], str], region_of: Callable[[str], bool],
                 strip_param: Callable[[str], str]):
        self.phase = phase
        self.sizes = list(sizes)
        self.atom_size: dict[str, int] = {}
        for name, size in sizes:
            self.atom_size.setdefault(name, size)
        self.param_axes, self.param_dtype, self.cache_dtype = param_axes, param_dtype, cache_dtype
        self.module_path, self.region_of, self.strip_param = module_path, region_of, strip_param
        self.refs: dict[Any, Any] = {}
        self.ops: list[tuple[Op, bool]] = []
        self.decls: list[tuple[Decl, bool]] = []
        self._declared: dict[str, Value] = {}
        self.node: Any = None
        self.params: dict[str, str] = {}   # placeholder name -> HF param name
        self.caches: set[str] = set()      # placeholder names of KV caches
        self.inputs: set[str] = set()      # placeholder names of token inputs

    # ---- atoms -----------------------------------------------------------------------------
    def atom(self, size: int, prefer: tuple[str, ...] = ()) -> str:
        """The atom for an axis of ``size`` (preferring ``prefer``); a fresh ``n<size>`` if none."""
        for name in prefer:
            if self.atom_size.get(name) == size:
                return name
        for name, s in self.sizes:
            if s == size:
                return name
        name = f"n{size}"
        self.atom_size.setdefault(name, size)
        return name

    def axes_by_size(self, shape: tuple[int, ...], prefer: tuple[str, ...] = ()) -> tuple[Atoms, ...]:
        return tuple(() if s == 1 else (self.atom(s, prefer),) for s in shape)

    def size_of(self, atoms: Atoms) -> int:
        n = 1
        for a in atoms:
            n *= self.atom_size[a]
        return n

    def define_atom(self, name: str, size: int) -> str:
        if self.atom_size.setdefault(name, size) != size:
            raise self.error(f"dimension {name!r} has size {self.atom_size[name]} and {size}")
        return name

    # ---- errors and sources ----------------------------------------------------------------
    def where(self) -> str:
        return self.module_path(self.node) if self.node is not None else ""

    def error(self, msg: str) -> UnsupportedOpError:
        target = str(self.node.target) if self.node is not None else "?"
        return UnsupportedOpError(f"{target} in module {self.where() or '<top>'!r}: {msg}")

    def source(self) -> Source:
        where = self.where()
        return Source(aten=str(self.node.target), module=self.strip_param(where) if self.in_region() else where)

    def in_region(self) -> bool:
        return self.region_of(self.where())

    # ---- refs --------------------------------------------------------------------------------
    def ref(self, arg: Any) -> Ref:
        if not _is_node(arg):
            raise self.error(f"expected a tensor argument, got {arg!r}")
        r = self.refs[arg]
        if isinstance(r, list):
            raise self.error(f"{arg.name} is a tuple, not a tensor")
        return r

    def const(self, node: Any = None) -> Ref:
        node = node if node is not None else self.node
        return Ref(None, self.axes_by_size(_shape(node)), _dtype(node))

    def materialize(self, arg: Any, name: str | None = None) -> Ref:
        """An IR value for a folded constant (declared as a graph input)."""
        r = self.ref(arg)
        if r.value is not None:
            return r
        vname = name or _const_name(arg)
        if vname not in self._declared:
            v = Value(vname, TensorType(r.atoms, r.dtype))
            self._declared[vname] = v
            self.decls.append((Decl(v, "input"), False))
        r = Ref(self._declared[vname], r.axes, r.dtype)
        self.refs[arg] = r
        return r

    def declare(self, name: str, atoms: Atoms, dtype: str, role: str, in_region: bool) -> Value:
        if name in self._declared:
            return self._declared[name]
        v = Value(name, TensorType(atoms, dtype))
        self._declared[name] = v
        self.decls.append((Decl(v, role), in_region))  # type: ignore[arg-type]
        return v

    def emit(self, cls: type[Op], axes: tuple[Atoms, ...], dtype: str, operands: tuple[Value, ...],
             name: str | None = None, **kw: Any) -> Ref:
        atoms = tuple(a for ax in axes for a in ax)
        if len(set(atoms)) != len(atoms):
            raise self.error(f"result would repeat a dimension: {atoms}")
        v = Value(name or self.node.name, TensorType(atoms, dtype))
        op = cls(result=v, operands=operands, source=self.source(), **kw)
        op.verify()
        self.ops.append((op, self.in_region()))
        return Ref(v, axes, dtype)

    def einsum(self, operands: list[Ref], out_axes: tuple[Atoms, ...], dtype: str, **kw: Any) -> Ref:
        """An Einsum over operands' atoms; letters are local to the op."""
        letters: dict[str, str] = {}
        free = [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]

        def letter(atom: str) -> str:
            if atom not in letters:
                c = atom[0].lower() if atom[0].lower() in free else free[0]
                free.remove(c)
                letters[atom] = c
            return letters[atom]

        ins = []
        for r in operands:
            assert r.value is not None
            ins.append("".join(letter(a) for a in r.value.type.dims))
        out_atoms = [a for ax in out_axes for a in ax]
        for a in out_atoms:
            if a not in letters:
                raise self.error(f"output dimension {a!r} is in no operand")
        spec = ",".join(ins) + "->" + "".join(letters[a] for a in out_atoms)
        return self.emit(Einsum, out_axes, dtype, tuple(r.value for r in operands), spec=spec,  # type: ignore[misc]
                         **kw)


# ---- helpers -------------------------------------------------------------------------------------

def _tensor_args(node: Any) -> list[Any]:
    out = []
    for a in node.args:
        if _is_node(a):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if _is_node(x))
    return out


def _const_name(node: Any) -> str:
    """``rope_cos``/``rope_sin`` for RoPE tables (found a few layout steps up), else the node's name."""
    n = node
    for _ in range(6):
        t = str(getattr(n, "target", ""))
        if t in ("aten.cos.default", "aten.sin.default"):
            return "rope_" + t.split(".")[1]
        args = [a for a in getattr(n, "args", ()) if _is_node(a)]
        if not args:
            break
        n = args[0]
    return str(node.name)


def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _broadcast_axes(lw: Lowerer, refs: list[Ref], shapes: list[tuple[int, ...]],
                    out_shape: tuple[int, ...]) -> tuple[Atoms, ...]:
    out: list[Atoms] = []
    rank = len(out_shape)
    order = sorted(range(len(refs)), key=lambda i: refs[i].const)  # IR values first
    for i, size in enumerate(out_shape):
        pick: Atoms | None = () if size == 1 else None
        for j in order:
            k = i - (rank - len(shapes[j]))
            # a size-1 axis keeps an operand's name for it (top_k = 1: the dim x), else is none
            if k >= 0 and shapes[j][k] == size and (size != 1 or refs[j].axes[k]):
                pick = refs[j].axes[k]
                break
        if pick is None:
            pick = (lw.atom(size),)
        out.append(pick)
    return tuple(out)


_ELEMENTWISE = {
    "aten.add.Tensor": "add", "aten.add_.Tensor": "add", "aten.sub.Tensor": "sub", "aten.mul.Tensor": "mul",
    "aten.mul_.Tensor": "mul", "aten.div.Tensor": "div", "aten.div_.Tensor": "div", "aten.neg.default": "neg",
    "aten.silu.default": "silu", "aten.gelu.default": "gelu", "aten.relu.default": "relu",
    "aten.sigmoid.default": "sigmoid", "aten.tanh.default": "tanh", "aten.rsqrt.default": "rsqrt",
    "aten.sqrt.default": "sqrt", "aten.exp.default": "exp", "aten.pow.Tensor_Scalar": "pow",
    "aten.cos.default": "cos", "aten.sin.default": "sin", "aten.reciprocal.default": "reciprocal",
    "aten.where.self": "where", "aten.masked_fill.Scalar": "masked_fill", "aten.clamp.default": "clamp",
    "aten.eq.Tensor": "eq", "aten.eq.Scalar": "eq", "aten.le.Tensor": "le", "aten.lt.Tensor": "lt",
    "aten.ge.Tensor": "ge", "aten.gt.Tensor": "gt", "aten.le.Scalar": "le", "aten.ge.Scalar": "ge",
    "aten.bitwise_and.Tensor": "and", "aten.bitwise_or.Tensor": "or", "aten.bitwise_not.default": "not",
    "aten.logical_and.default": "and", "aten.logical_or.default": "or",
}


@lowering(*_ELEMENTWISE)
def _elementwise(lw: Lowerer, node: Any) -> Ref:
    args = _tensor_args(node)
    refs = [lw.ref(a) for a in args]
    out_dtype = _dtype(node)
    if all(r.const for r in refs) or out_dtype in ("bool", "i64", "i32"):
        return lw.const()
    axes = _broadcast_axes(lw, refs, [_shape(a) for a in args], _shape(node))
    operands = tuple(lw.materialize(a).value for a in args)  # type: ignore[misc]
    return lw.emit(Elementwise, axes, out_dtype, operands, fn=_ELEMENTWISE[str(node.target)])  # type: ignore[arg-type]


@lowering("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device",
          "aten.type_as.default")
def _cast(lw: Lowerer, node: Any) -> Ref:
    r = lw.ref(node.args[0])
    dt = _dtype(node)
    if r.const or dt == r.dtype:
        return Ref(r.value, r.axes, dt) if r.const else r
    if r.value is not None and r.value.type.dtype == dt:
        return Ref(r.value, r.axes, dt)
    return lw.emit(Elementwise, r.axes, dt, (r.value,), fn="cast")  # type: ignore[arg-type]


@lowering("aten.silu_.default", "aten.contiguous.default", "aten.clone.default", "aten.alias.default",
          "aten.detach.default", "aten.lift_fresh_copy.default", "aten.dropout.default",
          "aten.alias_copy.default")
def _identity(lw: Lowerer, node: Any) -> Ref:
    if str(node.target) == "aten.silu_.default":
        return _elementwise_fn(lw, node, "silu")
    return lw.ref(node.args[0])


def _elementwise_fn(lw: Lowerer, node: Any, fn: str) -> Ref:
    r = lw.ref(node.args[0])
    if r.const:
        return lw.const()
    return lw.emit(Elementwise, r.axes, _dtype(node), (r.value,), fn=fn)  # type: ignore[arg-type]


@lowering("aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
          "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg")
def _assertion(lw: Lowerer, node: Any) -> None:
    return None


@lowering("aten.arange.default", "aten.arange.start", "aten.arange.start_step", "aten.zeros.default",
          "aten.ones.default", "aten.full.default", "aten.scalar_tensor.default", "aten.empty.memory_format",
          "aten.copy_.default", "aten.copy.default", "aten.item.default",
          "aten.fill_.Scalar", "aten.zeros_like.default", "aten.ones_like.default", "aten.new_ones.default",
          "aten.new_zeros.default", "aten.full_like.default")
def _index_data(lw: Lowerer, node: Any) -> Ref:
    """Factories and copies: folded index/constant data (float copies of activations are aliases)."""
    if str(node.target) in ("aten.copy_.default", "aten.copy.default"):
        src = lw.ref(node.args[1])
        if not src.const:
            return src
    if "val" not in node.meta or not hasattr(node.meta["val"], "shape"):
        return Ref(None, (), "i64")
    return lw.const()


# ---- layout: no IR op --------------------------------------------------------------------------

def _regroup(lw: Lowerer, r: Ref, out_shape: tuple[int, ...]) -> tuple[Atoms, ...]:
    """Atoms of ``r`` regrouped into ``out_shape`` (a view/reshape keeps atom order)."""
    atoms = list(r.atoms)
    out: list[Atoms] = []
    i = 0
    for size in out_shape:
        group: list[str] = []
        n = 1
        while n < size and i < len(atoms):
            n *= lw.atom_size[atoms[i]]
            group.append(atoms[i])
            i += 1
        if n != size:
            raise lw.error(f"cannot fold the reshape of {r.axes} into {out_shape}: it splits a dimension")
        out.append(tuple(group))
    if i != len(atoms):
        raise lw.error(f"cannot fold the reshape of {r.axes} into {out_shape}")
    return tuple(out)


@lowering("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
          "aten.unflatten.int", "aten.view_copy.default")
def _view(lw: Lowerer, node: Any) -> Ref:
    r = lw.ref(node.args[0])
    if r.const:
        return lw.const()
    return Ref(r.value, _regroup(lw, r, _shape(node)), r.dtype)


@lowering("aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _unsqueeze(lw: Lowerer, node: Any) -> Ref:
    r = lw.ref(node.args[0])
    if r.const:
        return lw.const()
    return Ref(r.value, _regroup(lw, r, _shape(node)), r.dtype)


@lowering("aten.transpose.int", "aten.permute.default", "aten.t.default", "aten.swapaxes.default")
def _permute(lw: Lowerer, node: Any) -> Ref:
    r = lw.ref(node.args[0])
    if r.const:
        return lw.const()
    rank = len(r.axes)
    t = str(node.target)
    if t == "aten.permute.default":
        perm = [_norm_dim(d, rank) for d in node.args[1]]
    else:
        perm = list(range(rank))
        a, b = (0, 1) if t == "aten.t.default" else (_norm_dim(node.args[1], rank), _norm_dim(node.args[2], rank))
        perm[a], perm[b] = perm[b], perm[a]
    return Ref(r.value, tuple(r.axes[p] for p in perm), r.dtype)


@lowering("aten.expand.default", "aten.expand_as.default", "aten.repeat.default")
def _expand(lw: Lowerer, node: Any) -> Ref:
    """Broadcast (GQA's repeat_kv): a new size-N axis is named by role (``r`` first); no data moves."""
    r = lw.ref(node.args[0])
    if r.const:
        return lw.const()
    out_shape = _shape(node)
    lead = len(out_shape) - len(r.axes)
    in_shape = (1,) * lead + tuple(lw.size_of(ax) for ax in r.axes)
    in_axes = ((),) * lead + r.axes
    axes = []
    for s_in, s_out, ax in zip(in_shape, out_shape, in_axes, strict=True):
        if s_in == s_out:
            axes.append(ax)
        elif s_in == 1:
            axes.append((lw.atom(s_out, prefer=("r",)),))
        else:
            raise lw.error(f"cannot fold a repeat of {ax} to size {s_out}")
    return Ref(r.value, tuple(axes), r.dtype)


@lowering("aten.slice.Tensor", "aten.select.int", "aten.narrow.default")
def _slice(lw: Lowerer, node: Any) -> Ref:
    """Whole-axis slices are aliases; a size-1 slice (last position) drops the axis; a partial slice
    (RoPE's rotate_half halves) keeps the axis name (a sub-range of the same dimension)."""
    r = lw.ref(node.args[0])
    if r.const:
        return lw.const()
    rank = len(r.axes)
    dim = _norm_dim(node.args[1] if len(node.args) > 1 else 0, rank)
    out_shape = _shape(node)
    axes = list(r.axes)
    picked = r.axes[dim]
    if str(node.target) == "aten.select.int":
        axes.pop(dim)
    elif out_shape[dim] == 1 and lw.size_of(picked) != 1:
        axes[dim] = ()
    else:
        return Ref(r.value, tuple(axes), r.dtype)
    if not picked:
        return Ref(r.value, tuple(axes), r.dtype)
    # one position of the axis (lm_head's last token): a real op, so later ops do not span the axis
    start = node.args[2] if len(node.args) > 2 else 0
    fn = "last" if start == -1 else "select"
    return lw.emit(Reduce, tuple(axes), r.dtype, (r.value,), fn=fn, dims=picked)  # type: ignore[arg-type]


@lowering("aten.cat.default")
def _cat(lw: Lowerer, node: Any) -> Ref:
    """Concatenation; ``cat([-x2, x1])`` of the two halves of ``x`` is RoPE's ``rotate_half(x)``."""
    parts = list(node.args[0])
    refs = [lw.ref(p) for p in parts]
    if all(r.const for r in refs):
        return lw.const()
    if len(parts) == 2 and str(parts[0].target) == "aten.neg.default" and \
            str(parts[0].args[0].target) == "aten.slice.Tensor" and str(parts[1].target) == "aten.slice.Tensor" \
            and parts[0].args[0].args[0] is parts[1].args[0]:
        x = lw.ref(parts[1].args[0])
        return lw.emit(Elementwise, x.axes, x.dtype, (x.value,), fn="rotate_half")  # type: ignore[arg-type]
    shapes = [_shape(p) for p in parts]
    dim = _norm_dim(node.args[1] if len(node.args) > 1 else 0, len(shapes[0]))
    out_shape = _shape(node)
    axes = list(_broadcast_axes(lw, refs, shapes, out_shape))
    if all(lw.size_of(r.axes[dim]) != out_shape[dim] for r in refs):
        axes[dim] = (lw.atom(out_shape[dim]),)
    operands = tuple(lw.materialize(p).value for p in parts)  # type: ignore[misc]
    return lw.emit(Elementwise, tuple(axes), _dtype(node), operands, fn="cat")  # type: ignore[arg-type]


@lowering("<built-in function getitem>")
def _getitem(lw: Lowerer, node: Any) -> Ref:
    r = lw.refs[node.args[0]]
    if isinstance(r, list):
        return r[node.args[1]]
    raise lw.error("getitem on a tensor")


# ---- reductions ----------------------------------------------------------------------------------

@lowering("aten.mean.dim", "aten.sum.dim_IntList", "aten.amax.default", "aten.max.dim", "aten.mean.default",
          "aten.sum.default")
def _reduce(lw: Lowerer, node: Any) -> Ref | list[Ref]:
    r = lw.ref(node.args[0])
    if r.const:
        return lw.const()
    rank = len(r.axes)
    dims = node.args[1] if len(node.args) > 1 else list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims or range(rank))
    dims = sorted(_norm_dim(d, rank) for d in dims)
    keep = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
    reduced = tuple(a for d in dims for a in r.axes[d])
    axes = [(() if i in dims else ax) for i, ax in enumerate(r.axes)] if keep else \
        [ax for i, ax in enumerate(r.axes) if i not in dims]
    fn = {"aten.mean.dim": "mean", "aten.mean.default": "mean", "aten.amax.default": "max",
          "aten.max.dim": "max"}.get(str(node.target), "sum")
    dt = _dtype(node) if "val" in node.meta and hasattr(node.meta["val"], "dtype") else r.dtype
    out = lw.emit(Reduce, tuple(axes), dt, (r.value,), fn=fn, dims=reduced)  # type: ignore[arg-type]
    return [out, out] if str(node.target) == "aten.max.dim" else out


@lowering("aten.softmax.int", "aten._softmax.default", "aten._log_softmax.default", "aten.log_softmax.int")
def _softmax(lw: Lowerer, node: Any) -> Ref:
    r = lw.ref(node.args[0])
    if r.const:
        return lw.const()
    dim = _norm_dim(node.args[1], len(r.axes))
    fn = "log_softmax" if "log" in str(node.target) else "softmax"
    return lw.emit(Reduce, r.axes, _dtype(node), (r.value,), fn=fn, dims=r.axes[dim])  # type: ignore[arg-type]


@lowering("aten.topk.default")
def _topk(lw: Lowerer, node: Any) -> list[Ref]:
    """Top-k along an axis (MoE routing): the axis becomes the top-k slot dim ``x``; values and
    indices are the same IR value."""
    r = lw.ref(node.args[0])
    k = int(node.args[1])
    rank = len(r.axes)
    dim = _norm_dim(node.args[2] if len(node.args) > 2 else -1, rank)
    axes = list(r.axes)
    axes[dim] = (lw.atom(k, prefer=("x",)),)
    out = lw.emit(Reduce, tuple(axes), r.dtype, (r.value,), fn="topk", dims=r.axes[dim])  # type: ignore[arg-type]
    return [out, out]


# ---- contractions ----------------------------------------------------------------------------------

@lowering("aten.linear.default")
def _linear(lw: Lowerer, node: Any) -> Ref:
    x, w = lw.ref(node.args[0]), lw.ref(node.args[1])
    if x.const:
        x = lw.materialize(node.args[0])
    if w.axes[-1] != x.axes[-1]:
        raise lw.error(f"weight dims {w.axes} do not match the input's last dims {x.axes[-1]}")
    out = lw.einsum([x, w], x.axes[:-1] + w.axes[:-1], _dtype(node))
    if len(node.args) > 2 and node.args[2] is not None:
        b = lw.ref(node.args[2])
        out = lw.emit(Elementwise, out.axes, out.dtype, (out.value, b.value), name=node.name + "_bias",  # type: ignore[arg-type]
                      fn="add")
    return out


def _matmul_axes(lw: Lowerer, a: Ref, b: Ref, a_shape: tuple[int, ...], b_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]) -> tuple[Atoms, ...]:
    if a.axes[-1] != b.axes[-2]:
        raise lw.error(f"contracted dims differ: {a.axes[-1]} vs {b.axes[-2]}")
    batch = _broadcast_axes(lw, [a, b], [a_shape[:-2], b_shape[:-2]], out_shape[:-2])
    return batch + (a.axes[-2], b.axes[-1])


@lowering("aten.mm.default", "aten.bmm.default", "aten.matmul.default", "aten.addmm.default")
def _matmul(lw: Lowerer, node: Any) -> Ref:
    args = node.args[1:3] if str(node.target) == "aten.addmm.default" else node.args[:2]
    a, b = lw.materialize(args[0]), lw.materialize(args[1])
    sa, sb = _shape(args[0]), _shape(args[1])
    if len(sb) == 1 or len(sa) == 1:
        raise lw.error("matrix-vector products are not supported")
    out = lw.einsum([a, b], _matmul_axes(lw, a, b, sa, sb, _shape(node)), _dtype(node))
    if str(node.target) == "aten.addmm.default":
        bias = lw.materialize(node.args[0])
        out = lw.emit(Elementwise, out.axes, out.dtype, (out.value, bias.value), name=node.name + "_bias",  # type: ignore[arg-type]
                      fn="add")
    return out


@lowering("aten.scaled_dot_product_attention.default", "aten._scaled_dot_product_flash_attention_for_cpu.default")
def _sdpa(lw: Lowerer, node: Any) -> Ref:
    """Attention: scores ``Q K^T``, softmax over the KV length, then ``P V`` (both causal in prefill:
    FlashAttention skips the masked blocks of each).

    With GQA, K and V keep their KV-head dim ``g`` and Q's heads are ``(g, r)``, so K/V are
    never repeated. The mask input is folded (causality is the ``causal`` flag).
    """
    q, k, v = (lw.materialize(a) for a in node.args[:3])
    if q.axes[-2] == k.axes[-2]:
        raise lw.error("attention whose queries and keys share the sequence dim (no KV cache)")
    dt = _dtype(node)
    batch = q.axes[:-2]
    scores = _einsum_named(lw, [q, k], batch + (q.axes[-2], k.axes[-2]), dt, node.name + "_scores",
                           causal=lw.phase == "prefill")
    probs = lw.emit(Reduce, scores.axes, scores.dtype, (scores.value,), name=node.name + "_probs",  # type: ignore[arg-type]
                    fn="softmax", dims=k.axes[-2])
    return lw.einsum([probs, v], batch + (q.axes[-2], v.axes[-1]), dt, causal=lw.phase == "prefill")


# ---- gathers -------------------------------------------------------------------------------------

@lowering("aten.embedding.default")
def _embedding(lw: Lowerer, node: Any) -> Ref:
    w, ids = lw.ref(node.args[0]), lw.materialize(node.args[1])
    return lw.emit(Gather, ids.axes + (w.axes[1],), w.dtype, (w.value, ids.value),  # type: ignore[arg-type]
                   dim=w.axes[0][0])


@lowering("aten.index_copy_.default", "aten.index_copy.default", "aten.index_put_.default",
          "aten.index_put.default")
def _kv_write(lw: Lowerer, node: Any) -> Ref:
    """KV-cache write: only the new rows are written; the result is the updated cache."""
    cache = lw.ref(node.args[0])
    if cache.const:
        raise lw.error("in-place write into a tensor that is not a KV cache")
    if str(node.target).startswith("aten.index_copy"):
        dim = _norm_dim(node.args[1], len(cache.axes))
        idx, src = lw.materialize(node.args[2], "cache_position"), lw.materialize(node.args[3])
    else:
        raise lw.error("index_put on a KV cache is not supported; use index_copy")
    return lw.emit(Gather, cache.axes, cache.dtype, (cache.value, idx.value, src.value),  # type: ignore[arg-type]
                   dim=cache.axes[dim][0], fn="scatter")


# ---- MoE experts (custom op registered by hf.py) ---------------------------------------------------

@lowering("energylens.moe_experts.default")
def _moe_experts(lw: Lowerer, node: Any) -> Ref:
    """Routed experts: dispatch tokens to ``[e, C, h]``, gate/up einsum, SwiGLU over the gate/up
    pair ``u``, down einsum, combine weighted by the router. ``C`` = tokens per expert."""
    hidden, idx, weights = (lw.materialize(a) for a in node.args[:3])
    gate_up, down = lw.ref(node.args[3]), lw.ref(node.args[4])
    (e,), (u, m), (h,) = gate_up.axes
    dt = hidden.dtype
    disp = lw.emit(Gather, ((e,), ("C",), (h,)), dt, (hidden.value, idx.value),  # type: ignore[arg-type]
                   name=node.name + "_dispatch", dim=hidden.axes[0][-1], fn="dispatch")
    gu = lw.einsum([disp, gate_up], ((e,), ("C",), (u,), (m,)), dt)
    gu = Ref(gu.value, gu.axes, dt)
    act = lw.emit(Reduce, ((e,), ("C",), (m,)), dt, (gu.value,), name=node.name + "_swiglu",  # type: ignore[arg-type]
                  fn="swiglu", dims=(u,))
    out = _einsum_named(lw, [act, down], ((e,), ("C",), (h,)), dt, node.name + "_down")
    return lw.emit(Gather, hidden.axes, dt, (out.value, idx.value, weights.value),  # type: ignore[arg-type]
                   name=node.name + "_combine", dim=e, fn="combine")


def _einsum_named(lw: Lowerer, operands: list[Ref], out_axes: tuple[Atoms, ...], dtype: str, name: str,
                  **kw: Any) -> Ref:
    saved = lw.node
    try:
        lw.node = _Renamed(saved, name)
        return lw.einsum(operands, out_axes, dtype, **kw)
    finally:
        lw.node = saved


class _Renamed:
    """A node proxy with another name (for the second op one aten node lowers to)."""

    def __init__(self, node: Any, name: str):
        self._node, self.name = node, name

    def __getattr__(self, item: str) -> Any:
        return getattr(self._node, item)
