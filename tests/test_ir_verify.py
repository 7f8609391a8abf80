"""The verifier: each rule, broken on purpose, raises VerificationError naming the op and the rule."""

from __future__ import annotations

import dataclasses

import pytest

from energylens.errors import ParseError, VerificationError
from energylens.ir.core import (
    Collective,
    Decl,
    Einsum,
    Elementwise,
    Gather,
    Graph,
    Reduce,
    Repeat,
    TensorType,
    Value,
)
from energylens.ir.text import parse_graph
from energylens.ir.verify import verify_dims, verify_graph
from energylens.testing import random_graph

BASE = """\
graph @g {
  dims {B = ?, S = ?, T = B*S, h = 4, f = 8}
  input %x : bf16[B,S,h]
  param %w : bf16[h,f]
  %y = einsum "bsh,hf->bsf" %x, %w : bf16[B,S,f]
  repeat @layers x2 (%x -> %z) {
    param %u : bf16[f,h]
    %a = einsum "bsh,hf->bsf" %x, %w : bf16[B,S,f]
    %b = einsum "bsf,fh->bsh" %a, %u : bf16[B,S,h]
    %z = elementwise.add %x, %b : bf16[B,S,h]
  }
  %o = reduce.sum[h] %z : f32[B,S]
  return %o
}
"""


def base() -> Graph:
    g = parse_graph(BASE)
    verify_graph(g)
    return g


def region(g: Graph) -> Repeat:
    r = g.body[1]
    assert isinstance(r, Repeat)
    return r


def with_body(g: Graph, *body: object) -> Graph:
    return dataclasses.replace(g, body=tuple(body))  # type: ignore[arg-type]


def bad(g: Graph, *needles: str) -> None:
    with pytest.raises(VerificationError) as info:
        verify_graph(g)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_base_and_random_graphs_verify() -> None:
    base()
    for seed in range(30):
        verify_graph(random_graph(seed))


def test_op_verify_is_called() -> None:
    g = base()
    y = g.body[0]
    bad(with_body(g, dataclasses.replace(y, spec="bsh,hf->bsq"), *g.body[1:]), "einsum %y", "output letters")
    bad(with_body(g, dataclasses.replace(y, sm_share=1.5), *g.body[1:]), "einsum %y", "sm_share")
    r = region(g)
    broken = dataclasses.replace(r.ops[0], spec="bsh,hf,->bsf")
    bad(with_body(g, g.body[0], dataclasses.replace(r, ops=(broken, *r.ops[1:])), g.body[2]),
        "einsum %a in repeat @layers: spec 'bsh,hf,->bsf' has 3 inputs")


def test_ssa_defined_once() -> None:
    g = base()
    y = g.body[0]
    dup = dataclasses.replace(y, result=Value("x", y.result.type))
    bad(with_body(g, dup, *g.body[1:]), "einsum %x", "already defined by input %x")


def test_ssa_use_before_definition() -> None:
    g = base()
    o = g.body[2]
    bad(with_body(g, o, g.body[0], g.body[1]), "reduce %o", "operand 0 %z is used before its definition")


def test_ssa_undefined() -> None:
    g = base()
    y = g.body[0]
    ghost = Value("ghost", y.operands[1].type)
    bad(with_body(g, dataclasses.replace(y, operands=(y.operands[0], ghost)), *g.body[1:]),
        "einsum %y", "operand 1 %ghost is not defined")


def test_region_values_visible_only_through_carry() -> None:
    g = base()
    a = region(g).ops[0].result
    leak = Elementwise(result=Value("leak", a.type), operands=(a,), fn="neg")
    bad(with_body(g, *g.body, leak), "elementwise %leak", "inside repeat @layers", "carry")
    bad(dataclasses.replace(g, outputs=("a",)), "output %a is defined inside repeat @layers")


def test_value_names_well_formed() -> None:
    g = base()
    y = g.body[0]
    bad(with_body(g, dataclasses.replace(y, result=Value("1bad name", y.result.type)), *g.body[1:]),
        "einsum %1bad name", "not well formed")


def test_dims_used_are_declared() -> None:
    g = base()
    y = g.body[0]
    # an undeclared dim in a type
    o = g.body[2]
    wide = dataclasses.replace(o, result=Value("o", TensorType(("B", "S", "q"), "f32")))
    bad(with_body(g, *g.body[:2], wide), "reduce %o", "dimension 'q' is not in the graph's dims")
    # in a declaration
    bad(dataclasses.replace(g, dims=g.dims[:-1]), "param %w", "dimension 'f'")
    # in sharding: rejected by the op (not one of its dims) before the table check
    bad(with_body(g, dataclasses.replace(y, sharding=(("q", "tp"),)), *g.body[1:]), "einsum %y", "sharded dim 'q'")


