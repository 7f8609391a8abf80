"""Overlap pass (purity, window sm_share) and SM-contention model; the accuracy script's last line."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from energylens.costmodel.overlap import (
    Kernel,
    OverlapParams,
    overlap_window,
    serial_cost,
    sm_comm_time_s,
)
from energylens.errors import EstimateError, InvalidWorkloadError
from energylens.ir.core import Collective
from energylens.passes.overlap import Overlap, kernels_of

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("accuracy_overlap", ROOT / "benchmarks" / "accuracy_overlap.py")
acc = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["accuracy_overlap"] = acc
_spec.loader.exec_module(acc)  # type: ignore[union-attr]

P = OverlapParams.load("A100-SXM4-40GB")


def test_pass_is_pure_and_sets_sm_share() -> None:
    g = acc.build_block()
    before = dataclasses.replace(g)
    out = Overlap(start=2, end=4, comm_sms=8, comm_block_size=512)(g)
    assert g == before and all(op.sm_share is None and op.stream == 0 for op in g.body)
    coll = [i for i, op in enumerate(out.body) if isinstance(op, Collective) and op.stream == 1]
    assert len(coll) == 1
    c = out.body[coll[0]]
    assert c.sm_share == pytest.approx(8 / 108)
    rest = out.body[:coll[0]] + out.body[coll[0] + 1:]
    kernels = kernels_of(rest)
    assert len(kernels) == 7 and rest[kernels[2][0]] is out.body[coll[0] + 1]
    shared = [j for j, k in enumerate(kernels) if all(rest[i].sm_share is not None for i in k)]
    assert shared == [2, 3, 4]
    assert all(rest[i].sm_share == pytest.approx(1 - 8 / 108) for j in shared for i in kernels[j])
    assert ("overlap.other_reduced.block_size", "512") in out.attrs


def test_pass_errors() -> None:
    g = acc.build_block()
    with pytest.raises(InvalidWorkloadError):
        Overlap(start=3, end=2, comm_sms=4)
    with pytest.raises(InvalidWorkloadError):
        Overlap(start=0, end=0, comm_sms=0)
    with pytest.raises(InvalidWorkloadError, match="past the last kernel"):
        Overlap(start=5, end=9, comm_sms=4)(g)
    with pytest.raises(InvalidWorkloadError, match="no"):
        Overlap(start=0, end=0, comm_sms=4, collective="nope")(g)
    assert Overlap.name == "overlap"


def test_contention_slows_compute_and_respects_static_floor() -> None:
    kern = [Kernel(time_s=5e-4, dyn_power_w=200.0, cls="gemm"), Kernel(time_s=2e-4, dyn_power_w=200.0, cls="memory")]
    solo = serial_cost(kern, P)
    for k in (1, 4, 16, 40):
        w = overlap_window(kern, comm_bytes=32 * 2**20, comm_sms=k, block_size=1024, params=P)
        t_comm = sm_comm_time_s(32 * 2**20, k, 1024, P)
        assert w.time_s >= max(solo.time_s, t_comm) - 1e-12  # never better than either alone
        assert w.time_s <= solo.time_s + t_comm * (1 + max(P.comm_slowdown.values())) + 1e-12
        assert w.energy_j >= P.static_w * w.time_s  # never below the static floor
    tiny = overlap_window(kern, comm_bytes=1024, comm_sms=40, block_size=1024, params=P)
    big = overlap_window(kern, comm_bytes=1 << 30, comm_sms=40, block_size=1024, params=P)
    assert tiny.time_s > solo.time_s  # a collective that ends early still slowed the compute a little
    assert big.comm_exposed_s > 0 and big.time_s > tiny.time_s


def test_contention_errors() -> None:
    with pytest.raises(EstimateError):
        sm_comm_time_s(1024, 0, 512, P)
    with pytest.raises(EstimateError):
        sm_comm_time_s(-1, 4, 512, P)


def test_accuracy_script_on_sample(tmp_path: Path) -> None:
    rows = list(csv.reader(open(ROOT / "data/public/overlap_sweep_dev.csv")))
    keep = [rows[0]] + [r for r in rows[1:] if int(r[2]) in (2, 8, 16)]
    sample = tmp_path / "sample.csv"
    with open(sample, "w", newline="") as f:
        csv.writer(f).writerows(keep)
    # the documented entry point: accuracy.py --dataset overlap hands over to accuracy_overlap.py
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/accuracy.py"), "--dataset", "overlap",
                          "--data", str(sample), "--fit-windows", "none"],
                         capture_output=True, text=True, check=True).stdout
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"MAPE time=[\d.]+% energy=[\d.]+% pareto_recovery=[\d.]+% rows=48", last), last


def test_unreadable_overlap_rows_are_left_out_and_said(tmp_path: Path) -> None:
    rows = list(csv.reader(open(ROOT / "data/public/overlap_sweep_dev.csv")))
    keep = [rows[0]] + [r for r in rows[1:] if int(r[2]) in (2, 8, 16)]
    keep[1][4], keep[2][5] = "", "abc"  # 0:time (s) and 0:total energy (J) of two rows
    keep[3][2], keep[4][0] = "0", "9"  # no SMs; a window starting past the end
    for c in range(4, len(keep[5])):  # every repeat of a row blank
        keep[5][c] = ""
    sample = tmp_path / "sample.csv"
    with open(sample, "w", newline="") as f:
        csv.writer(f).writerows(keep)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/accuracy.py"), "--dataset", "overlap",
                          "--data", str(sample), "--fit-windows", "none"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for line, what in ((3, "0:total energy (J)='abc'"), (4, "comm_sm_number='0'"),
                       (5, "overlap_start='9', overlap_end="), (6, "every repeat blank")):
        assert f"line {line} left out: unreadable or out of range {what}" in res.stderr, res.stderr
    assert "line 2 " not in res.stderr  # a blank repeat is left out of the mean, not the row
    assert res.stdout.strip().splitlines()[-1].endswith("rows=44")


def test_overlap_file_without_fit_windows_is_reported_on_the_packaged_profile(tmp_path: Path) -> None:
    """A file of other windows only (the upstream windows this repository does not hold), with a BOM
    and spaces around its header names: every row is reported on the packaged fit."""
    rows = list(csv.reader(open(ROOT / "data/public/overlap_sweep_dev.csv")))
    keep = [[f" {c} " for c in rows[0]]] + [["1", "3", *r[2:]] for r in rows[1:] if (r[0], r[1]) == ("0", "2")][:6]
    sample = tmp_path / "other.csv"
    with open(sample, "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows(keep)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/accuracy.py"), "--dataset", "overlap",
                          "--data", str(sample)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "no rows of the fit windows" in res.stdout and res.stdout.strip().splitlines()[-1].endswith("rows=6")


def test_serial_per_block_cost_and_contended_time() -> None:
    kern = [Kernel(time_s=2e-3, dyn_power_w=200.0, cls="gemm")]
    p0 = dataclasses.replace(P, serial_per_block_s=0.0)
    p1 = dataclasses.replace(P, serial_per_block_s=5e-6)
    for k in (4, 16):
        a = overlap_window(kern, comm_bytes=32 * 2**20, comm_sms=k, block_size=1024, params=p0)
        b = overlap_window(kern, comm_bytes=32 * 2**20, comm_sms=k, block_size=1024, params=p1)
        assert b.time_s == pytest.approx(a.time_s + 5e-6 * k)  # no overlap hides it
        assert 0 < b.contended_s <= b.time_s


def test_interference_stretch_makes_more_sms_cheaper() -> None:
    # a hidden collective that stalls compute at full SM power: more SMs -> shorter contention -> less energy
    p = dataclasses.replace(P, interference={"gemm": 0.3}, sm_exponent_by_class={"gemm": 0.0}, sm_power_share=1.0,
                            sm_power_w=0.0, comm_active_w=0.0, serial_per_block_s=0.0, per_block_s=0.0,
                            comm_slowdown={"gemm": 0.0})
    kern = [Kernel(time_s=3e-3, dyn_power_w=250.0, cls="gemm")]
    e = [overlap_window(kern, comm_bytes=32 * 2**20, comm_sms=k, block_size=1024, params=p).energy_j
         for k in (8, 12, 16)]
    assert e[0] > e[1] > e[2]


def test_sm_loss_alone_keeps_sm_energy_when_alpha_is_one() -> None:
    # power follows active SMs and time follows 1/active SMs: the SM part of the energy is unchanged
    p = dataclasses.replace(P, interference={"gemm": 0.0}, sm_exponent_by_class={"gemm": 1.0}, sm_power_share=1.0)
    kern = [Kernel(time_s=3e-3, dyn_power_w=250.0, cls="gemm")]
    w = overlap_window(kern, comm_bytes=32 * 2**20, comm_sms=16, block_size=1024, params=p)
    assert w.compute_j == pytest.approx(3e-3 * 250.0)


def test_old_profile_dicts_still_load() -> None:
    c = {k: 0.0 for k in ("per_block_s", "comm_latency_s", "sm_exponent", "mem_interference", "sm_power_w",
                          "sm_power_block_exponent")}
    c |= {"per_sm_bytes_per_s_512": 4e9, "block_exponent": 0.8, "comm_slowdown": {}, "static_w": 80.0}
    old = OverlapParams.from_dict({"coefficients": c}, num_sms=108)
    assert old.sm_power_share == 0.0 and old.serial_per_block_s == 0.0 and old.interference == {}
    w = overlap_window([Kernel(1e-3, 100.0, "memory")], comm_bytes=1 << 20, comm_sms=8, block_size=512, params=old)
    assert w.compute_j == pytest.approx(0.1)


def test_pareto_scores_pooled_and_per_window() -> None:
    R = acc.Row
    rows = [R(0, 1, 4, 1024, 1.0, 2.0), R(0, 1, 8, 1024, 2.0, 1.0), R(2, 2, 4, 1024, 1.5, 1.5),
            R(2, 2, 8, 1024, 3.0, 3.0)]
    preds = [(r.time_s, r.energy_j) for r in rows]
    assert acc.pareto_scores(rows, preds, pooled=True) == (100.0, 100.0, 3, 3)
    per = acc.pareto_scores(rows, preds, pooled=False)
    assert per[:2] == (100.0, 100.0) and per[2] == 3  # window 2:2: only its 4-SM point
    flat = [(1.0, 1.0)] * 4  # marking everything recovers the front, at low precision
    rec, prec, _, n_pred = acc.pareto_scores(rows, flat, pooled=True)
    assert rec == 100.0 and prec == 75.0 and n_pred == 4


def test_comm_rate_saturates_at_the_link_limit() -> None:
    free = dataclasses.replace(P, comm_max_bytes_per_s=float("inf"), comm_latency_s=0.0, per_block_s=0.0)
    sat = dataclasses.replace(free, comm_max_bytes_per_s=50e9, comm_saturation_exponent=2.0)
    nbytes = 32 * 2**20
    for k in (1, 8, 64):
        assert sm_comm_time_s(nbytes, k, 1024, sat) > sm_comm_time_s(nbytes, k, 1024, free)
    # few blocks: block-limited, ~ the unsaturated time; many blocks: ~ bytes / R_max
    assert sm_comm_time_s(nbytes, 1, 512, sat) == pytest.approx(sm_comm_time_s(nbytes, 1, 512, free), rel=0.01)
    assert sm_comm_time_s(nbytes, 107, 1024, sat) == pytest.approx(nbytes / 50e9, rel=0.05)
    # the default (no limit) is the old k r(b) rate
    assert OverlapParams.from_dict({"coefficients": {**_coeffs(), "comm_max_bytes_per_s": None}},
                                   num_sms=108).comm_max_bytes_per_s == float("inf")


def _coeffs() -> dict:
    c = {k: 0.0 for k in ("per_block_s", "comm_latency_s", "sm_exponent", "mem_interference", "sm_power_w",
                          "sm_power_block_exponent")}
    return c | {"per_sm_bytes_per_s_512": 4e9, "block_exponent": 0.0, "comm_slowdown": {}, "static_w": 80.0}


def test_small_comm_blocks_leave_sm_room_to_compute() -> None:
    # same comm speed for both block sizes (block_exponent 0); compute-bound kernel (alpha 1)
    base = OverlapParams.from_dict({"coefficients": _coeffs() | {"sm_exponent": 1.0}}, num_sms=108)
    kern = [Kernel(time_s=5e-3, dyn_power_w=200.0, cls="gemm")]

    def t(p: OverlapParams, b: int) -> float:
        return overlap_window(kern, comm_bytes=32 * 2**20, comm_sms=20, block_size=b, params=p).time_s

    assert t(base, 512) == pytest.approx(t(base, 1024))  # epsilon 0: a block holds its whole SM
    co = dataclasses.replace(base, sm_take_block_exponent=1.0)
    assert t(co, 512) < t(co, 1024) < t(base, 1024)
    # epsilon 1, 1024 of 2048 threads: the collective takes half of each of its 20 SMs
    comm_s = sm_comm_time_s(32 * 2**20, 20, 1024, co)
    assert t(co, 1024) == pytest.approx(5e-3 + comm_s * (1 - 98 / 108), rel=1e-9)  # work lost while contended


def test_comm_energy_per_byte_is_fixed_by_the_bytes() -> None:
    kern = [Kernel(time_s=2e-3, dyn_power_w=200.0, cls="gemm")]
    p0 = dataclasses.replace(P, comm_j_per_byte=0.0)
    p1 = dataclasses.replace(P, comm_j_per_byte=1e-10)
    for k in (4, 16):
        a = overlap_window(kern, comm_bytes=32 * 2**20, comm_sms=k, block_size=1024, params=p0)
        b = overlap_window(kern, comm_bytes=32 * 2**20, comm_sms=k, block_size=1024, params=p1)
        assert b.time_s == a.time_s
        assert b.comm_j - a.comm_j == pytest.approx(1e-10 * 32 * 2**20)


def test_fitted_profile_round_trips_the_new_coefficients() -> None:
    x = list(acc.X0)
    times, p = acc._params(x, 108, 400.0)
    prof = acc.to_profile(acc.np.asarray(x), acc.DEFAULT_FIT, {"rows": 0}, "test.csv")
    q = OverlapParams.from_dict(prof, num_sms=108, tdp_w=400.0)
    for f in ("comm_max_bytes_per_s", "comm_saturation_exponent", "comm_j_per_byte", "sm_take_block_exponent",
              "serial_per_block_s", "sm_power_share"):
        assert getattr(q, f) == pytest.approx(getattr(p, f)), f
    assert prof["block_kernels"]["solo_time_s"] == pytest.approx(times)


def test_class_prior_pulls_an_unseen_class_to_the_mean() -> None:
    x = list(acc.X0)
    assert len(acc._class_prior(x)) == 12
    same = dict(zip(acc.P_NAMES, x, strict=True))
    for fam in ("alpha", "sigma", "slow"):
        for c in ("memory", "gemm", "attention", "comm"):
            same[f"{fam}_{c}"] = 0.5
    assert acc._class_prior([same[n] for n in acc.P_NAMES]) == [0.0] * 12
