"""The IR's text form: an MLIR-like syntax that round-trips exactly.

``parse_graph(print_graph(g)) == g`` for every graph, and ``print_graph(parse_graph(s)) == s``
for every text the printer writes (its canonical form). Golden files of pass tests are written
in it, so a reader learns a pass from them::

    graph @tiny_llama attributes {model = "meta-llama/Llama-3.1-8B-Instruct", phase = "decode"} {
      dims {B = ?, S = ?, K = ?, T = B*S, h = 64, v = 128, f = 128}
      input %input_ids : i64[B,S]
      param %model.embed_tokens.weight : bf16[v,h]
      %x0 = gather[v] %model.embed_tokens.weight, %input_ids : bf16[B,S,h]  {aten = "aten.embedding"}
      repeat @layers x2 (%x0 -> %x3) {
        param %model.layers.mlp.up_proj.weight : bf16[h,f]
        param %model.layers.mlp.down_proj.weight : bf16[f,h]
        %x1 = einsum "bsh,hf->bsf" %x0, %model.layers.mlp.up_proj.weight : bf16[B,S,f]  {shard = {f = tp}}
        %x2 = einsum "bsf,fh->bsh" %x1, %model.layers.mlp.down_proj.weight : bf16[B,S,h]
        %x3 = elementwise.add %x0, %x2 : bf16[B,S,h]  {fusion = 1}
      }
      return %x3
    }

Grammar (whitespace is free, ``// ...`` is a comment; a NAME is bare when it matches
``[A-Za-z_][A-Za-z0-9_.]*`` and a JSON-quoted string otherwise)::

    graph    := "graph" "@"NAME ["attributes" "{" NAME "=" STRING, ... "}"] "{"
                  ["dims" "{" NAME "=" size, ... "}"]  decl*  (op | repeat)*  "return" [value, ...]
                "}"
    size     := INT | "?" | atom (("*" | "/") atom)* | STRING      atom := identifier | INT
    decl     := ("param" | "input" | "cache") value ":" type
    type     := DTYPE "[" [NAME, ...] "]"                          e.g. bf16[B,S,h], f32[]
    repeat   := "repeat" "@"NAME "x"COUNT "(" value "->" value ")" "{" decl* op* "}"
    op       := value "=" head [value, ...] ":" type [attrs]
    head     := "einsum" STRING                                    the spec, "bsh,hf->bsf"
              | "elementwise." FN                                  elementwise.add
              | "reduce." FN "[" [NAME, ...] "]"                   reduce.softmax[K]
              | "gather" ["." FN] "[" NAME "]"                     gather[v], gather.scatter[K]
              | "collective." FN "[" NAME "]"                      collective.all_reduce[tp]
    attrs    := "{" attr, ... "}" in this order, each only when not the default:
                causal = true | shard = {DIM = AXIS, ...} | fusion = INT | stream = INT
                | sm = NUMBER | aten = STRING | module = STRING
    value    := "%"NAME

Operand types are not repeated at each use: they come from the value's declaration or
definition. The values defined inside a ``repeat`` region are visible after it only through its
carry. Parse errors raise ``ParseError`` with the line and column and what was expected.

>>> g = parse_graph(print_graph(parse_graph(EXAMPLE)))
>>> print_graph(g) == EXAMPLE
True
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from energylens.errors import ParseError
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

__all__ = ["print_graph", "print_op", "print_type", "parse_graph", "EXAMPLE"]

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_ATOM = r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)"
_RAW_EXPR = re.compile(rf"{_ATOM}(?:[*/]{_ATOM})*")
_INT = re.compile(r"-?[0-9]+")
_INDENT = "  "


# ---------------------------------------------------------------------------------------------
# Printer


def _str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _name(s: str) -> str:
    """A name, bare when it is an identifier (dots allowed), else quoted."""
    return s if _BARE.fullmatch(s) else _str(s)


def _value(name: str) -> str:
    return "%" + _name(name)


def print_type(t: TensorType) -> str:
    """``bf16[B,S,h]``."""
    return f"{t.dtype}[{','.join(_name(d) for d in t.dims)}]"


def _size(size: DimSize) -> str:
    if size is None:
        return "?"
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise TypeError(f"dimension size {size!r} is not an int, a str or None")
    if isinstance(size, int):
        return str(size)
    # A raw expression must not read back as an int: "64" stays quoted.
    if _RAW_EXPR.fullmatch(size) and not size.isdigit():
        return size
    return _str(size)


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) and not isinstance(x, bool) else repr(float(x))


def _head(kind: str, fn: str) -> str:
    return f"{kind}.{fn}" if _BARE.fullmatch(fn) else f"{kind}.{_str(fn)}"


def _op_head(op: Op) -> str:
    if isinstance(op, Einsum):
        return f"einsum {_str(op.spec)}"
    if isinstance(op, Elementwise):
        return _head("elementwise", op.fn)
    if isinstance(op, Reduce):
        return f"{_head('reduce', op.fn)}[{','.join(_name(d) for d in op.dims)}]"
    if isinstance(op, Gather):
        head = "gather" if op.fn == "gather" else _head("gather", op.fn)
        return f"{head}[{_name(op.dim)}]"
    if isinstance(op, Collective):
        return f"{_head('collective', op.fn)}[{_name(op.axis)}]"
    raise TypeError(f"cannot print op of type {type(op).__name__}; known: einsum, elementwise, reduce, "
                    "gather, collective")


def _op_attrs(op: Op) -> str:
    parts: list[str] = []
    if isinstance(op, Einsum) and op.causal:
        parts.append("causal = true")
    if op.sharding:
        parts.append("shard = {" + ", ".join(f"{_name(d)} = {_name(a)}" for d, a in op.sharding) + "}")
    if op.fusion_group is not None:
        parts.append(f"fusion = {op.fusion_group}")
    if op.stream != 0:
        parts.append(f"stream = {op.stream}")
    if op.sm_share is not None:
        parts.append(f"sm = {_number(op.sm_share)}")
    if op.source.aten:
        parts.append(f"aten = {_str(op.source.aten)}")
    if op.source.module:
        parts.append(f"module = {_str(op.source.module)}")
    return "  {" + ", ".join(parts) + "}" if parts else ""


def print_op(op: Op) -> str:
    """One op on one line, as in the graph text (without indentation).

    >>> x = Value("x", TensorType(("B", "h"), "bf16"))
    >>> print_op(Elementwise(result=Value("y", x.type), operands=(x,), fn="silu", fusion_group=2))
    '%y = elementwise.silu %x : bf16[B,h]  {fusion = 2}'
    """
    operands = ", ".join(_value(v.name) for v in op.operands)
    head = f"{_value(op.result.name)} = {_op_head(op)}"
    if operands:
        head += " " + operands
    return f"{head} : {print_type(op.result.type)}{_op_attrs(op)}"


def _print_decl(d: Decl) -> str:
    return f"{d.role} {_value(d.value.name)} : {print_type(d.value.type)}"


def print_graph(g: Graph) -> str:
    """The text form of ``g`` (ends with a newline); ``parse_graph`` reads it back exactly."""
    attrs = ""
    if g.attrs:
        attrs = " attributes {" + ", ".join(f"{_name(k)} = {_str(v)}" for k, v in g.attrs) + "}"
    lines = [f"graph @{_name(g.name)}{attrs} {{"]
    if g.dims:
        lines.append(_INDENT + "dims {" + ", ".join(f"{_name(n)} = {_size(s)}" for n, s in g.dims) + "}")
    lines += [_INDENT + _print_decl(d) for d in g.decls]
    for item in g.body:
        if isinstance(item, Repeat):
            lines.append(f"{_INDENT}repeat @{_name(item.name)} x{item.count} "
                         f"({_value(item.init)} -> {_value(item.carry)}) {{")
            lines += [_INDENT * 2 + _print_decl(d) for d in item.decls]
            lines += [_INDENT * 2 + print_op(op) for op in item.ops]
            lines.append(_INDENT + "}")
        else:
            lines.append(_INDENT + print_op(item))
    ret = ", ".join(_value(o) for o in g.outputs)
    lines.append(_INDENT + ("return " + ret if ret else "return"))
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Lexer

_QUOTED = r'"(?:[^"\\\n]|\\.)*"'
_TOKEN = re.compile(
    rf"""
    (?P<ws>[ \t\r\n]+|//[^\n]*)
  | (?P<string>{_QUOTED})
  | (?P<value>%(?:[A-Za-z_][A-Za-z0-9_.]*|{_QUOTED}))
  | (?P<symbol>@(?:[A-Za-z_][A-Za-z0-9_.]*|{_QUOTED}))
  | (?P<arrow>->)
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{{}}()\[\],=:*/?])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # string, value, symbol, arrow, number, ident, punct, eof
    text: str
    line: int
    col: int

    def describe(self) -> str:
        return "end of input" if self.kind == "eof" else repr(self.text)


