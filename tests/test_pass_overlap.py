"""Overlap pass, model mode: golden IR on traced 2-layer models after shard{tp=2}, the PlanPricer
window rule, purity, no-op on graphs without tp collectives, pipeline options."""

from __future__ import annotations

import copy

import pytest
from test_pass_graphs import llama_decode, traced

from energylens.errors import ConfigError, InvalidWorkloadError
from energylens.ir.core import Collective, Graph, Op
from energylens.ir.text import parse_graph, print_graph
from energylens.ir.verify import verify_graph
from energylens.passes.manager import make_pass, run_pipeline
from energylens.passes.overlap import Overlap
from energylens.passes.shard import Shard

SMS = 16
SHARE = SMS / 108


@pytest.fixture(scope="module")
def llama() -> Graph:
    return Shard(tp=2)(traced("tiny_llama_config"))


@pytest.fixture(scope="module")
def qwen_moe() -> Graph:
    return Shard(tp=2)(traced("tiny_qwen3_moe_config"))


def _ops(g: Graph) -> list[Op]:
    return [op for op, _ in g.walk()]


def _check_windows(before: Graph, after: Graph) -> None:
    """Every tp collective on stream 1; exactly the ops PlanPricer overlaps with one have the compute share."""
    # oracle: costmodel.plan.overlap_windows's rule on graph.walk() (regions = runs of equal repetition count)
    runs: list[list[tuple[Op, int]]] = []
    for op, count in before.walk():
        if runs and runs[-1][-1][1] == count:
            runs[-1].append((op, count))
        else:
            runs.append([(op, count)])
    expected: set[str] = set()
    for run in runs:
        region = [op for op, _ in run]
        for pos, op in enumerate(region):
            if isinstance(op, Collective) and op.axis == "tp":
                for step in range(1, len(region)):
                    nxt = region[(pos + step) % len(region)]
                    if isinstance(nxt, Collective):
                        break
                    expected.add(nxt.result.name)
    assert expected
    for old, new in zip(_ops(before), _ops(after), strict=True):
        assert new.result == old.result and new.operands == old.operands  # nothing moved or rewired
        if isinstance(old, Collective) and old.axis == "tp":
            assert (new.stream, new.sm_share) == (1, pytest.approx(SHARE))
        elif old.result.name in expected:
            assert (new.stream, new.sm_share) == (0, pytest.approx(1 - SHARE))
        else:
            assert new == old


def test_golden_llama_tp2(llama: Graph, golden) -> None:
    golden("pass_shard_tp2_llama_decode", print_graph(llama))
    out = Overlap(comm_sms=SMS)(llama)
    verify_graph(out)
    _check_windows(llama, out)
    text = print_graph(out)
    assert print_graph(parse_graph(text)) == text
    golden("pass_overlap_tp2_llama_decode", text)


def test_golden_moe_tp2(qwen_moe: Graph, golden) -> None:
    golden("pass_shard_tp2_qwen3_moe_decode", print_graph(qwen_moe))
    out = Overlap(comm_sms=SMS)(qwen_moe)
    verify_graph(out)
    _check_windows(qwen_moe, out)
    # ep = 1 (vLLM): the MoE output is all-reduced over tp after the combine, overlapped like attention's
    region = [op for op, count in out.walk() if count == 2 and isinstance(op, Collective)]
    assert [(op.fn, op.axis, op.stream) for op in region] == [("all_reduce", "tp", 1)] * 2
    assert region[1].result.type.dims == ("B", "S", "h")
    golden("pass_overlap_tp2_qwen3_moe_decode", print_graph(out))


def test_every_layer_op_is_in_a_window_on_llama(llama: Graph) -> None:
    # two tp all-reduces per layer: their windows wrap round the region and cover the whole layer
    out = Overlap(comm_sms=SMS)(llama)
    layer = next(item for item in out.body if not isinstance(item, Op))
    assert all(op.sm_share is not None for op in layer.ops)
    assert ("overlap.linear_3.block_size", "1024") in out.attrs


