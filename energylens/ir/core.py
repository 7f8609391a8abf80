"""The einsum IR: named dimensions, tensor types, ops and graphs.

A tensor's shape is a tuple of *dimension names*; their sizes live in the graph's dimension table
(``Graph.dims``). A size is an ``int`` (a model dimension such as ``h = 4096``), ``None`` (a free
symbol bound at estimate time: ``B`` batch, ``S`` new tokens per sequence, ``K`` KV length), or an
expression over symbols and ints with ``*`` and ``/`` (``T = B*S``, ``C = B*S*8/128`` for
tokens per expert under uniform routing). One traced graph thus serves every batch size and
sequence length.

Ops are frozen, slotted dataclasses; a pass builds new ops with ``dataclasses.replace``. Every op
carries its sharding (dim -> mesh axis), fusion group, stream, SM share and its source (aten op
and HF module path). A decoder layer is traced once and kept as a ``Repeat`` region executed
``count`` times by reference.

>>> h = TensorType(("B", "S", "h"), "bf16")
>>> w = TensorType(("h", "f"), "bf16")
>>> op = Einsum(result=Value("y", TensorType(("B", "S", "f"), "bf16")),
...             operands=(Value("x", h), Value("w", w)), spec="bsh,hf->bsf")
>>> op.contracted_dims
('h',)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from energylens.errors import VerificationError

__all__ = [
    "COLLECTIVE_FNS",
    "MESH_AXES",
    "parse_mesh",
    "DTYPE_BYTES",
    "SYMBOLS",
    "DimSize",
    "TensorType",
    "Value",
    "Source",
    "Op",
    "Einsum",
    "Elementwise",
    "Reduce",
    "Gather",
    "Collective",
    "OP_KINDS",
    "Decl",
    "Repeat",
    "Graph",
    "eval_size",
]

#: Bytes per element of each IR dtype.
DTYPE_BYTES: dict[str, float] = {
    "f32": 4, "bf16": 2, "f16": 2, "fp8": 1, "i64": 8, "i32": 4, "i8": 1, "bool": 1,
}

#: Free symbols bound at estimate time: batch, new tokens per sequence, KV length.
SYMBOLS: tuple[str, ...] = ("B", "S", "K")

#: A dimension size: fixed int, free symbol (None) or expression over symbols ("B*S").
DimSize = int | str | None

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_EXPR = re.compile(r"^[A-Za-z0-9_]+([*/][A-Za-z0-9_]+)*$")


def _number(x: Any) -> Any:
    """A bound size as a float, or as a float array when it is one (``hasattr(x, "shape")``)."""
    return x * 1.0 if getattr(x, "shape", ()) != () else float(x)


def eval_size(size: DimSize, name: str, binding: Mapping[str, float]) -> float:
    """Evaluate a dimension size under a binding of symbols (``{"B": 8, "S": 1, "K": 1024}``).

    Expressions may use ``*`` and ``/`` and the names of symbols or other already-bound dims;
    the result may be fractional (expected tokens per expert). A symbol bound to an array (numpy,
    one entry per batch size) gives an array: one binding evaluates many workloads at once.
    """
    if isinstance(size, int):
        return float(size)
    if size is None:
        if name not in binding:
            raise VerificationError(f"symbolic dimension {name!r} is not bound (bound: {sorted(binding)})")
        return _number(binding[name])
    value, op = 1.0, "*"
    for tok in re.split(r"([*/])", size):
        if tok in ("*", "/"):
            op = tok
            continue
        if tok.isdigit():
            x = float(tok)
        elif tok in binding:
            x = _number(binding[tok])
        else:
            raise VerificationError(f"dimension {name!r} = {size!r} uses {tok!r}, which is not bound")
        value = value * x if op == "*" else value / x
    return value


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor's dimension names (outermost first) and element dtype."""

    dims: tuple[str, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise VerificationError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPE_BYTES)}")

    @property
    def itemsize(self) -> float:
        return DTYPE_BYTES[self.dtype]


@dataclass(frozen=True, slots=True)
class Value:
    """An SSA value: a name (``[A-Za-z_][A-Za-z0-9_.]*``) and its tensor type."""

    name: str
    type: TensorType


