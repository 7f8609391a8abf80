"""benchmarks/kernels.py reads the extracted kernel tables and prices the same work for each op."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("op,gpu,group", [("moe", "H100-SXM", "ep=8"), ("gemm", "B200", "m=8192"),
                                          ("attention", "H200", "batch=8")])
def test_kernels_benchmark_runs(monkeypatch, capsys, op, gpu, group):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kernels

    monkeypatch.setattr(kernels, "MOE_TOKENS", (96,))  # keep it fast: one token count per shape and ep
    assert kernels.main(["--op", op, "--gpu", gpu]) == 0
    out = capsys.readouterr().out.strip()
    assert re.search(rf"MAPE by group: .*{group}: \d+\.\d% \(\d+\)", out)
    assert re.search(rf"MAPE {op} {gpu}: \d+\.\d% rows=\d+$", out)


@pytest.mark.parametrize(("gpu", "table"), [("H100-SXM", "h100_sxm"), ("B200", "b200_sxm")])
def test_gemv_coefficients_are_the_kernel_tables_and_the_fit_keeps_them(gpu, table):
    """``KERNEL_GEMV`` is what ``kernel_gemv_coefficients`` reads off vLLM's measured decode GEMMs, and
    the bundled profiles (fitted with them fixed) carry exactly those values."""
    import csv

    from energylens.costmodel.fit import KERNEL_GEMV, kernel_gemv_coefficients
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.profile import load_profile

    with open(ROOT / "data" / "public" / "aiconfigurator_kernels" / f"gemm_{table}.csv", newline="") as fh:
        measured = kernel_gemv_coefficients(list(csv.DictReader(fh)), get_gpu(gpu))
    assert KERNEL_GEMV[gpu] == pytest.approx(measured, rel=2e-3)
    prof = load_profile(gpu)
    for name, value in KERNEL_GEMV[gpu].items():
        assert getattr(prof, name) == pytest.approx(value, rel=1e-5), name
    assert "not fitted: measured on vLLM's decode GEMMs" in prof.provenance.fit


def test_gemv_coefficients_need_decode_rows():
    from energylens.costmodel.fit import kernel_gemv_coefficients
    from energylens.costmodel.hardware import get_gpu
    from energylens.errors import EnergylensError

    with pytest.raises(EnergylensError, match="m <= 8"):
        kernel_gemv_coefficients([{"m": "4096", "n": "4096", "k": "4096", "latency_us": "200"}], get_gpu("H100"))
