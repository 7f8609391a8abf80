"""The IR text form: exact round trips both ways, parse errors with line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from energylens.errors import ParseError
from energylens.ir.core import (
    DTYPE_BYTES,
    Collective,
    Decl,
    Einsum,
    Elementwise,
    Gather,
    Graph,
    Reduce,
    Repeat,
    Source,
    TensorType,
    Value,
)
from energylens.ir.text import EXAMPLE, parse_graph, print_graph, print_op, print_type
from energylens.ir.verify import verify_graph
from energylens.testing import graphs, random_graph

GOLDEN = Path(__file__).parent / "golden"


def _round_trip(g: Graph) -> str:
    text = print_graph(g)
    back = parse_graph(text)
    assert back == g
    assert print_graph(back) == text
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_round_trip_random_graphs(g: Graph) -> None:
    verify_graph(g)
    _round_trip(g)
    verify_graph(parse_graph(print_graph(g)))


@pytest.mark.parametrize("seed", range(40))
def test_round_trip_seeded(seed: int) -> None:
    g = random_graph(seed)
    verify_graph(g)
    _round_trip(g)


def test_random_graphs_cover_every_op_kind_and_field() -> None:
    kinds: set[str] = set()
    fields: set[str] = set()
    for seed in range(60):
        g = random_graph(seed)
        if any(isinstance(item, Repeat) for item in g.body):
            kinds.add("repeat")
        for op, _ in g.walk():
            kinds.add(op.kind)
            fields |= {name for name in ("sharding", "fusion_group", "sm_share") if getattr(op, name)}
            fields |= {"stream"} if op.stream else set()
            fields |= {"causal"} if isinstance(op, Einsum) and op.causal else set()
            fields |= {"scatter"} if isinstance(op, Gather) and op.fn == "scatter" else set()
    assert kinds == {"einsum", "elementwise", "reduce", "gather", "collective", "repeat"}
    assert fields == {"sharding", "fusion_group", "sm_share", "stream", "causal", "scatter"}


def test_hand_written_file_round_trips() -> None:
    text = (GOLDEN / "tiny_llama_decode.eir").read_text(encoding="utf-8")
    g = parse_graph(text)
    verify_graph(g)
    assert print_graph(g) == text
    assert parse_graph(print_graph(g)) == g
    assert g.attr == {"model": "meta-llama/Llama-3.1-8B-Instruct", "phase": "decode", "mesh": "tp=2,dp=1,ep=1,etp=2"}
    (layers,) = [item for item in g.body if isinstance(item, Repeat)]
    assert (layers.name, layers.count, layers.init, layers.carry) == ("layers", 2, "x0", "x22")
    assert [d.role for d in layers.decls][-2:] == ["cache", "cache"]
    # operand types come from the definitions
    ar = layers.ops[12]
    assert isinstance(ar, Collective) and ar.operands[0].type == TensorType(("B", "S", "h"), "bf16")
    assert ar.stream == 1 and ar.sm_share == 0.125
    assert g.bind(B=2, S=1, K=8)["T"] == 2


def test_example_round_trips() -> None:
    g = parse_graph(EXAMPLE)
    verify_graph(g)
    assert print_graph(g) == EXAMPLE


def test_comments_and_free_layout_parse() -> None:
    text = EXAMPLE.replace("{\n", "{ // opening\n").replace("  return", "\n\n  // the end\n  return")
    assert parse_graph(text) == parse_graph(EXAMPLE)
    squeezed = " ".join(EXAMPLE.split())
    assert parse_graph(squeezed) == parse_graph(EXAMPLE)


def _one_op_graph(op, decls, dims=None) -> Graph:  # type: ignore[no-untyped-def]
    dims = dims or (("B", None), ("h", 4), ("f", 8))
    return Graph("g", dims, tuple(decls), (op,), (op.result.name,))


X = Value("x", TensorType(("B", "h"), "bf16"))
W = Value("w", TensorType(("h", "f"), "bf16"))


def test_every_field_and_dtype() -> None:
    for dtype in DTYPE_BYTES:
        y = Value("y", TensorType(("B", "f"), dtype))
        op = Einsum(result=y, operands=(X, W), spec="bh,hf->bf", causal=True, sharding=(("f", "tp"), ("B", "dp")),
                    fusion_group=0, stream=2, sm_share=1e-05, source=Source("aten.mm", "model.mlp"))
        g = _one_op_graph(op, [Decl(X, "input"), Decl(W, "param")])
        text = _round_trip(g)
        assert f"{dtype}[B,f]" in text
        assert "causal = true, shard = {f = tp, B = dp}, fusion = 0, stream = 2, sm = 1e-05" in text


@pytest.mark.parametrize("size, printed", [
    (4, "4"), (None, "?"), ("B*h", "B*h"), ("B*h*8/128", "B*h*8/128"), ("8*B", "8*B"), ("64", '"64"'),
    ("B + h", '"B + h"'), ("B.x", '"B.x"'),
])
def test_dim_sizes(size: object, printed: str) -> None:
    g = Graph("g", (("B", None), ("h", 4), ("z", size)), (Decl(X, "input"),), (), ("x",))  # type: ignore[arg-type]
    text = _round_trip(g)
    assert f"z = {printed}}}" in text


def test_odd_names_are_quoted() -> None:
    x = Value("x", TensorType(("B", "h"), "bf16"))
    op = Elementwise(result=Value("y", x.type), operands=(x,), fn="my fn", sharding=(("h", "mesh axis"),))
    g = Graph("a graph/with slash", (("B", None), ("h", 4)), (Decl(x, "input"),),
              (Repeat("the layers", 3, (), (op,), "x", "y"),), ("y",), (("odd key", 'v"1\n'),))
    text = _round_trip(g)
    assert 'graph @"a graph/with slash" attributes {"odd key" = "v\\"1\\n"}' in text
    assert 'repeat @"the layers" x3 (%x -> %y)' in text
    assert 'elementwise."my fn" %x' in text


def test_print_op() -> None:
    y = Value("y", TensorType(("B", "f"), "bf16"))
    assert print_op(Einsum(result=y, operands=(X, W), spec="bh,hf->bf")) == '%y = einsum "bh,hf->bf" %x, %w : bf16[B,f]'
    red = Reduce(result=Value("s", TensorType(("B",), "f32")), operands=(X,), fn="sum", dims=("h",))
    assert print_op(red) == "%s = reduce.sum[h] %x : f32[B]"
    gat = Gather(result=y, operands=(W, X), dim="h")
    assert print_op(gat) == "%y = gather[h] %w, %x : bf16[B,f]"
    sc = Gather(result=Value("w2", W.type), operands=(W, X), dim="h", fn="scatter")
    assert print_op(sc) == "%w2 = gather.scatter[h] %w, %x : bf16[h,f]"
    col = Collective(result=Value("z", X.type), operands=(X,), fn="all_gather", axis="tp", stream=1)
    assert print_op(col) == "%z = collective.all_gather[tp] %x : bf16[B,h]  {stream = 1}"
    assert print_type(TensorType((), "f32")) == "f32[]"


def test_value_operand_with_no_operands_and_empty_outputs() -> None:
    op = Elementwise(result=Value("z", TensorType(("B",), "i64")), operands=(), fn="arange")
    g = Graph("g", (("B", None),), (), (op,), ())
    text = _round_trip(g)
    assert "%z = elementwise.arange : i64[B]" in text and "  return\n}" in text


# -- parse errors: line, column, and what was expected

@pytest.mark.parametrize("text, line, col, expected", [
    ("", 1, 1, "expected 'graph', found end of input"),
    ("graph g {", 1, 7, "expected the graph name ('@name')"),
    ("graph @g {\n  dims {B = ?}\n  return %x\n}", 3, 10, "undefined value %x"),
    ("graph @g {\n  input %x : bf17[B]\n  return %x\n}", 2, 14, "expected a dtype (f32, bf16"),
    ("graph @g {\n  input %x : f32[B\n  return %x\n}", 3, 3, "expected ',' or ']'"),
    ("graph @g {\n  input %x : f32[B]\n  %y = silu %x : f32[B]\n  return %y\n}", 3, 8,
     "expected an op (einsum, elementwise, reduce, gather, collective), found 'silu'"),
    ("graph @g {\n  input %x : f32[B]\n  %y = elementwise %x : f32[B]\n  return %y\n}", 3, 8,
     "expected 'elementwise.<fn>'"),
    ("graph @g {\n  input %x : f32[B]\n  %y = elementwise.neg %x f32[B]\n  return %y\n}", 3, 27,
     "expected ',' or ':' before the result type, found 'f32'"),
    ("graph @g {\n  input %x : f32[B]\n  %y = elementwise.neg %x : f32[B]  {colour = 1}\n  return %y\n}", 3, 38,
     "unknown op attribute 'colour'"),
    ("graph @g {\n  input %x : f32[B]\n  %x = elementwise.neg %x : f32[B]\n  return %x\n}", 3, 3,
     "value %x is already defined on line 2"),
    ("graph @g {\n  input %x : f32[B]\n  return %x\n} extra", 4, 3, "expected end of input after the graph"),
    ('graph @g attributes {a = "unterminated} {\n}', 1, 26, "unterminated string"),
    ("graph @g {\n  input %x : f32[B]\n  #\n}", 3, 3, "unexpected character '#'"),
    ("graph @g {\n  input %x : f32[B]\n  repeat @r 2 (%x -> %y) {\n  }\n  return %x\n}", 3, 13,
     "expected a repeat count ('x32')"),
    ("graph @g {\n  input %x : f32[B]\n  repeat @r x2 (%x -> %y) {\n    %y = elementwise.neg %x : f32[B]\n"
     "    %z = elementwise.neg %x : f32[B]\n  }\n  return %z\n}", 7, 10,
     "value %z is defined inside repeat @r; after the region only its carry is visible"),
    ("graph @g {\n  dims {B = ,}\n  return\n}", 2, 13, "expected a size"),
    ("graph @g {\n  %y = elementwise.neg : f32[B]\n  input %x : f32[B]\n  return\n}", 3, 3,
     "declarations come before the ops"),
])
def test_parse_errors(text: str, line: int, col: int, expected: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_graph(text)
    err = info.value
    assert f"line {line}, column {col}: " in str(err)
    assert expected in str(err)
    assert (err.line, err.column) == (line, col)  # type: ignore[attr-defined]