def test_pure(llama: Graph) -> None:
    before = copy.deepcopy(llama)
    out = Overlap(comm_sms=SMS)(llama)
    assert llama == before and out != llama and out is not llama
    assert all(op.sm_share is None and op.stream == 0 for op in _ops(llama))


def test_no_tp_collectives() -> None:
    g = traced("tiny_llama_config")  # unsharded: nothing to overlap is an error, not a silent no-op
    with pytest.raises(InvalidWorkloadError, match="no tensor-parallel collective to overlap.*shard first"):
        Overlap(comm_sms=SMS)(g)
    with pytest.raises(InvalidWorkloadError, match="no tensor-parallel collective"):
        Overlap(comm_sms=SMS)(llama_decode())
    ep_only = Shard(dp=2, ep=2)(traced("tiny_qwen3_moe_config"))  # collectives, none over tp
    assert any(isinstance(op, Collective) for op in _ops(ep_only))
    with pytest.raises(InvalidWorkloadError, match="no tensor-parallel collective"):
        Overlap(comm_sms=SMS)(ep_only)


def test_pipeline_options(llama: Graph) -> None:
    g = traced("tiny_llama_config")
    out = run_pipeline(g, "shard{tp=2},fuse,overlap{comm_sms=16}")
    assert run_pipeline(g, "shard{tp=2},fuse") != out
    assert Overlap(comm_sms=16)(run_pipeline(g, "shard{tp=2},fuse")) == out
    blk = run_pipeline(g, "shard{tp=2},overlap{comm_sms=8,comm_block_size=512,total_sms=132}")
    colls = [op for op in _ops(blk) if isinstance(op, Collective)]
    assert all(op.sm_share == pytest.approx(8 / 132) for op in colls)
    assert all(v == "512" for k, v in blk.attrs if k.startswith("overlap."))
    assert make_pass("overlap", comm_sms=4, start=0, end=1) == Overlap(start=0, end=1, comm_sms=4)


def test_errors(llama: Graph) -> None:
    with pytest.raises(InvalidWorkloadError, match="both start and end"):
        Overlap(start=1, comm_sms=8)
    with pytest.raises(InvalidWorkloadError, match="explicit window"):
        Overlap(comm_sms=8, collective="linear_3")
    with pytest.raises(ConfigError):
        make_pass("overlap")  # comm_sms is required
    with pytest.raises(Exception, match="flat graph"):
        Overlap(start=0, end=1, comm_sms=8)(llama)


FLAT = """\
graph @flat attributes {mesh = "tp=2,dp=1,ep=1,etp=2"} {
  dims {B = ?, S = ?, h = 64, f = 128}
  input %x : bf16[B,S,h]
  param %w1 : bf16[h,f]
  param %w2 : bf16[f,h]
  param %w3 : bf16[h,f]
  %a = einsum "bsh,hf->bsf" %x, %w1 : bf16[B,S,f]  {shard = {f = tp}}
  %b = einsum "bsf,fh->bsh" %a, %w2 : bf16[B,S,h]  {shard = {f = tp}}
  %c = collective.all_reduce[tp] %b : bf16[B,S,h]
  %d = einsum "bsh,hf->bsf" %x, %w3 : bf16[B,S,f]  {shard = {f = tp}}
  %e = elementwise.silu %d : bf16[B,S,f]
  %y = elementwise.add %c, %x : bf16[B,S,h]
  return %y, %e
}
"""


def test_explicit_window_cannot_start_before_the_collectives_operand() -> None:
    with pytest.raises(InvalidWorkloadError, match=r"%c reads %b, which kernel 1 makes: the window must start "
                                                   r"after it \(start >= 2\), got start=0"):
        Overlap(start=0, end=0, comm_sms=SMS)(parse_graph(FLAT))
    out = Overlap(start=2, end=3, comm_sms=SMS)(parse_graph(FLAT))
    verify_graph(out)
    assert [op.result.name for op in _ops(out)][2] == "c"
