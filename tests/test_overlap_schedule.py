"""The overlap pass decides the schedule, the cost model reads it: ``PlanPricer`` and the search price
the windows the IR annotates (a stream-1 collective, then ops with ``sm_share < 1``), so a graph
whose annotations were edited by hand is priced accordingly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import energylens as el
from energylens.api import resolve_model
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.overlap import Kernel, overlap_window
from energylens.costmodel.plan import (
    PlanPricer,
    overlap_block_sizes,
    overlap_params,
    overlap_windows,
    pipeline_text,
    plan_graph,
    plan_work,
    price_ops,
)
from energylens.costmodel.profile import load_profile
from energylens.ir.core import Collective, Graph, Op, Repeat
from energylens.passes.overlap import Overlap

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
GPU = get_gpu("H100")
PROF = load_profile(GPU)
PAR = el.Parallel(tp=2)
BIND = {"B": 16, "S": 1, "K": 2048}
SMS = 16
OV = Overlap(comm_sms=SMS, total_sms=GPU.compute_units)


def _edit(graph: Graph, names: dict[str, dict]) -> Graph:
    """``graph`` with the ops whose result is a key of ``names`` replaced (fields from the value)."""
    def fix(op: Op) -> Op:
        return dataclasses.replace(op, **names[op.result.name]) if op.result.name in names else op

    body = tuple(dataclasses.replace(x, ops=tuple(fix(o) for o in x.ops)) if isinstance(x, Repeat) else fix(x)
                 for x in graph.body)
    return dataclasses.replace(graph, body=body)


def test_estimate_plans_through_the_overlap_pass() -> None:
    wl = el.Workload(batch=16, prompt_len=512, output_len=128)
    est = el.estimate(LLAMA, el.Cluster("H100", num_gpus=2), wl, PAR, comm_sms=SMS)
    assert est.graphs.pipeline == pipeline_text(PAR, overlap=OV) == (
        "shard{tp=2,ep=1,dp=1},fuse,moe{routing=uniform,seed=0},overlap{comm_sms=16,total_sms=132}")
    colls = [op for op, _ in est.graphs.decode.walk() if isinstance(op, Collective) and op.axis == "tp"]
    assert colls and all(op.stream == 1 and op.sm_share == pytest.approx(SMS / GPU.compute_units) for op in colls)
    serial = el.estimate(LLAMA, el.Cluster("H100", num_gpus=2), wl, PAR)
    assert all(op.stream == 0 and op.sm_share is None for op, _ in serial.graphs.decode.walk())


def test_windows_are_read_from_the_annotations() -> None:
    g = plan_graph(resolve_model(LLAMA).decode, PAR, overlap=OV)
    p = price_ops(plan_work(g, None, BIND, gpu=GPU), 1, GPU, PROF)
    found = overlap_windows(p)
    assert found
    for i, window in found:
        assert p.recs[i].op.stream == 1
        assert all(p.recs[j].op.sm_share is not None and p.recs[j].op.sm_share < 1 for j in window)
    # the same planned graph without the pass has no windows: the pricer decides nothing itself
    plain = price_ops(plan_work(plan_graph(resolve_model(LLAMA).decode, PAR), None, BIND, gpu=GPU), 1, GPU, PROF)
    assert overlap_windows(plain) == []
    assert overlap_block_sizes(g) == {p.recs[i].op.result.name: 1024 for i, _ in found}


def test_hand_edited_schedule_is_priced_accordingly() -> None:
    g = plan_graph(resolve_model(LLAMA).decode, PAR, overlap=OV)
    recs = plan_work(g, None, BIND, gpu=GPU)
    p = price_ops(recs, 1, GPU, PROF)
    (ci, window), (cj, _) = [(i, w) for i, w in overlap_windows(p) if recs[i].count > 1][:2]
    assert len(window) >= 3
    coll, cut = recs[ci].op, recs[window[1]].op
    params = overlap_params(GPU, PROF)
    pricer = PlanPricer(comm_sms=SMS)
    base = {q.op.result.name: q for q in pricer(g, BIND, GPU, PROF)}

    # one window op's sm_share set back to 1: the first collective's window now stops before it
    edited = _edit(g, {cut.result.name: {"sm_share": 1.0}})
    got = {q.op.result.name: q for q in pricer(edited, BIND, GPU, PROF)}
    kern = [Kernel(time_s=float(p.time_s[j, 0, 0]), dyn_power_w=float(p.dyn_power_w[j, 0, 0]),
                   cls={"expert": "gemm"}.get(recs[j].cls, recs[j].cls)) for j in window[:1]]
    w = overlap_window(kern, comm_bytes=float(recs[ci].comm_bytes), comm_sms=SMS, block_size=1024, params=params)
    solo_t = float(p.time_s[window[0], 0, 0])
    want_t = max(0.0, w.time_s - solo_t)
    assert got[coll.result.name].cost.time_s == pytest.approx(want_t, rel=1e-12)
    assert got[coll.result.name].cost.time_s != pytest.approx(base[coll.result.name].cost.time_s, rel=1e-6)
    # the other collectives and every compute op are priced as before
    for name, q in base.items():
        if name != coll.result.name:
            assert got[name].cost == q.cost

    # a collective moved back to stream 0: priced in series, as without overlap
    plain = plan_graph(resolve_model(LLAMA).decode, PAR)  # the same plan without the overlap pass
    serial = {q.op.result.name: q for q in PlanPricer()(plain, BIND, GPU, PROF)}
    back = {q.op.result.name: q for q in pricer(_edit(g, {coll.result.name: {"stream": 0}}), BIND, GPU, PROF)}
    assert back[coll.result.name].cost == serial[coll.result.name].cost
    assert back[recs[cj].op.result.name].cost == base[recs[cj].op.result.name].cost

    # a recorded block size is the one priced
    attrs = tuple((k, "256") if k == f"overlap.{coll.result.name}.block_size" else (k, v) for k, v in g.attrs)
    small = {q.op.result.name: q for q in pricer(dataclasses.replace(g, attrs=attrs), BIND, GPU, PROF)}
    full = [Kernel(time_s=float(p.time_s[j, 0, 0]), dyn_power_w=float(p.dyn_power_w[j, 0, 0]),
                   cls={"expert": "gemm"}.get(recs[j].cls, recs[j].cls)) for j in window]
    w256 = overlap_window(full, comm_bytes=float(recs[ci].comm_bytes), comm_sms=SMS, block_size=256, params=params)
    solo = float(np.sum(p.time_s[window, 0, 0]))
    assert small[coll.result.name].cost.time_s == pytest.approx(max(0.0, w256.time_s - solo), rel=1e-12)


def test_sm_count_comes_from_the_schedule_and_a_mismatch_is_an_error() -> None:
    from energylens.errors import ConfigError

    g = plan_graph(resolve_model(LLAMA).decode, PAR, overlap=OV)
    plain = plan_graph(resolve_model(LLAMA).decode, PAR)
    cost = [q.cost for q in PlanPricer(comm_sms=SMS)(g, BIND, GPU, PROF)]
    assert [q.cost for q in PlanPricer()(g, BIND, GPU, PROF)] == cost  # None: the graph's 16 SMs
    with pytest.raises(ConfigError, match=r"comm_sms=32 but the graph's overlap schedule gives its collectives 16"):
        PlanPricer(comm_sms=32)(g, BIND, GPU, PROF)
    with pytest.raises(ConfigError, match=r"comm_sms=16 but the graph has no overlap schedule: plan it with"):
        PlanPricer(comm_sms=SMS)(plain, BIND, GPU, PROF)
    # a schedule made for another GPU's SM count is priced by its share on this one
    other = plan_graph(resolve_model(LLAMA).decode, PAR, overlap=Overlap(comm_sms=16, total_sms=108))
    assert PlanPricer(comm_sms=round(16 / 108 * GPU.compute_units))(other, BIND, GPU, PROF)


def test_overlapped_collectives_never_beat_the_links() -> None:
    """However many SMs it is given, an overlapped collective takes at least its serial (measured) time:
    on PCIe-only L40S a tp=8 prefill's all-reduces alone set a floor on the overlapped prefill."""
    wl = el.Workload(batch=16, prompt_len=1024, output_len=16)
    cluster = el.Cluster("L40S", num_gpus=8)
    serial = el.estimate("meta-llama/Llama-3.2-1B-Instruct", cluster, wl, el.Parallel(tp=8))
    comm_s = sum(o.time_s for o in serial.ops if o.phase == "prefill" and o.kind == "collective")
    assert comm_s > 0.1 * serial.prefill.latency_s  # PCIe: the all-reduces matter
    for sms in (64, 128):  # without the floor: 0.74x and 0.60x of the collectives' time
        over = el.estimate("meta-llama/Llama-3.2-1B-Instruct", cluster, wl, el.Parallel(tp=8), comm_sms=sms)
        assert over.prefill.latency_s >= comm_s