def test_operand_type_at_use_equals_definition() -> None:
    g = base()
    y = g.body[0]
    x32 = Value("x", TensorType(("B", "S", "h"), "f32"))
    bad(with_body(g, dataclasses.replace(y, operands=(x32, y.operands[1])), *g.body[1:]),
        "einsum %y", "operand %x has type f32[B,S,h] here but was defined as bf16[B,S,h]")


def test_repeat_init_and_carry() -> None:
    g = base()
    r = region(g)
    bad(with_body(g, g.body[0], dataclasses.replace(r, init="nope"), g.body[2]), "repeat @layers", "init %nope is not defined")
    bad(with_body(g, g.body[0], dataclasses.replace(r, carry="y"), g.body[2]), "repeat @layers",
        "carry %y is not defined in the region")
    bad(with_body(g, g.body[0], dataclasses.replace(r, init="y"), g.body[2]), "repeat @layers",
        "carry %z has type bf16[B,S,h] but init %y has type bf16[B,S,f]")
    bad(with_body(g, g.body[0], dataclasses.replace(r, count=0), g.body[2]), "repeat @layers", "count 0")
    nested = dataclasses.replace(r, ops=(*r.ops, Repeat("inner", 1, (), (), "x", "x")))  # type: ignore[arg-type]
    bad(with_body(g, g.body[0], nested, g.body[2]), "repeat @inner in repeat @layers", "cannot nest")


@pytest.mark.parametrize("dims, needle", [
    ((("B", None), ("B", 4)), "dimension 'B' is declared twice"),
    ((("B", 0),), "B = 0: an int size must be positive"),
    ((("B", 2.5),), "a size is an int, None or an expression"),
    ((("T", "B*S"),), "uses 'B', which is not declared before it"),
    ((("B", None), ("T", "B+1")), "is not an expression"),
    ((("B", None), ("T", "B**2")), "is not an expression"),
    ((("B", None), ("T", "64")), "write a fixed size as an int"),
    ((("B", None), ("T", "B/0")), "divides by zero"),
    ((("b-1", 3),), "is not an identifier"),
])
def test_dim_sizes_well_formed(dims: tuple, needle: str) -> None:
    with pytest.raises(VerificationError, match=None) as info:
        verify_dims(dims, "graph @g")
    assert needle in str(info.value)
    g = dataclasses.replace(base(), dims=dims)
    bad(g, needle)


def test_dim_expressions_ok() -> None:
    verify_dims((("B", None), ("S", None), ("e", 8), ("C", "B*S*2/e"), ("T", "B*S"), ("h", 64)))


def test_elementwise_result_is_union_of_operand_dims() -> None:
    g = base()
    r = region(g)
    z = r.ops[-1]
    wrong = dataclasses.replace(z, result=Value("z", TensorType(("B", "h"), "bf16")))
    bad(with_body(g, g.body[0], dataclasses.replace(r, ops=(*r.ops[:-1], wrong)), g.body[2]),
        "elementwise %z in repeat @layers", "not the union of the operand dims")


def test_gather_dim_in_table_and_operand_counts() -> None:
    x = Value("x", TensorType(("B",), "i64"))
    w = Value("w", TensorType(("v", "h"), "bf16"))
    dims = (("B", None), ("v", 8), ("h", 4))
    y = Value("y", TensorType(("B", "h"), "bf16"))
    ok = Gather(result=y, operands=(w, x), dim="v")
    g = Graph("g", dims, (Decl(x, "input"), Decl(w, "param")), (ok,), ("y",))
    verify_graph(g)
    bad(with_body(g, dataclasses.replace(ok, dim="h2")), "gather %y", "dimension 'h2' is not in the graph's dims")
    x2 = Value("x", TensorType(("S",), "i64"))
    g2 = Graph("g", (*dims, ("S", None)), (Decl(x2, "input"), Decl(w, "param")), (), ("y",))
    off = Gather(result=Value("y", TensorType(("S", "h"), "bf16")), operands=(w, x2), dim="B")
    bad(with_body(g2, off), "gather %y", "gathered dim 'B' is neither a dim of the table %w bf16[v,h] nor of the result")
    dispatch = Gather(result=Value("y", TensorType(("B", "v", "h"), "bf16")), operands=(w, x), dim="B", fn="dispatch")
    verify_graph(with_body(g, dispatch))
    bad(with_body(g, dataclasses.replace(ok, operands=(w,))), "gather %y", "at least 2 operand")
    red = Reduce(result=y, operands=(), fn="sum", dims=())
    bad(with_body(g, red), "reduce %y", "at least 1 operand")
    g = dataclasses.replace(g, attrs=(("mesh", "tp=2"),))
    col = Collective(result=Value("c", w.type), operands=(w,), fn="all_reduce", axis="")
    bad(with_body(g, col), "collective %c", "mesh axis '' is not one of tp, dp, ep, etp")
    bad(with_body(g, dataclasses.replace(col, axis="zz")), "collective %c", "mesh axis 'zz'")
    bad(with_body(g, dataclasses.replace(col, axis="tp", fn="all_redux")), "collective %c",
        "unknown collective 'all_redux'; valid: all_reduce, all_gather")
    bad(with_body(g, dataclasses.replace(col, axis="tp", fusion_group=1)), "collective %c",
        "cannot be part of fusion group 1")
    bad(with_body(g, dataclasses.replace(ok, stream=-1)), "gather %y", "stream -1")
    bad(with_body(g, dataclasses.replace(ok, stream=7)), "gather %y", "must be 0 (compute) or 1")
    bad(with_body(g, dataclasses.replace(ok, stream=1.0)), "gather %y", "must be 0 (compute) or 1")
    bad(with_body(g, dataclasses.replace(ok, sharding=(("h", "zz"),))), "gather %y", "sharded over 'zz'")
    bad(with_body(g, dataclasses.replace(ok, sharding=(("h", "tp"), ("h", "dp")))), "gather %y", "sharded twice")