def _error(line: int, col: int, message: str) -> ParseError:
    err = ParseError(f"line {line}, column {col}: {message}")
    err.line, err.column = line, col  # type: ignore[attr-defined]
    return err


def _unquote(text: str, line: int, col: int) -> str:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _error(line, col, f"bad string {text}: {e.msg}") from None


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            ch = text[pos]
            if ch == '"' or text[pos:pos + 2] in ('%"', '@"'):
                raise _error(line, col, "unterminated string (strings end with '\"' on the same line)")
            raise _error(line, col, f"unexpected character {ch!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            toks.append(_Tok(kind, m.group(), line, col))
        newlines = m.group().count("\n")
        if newlines:
            line += newlines
            line_start = m.start() + m.group().rfind("\n") + 1
        pos = m.end()
    toks.append(_Tok("eof", "", line, pos - line_start + 1))
    return toks


# ---------------------------------------------------------------------------------------------
# Parser

_ROLES = ("param", "input", "cache")
_OP_KEYWORDS = ("einsum", "elementwise", "reduce", "gather", "collective")


class _Parser:
    def __init__(self, text: str):
        self.toks = _lex(text)
        self.i = 0
        self.types: dict[str, TensorType] = {}       # values visible now
        self.defined_at: dict[str, int] = {}          # every value defined so far -> line
        self.hidden: dict[str, str] = {}              # region value -> its repeat's name

    # -- token helpers
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, expected: str, tok: _Tok | None = None) -> ParseError:
        tok = tok or self.tok
        return _error(tok.line, tok.col, f"expected {expected}, found {tok.describe()}")

    def next(self) -> _Tok:
        tok = self.tok
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at(self, text: str) -> bool:
        return self.tok.kind in ("punct", "arrow", "ident") and self.tok.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str | None = None) -> _Tok:
        if not self.at(text):
            raise self.fail(what or repr(text))
        return self.next()

    def name(self, what: str) -> str:
        tok = self.tok
        if tok.kind == "ident":
            return self.next().text
        if tok.kind == "string":
            self.next()
            return _unquote(tok.text, tok.line, tok.col)
        raise self.fail(what)

    def string(self, what: str) -> str:
        tok = self.tok
        if tok.kind != "string":
            raise self.fail(what)
        self.next()
        return _unquote(tok.text, tok.line, tok.col)

    def prefixed(self, kind: str, what: str) -> str:
        tok = self.tok
        if tok.kind != kind:
            raise self.fail(what)
        self.next()
        body = tok.text[1:]
        return _unquote(body, tok.line, tok.col + 1) if body.startswith('"') else body

    def integer(self, what: str) -> int:
        tok = self.tok
        if tok.kind != "number" or not _INT.fullmatch(tok.text):
            raise self.fail(what)
        self.next()
        return int(tok.text)

    def number(self, what: str) -> float:
        tok = self.tok
        if tok.kind != "number":
            raise self.fail(what)
        self.next()
        return int(tok.text) if _INT.fullmatch(tok.text) else float(tok.text)

    def names(self, close: str, what: str) -> tuple[str, ...]:
        """NAME, ... up to and including ``close``."""
        out: list[str] = []
        if self.accept(close):
            return ()
        while True:
            out.append(self.name(what))
            if self.accept(close):
                return tuple(out)
            self.expect(",", f"',' or {close!r}")

    # -- values and scopes
    def define(self, value: str, t: TensorType, tok: _Tok) -> Value:
        if value in self.defined_at:
            raise _error(tok.line, tok.col,
                         f"value %{value} is already defined on line {self.defined_at[value]}")
        self.defined_at[value] = tok.line
        self.types[value] = t
        return Value(value, t)

    def use(self) -> Value:
        tok = self.tok
        name = self.prefixed("value", "a value ('%name')")
        if name in self.types:
            return Value(name, self.types[name])
        if name in self.hidden:
            raise _error(tok.line, tok.col, f"value %{name} is defined inside repeat @{self.hidden[name]}; "
                         "after the region only its carry is visible")
        raise _error(tok.line, tok.col, f"undefined value %{name} (values are declared or defined before use)")

    # -- grammar
    def type(self) -> TensorType:
        tok = self.tok
        if tok.kind != "ident" or tok.text not in DTYPE_BYTES:
            raise self.fail(f"a dtype ({', '.join(DTYPE_BYTES)})")
        self.next()
        self.expect("[", "'[' after the dtype")
        return TensorType(self.names("]", "a dimension name"), tok.text)

    def size(self) -> DimSize:
        tok = self.tok
        if self.accept("?"):
            return None
        if tok.kind == "string":
            return self.string("a size")
        if tok.kind == "number" and not self._at_operator(1):
            return self.integer("an integer size")
        parts: list[str] = []
        while True:
            atom = self.tok
            if atom.kind == "ident" and "." not in atom.text:
                parts.append(self.next().text)
            elif atom.kind == "number" and atom.text.isdigit():
                parts.append(self.next().text)
            else:
                raise self.fail("a size: an integer, '?', or a product/quotient of dims and integers")
            if self.at("*") or self.at("/"):
                parts.append(self.next().text)
            else:
                return "".join(parts)

    def _at_operator(self, ahead: int) -> bool:
        tok = self.toks[min(self.i + ahead, len(self.toks) - 1)]
        return tok.kind == "punct" and tok.text in "*/"

    def decl(self) -> Decl:
        role = self.next().text
        tok = self.tok
        name = self.prefixed("value", f"a value name after {role!r} ('%name')")
        self.expect(":", "':' before the type")
        return Decl(self.define(name, self.type(), tok), role)  # type: ignore[arg-type]

    def head(self) -> tuple[str, str | None]:
        """(kind, fn) from ``kind`` or ``kind.fn`` or ``kind."fn"``."""
        tok = self.tok
        if tok.kind != "ident" or tok.text.partition(".")[0] not in _OP_KEYWORDS:
            raise self.fail(f"an op ({', '.join(_OP_KEYWORDS)})")
        self.next()
        kind, dot, fn = tok.text.partition(".")
        if not dot:
            return kind, None
        if not fn:
            fn = self.string(f"a function name after '{kind}.'")
        return kind, fn

    def op(self) -> Op:
        tok = self.tok
        name = self.prefixed("value", "an op ('%name = ...'), a declaration or '}'")
        self.expect("=", "'=' after the result name")
        head_tok = self.tok
        kind, fn = self.head()
        if kind == "einsum" and fn is not None:
            raise _error(head_tok.line, head_tok.col, f"expected 'einsum \"<spec>\"', found {head_tok.text!r}")
        if kind in ("elementwise", "reduce", "collective") and fn is None:
            raise _error(head_tok.line, head_tok.col,
                         f"expected '{kind}.<fn>' (e.g. elementwise.add, reduce.sum[h], "
                         f"collective.all_reduce[tp]), found {head_tok.text!r}")
        fields: dict[str, object] = {}
        if kind == "einsum":
            fields["spec"] = self.string('an einsum spec ("bsh,hf->bsf")')
        elif kind == "reduce":
            self.expect("[", f"'[' and the reduced dims after 'reduce.{fn}'")
            fields["dims"] = self.names("]", "a dimension name")
        elif kind == "gather":
            self.expect("[", "'[' and the gathered dim")
            fields["dim"] = self.name("a dimension name")
            self.expect("]", "']'")
        elif kind == "collective":
            self.expect("[", f"'[' and the mesh axis after 'collective.{fn}'")
            fields["axis"] = self.name("a mesh axis name")
            self.expect("]", "']'")
        if fn is not None:
            fields["fn"] = fn
        operands: list[Value] = []
        if self.tok.kind == "value":
            operands.append(self.use())
            while self.accept(","):
                operands.append(self.use())
        self.expect(":", "',' or ':' before the result type")
        rtype = self.type()
        if self.at("{"):
            self.attrs(kind, fields)
        result = self.define(name, rtype, tok)
        cls = {"einsum": Einsum, "elementwise": Elementwise, "reduce": Reduce, "gather": Gather,
               "collective": Collective}[kind]
        return cls(result=result, operands=tuple(operands), **fields)  # type: ignore[arg-type]

    def attrs(self, kind: str, fields: dict[str, object]) -> None:
        self.expect("{")
        aten = module = ""
        keys = ("causal", "shard", "fusion", "stream", "sm", "aten", "module")
        seen: set[str] = set()
        while True:
            tok = self.tok
            key = self.name("an attribute (" + ", ".join(keys) + ")")
            if key not in keys or (key == "causal" and kind != "einsum"):
                valid = keys if kind == "einsum" else keys[1:]
                raise _error(tok.line, tok.col, f"unknown op attribute {key!r}; valid: {', '.join(valid)}")
            if key in seen:
                raise _error(tok.line, tok.col, f"op attribute {key!r} is given twice")
            seen.add(key)
            self.expect("=", f"'=' after {key!r}")
            if key == "causal":
                flag = self.tok
                if not (self.accept("true") or self.accept("false")):
                    raise self.fail("true or false")
                fields["causal"] = flag.text == "true"
            elif key == "shard":
                self.expect("{", "'{' and dim = axis pairs")
                pairs: list[tuple[str, str]] = []
                while not self.accept("}"):
                    if pairs:
                        self.expect(",", "',' or '}'")
                    dim = self.name("a dimension name")
                    self.expect("=", "'=' after the dimension")
                    pairs.append((dim, self.name("a mesh axis name")))
                fields["sharding"] = tuple(pairs)
            elif key == "fusion":
                fields["fusion_group"] = self.integer("an integer fusion group")
            elif key == "stream":
                fields["stream"] = self.integer("an integer stream")
            elif key == "sm":
                fields["sm_share"] = self.number("a number (the SM share)")
            elif key == "aten":
                aten = self.string("a quoted aten op name")
            else:
                module = self.string("a quoted module path")
            if self.accept("}"):
                break
            self.expect(",", "',' or '}'")
        if aten or module:
            fields["source"] = Source(aten, module)

    def repeat(self) -> Repeat:
        self.expect("repeat")
        name = self.prefixed("symbol", "a region name ('@layers')")
        tok = self.tok
        if tok.kind != "ident" or not re.fullmatch(r"x[0-9]+", tok.text):
            raise self.fail("a repeat count ('x32')")
        self.next()
        self.expect("(", "'(' and the init and carry values ('(%x0 -> %x9)')")
        init = self.prefixed("value", "the init value ('%name')")
        self.expect("->", "'->' between the init and carry values")
        carry = self.prefixed("value", "the carry value ('%name')")
        self.expect(")", "')'")
        self.expect("{", "'{' opening the region")
        before = set(self.types)
        decls: list[Decl] = []
        while self.tok.kind == "ident" and self.tok.text in _ROLES:
            decls.append(self.decl())
        ops: list[Op] = []
        while not self.accept("}"):
            if self.tok.kind == "ident" and self.tok.text in _ROLES:
                raise self.fail("an op or '}' (declarations come before the ops)")
            ops.append(self.op())
        for v in set(self.types) - before:
            if v != carry:
                del self.types[v]
                self.hidden[v] = name
        return Repeat(name, int(tok.text[1:]), tuple(decls), tuple(ops), init, carry)

    def graph(self) -> Graph:
        self.expect("graph", "'graph'")
        name = self.prefixed("symbol", "the graph name ('@name')")
        attrs: list[tuple[str, str]] = []
        if self.accept("attributes"):
            self.expect("{", "'{'")
            while not self.accept("}"):
                if attrs:
                    self.expect(",", "',' or '}'")
                tok = self.tok
                key = self.name("an attribute name")
                if any(k == key for k, _ in attrs):
                    raise _error(tok.line, tok.col, f"graph attribute {key!r} is given twice")
                self.expect("=", "'='")
                attrs.append((key, self.string("a quoted attribute value")))
        self.expect("{", "'{' opening the graph body (or 'attributes')")
        dims: list[tuple[str, DimSize]] = []
        if self.accept("dims"):
            self.expect("{", "'{'")
            while not self.accept("}"):
                if dims:
                    self.expect(",", "',' or '}'")
                dim = self.name("a dimension name")
                self.expect("=", "'=' after the dimension name")
                dims.append((dim, self.size()))
        decls: list[Decl] = []
        while self.tok.kind == "ident" and self.tok.text in _ROLES:
            decls.append(self.decl())
        body: list[Op | Repeat] = []
        while not self.at("return"):
            if self.at("repeat"):
                body.append(self.repeat())
            elif self.tok.kind == "ident" and self.tok.text in _ROLES:
                raise self.fail("an op, 'repeat' or 'return' (declarations come before the ops)")
            elif self.tok.kind == "value":
                body.append(self.op())
            else:
                raise self.fail("an op ('%name = ...'), 'repeat' or 'return'")
        self.expect("return")
        outputs: list[str] = []
        if self.tok.kind == "value":
            outputs.append(self.use().name)
            while self.accept(","):
                outputs.append(self.use().name)
        self.expect("}", "',' or '}' closing the graph")
        if self.tok.kind != "eof":
            raise self.fail("end of input after the graph")
        return Graph(name, tuple(dims), tuple(decls), tuple(body), tuple(outputs), tuple(attrs))


