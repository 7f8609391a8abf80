"""Held-out accuracy: calibrate on one half of the runs, validate on the other half.

``pytest -s tests/test_calibration_holdout.py`` prints the held-out errors.

* On committed GPU runs (``data/measurements/*.jsonl`` listed in its README, with energy
  readings): the real held-out error. Skipped until such runs exist.
* On a SYNTHETIC file generated here from the cost model itself with known coefficients plus
  seeded noise (written under pytest's tmp_path, never under data/): the same code path must
  recover the coefficients and keep the held-out error near the noise level.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.profile import default_profile
from energylens.runtime.calibrate import build_samples, read_measurements, split_holdout, synthetic_records
from energylens.runtime.validate import holdout

MEASUREMENTS = Path(__file__).resolve().parents[1] / "data" / "measurements"

#: Known coefficients of the synthetic runs (H100-SXM), away from the datasheet start of the fit.
TRUE = dict(mem_efficiency=0.72, attn_mem_efficiency=0.58, compute_efficiency=0.78, gemm_half_rows=90.0,
            kernel_overhead_s=3.5e-6, kv_seq_overhead_s=2e-7, static_power_w=130.0, flop_pj=0.7, byte_pj=80.0)


def _committed_gpu_runs() -> list[Path]:
    if not any(MEASUREMENTS.glob("*.jsonl")):
        return []
    ms = read_measurements([MEASUREMENTS])
    samples, _ = build_samples(ms.records)
    files = {s.file for s in samples if s.energy_j is not None}
    return sorted(Path(f) for f in files)


def test_holdout_on_committed_gpu_runs():
    files = _committed_gpu_runs()
    if not files:
        pytest.skip("no GPU measurements committed yet")
    res = holdout(files, seed=0)
    print("\n[committed GPU runs] " + res.summary())
    assert res.report.compared > 0
    for m in res.report.metrics:
        assert m.mape_pct is None or m.mape_pct >= 0


def test_holdout_on_synthetic_runs_recovers_coefficients(tmp_path):
    # truth = the datasheet start with TRUE changed: what calibration does not fit matches the start
    true = default_profile(get_gpu("H100")).with_params(**TRUE)
    recs = synthetic_records("H100", true, seed=11, noise=0.03)  # SYNTHETIC: not a measurement
    assert all(r["env"]["synthetic"] for r in recs)
    path = tmp_path / "synthetic-h100-quick.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ms = read_measurements([path])
    samples, skipped = build_samples(ms.records)
    assert not skipped
    train, test = split_holdout(samples, seed=0)
    assert not {s.key for s in train} & {s.key for s in test} and len(train) + len(test) == len(samples)

    res = holdout([path], seed=0, base="datasheet")
    (cal,) = res.calibrations
    print(f"\n[SYNTHETIC runs, 3% noise] {res.summary()}")
    print("[SYNTHETIC] recovered: " + ", ".join(f"{k} {getattr(cal.profile, k):.4g} (true {v:.4g})"
                                               for k, v in TRUE.items()))
    for name, value in TRUE.items():
        tol = 0.25 if name in ("gemm_half_rows", "byte_pj", "attn_mem_efficiency", "static_power_w", "kv_seq_overhead_s") else 0.1
        assert getattr(cal.profile, name) == pytest.approx(value, rel=tol), name
    for m in res.report.metrics:
        assert m.mape_pct is not None and m.mape_pct < 8, m
    for c in res.report.classes:
        assert c.mape_time_pct is None or c.mape_time_pct < 10, c