def test_outputs_exist() -> None:
    g = base()
    bad(dataclasses.replace(g, outputs=("missing",)), "graph @g", "output %missing is not defined")
    bad(dataclasses.replace(g, outputs=()), "graph @g", "no outputs")


def test_decl_role_and_duplicates() -> None:
    g = base()
    x = g.decls[0]
    bad(dataclasses.replace(g, decls=(x, x)), "input %x", "already defined")
    bad(dataclasses.replace(g, decls=(Decl(x.value, "weight"), *g.decls[1:])), "unknown role 'weight'")  # type: ignore[arg-type]


def test_einsum_import_is_used() -> None:
    assert isinstance(base().body[0], Einsum)


def test_mesh_attribute_and_collectives_inside_kernels() -> None:
    """Hand-edited IR: a malformed mesh, and a collective between the ops of one fused kernel (what
    'fuse' before 'shard' makes) are rejected with the rule, not priced oddly later."""
    from energylens.ir.text import EXAMPLE, parse_graph
    from energylens.passes import run_pipeline

    g = parse_graph(EXAMPLE)
    for mesh in ("tp=two", "tq=2", "tp", "tp=2,tp=4", "tp=²", "tp=２"):  # digits in ASCII only
        with pytest.raises(VerificationError, match=f"mesh '{mesh}' is not 'axis=size"):
            verify_graph(dataclasses.replace(g, attrs=(*g.attrs, ("mesh", mesh))))
    verify_graph(run_pipeline(g, "shard{tp=2},fuse"))
    fused_mlp = EXAMPLE.replace('bf16[B,S,f]  {shard = {f = tp}}', 'bf16[B,S,f]  {shard = {f = tp}, fusion = 1}')
    fused_mlp = fused_mlp.replace('bf16[B,S,h]  {shard = {f = tp}}', 'bf16[B,S,h]  {shard = {f = tp}, fusion = 1}')
    with pytest.raises(Exception, match="collective would run inside that kernel"):
        run_pipeline(parse_graph(fused_mlp), "shard{tp=2}")


SHARDED_MLP = """\
graph @g attributes {mesh = "tp=2,dp=1,ep=1,etp=2"} {
  dims {B = ?, S = ?, h = 64, f = 128}
  input %x : bf16[B,S,h]
  param %w1 : bf16[h,f]
  param %w2 : bf16[f,h]
  %a = einsum "bsh,hf->bsf" %x, %w1 : bf16[B,S,f]  {shard = {f = tp}}
  %b = einsum "bsf,fh->bsh" %a, %w2 : bf16[B,S,h]  {shard = {f = tp}, fusion = 1}
  %c = collective.all_reduce[tp] %b : bf16[B,S,h]  {stream = 1}
  %d = elementwise.silu %c : bf16[B,S,h]
  %e = elementwise.add %d, %x : bf16[B,S,h]
  return %e
}
"""


def mlp_bad(old: str, new: str, *needles: str) -> None:
    assert old in SHARDED_MLP
    with pytest.raises(VerificationError) as info:
        verify_graph(parse_graph(SHARDED_MLP.replace(old, new)))
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_collectives_need_a_mesh_and_keep_their_type() -> None:
    """A collective the mesh does not split, or one that changes the type, would be priced as free or
    as the wrong traffic."""
    verify_graph(parse_graph(SHARDED_MLP))
    mlp_bad(' attributes {mesh = "tp=2,dp=1,ep=1,etp=2"}', "", "collective %c",
            "needs the graph's mesh to split 'tp'", "no mesh attribute")
    mlp_bad("tp=2,dp=1", "tp=1,dp=2", "collective %c", "mesh 'tp=1,dp=2,ep=1,etp=2'")
    mlp_bad("%b : bf16[B,S,h]  {stream = 1}", "%b : fp8[B,S,h]  {stream = 1}", "collective %c",
            "result type fp8[B,S,h] differs from its operand's bf16[B,S,h]")
    mlp_bad("%b : bf16[B,S,h]  {stream = 1}", "%b, %x : bf16[B,S,h]  {stream = 1}", "takes 1 operand, has 2")
    mlp_bad('%d = elementwise.silu %c : bf16[B,S,h]', '%d = elementwise.silu %c : bf16[B,S,h]  {stream = 1}',
            "elementwise %d", "only a collective runs on it")


