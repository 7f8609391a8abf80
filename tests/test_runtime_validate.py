"""``energylens validate``: predicted vs measured per run and per op class, MAPEs, JSON, parity plot.

The GPU records are SYNTHETIC (``calibrate.synthetic_records``: the cost model with known
coefficients plus seeded noise); CPU records are made in the test. Nothing touches data/.
"""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from energylens.cli import app
from energylens.costmodel.profile import load_profile
from energylens.errors import EnergylensError
from energylens.runtime.calibrate import synthetic_records
from energylens.runtime.validate import METRICS, validate

runner = CliRunner()
TRUE = dict(mem_efficiency=0.7, compute_efficiency=0.6, kernel_overhead_s=8e-6, static_power_w=120.0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """SYNTHETIC H100 records: the quick suite's GPU shapes priced with known coefficients, 2% noise."""
    d = tmp_path_factory.mktemp("synthetic")
    true = load_profile("H100").with_params(**TRUE)
    path = d / "synthetic-h100.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records("H100", true, seed=5, noise=0.02)))
    timing = d / "timing-only.jsonl"
    timing.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records("H100", true, seed=6, energy=False)))
    return path, timing, true


def cpu_file(path):
    recs = [{"schema": 1, "key": f"k{i}", "kind": kind, "params": {"m": 1, "n": 8, "k": 8, "dtype": "float32"},
             "device": "cpu", "status": "ok",
             "result": {"time_s": 1e-5, "energy_j": None, "energy_unavailable_reason": "no energy meter: CPU run"},
             "env": {"env_id": "cpu"}} for i, kind in enumerate(("gemm", "gemm", "prefill"))]
    recs.append({"schema": 1, "key": "idle", "kind": "idle", "params": {}, "device": "cpu", "status": "skipped",
                 "reason": "idle power needs an energy meter", "env": {}})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_validate_reports_runs_classes_and_headline_mapes(synthetic):
    path, _, true = synthetic
    rep = validate([path], profiles={"H100-SXM": true})  # the generating profile: errors are the noise
    assert rep.compared == 40 and not rep.not_compared
    assert [m.name for m in rep.metrics] == list(METRICS)
    for m in rep.metrics:
        assert m.n > 0 and m.mape_pct < 5, m
    classes = {c.op_class: c for c in rep.classes}
    assert {"gemm", "hbm_copy", "prefill", "decode", "static", "norm:rms_norm_hf"} <= set(classes)
    assert classes["static"].mape_time_pct is None and classes["static"].mape_power_pct < 5
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["runs"][0]["time_err"] is not None and d["metrics"][0]["name"] == "prefill energy"
    buf = io.StringIO()
    rep.print(Console(file=buf, width=200), max_runs=3)
    out = buf.getvalue()
    assert "prefill energy" in out and "per op class" in out and "runs (3 of 40" in out


def test_bundled_profile_shows_the_error_of_wrong_coefficients(synthetic):
    path, _, _ = synthetic
    rep = validate([path])  # bundled H100 profile, not the generating one
    assert rep.metric("prefill latency").mape_pct > 5
    assert "H100-SXM" in rep.profiles
    assert validate(str(path)).metric("prefill latency").mape_pct == rep.metric("prefill latency").mape_pct  # one path


def test_metrics_without_energy_say_so(synthetic):
    _, timing, true = synthetic
    rep = validate([timing], profiles={"H100-SXM": true})
    assert rep.metric("decode ITL").mape_pct < 10
    for name in ("prefill energy", "decode energy/token", "average power"):
        assert rep.metric(name).mape_pct is None and rep.metric(name).text() == "n/a (no energy readings)"
    assert "energy readings: 0 of" in rep.energy_note


def test_reasons_for_missing_energy_are_counted_per_record_and_stray_lines_are_said(synthetic, tmp_path):
    """Every record without energy counts its meter's reason (a GPU record's used to be lost); a line
    that is not a record (not JSON, a list, a BOM in front) is counted, not silently dropped."""
    _, _, true = synthetic
    recs = synthetic_records("H100", true, seed=7, energy=False)
    for r in recs:
        if r.get("status") == "ok":
            r["result"]["energy_unavailable_reason"] = "counter reset"
    path = tmp_path / "reset.jsonl"
    path.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in recs) + "this is not json\n[1, 2, 3]\n")
    rep = validate([path], profiles={"H100-SXM": true})
    measured = sum(1 for r in recs if r.get("status") == "ok")
    assert f"energy readings: 0 of {measured} measured records (the others: counter reset x{measured})" == rep.energy_note
    assert rep.other_lines == 2 and rep.compared + len(rep.not_compared) == len(recs)
    for r in recs:  # sampled power without the energy counter: not counted as an energy reading
        if r.get("status") == "ok":
            r["result"]["avg_power_w"] = 300.0
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    note = validate([path], profiles={"H100-SXM": true}).energy_note
    power = sum(1 for r in recs if r.get("status") == "ok" and r["kind"] in ("idle", "static"))  # compared by power
    rest = measured - power
    assert note.startswith(f"energy readings: 0 of {rest} measured records (the others: counter reset x{rest});")
    assert f"; {rest} with power readings alone; {power} idle/static power record(s), compared by their power" in note


