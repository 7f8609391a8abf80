"""benchmarks/kernel_moe.py reads the extracted kernel tables and prices the same MoE layers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_moe_benchmark_runs(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kernel_moe

    monkeypatch.setattr(kernel_moe, "TOKENS", (96,))
    assert kernel_moe.main(["--gpu", "H100-SXM"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"MAPE by ep: ep=1: \d+\.\d% \(2 rows\)  ep=2: .* ep=8: \d+\.\d% \(2 rows\)$", out.strip())
    assert "Qwen/Qwen3-235B-A22B-Instruct-2507" in out
