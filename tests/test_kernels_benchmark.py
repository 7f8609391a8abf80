"""benchmarks/kernel_check.py reads the extracted kernel tables and prices the same work for each op."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("op,gpu,group", [("moe", "H100-SXM", "ep=8"), ("gemm", "B200", "m=8192"),
                                          ("attention", "H200", "batch=8")])
def test_kernels_benchmark_runs(monkeypatch, capsys, op, gpu, group):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # taken off again after the test
    import kernel_check as kernels

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


def test_kernel_attention_coefficients_recover_the_ones_that_made_the_times():
    """Rows timed by the model itself at known coefficients give those coefficients back."""
    from energylens.api import resolve_model
    from energylens.costmodel.analysis import WorkAnalysis, is_attention_op
    from energylens.costmodel.compute import op_time_s
    from energylens.costmodel.fit import ATTENTION_MODELS, KERNEL_GEMV, kernel_attention_coefficients
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.profile import default_profile
    from energylens.ir.core import Gather

    gpu = get_gpu("B200")
    truth = default_profile(gpu).with_params(**KERNEL_GEMV["B200"], attn_kernel_overhead_s=8.6e-6,
                                             attn_mem_efficiency=0.8, kv_seq_overhead_s=3e-8)
    rows = []
    for heads in ((32, 8), (64, 4)):
        for batch, step in ((1, 1023), (8, 4095), (32, 16383), (128, 1023), (512, 127)):
            ws = WorkAnalysis(resolve_model(ATTENTION_MODELS[heads]).decode, {"B": batch, "S": 1, "K": step}, gpu).run(
                lambda op: is_attention_op(op) and not (isinstance(op, Gather) and op.fn == "scatter"))
            t = sum(float(op_time_s(w, gpu, truth)) for _, _, w in ws)
            rows.append({"num_heads": heads[0], "num_key_value_heads": heads[1], "batch_size": batch, "step": step,
                         "latency_us": t * 1e6})
    got = kernel_attention_coefficients(rows, gpu, resolve_model)
    assert got["attn_mem_efficiency"] == pytest.approx(0.8, rel=0.01)
    assert got["kv_seq_overhead_s"] == pytest.approx(3e-8, rel=0.05)
