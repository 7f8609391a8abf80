"""Measurement campaign on CPU: the quick suite, the JSONL schema, resume, budgets."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from energylens.errors import UnknownNameError  # noqa: E402
from energylens.runtime.measure import SCHEMA_VERSION, main, measure, plan_parts  # noqa: E402

QUIET = {"progress": lambda line: None}


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def quick_cpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "quick.jsonl"
    lines: list[str] = []
    summary = measure("quick", out, device="cpu", progress=lines.append)
    return out, summary, lines


def test_quick_suite_on_cpu_runs_timing_only(quick_cpu):
    out, summary, lines = quick_cpu
    recs = _records(out)
    assert summary.errors == 0 and summary.written == len(recs) > 20 and summary.incomplete_parts == ()
    assert {r["part"] for r in recs} == set(plan_parts("quick", "cpu"))
    assert any("e2e:Qwen3-30B-A3B" in line for line in lines)  # progress is printed
    for r in recs:
        assert r["schema"] == SCHEMA_VERSION and r["device"] == "cpu" and r["status"] in ("ok", "skipped")
        assert r["env"]["torch"] and r["env"]["hostname_hash"] and r["env"]["env_id"]
        assert "energylens_commit" in r["env"]  # the git HEAD of the checkout (None without one)
        if r["status"] == "ok":
            assert r["result"]["time_s"] > 0
            assert r["result"]["energy_j"] is None and r["result"]["energy_unavailable_reason"]
        else:
            assert r["reason"]
    e2e = [r for r in recs if r["part"].startswith("e2e:")]
    assert {r["params"]["model"] for r in e2e} == {
        "tiny:meta-llama/Llama-3.2-1B-Instruct", "tiny:Qwen/Qwen3-8B", "tiny:Qwen/Qwen3-30B-A3B-Instruct-2507"}
    assert {r["kind"] for r in e2e} == {"prefill", "decode"}
    assert len({r["key"] for r in recs}) == len(recs)


def test_resume_skips_what_is_there_and_redoes_torn_lines(quick_cpu, tmp_path):
    out, _, _ = quick_cpu
    recs = out.read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    # the first 5 records, then a line cut in the middle by an interrupted run
    partial.write_text("\n".join(recs[:5]) + "\n" + recs[5][:40])
    s = measure("quick", partial, device="cpu", parts=["micro:gemm"], **QUIET)
    again = _records_lenient(partial)
    gemm_total = sum(1 for r in map(json.loads, recs) if r["part"] == "micro:gemm")
    assert s.already_present == 5 and s.written == gemm_total - 5
    assert len({r["key"] for r in again}) == gemm_total
    s2 = measure("quick", partial, device="cpu", parts=["micro:gemm"], **QUIET)
    assert s2.written == 0 and s2.already_present == gemm_total


def test_resume_skips_only_its_own_gpus_records(quick_cpu, tmp_path):
    """Records of the same keys taken on another GPU are not this run's: it measures them again."""
    out, _, _ = quick_cpu
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    gemm = [r for r in recs if r["part"] == "micro:gemm"]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "env": {**r["env"], "gpu_name": "NVIDIA H100 80GB HBM3"}}) + "\n"
                             for r in gemm))
    lines: list[str] = []
    s = measure("quick", other, device="cpu", parts=["micro:gemm"], progress=lines.append)
    assert s.already_present == 0 and s.written == len(gemm)
    assert f"{len(gemm)} record(s) of NVIDIA H100 80GB HBM3 there too, kept as they are" in lines[0]


def _records_lenient(path):
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_budget_stops_a_part_and_says_so(tmp_path):
    lines: list[str] = []
    out = tmp_path / "b.jsonl"
    s = measure("quick", out, device="cpu", parts=["micro:memory"], budget_s=1e-9, progress=lines.append)
    assert s.incomplete_parts == ("micro:memory",) and s.written <= 1
    assert any("run the same command again" in line for line in lines)


def test_no_resume_starts_anew_and_bad_names(tmp_path):
    out = tmp_path / "n.jsonl"
    out.write_text('{"key": "old", "status": "ok"}\n')
    said: list[str] = []
    measure("quick", out, device="cpu", resume=False, parts="micro:power", progress=said.append)  # one part: a str
    assert all(r["key"] != "old" for r in _records(out))
    assert any("1 earlier record(s) were discarded" in line for line in said)
    with pytest.raises(UnknownNameError, match="quick"):
        measure("quik", out, device="cpu", **QUIET)
    with pytest.raises(UnknownNameError, match="micro:gemm"):
        measure("quick", out, device="cpu", parts=["micro:gem"], **QUIET)


def test_cuda_without_a_gpu_says_so(tmp_path):
    import torch

    from energylens.errors import DeviceUnavailableError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailableError, match="no CUDA GPU"):
        measure("quick", tmp_path / "x.jsonl", device="cuda", **QUIET)


def test_main_entry_point(tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    assert main(["--suite", "quick", "--out", str(out), "--device", "cpu", "--part", "micro:power"]) == 0
    assert "written" in capsys.readouterr().out
    assert _records(out)
    assert main(["--out", str(out), "--device", "gpu"]) == 2  # one line, as `energylens measure` says it
    assert capsys.readouterr().err.startswith("error: unknown device 'gpu'")


@pytest.mark.gpu
def test_quick_suite_on_gpu_has_energy(tmp_path):
    out = tmp_path / "gpu.jsonl"
    s = measure("quick", out, device="cuda", parts=["micro:memory", "micro:power"])
    assert s.errors == 0
    ok = [r for r in _records(out) if r["status"] == "ok"]
    assert ok and all(r["result"].get("energy_j") is not None or r["kind"] == "sm_contention" for r in ok)
    assert ok[0]["env"]["gpu_name"] and ok[0]["env"]["meter"]["driver_version"]


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), 0.0])
def test_budget_must_be_finite_and_positive(tmp_path, budget):
    from energylens.errors import InvalidWorkloadError

    with pytest.raises(InvalidWorkloadError, match="budget_s must be a finite number > 0"):
        measure("quick", tmp_path / "m.jsonl", device="cpu", parts=["micro:memory"], budget_s=budget)