def test_parity_plot_is_written(synthetic, tmp_path):
    path, _, _ = synthetic
    out = validate([path]).parity_plot(tmp_path / "parity.png")
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


def test_cli_validate_json_and_plot(synthetic, tmp_path):
    path, _, _ = synthetic
    r = runner.invoke(app, ["validate", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metrics"][2]["name"] == "decode ITL"
    r = runner.invoke(app, ["validate", str(path), "--plot", str(tmp_path / "p.png"), "--runs", "0"])
    assert r.exit_code == 0, r.output
    assert "decode ITL" in r.output and (tmp_path / "p.png").exists()


def test_cli_validate_cpu_file_explains_what_it_cannot_compare(tmp_path):
    f = cpu_file(tmp_path / "quick-cpu.jsonl")
    r = runner.invoke(app, ["validate", str(f)])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "0 compared" in out and "nothing compared" in out and "not a GPU of the hardware DB" in out
    assert "energy readings: 0 of 3" in out and "idle power needs an energy meter" in out
    r = runner.invoke(app, ["validate", str(f), "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 2 and "no parity plot" in r.output


def test_cli_validate_without_measurement_files_exits_2(tmp_path):
    r = runner.invoke(app, ["validate", str(tmp_path)])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert r.output.startswith("error: nothing to validate: no measurement files")
    with pytest.raises(EnergylensError, match="no such file"):
        validate([tmp_path / "missing.jsonl"])


def test_cli_measure_delegates_to_the_campaign(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "m.jsonl"
    r = runner.invoke(app, ["measure", "--suite", "quick", "--device", "cpu", "--part", "micro:memory",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs and {x["part"] for x in recs} == {"micro:memory"}
    r = runner.invoke(app, ["measure", "--suite", "nope", "--out", str(out)])
    assert r.exit_code == 2 and "unknown suite" in r.output


def test_a_copied_file_counts_once_and_a_repeated_measurement_stays_in_one_half(synthetic, tmp_path):
    """The same record in two files (a copy) is read once; a measurement taken again (same GPU and key,
    other readings) falls in the same holdout half, so it is never fitted on and checked against."""
    from energylens.runtime.calibrate import build_samples, read_measurements, split_holdout

    path = synthetic[0]
    copy = tmp_path / "copy.jsonl"
    copy.write_text(path.read_text())
    one, two = validate([path]), validate([path, copy])
    assert two.compared == one.compared and two.repeated_records == one.compared + len(one.not_compared)
    out = io.StringIO()
    two.print(Console(file=out, width=200))
    assert "identical to one of an earlier file (a copy) read once" in out.getvalue()
    from energylens.runtime.calibrate import calibrate

    (fit,) = calibrate([path, copy], write=False)  # calibrate says so too
    assert any(f"{two.repeated_records} record(s) identical" in note for note in fit.notes)
    assert "SYNTHETIC: generated by the cost model" in fit.profile.provenance.summary(fit.gpu)  # not measured
    again = tmp_path / "again.jsonl"  # the same shapes measured again: other readings
    again.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records("H100", synthetic[2], seed=9, noise=0.02)))
    samples, _ = build_samples(read_measurements([path, again]).records)
    train, test = split_holdout(samples)
    assert {(s.gpu, s.key) for s in train}.isdisjoint({(s.gpu, s.key) for s in test})


def test_odd_records_are_malformed_not_tracebacks_nor_truncated(synthetic, tmp_path):
    recs = [json.loads(line) for line in synthetic[0].read_text().splitlines()]
    prefill = next(r for r in recs if r["kind"] == "prefill")
    gemm = next(r for r in recs if r["kind"] == "gemm")
    odd = [dict(prefill, key="half", params=dict(prefill["params"], batch=1.5)),
           dict(prefill, key="text", params=dict(prefill["params"], batch="4")),
           dict(prefill, key="inf", params=dict(prefill["params"], batch=float("inf"))),
           dict(gemm, key="huge", result=dict(gemm["result"], energy_j=1e300, time_s=1e-300, avg_power_w=None)),
           dict(gemm, key="name", env=dict(gemm["env"], gpu_name={"a": 1}))]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in odd))
    report = validate([path])
    reasons = {r["key"]: r["reason"] for r in report.not_compared}
    assert "batch 1.5 is not a whole positive number" in reasons["half"]
    assert "batch '4' is not a whole positive number" in reasons["text"]
    assert "batch inf is not a whole positive number" in reasons["inf"]
    assert "not a finite power" in reasons["huge"]
    assert "name" in reasons and report.compared == 0


def test_timing_of_a_zero_length_window_has_no_power_but_no_crash():
    from energylens.runtime.meter import Window
    from energylens.runtime.timing import Timing

    t = Timing.from_windows([Window("w", 0.0, 0.05, None, "counter"), Window("w", 0.2, 60.0, 300.0, "counter"),
                             Window("w", 0.2, 60.0, 300.0, "counter")], 1)
    assert t.energy_j == 60.0 and t.avg_power_w == 300.0


def test_measure_out_under_a_file_is_one_error_line(tmp_path):
    (tmp_path / "afile").write_text("")
    r = runner.invoke(app, ["measure", "--device", "cpu", "--part", "micro:power", "--out",
                            str(tmp_path / "afile" / "x.jsonl")])
    assert r.exit_code == 2 and "is a file, not a folder" in r.output