def parse_graph(text: str) -> Graph:
    """Read a graph from its text form (see the module docstring for the grammar).

    Raises ``ParseError`` with the line and column and what was expected. Parsing does not
    verify; call ``energylens.ir.verify.verify_graph`` on the result.

    >>> parse_graph(EXAMPLE).name
    'tiny_mlp'
    """
    return _Parser(text).graph()


#: A small example graph in canonical text form (used by the docstrings and the tests).
EXAMPLE = """\
graph @tiny_mlp attributes {model = "meta-llama/Llama-3.1-8B-Instruct", phase = "decode"} {
  dims {B = ?, S = ?, T = B*S, h = 64, f = 128}
  input %x : bf16[B,S,h]
  repeat @layers x2 (%x -> %x3) {
    param %model.layers.mlp.up_proj.weight : bf16[h,f]
    param %model.layers.mlp.down_proj.weight : bf16[f,h]
    %x1 = einsum "bsh,hf->bsf" %x, %model.layers.mlp.up_proj.weight : bf16[B,S,f]  {shard = {f = tp}}
    %x2 = einsum "bsf,fh->bsh" %x1, %model.layers.mlp.down_proj.weight : bf16[B,S,h]  {shard = {f = tp}}
    %x3 = elementwise.add %x, %x2 : bf16[B,S,h]  {fusion = 1, aten = "aten.add.Tensor"}
  }
  return %x3
}
"""
