"""scripts/device_campaign stops at once, exit 2, on a machine without a GPU (it spent its whole
time limit measuring the CPU and returned 0 before)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the campaign would run")
def test_campaign_without_a_gpu_stops_with_exit_2(tmp_path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "device_campaign"), "quick", "5"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no nvidia-smi here: not a GPU machine" in r.stderr
    assert not list((tmp_path / "out").glob("*.jsonl"))