@dataclass(frozen=True, slots=True)
class Source:
    """Where an op came from: the aten op and the HF module path (``model.layers.0.mlp``)."""

    aten: str = ""
    module: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """Fields shared by every op kind.

    ``sharding`` maps a dimension name to a mesh axis (``(("f", "tp"),)``); ``fusion_group``
    names the kernel an op is fused into (None: its own kernel); ``stream`` 0 is compute, 1
    communication; ``sm_share`` the fraction of SMs an op may use (None: all).
    """

    kind: ClassVar[str] = "op"
    result: Value
    operands: tuple[Value, ...]
    sharding: tuple[tuple[str, str], ...] = ()
    fusion_group: int | None = None
    stream: int = 0
    sm_share: float | None = None
    source: Source = field(default_factory=Source)

    def verify(self) -> None:
        """Check the op's own invariants; raise VerificationError naming the op."""
        dims = {d for v in (self.result, *self.operands) for d in v.type.dims}
        for dim, _axis in self.sharding:
            if dim not in dims:
                raise VerificationError(f"{self.kind} %{self.result.name}: sharded dim {dim!r} is not one of its dims")
        if self.sm_share is not None and not 0 < self.sm_share <= 1:
            raise VerificationError(f"{self.kind} %{self.result.name}: sm_share {self.sm_share} not in (0, 1]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Einsum(Op):
    """A tensor contraction ``spec`` (numpy einsum notation, one letter per dimension).

    The letters of operand i stand positionally for ``operands[i].type.dims``; a letter means the
    same dimension name everywhere. ``causal`` marks an attention einsum (scores ``Q K^T`` or ``P V``)
    masked to ``k <= s``: only about half of the S x K products are needed (the cost model prices that).
    """

    kind: ClassVar[str] = "einsum"
    spec: str
    causal: bool = False

    @property
    def letters(self) -> tuple[list[str], str]:
        ins, out = self.spec.split("->")
        return ins.split(","), out

    @property
    def letter_dims(self) -> dict[str, str]:
        """Letter -> dimension name."""
        ins, out = self.letters
        mapping: dict[str, str] = {}
        for letters, v in zip([*ins, out], [*self.operands, self.result], strict=False):
            for c, d in zip(letters, v.type.dims, strict=False):
                mapping.setdefault(c, d)
        return mapping

    @property
    def contracted_dims(self) -> tuple[str, ...]:
        ins, out = self.letters
        m = self.letter_dims
        seen = [c for c in "".join(ins) if c not in out]
        return tuple(dict.fromkeys(m[c] for c in seen))

    @property
    def all_dims(self) -> tuple[str, ...]:
        """Every dimension of the iteration space (output dims then contracted dims)."""
        m = self.letter_dims
        return tuple(dict.fromkeys(m[c] for c in self.letters[1] + "".join(self.letters[0])))

    def verify(self) -> None:
        Op.verify(self)
        name = f"einsum %{self.result.name}"
        if not re.fullmatch(r"[a-zA-Z]*(,[a-zA-Z]*)*->[a-zA-Z]*", self.spec):
            raise VerificationError(f"{name}: malformed spec {self.spec!r}")
        ins, out = self.letters
        if len(ins) != len(self.operands):
            raise VerificationError(f"{name}: spec {self.spec!r} has {len(ins)} inputs, op has {len(self.operands)}")
        mapping: dict[str, str] = {}
        for letters, v in zip([*ins, out], [*self.operands, self.result], strict=True):
            if len(letters) != len(v.type.dims):
                raise VerificationError(
                    f"{name}: {letters!r} has {len(letters)} letters but %{v.name} has dims {v.type.dims}")
            for c, d in zip(letters, v.type.dims, strict=True):
                if mapping.setdefault(c, d) != d:
                    raise VerificationError(f"{name}: letter {c!r} stands for both {mapping[c]!r} and {d!r}")
        if len(set(out)) != len(out) or any(c not in "".join(ins) for c in out):
            raise VerificationError(f"{name}: output letters {out!r} must be distinct input letters")


@dataclass(frozen=True, slots=True, kw_only=True)
class Elementwise(Op):
    """A pointwise function of its operands, broadcast by dimension name (add, mul, silu, rope...).

    ``fn`` names the function; the result's dims are the union of the operands' dims.
    """

    kind: ClassVar[str] = "elementwise"
    fn: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reduce(Op):
    """A reduction ``fn`` (sum, max, mean, softmax, rms_norm, topk...) over ``dims`` of its first operand.

    ``dims`` lists the reduced dimensions; normalising reductions (softmax, rms_norm) keep them in
    the result.
    """

    kind: ClassVar[str] = "reduce"
    fn: str
    dims: tuple[str, ...]

    def verify(self) -> None:
        Op.verify(self)
        missing = [d for d in self.dims if d not in self.operands[0].type.dims]
        if missing:
            raise VerificationError(f"reduce %{self.result.name}: reduced dims {missing} not in its operand")


@dataclass(frozen=True, slots=True, kw_only=True)
class Gather(Op):
    """Rows of ``operands[0]`` (a table) picked by the indices in ``operands[1]`` along ``dim``.

    Embedding lookup, KV-cache writes (``fn="scatter"``: the result is the updated table and
    only the index operand's rows are written) and MoE token dispatch.
    """

    kind: ClassVar[str] = "gather"
    dim: str
    fn: str = "gather"


@dataclass(frozen=True, slots=True, kw_only=True)
class Collective(Op):
    """A collective over mesh axis ``axis``: all_reduce, all_gather, reduce_scatter, all_to_all."""

    kind: ClassVar[str] = "collective"
    fn: str
    axis: str


OP_KINDS: dict[str, type[Op]] = {c.kind: c for c in (Einsum, Elementwise, Reduce, Gather, Collective)}

#: Functions a ``Collective`` may have (the cost model has a measured table for each).
COLLECTIVE_FNS: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")

#: Mesh axes: tp and dp (attention and dense layers), ep and etp (MoE experts) over the same GPUs.
MESH_AXES: tuple[str, ...] = ("tp", "dp", "ep", "etp")


def parse_mesh(text: str) -> dict[str, int]:
    """A graph's ``mesh`` attribute (``"tp=2,dp=1,ep=1,etp=2"``) as axis -> size; ``VerificationError``
    naming the bad part unless every part is ``axis=size`` with an axis of ``MESH_AXES``, each once,
    and a size >= 1.

    >>> parse_mesh("tp=2, dp=1")
    {'tp': 2, 'dp': 1}
    """
    mesh: dict[str, int] = {}
    for part in str(text).split(","):
        axis, eq, size = (x.strip() for x in part.partition("="))
        if (not eq or axis not in MESH_AXES or not (size.isascii() and size.isdigit()) or int(size) < 1
                or axis in mesh):
            raise VerificationError(f"mesh {text!r} is not 'axis=size,...' with axes in {', '.join(MESH_AXES)}, "
                                    f"each once, and sizes >= 1 (bad part {part!r})")
        mesh[axis] = int(size)
    return mesh


@dataclass(frozen=True, slots=True)
class Decl:
    """A value that enters a graph or a region: a weight, an activation input or a KV cache."""

    value: Value
    role: Literal["param", "input", "cache"]


@dataclass(frozen=True, slots=True)
class Repeat:
    """A region executed ``count`` times by reference (the decoder layers).

    Its ``decls`` (per-layer weights and caches) exist once per repetition; its ops may use values
    defined before the region. The value of ``carry`` (defined in the region) replaces ``init``
    (defined before it) at each repetition, and is visible after the region.
    """

    name: str
    count: int
    decls: tuple[Decl, ...]
    ops: tuple[Op, ...]
    init: str
    carry: str


@dataclass(frozen=True, slots=True)
class Graph:
    """A traced model phase: dimension table, declarations, a body of ops and regions, outputs."""

    name: str
    dims: tuple[tuple[str, DimSize], ...]
    decls: tuple[Decl, ...]
    body: tuple[Op | Repeat, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, str], ...] = ()

    @property
    def dim_sizes(self) -> dict[str, DimSize]:
        return dict(self.dims)

    def bind(self, **symbols: float) -> dict[str, float]:
        """Sizes of every dimension under a binding of the free symbols (``B=8, S=1, K=1024``). A
        dimension the graph fixes cannot be bound to another size (a hand-written ``B = 4`` would
        price batch 4 whatever the workload): ``VerificationError``."""
        binding: dict[str, float] = dict(symbols)
        for name, size in self.dims:
            if name not in binding or size is not None:
                value = eval_size(size, name, binding)
                if name in symbols and value != symbols[name]:
                    raise VerificationError(f"graph @{self.name} fixes {name} = {size}, but it is bound to "
                                            f"{symbols[name]:g}: leave {name} free ('{name} = ?') for the workload to set")
                binding[name] = value
        return binding

    def walk(self) -> Iterator[tuple[Op, int]]:
        """Every op with the number of times it runs (its region's count, or 1)."""
        for item in self.body:
            if isinstance(item, Repeat):
                for op in item.ops:
                    yield op, item.count
            else:
                yield item, 1

    def all_decls(self) -> Iterator[tuple[Decl, int]]:
        """Every declaration with the number of copies it has (its region's count, or 1)."""
        for d in self.decls:
            yield d, 1
        for item in self.body:
            if isinstance(item, Repeat):
                for d in item.decls:
                    yield d, item.count

    @property
    def attr(self) -> dict[str, str]:
        return dict(self.attrs)

    @property
    def has_experts(self) -> bool:
        """Whether the model routes tokens to experts (the frontend sets ``num_experts`` for MoE)."""
        return "num_experts" in self.attr
