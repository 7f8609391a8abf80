"""The IR verifier: the rules every graph that a frontend or a pass produces must keep.

``verify_graph(g)`` raises ``VerificationError`` naming the op (``einsum %x5 in repeat
@layers``) and the broken rule. Rules:

- dims: names are identifiers, declared once; a size is a positive int, ``None`` (a free symbol)
  or an expression ``a*b/c`` over integers and dims declared *before* it;
- each op's own ``verify()`` (einsum letters agree with shapes, reduced dims exist, ...), its
  operand count, a non-empty ``fn``/mesh axis, a non-negative stream, each dim sharded once;
- SSA: every value is defined once (declaration or op result), names are well formed, operands
  are used after their definition, with the type they were defined with; the values of a
  ``repeat`` region are visible after it only through its ``carry``; regions do not nest;
- every dimension an op or a declaration uses (types, sharding, reduced and gathered dims) is in
  ``g.dims``;
- ``repeat``: count >= 1, ``init`` defined before the region, ``carry`` defined in it, and both
  have the same type;
- collectives: ``fn`` is one of ``COLLECTIVE_FNS``, the axis (and every sharding's) one of
  ``MESH_AXES``; the graph's ``mesh`` attribute, if any, reads ``axis=size,...`` over those axes,
  and a collective's axis has size >= 2 in it (no mesh, or size 1: nothing to communicate, and the
  cost model would price it as free); one operand, and the result has its type (a collective moves
  data, it does not reshape or convert it); stream 0 (compute) or 1 (communication), and only a
  collective runs on stream 1;
- a fusion group is one launched kernel: no collective is in one, and none sits inside one (no op
  of a group depends, through a collective, on an op of the same group, directly or through other ops);
- elementwise: at least one operand; the result's dims are the union of the operands' dims (broadcast
  by name);
- reduce: at least one reduced dim, all of operand 0 (a second operand is a weight, as RMSNorm's);
  the result has only dims of operand 0 (``topk`` adds its k dim);
- gather: the gathered dim is a dim of the table (operand 0) or of the result (MoE dispatch);
- outputs exist (are visible at the end of the graph).

>>> from energylens.ir.text import EXAMPLE, parse_graph
>>> verify_graph(parse_graph(EXAMPLE))
"""

from __future__ import annotations

import re

from energylens.errors import VerificationError
from energylens.ir.core import (
    COLLECTIVE_FNS,
    MESH_AXES,
    Collective,
    Decl,
    DimSize,
    Elementwise,
    Gather,
    Graph,
    Op,
    Reduce,
    Repeat,
    TensorType,
    Value,
    parse_mesh,
)

__all__ = ["verify_graph", "verify_dims", "collective_inside_kernel", "KernelCollectives"]

_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_EXPR_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_ROLES = ("param", "input", "cache")
_MIN_OPERANDS = {"einsum": 1, "reduce": 1, "gather": 2, "collective": 1, "elementwise": 1}
_MAX_OPERANDS = {"collective": 1}


def _fmt(t: TensorType) -> str:
    return f"{t.dtype}[{','.join(t.dims)}]"


