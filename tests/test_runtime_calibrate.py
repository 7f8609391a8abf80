"""Calibration from measurement files: records as IR work, agreement with estimate, the fit, provenance.

Every record here is SYNTHETIC (made in the test, or by ``calibrate.synthetic_records`` from the
cost model itself); nothing is read from or written to data/.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import energylens as el
from energylens.cli import app
from energylens.costmodel.analysis import price_graph
from energylens.costmodel.fit import FIT_PARAMS
from energylens.costmodel.hardware import get_gpu, list_gpus
from energylens.costmodel.profile import default_profile, load_profile
from energylens.errors import EnergylensError
from energylens.ir.verify import verify_graph
from energylens.runtime.calibrate import (
    PARAMS,
    Measured,
    _bounds,
    build_samples,
    calibrate,
    calibrate_samples,
    contention_exponent,
    e2e_workload,
    gpu_of_record,
    microbench_graph,
    predict,
    read_measurements,
    synthetic_records,
)

H100 = get_gpu("H100")
ENV = {"gpu_name": "NVIDIA H100 80GB HBM3", "env_id": "synthetic-test", "synthetic": True}
#: Known coefficients the synthetic records are generated with.
TRUE = dict(mem_efficiency=0.7, attn_mem_efficiency=0.55, compute_efficiency=0.8, gemm_half_rows=100.0,
            kernel_overhead_s=4e-6, kv_seq_overhead_s=1.5e-7, static_power_w=120.0, flop_pj=0.6, byte_pj=90.0)


def rec(kind: str, params: dict, result: dict | None = None, device: str = "cuda:0", **extra) -> dict:
    return {"schema": 1, "key": f"{kind}:{json.dumps(params, sort_keys=True)}", "kind": kind, "params": params,
            "device": device, "status": "ok", "result": {"time_s": 1e-3, "energy_j": 0.5, **(result or {})},
            "env": ENV, **extra}


def samples_of(*recs: dict):
    samples, skipped = build_samples([Measured("synthetic", i, r) for i, r in enumerate(recs)])
    assert not skipped, skipped
    return samples


def write(path, recs) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


@pytest.mark.parametrize(("name", "expected"), [
    ("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA H100 PCIe", "H100-PCIe"), ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
    ("NVIDIA H200", "H200"), ("NVIDIA H100 NVL", None),
])
def test_gpu_of_record_maps_nvml_names_and_says_why_not(name, expected):
    gpu, why = gpu_of_record({"device": "cuda:0", "env": {"gpu_name": name}})
    assert (gpu.name if gpu else None) == expected
    assert (why is None) == (expected is not None)
    gpu, why = gpu_of_record({"device": "cpu", "env": {}})
    assert gpu is None and "not a GPU of the hardware DB" in why


@pytest.mark.parametrize("gpu_name", list_gpus())
def test_calibration_bounds_are_the_fit_bounds(gpu_name):
    """One bounds table: calibrate bounds a coefficient as costmodel.fit.FIT_PARAMS does."""
    gpu = get_gpu(gpu_name)
    table = {name: (lo, hi, log) for name, lo, hi, log in FIT_PARAMS}
    assert {p.name for p in PARAMS} <= set(table)
    for p in PARAMS:
        lo, hi, log = table[p.name]
        if p.name == "static_power_w":  # fit bounds it as a fraction of TDP, floored at idle power
            lo, hi = max(lo * gpu.tdp_w, gpu.idle_power_w), hi * gpu.tdp_w
        assert _bounds(p, gpu) == pytest.approx((lo, hi), rel=1e-12), p.name
        assert p.log == log, p.name
    kernel = next(p for p in PARAMS if p.name == "kernel_overhead_s")
    assert _bounds(kernel, gpu) == (1e-7, 5e-5)  # calibrate's own table had 1e-8 here


def test_microbench_graphs_verify_and_match_the_measured_work():
    cases = [
        ("gemm", {"m": 64, "n": 2048, "k": 512, "dtype": "bfloat16"}, 2 * 64 * 2048 * 512, (64 * 512 + 2048 * 512 + 64 * 2048) * 2),
        ("hbm_copy", {"bytes": 2**20, "dtype": "bfloat16"}, 0, 2 * 2**20),
        ("elementwise", {"op": "add", "tokens": 64, "hidden": 256, "dtype": "bfloat16"}, 64 * 256, 3 * 64 * 256 * 2),
        ("attention_decode", {"heads": 32, "kv_heads": 8, "head_dim": 64, "batch": 4, "kv_len": 1024,
                              "dtype": "bfloat16"}, 2 * 2 * 4 * 32 * 1024 * 64, None),
    ]
    for kind, params, flops, nbytes in cases:
        g, binding = microbench_graph(kind, params)
        verify_graph(g)
        ops = price_graph(g, binding, H100, load_profile(H100))
        tc = sum(p.count * p.work.tc_flops for p in ops)
        if kind in ("gemm", "attention_decode"):
            assert tc == pytest.approx(flops, rel=1e-9), kind
        if nbytes is not None:
            assert sum(p.count * p.work.hbm_bytes for p in ops) == pytest.approx(nbytes, rel=1e-9), kind
    with pytest.raises(EnergylensError):
        microbench_graph("idle", {})


def test_predictions_equal_price_graph_and_estimate():
    prof = load_profile(H100)
    gemm = {"m": 16, "n": 4096, "k": 4096, "dtype": "bfloat16"}
    pre = {"model": "meta-llama/Llama-3.2-1B-Instruct", "phase": "prefill", "batch": 2, "prompt_len": 256,
           "dtype": "bfloat16"}
    dec = {"model": "meta-llama/Llama-3.2-1B-Instruct", "phase": "decode", "batch": 8, "context_len": 512,
           "dtype": "bfloat16"}
    recs = [rec("gemm", gemm), rec("prefill", pre), rec("decode", dec, {"attended_kv_len": 520})]
    p_gemm, p_pre, p_dec = predict(samples_of(*recs), prof)
    g, b = microbench_graph("gemm", gemm)
    (op,) = price_graph(g, b, H100, prof)
    assert p_gemm.time_s == pytest.approx(op.cost.time_s, rel=1e-9)
    assert p_gemm.energy_j == pytest.approx(op.cost.energy_j, rel=1e-9)
    wl, _ = e2e_workload(recs[1])
    est = el.estimate(pre["model"], el.Cluster("H100"), wl, fused=False, profile=prof)
    assert p_pre.time_s == pytest.approx(est.prefill.latency_s, rel=1e-9)
    assert p_pre.energy_j == pytest.approx(est.prefill.energy_j, rel=1e-9)
    wl, binding = e2e_workload(recs[2])
    assert wl.decode_context_len == binding["K"] == 520
    est = el.estimate(dec["model"], el.Cluster("H100"), wl, fused=False, profile=prof)
    assert p_dec.time_s == pytest.approx(est.decode.itl_s, rel=1e-9)
    assert p_dec.energy_j / 8 == pytest.approx(est.decode.energy_per_token_j, rel=1e-9)


def test_read_measurements_newest_line_wins_torn_lines_and_readme_rule(tmp_path):
    a, b = rec("gemm", {"m": 1, "n": 64, "k": 64, "dtype": "bfloat16"}), rec("hbm_copy", {"bytes": 4096, "dtype": "bfloat16"})
    err = {**a, "status": "error", "reason": "boom"}
    f = tmp_path / "runs.jsonl"
    f.write_text(json.dumps(err) + "\n" + json.dumps(b) + "\n" + json.dumps(a) + "\n" + json.dumps(b)[:30])
    ms = read_measurements([tmp_path])
    assert [m.rec["status"] for m in ms.records] == ["ok", "ok"] and ms.torn_lines == 1
    (tmp_path / "README.md").write_text("| file | GPU |\n| --- | --- |\n| `other.jsonl` | H100 |\n")
    ms = read_measurements([tmp_path])
    assert ms.records == [] and "not listed in" in ms.excluded_files[0][1]
    with pytest.raises(EnergylensError, match="no measurement files"):
        read_measurements([_empty(tmp_path)])


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_fit_recovers_known_coefficients_and_writes_a_profile_with_provenance(tmp_path):
    true = load_profile(H100).with_params(**TRUE, attn_kernel_overhead_s=None)  # the datasheet base has no floor
    path = write(tmp_path / "synthetic-h100.jsonl", synthetic_records("H100", true, seed=3, noise=0.02))
    (res,) = calibrate([path], out=tmp_path / "profiles", base="datasheet")
    for name, value in TRUE.items():
        tol = 0.2 if name in ("gemm_half_rows", "byte_pj", "attn_mem_efficiency", "kv_seq_overhead_s") else 0.08
        assert getattr(res.profile, name) == pytest.approx(value, rel=tol), name
    assert set(res.fitted) == set(TRUE) and res.kept == {}
    loaded = load_profile("H100", tmp_path / "profiles")
    prov = loaded.provenance
    assert prov.method == "fit" and "synthetic-h100.jsonl (sha256" in prov.data and "synthetic-3" in prov.data
    assert prov.rows == res.samples and prov.residuals["mape_time_gemm_pct"] < 5
    assert "norm:rms_norm_hf: HF's unfused" in prov.notes and "elementwise:silu_mul: eager silu then mul" in prov.notes


def test_timing_only_records_fit_time_only_and_say_so():
    true = load_profile(H100).with_params(**TRUE, attn_kernel_overhead_s=None)  # the datasheet base has no floor
    recs = [r for r in synthetic_records("H100", true, seed=1, energy=False) if r["kind"] != "static"]
    samples = samples_of(*recs)
    # the kept power coefficients set where the power limiter slows a GEMM: keep the generator's,
    # so that the times alone must recover the time coefficients
    base = default_profile(H100).with_params(static_power_w=TRUE["static_power_w"], flop_pj=TRUE["flop_pj"],
                                             byte_pj=TRUE["byte_pj"])
    res = calibrate_samples(samples, base=base)
    assert {"static_power_w", "flop_pj", "byte_pj"} <= set(res.kept) and res.energy_samples == 0
    assert res.profile.flop_pj == base.flop_pj and res.profile.static_power_w == base.static_power_w
    assert res.profile.compute_efficiency == pytest.approx(TRUE["compute_efficiency"], rel=0.08)
    assert "no energy readings" in res.profile.provenance.notes


def test_contention_exponent_from_sm_contention_records():
    gemm = {"m": 2048, "n": 8192, "k": 2048, "dtype": "bfloat16"}
    recs = [rec("sm_contention", {**gemm, "blocks": k}, {"time_s": 1e-3 * (132 / (132 - k)) ** 0.3},
                alone={"time_s": 1e-3}, sms=132) for k in (8, 16, 32)]
    fit = contention_exponent(samples_of(*recs))
    assert fit["sm_exponent"] == pytest.approx(0.3, abs=1e-3) and fit["rows"] == 3


def test_sm_contention_is_predicted_on_a_gpu_without_its_own_overlap_fit():
    """The H100 has no overlap fit of its own: the cost model carries the A100's over, and so do
    the predictions of its sm_contention records (they were counted as compared with nothing predicted)."""
    from energylens.costmodel.plan import overlap_params

    gemm = {"m": 2048, "n": 8192, "k": 2048, "dtype": "bfloat16"}
    (s,) = samples_of(rec("sm_contention", {**gemm, "blocks": 32}, alone={"time_s": 1e-3}, sms=132))
    (p,) = predict([s], load_profile(H100))
    exponent = overlap_params(H100, load_profile(H100)).sm_exponent
    assert p.time_s == pytest.approx(1e-3 * (132 / 100) ** exponent)


@pytest.mark.parametrize("blocks", [132, 140, 0, -5])
def test_sm_contention_blocks_outside_the_gpus_sms_are_malformed(blocks):
    gemm = {"m": 2048, "n": 8192, "k": 2048, "dtype": "bfloat16"}
    r = rec("sm_contention", {**gemm, "blocks": blocks}, alone={"time_s": 1e-3}, sms=132)
    samples, skipped = build_samples([Measured("synthetic", 0, r)])
    assert not samples and skipped[0][1].startswith(f"malformed record: params.blocks {blocks} is not in 1..sms-1")


def test_a_file_reached_twice_is_read_once(tmp_path):
    true = load_profile(H100).with_params(**TRUE, attn_kernel_overhead_s=None)
    path = write(tmp_path / "s.jsonl", synthetic_records("H100", true, seed=2))
    once = read_measurements([path])
    assert len(read_measurements([path, path, tmp_path]).records) == len(once.records)


def test_cli_calibrate_dry_run_and_cpu_file(tmp_path):
    runner = CliRunner()
    true = load_profile(H100).with_params(**TRUE, attn_kernel_overhead_s=None)  # the datasheet base has no floor
    path = write(tmp_path / "s.jsonl", synthetic_records("H100", true, seed=2))
    r = runner.invoke(app, ["calibrate", path, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dry run, not written" in r.output and "compute_efficiency" in r.output
    assert not list(tmp_path.glob("*.json"))
    cpu = write(tmp_path / "cpu.jsonl", [rec("gemm", {"m": 1, "n": 8, "k": 8, "dtype": "float32"}, device="cpu")])
    r = runner.invoke(app, ["calibrate", cpu, "--out", str(tmp_path)])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "nothing to calibrate" in r.output and "not a GPU of the hardware DB" in r.output
