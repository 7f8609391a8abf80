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