def verify_dims(dims: tuple[tuple[str, DimSize], ...], where: str = "graph") -> None:
    """Check a dimension table: identifier names declared once, well-formed sizes."""
    seen: set[str] = set()
    for name, size in dims:
        if not isinstance(name, str) or not _DIM_NAME.fullmatch(name):
            raise VerificationError(f"{where}: dimension name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
        if name in seen:
            raise VerificationError(f"{where}: dimension {name!r} is declared twice")
        if size is None:
            pass
        elif isinstance(size, bool) or not isinstance(size, int | str):
            raise VerificationError(f"{where}: dimension {name} = {size!r}: a size is an int, None or an expression")
        elif isinstance(size, int):
            if size <= 0:
                raise VerificationError(f"{where}: dimension {name} = {size}: an int size must be positive")
        else:
            tokens = re.split(r"([*/])", size)
            atoms = tokens[0::2]
            if size.isdigit() or not all(_EXPR_TOKEN.fullmatch(a) for a in atoms):
                raise VerificationError(
                    f"{where}: dimension {name} = {size!r} is not an expression like 'B*S' or 'B*S*8/128' "
                    "(integers and declared dims joined by * and /; write a fixed size as an int)")
            for a in atoms:
                if not a.isdigit() and a not in seen:
                    raise VerificationError(
                        f"{where}: dimension {name} = {size!r} uses {a!r}, which is not declared before it")
            for op_, a in zip(["*", *tokens[1::2]], atoms, strict=True):
                if a.isdigit() and int(a) == 0:
                    raise VerificationError(f"{where}: dimension {name} = {size!r} "
                                            + ("divides by zero" if op_ == "/" else "has a factor 0 (a size is positive)"))
        seen.add(name)


class _Verifier:
    def __init__(self, g: Graph):
        self.g = g
        self.dims = set(g.dim_sizes)
        self.visible: dict[str, TensorType] = {}   # values in scope
        self.defined: dict[str, str] = {}          # every value defined so far -> what defined it
        self.hidden: dict[str, str] = {}           # region values -> the region's name
        self.mesh: dict[str, int] = {}             # the graph's mesh attribute, axis -> size
        self.all_names = self._all_names()

    def _all_names(self) -> set[str]:
        names = {d.value.name for d in self.g.decls}
        for item in self.g.body:
            if isinstance(item, Repeat):
                names |= {d.value.name for d in item.decls}
                names |= {op.result.name for op in item.ops if isinstance(op, Op)}
            elif isinstance(item, Op):
                names.add(item.result.name)
        return names

    # -- helpers
    def check_type(self, t: TensorType, where: str) -> None:
        for d in t.dims:
            if d not in self.dims:
                raise VerificationError(f"{where}: dimension {d!r} is not in the graph's dims "
                                        f"({', '.join(self.g.dim_sizes)})")

    def define(self, v: Value, where: str) -> None:
        if not isinstance(v.name, str) or not _VALUE_NAME.fullmatch(v.name):
            raise VerificationError(f"{where}: value name {v.name!r} is not well formed ([A-Za-z_][A-Za-z0-9_.]*)")
        if v.name in self.defined:
            raise VerificationError(f"{where}: value %{v.name} is already defined by {self.defined[v.name]}")
        self.check_type(v.type, where)
        self.defined[v.name] = where
        self.visible[v.name] = v.type

    def lookup(self, name: str, where: str, what: str) -> TensorType:
        if name in self.visible:
            return self.visible[name]
        if name in self.hidden:
            raise VerificationError(f"{where}: {what} %{name} is defined inside repeat @{self.hidden[name]} "
                                    "and is visible after it only as the region's carry")
        if name in self.all_names:
            raise VerificationError(f"{where}: {what} %{name} is used before its definition")
        raise VerificationError(f"{where}: {what} %{name} is not defined")

    def decl(self, d: Decl, where: str) -> None:
        label = f"{d.role} %{d.value.name}{where}"
        if d.role not in _ROLES:
            raise VerificationError(f"{label}: unknown role {d.role!r}; valid: {', '.join(_ROLES)}")
        self.define(d.value, label)

    # -- ops
    def op(self, op: Op | Repeat, where: str) -> None:
        if isinstance(op, Repeat):
            raise VerificationError(f"repeat @{op.name}{where}: regions cannot nest")
        if not isinstance(op, Op):
            raise VerificationError(f"{type(op).__name__} {op!r}{where}: not an op")
        label = f"{op.kind} %{op.result.name}{where}"
        need = _MIN_OPERANDS.get(op.kind, 0)
        if len(op.operands) < need:
            raise VerificationError(f"{label}: needs at least {need} operand(s), has {len(op.operands)}")
        most = _MAX_OPERANDS.get(op.kind)
        if most is not None and len(op.operands) > most:
            raise VerificationError(f"{label}: takes {most} operand, has {len(op.operands)}")
        try:
            op.verify()
        except VerificationError as e:
            msg, prefix = str(e), f"{op.kind} %{op.result.name}"
            msg = prefix + where + msg[len(prefix):] if msg.startswith(prefix) else f"{label}: {msg}"
            raise VerificationError(msg) from None
        fn = getattr(op, "fn", None)
        if fn is not None and not fn:
            raise VerificationError(f"{label}: empty fn")
        if isinstance(op, Collective):
            if op.fn not in COLLECTIVE_FNS:
                raise VerificationError(f"{label}: unknown collective {op.fn!r}; valid: {', '.join(COLLECTIVE_FNS)}")
            if op.axis not in MESH_AXES:
                raise VerificationError(f"{label}: mesh axis {op.axis!r} is not one of {', '.join(MESH_AXES)}")
        if op.stream not in (0, 1) or not isinstance(op.stream, int) or isinstance(op.stream, bool):
            raise VerificationError(f"{label}: stream {op.stream!r} must be 0 (compute) or 1 (communication)")
        if op.stream == 1 and not isinstance(op, Collective):
            raise VerificationError(f"{label}: stream 1 is the communication stream; only a collective runs on it")
        sharded = [d for d, _ in op.sharding]
        if len(set(sharded)) != len(sharded):
            raise VerificationError(f"{label}: a dimension is sharded twice in {op.sharding}")
        for dim, axis in op.sharding:
            if axis not in MESH_AXES:
                raise VerificationError(f"{label}: dimension {dim!r} is sharded over {axis!r}, not a mesh axis "
                                        f"({', '.join(MESH_AXES)})")
        self.fusion(op, label)
        if isinstance(op, Collective):
            self.collective(op, label)
        for i, v in enumerate(op.operands):
            t = self.lookup(v.name, label, f"operand {i}")
            if t != v.type:
                raise VerificationError(f"{label}: operand %{v.name} has type {_fmt(v.type)} here but was "
                                        f"defined as {_fmt(t)}")
        used = list(sharded)
        if isinstance(op, Reduce):
            used += op.dims
        if isinstance(op, Gather):
            used.append(op.dim)
        for d in used:
            if d not in self.dims:
                raise VerificationError(f"{label}: dimension {d!r} is not in the graph's dims "
                                        f"({', '.join(self.g.dim_sizes)})")
        if isinstance(op, Elementwise) and op.operands:
            union = {d for v in op.operands for d in v.type.dims}
            rdims = op.result.type.dims
            if set(rdims) != union or len(set(rdims)) != len(rdims):
                raise VerificationError(f"{label}: result dims {list(rdims)} are not the union of the operand "
                                        f"dims {sorted(union)} (elementwise ops broadcast by name)")
        if isinstance(op, Gather) and op.dim not in (*op.operands[0].type.dims, *op.result.type.dims):
            # embedding/scatter/combine pick along a dim of the table; MoE dispatch builds one (e)
            raise VerificationError(f"{label}: gathered dim {op.dim!r} is neither a dim of the table "
                                    f"%{op.operands[0].name} {_fmt(op.operands[0].type)} nor of the result")
        self.define(op.result, label)
        if isinstance(op, Reduce):
            if not op.dims:
                raise VerificationError(f"{label}: reduces no dim (give the dims it reduces)")
            extra = [d for d in op.result.type.dims if d not in op.operands[0].type.dims]
            if len(extra) > (op.fn == "topk"):
                raise VerificationError(f"{label}: result dims {extra} are not dims of its operand "
                                        f"%{op.operands[0].name} {_fmt(op.operands[0].type)} (only topk adds one, its k)")

    def collective(self, op: Collective, label: str) -> None:
        """A collective spans 2+ GPUs of the graph's mesh and keeps its operand's type."""
        if self.mesh.get(op.axis, 1) < 2:
            mesh = self.g.attr.get("mesh")
            have = "no mesh attribute" if mesh is None else f"mesh {mesh!r}"
            raise VerificationError(f"{label}: a collective over {op.axis!r} needs the graph's mesh to split "
                                    f"{op.axis!r} over 2 or more GPUs ({have}; the shard pass writes it)")
        if op.result.type != op.operands[0].type:
            raise VerificationError(f"{label}: result type {_fmt(op.result.type)} differs from its operand's "
                                    f"{_fmt(op.operands[0].type)} (a collective keeps the type)")

    def fusion(self, op: Op, label: str) -> None:
        """A fusion group is one kernel: no collective in it."""
        if isinstance(op, Collective) and op.fusion_group is not None:
            raise VerificationError(f"{label}: a collective cannot be part of fusion group {op.fusion_group} (a "
                                    "kernel does not wait for communication inside it)")

    def repeat(self, r: Repeat) -> None:
        label = f"repeat @{r.name}"
        if isinstance(r.count, bool) or not isinstance(r.count, int) or r.count < 1:
            raise VerificationError(f"{label}: count {r.count!r} must be an int >= 1")
        init_t = self.lookup(r.init, label, "init")
        before = set(self.visible)
        where = f" in {label}"
        for d in r.decls:
            self.decl(d, where)
        for op in r.ops:
            self.op(op, where)
        inside = set(self.visible) - before
        if r.carry not in inside:
            raise VerificationError(f"{label}: carry %{r.carry} is not defined in the region")
        carry_t = self.visible[r.carry]
        if carry_t != init_t:
            raise VerificationError(f"{label}: carry %{r.carry} has type {_fmt(carry_t)} but init %{r.init} has "
                                    f"type {_fmt(init_t)}; they must be equal (the carry replaces the init)")
        for name in inside - {r.carry}:
            del self.visible[name]
            self.hidden[name] = r.name

    def run(self) -> None:
        g = self.g
        verify_dims(g.dims, f"graph @{g.name}")
        keys = [k for k, _ in g.attrs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:  # the text form could not say it (its parser refuses a key given twice)
            raise VerificationError(f"graph @{g.name}: attribute(s) {', '.join(map(repr, twice))} given more than once; "
                                    "replace an attribute's value rather than adding the key again")
        mesh = g.attr.get("mesh")
        if mesh is not None:
            try:
                self.mesh = parse_mesh(mesh)
            except VerificationError as exc:
                raise VerificationError(f"graph @{g.name}: {exc}") from None
        for d in g.decls:
            self.decl(d, "")
        for item in g.body:
            if isinstance(item, Repeat):
                self.repeat(item)
            else:
                self.op(item, "")
        inside = collective_inside_kernel(g)
        if inside:
            raise VerificationError(inside)
        if not g.outputs:
            raise VerificationError(f"graph @{g.name}: has no outputs")
        for name in g.outputs:
            self.lookup(name, f"graph @{g.name}", "output")


class KernelCollectives:
    """Follows ops in program order and tells whether a collective would run inside a fused kernel:
    an op of a fusion group that depends, through a collective, on an op of the same group, directly
    (as ``shard`` after ``fuse`` makes) or through ops outside the group. A group is one block's (the
    graph's top level, or one ``repeat`` region: ``block``), whatever numbering the ids follow.
    ``collective_inside_kernel`` and the random-graph generator share it."""

    def __init__(self) -> None:
        self._groups: dict[str, frozenset[tuple[object, int]]] = {}   # value -> (block, group) it depends on
        self._through: dict[str, dict[tuple[object, int], str]] = {}  # value -> (block, group) -> a collective

    def _inputs(self, op: Op) -> tuple[frozenset[tuple[object, int]], dict[tuple[object, int], str]]:
        groups: frozenset[tuple[object, int]] = frozenset()
        through: dict[tuple[object, int], str] = {}
        for v in op.operands:
            groups |= self._groups.get(v.name, frozenset())
            for g, name in self._through.get(v.name, {}).items():
                through.setdefault(g, name)
        return groups, through

    def inside(self, op: Op, block: object = None) -> str | None:
        """The collective that ``op``'s kernel would wait for inside it, or None."""
        if isinstance(op, Collective) or op.fusion_group is None:
            return None
        return self._inputs(op)[1].get((block, op.fusion_group))

    def add(self, op: Op, block: object = None) -> None:
        groups, through = self._inputs(op)
        if isinstance(op, Collective):
            for g in groups:
                through.setdefault(g, op.result.name)
        elif op.fusion_group is not None:
            groups |= {(block, op.fusion_group)}
        self._groups[op.result.name] = groups
        self._through[op.result.name] = through


def collective_inside_kernel(g: Graph) -> str | None:
    """Why a collective of ``g`` runs inside a fused kernel (``KernelCollectives``), or None."""
    kernels = KernelCollectives()
    for i, item in enumerate(g.body):
        region = item.ops if isinstance(item, Repeat) else (item,)
        where = f" in repeat @{item.name}" if isinstance(item, Repeat) else ""
        block = i if isinstance(item, Repeat) else None
        for op in region:
            v = kernels.inside(op, block)
            if v is not None:
                return (f"{op.kind} %{op.result.name}{where}: depends on collective %{v}, which depends on an "
                        f"op of its own fusion group {op.fusion_group}: the collective would run inside that "
                        "kernel (shard before fuse)")
            kernels.add(op, block)
    return None


def verify_graph(g: Graph) -> None:
    """Raise ``VerificationError`` (naming the op and the rule) if ``g`` breaks an IR rule.

    >>> from energylens.ir.text import EXAMPLE, parse_graph
    >>> verify_graph(parse_graph(EXAMPLE)) is None
    True
    """
    _Verifier(g).run()