def test_no_collective_between_ops_of_one_fusion_group_even_indirectly() -> None:
    direct = "%e = elementwise.add %c, %x : bf16[B,S,h]  {fusion = 1}"
    mlp_bad("%e = elementwise.add %d, %x : bf16[B,S,h]", direct, "elementwise %e", "collective %c",
            "fusion group 1")
    mlp_bad("%e = elementwise.add %d, %x : bf16[B,S,h]", "%e = elementwise.add %d, %x : bf16[B,S,h]  {fusion = 1}",
            "elementwise %e", "depends on collective %c")
    # a group after the collective that does not reach back is fine
    verify_graph(parse_graph(SHARDED_MLP.replace("%e = elementwise.add %d, %x : bf16[B,S,h]",
                                                 "%e = elementwise.add %d, %x : bf16[B,S,h]  {fusion = 2}")))


def test_reduce_and_elementwise_shapes() -> None:
    mlp_bad("%d = elementwise.silu %c : bf16[B,S,h]", "%d = reduce.sum[h] %c : bf16[B,S,f]", "reduce %d",
            "result dims ['f'] are not dims of its operand %c bf16[B,S,h]")
    mlp_bad("%d = elementwise.silu %c : bf16[B,S,h]", "%d = reduce.sum[] %c : bf16[B,S,h]", "reduce %d",
            "reduces no dim")
    mlp_bad("%d = elementwise.silu %c : bf16[B,S,h]", "%d = elementwise.silu : bf16[B,S,h]", "elementwise %d",
            "at least 1 operand")


def test_dim_sizes_and_attributes_are_not_silently_dropped() -> None:
    mlp_bad("h = 64, f = 128}", "h = 64, f = 128, T = B*0}", "dimension T = 'B*0' has a factor 0")
    with pytest.raises(ParseError, match="op attribute 'fusion' is given twice"):
        parse_graph(SHARDED_MLP.replace("fusion = 1}", "fusion = 1, fusion = 2}"))
    with pytest.raises(ParseError, match="graph attribute 'mesh' is given twice"):
        parse_graph(SHARDED_MLP.replace('etp=2"}', 'etp=2", mesh = "tp=1"}'))


def test_fusion_ids_are_per_block() -> None:
    """Group ids may restart in each block (the top level, each repeat region): a group of the top
    level and a group of a region with the same id are different kernels."""
    text = SHARDED_MLP.replace("%b = einsum", "%b = einsum").replace(
        "  %d = elementwise.silu %c : bf16[B,S,h]\n  %e = elementwise.add %d, %x : bf16[B,S,h]\n  return %e",
        "  repeat @layers x2 (%c -> %e) {\n    %d = elementwise.silu %c : bf16[B,S,h]  {fusion = 1}\n"
        "    %e = elementwise.add %d, %x : bf16[B,S,h]  {fusion = 1}\n  }\n  return %e")
    verify_graph(parse_graph(text))


def test_a_fixed_dimension_is_not_rebound() -> None:
    """A hand-written graph that fixes B prices that batch whatever the workload says: binding it
    to another size is an error naming the dimension; the same size, or a free B, binds."""
    from energylens.ir.text import EXAMPLE, parse_graph

    fixed = parse_graph(EXAMPLE.replace("B = ?", "B = 4"))
    with pytest.raises(VerificationError, match=r"fixes B = 4, but it is bound to 8: leave B free \('B = \?'\)"):
        fixed.bind(B=8, S=1)
    assert fixed.bind(B=4, S=1)["T"] == 4 and parse_graph(EXAMPLE).bind(B=8, S=1)["T"] == 8


def test_a_graph_attribute_given_twice_is_refused() -> None:
    """The printer would write both and the parser refuses the text: the verifier says so first."""
    from energylens.ir.text import EXAMPLE, parse_graph

    g = parse_graph(EXAMPLE)
    with pytest.raises(VerificationError, match=r"attribute\(s\) 'note' given more than once"):
        verify_graph(dataclasses.replace(g, attrs=(*g.attrs, ("note", "a"), ("note", "b"))))
