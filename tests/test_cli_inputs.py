"""Bad command-line and file input: one ``error:`` line and exit code 2 naming the bad value, or a
malformed record skipped and counted; never a traceback, never silently wrong.

The measurement records here are SYNTHETIC, made in the test (GEMM shapes with made-up times).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from energylens.cli import app
from energylens.errors import ConfigError, EnergylensError
from energylens.passes.manager import PassManager, parse_pipeline
from energylens.passes.shard import Shard
from energylens.search.report import plot, plot_path

runner = CliRunner()
ENV = {"gpu_name": "NVIDIA H100 80GB HBM3", "env_id": "synthetic-test", "synthetic": True}


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(r, *texts: str) -> None:
    assert r.exit_code == 2, r.output
    out = r.output.strip()
    assert out.startswith("error: ") and len(out.splitlines()) == 1, out
    for t in texts:
        assert t in out, (t, out)


def gemm(m: int, time_s: float = 1e-3, **result) -> dict:
    params = {"m": m, "n": 4096, "k": 4096, "dtype": "bfloat16"}
    return {"schema": 1, "key": f"gemm:{m}", "kind": "gemm", "params": params, "device": "cuda:0", "status": "ok",
            "result": {"time_s": time_s, "energy_j": 0.4 * time_s * 1e3, "avg_power_w": 400.0, **result},
            "env": ENV}


def write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))  # json writes NaN / Infinity as given
    return path


def good(n: int = 6) -> list[dict]:
    return [gemm(m, time_s=1e-5 * m + 2e-5) for m in (1, 16, 64, 256, 1024, 4096)[:n]]


# ---- 1. plot paths ----------------------------------------------------------------------------------
def test_plot_path_checks_the_format_and_adds_png(tmp_path):
    assert plot_path(tmp_path / "pareto") == tmp_path / "pareto.png" and plot_path("p.SVG") == Path("p.SVG")
    with pytest.raises(EnergylensError, match="it is a folder"):
        plot_path(tmp_path)  # not written next to the folder as tmp_path.png
    with pytest.raises(EnergylensError, match="does not exist"):
        plot_path(tmp_path / "nowhere" / "p.png")  # not created behind the user's back
    with pytest.raises(EnergylensError, match="not a regular file"):
        plot_path("/dev/null")  # not /dev/null.png
    with pytest.raises(EnergylensError, match=r"unknown image format 'txt'.*png"):
        plot_path("p.txt")
    with pytest.raises(EnergylensError, match="'txt'"):
        plot(object(), Path("p.txt"))  # Plan.plot: fails before drawing
    with pytest.raises(EnergylensError, match="empty plot path"):
        plot_path("")


@pytest.mark.parametrize("cmd", [("compile", "meta-llama/Llama-3.2-1B-Instruct", "--export", "vllm"),
                                 ("validate", "nowhere.jsonl")])
def test_bad_plot_extension_fails_up_front(cmd, tmp_path):
    one_error_line(run(*cmd, "--plot", tmp_path / "x.txt"), "'txt'", "png", "pdf", "svg")


def test_compile_reports_the_plot_file_written(tmp_path):
    r = run("compile", "meta-llama/Llama-3.2-1B-Instruct", "--gpus", "1", "--batch", "2", "--prompt-len", "64",
            "--output-len", "16", "--plot", tmp_path / "noext", "--export", "vllm")
    assert r.exit_code == 0, r.output
    assert f"Pareto plot: {tmp_path / 'noext.png'}\n" in r.output and (tmp_path / "noext.png").is_file()
    assert "vllm serve" in r.output


# ---- 2. estimate options ----------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (("--tp", "0"), "--tp must be an integer >= 1, got 0"),
    (("--dp", "0"), "--dp must be an integer >= 1, got 0"),
    (("--ep", "-2"), "--ep must be an integer >= 1, got -2"),
    (("--gpus", "0"), "--gpus must be an integer >= 1, got 0"),
    (("--gpus", "-8"), "--gpus must be an integer >= 1, got -8"),
    (("--top", "-1"), "--top must be an integer >= 0, got -1"),
    (("--interconnect", ""), "unknown interconnect ''"),
    (("--prefix-cache-hit", "1"), "--prefix-cache-hit must be a number in [0, 1), got 1.0"),
    (("--output-len-cv", "-1"), "--output-len-cv must be a number in [0, 10], got -1.0"),
])
def test_estimate_rejects_bad_counts_naming_the_option(args, message):
    one_error_line(run("estimate", "Qwen/Qwen3-0.6B", *args), message)


def test_compile_rejects_zero_gpus():
    one_error_line(run("compile", "Qwen/Qwen3-0.6B", "--gpus", "0"), "--gpus must be an integer >= 1, got 0")


def test_workload_options_reach_the_plan():
    r = run("compile", "Qwen/Qwen3-0.6B", "--gpus", "1", "--batch", "8", "--prefix-cache-hit", "0.3",
            "--output-len-cv", "0", "--json")
    assert r.exit_code == 0, r.output
    wl = json.loads(r.output)["workload"]
    assert wl["prefix_cache_hit"] == 0.3 and wl["output_len_cv"] == 0.0


# ---- 3. measure -------------------------------------------------------------------------------------
def test_measure_checks_device_and_out_before_running(tmp_path):
    out = tmp_path / "m.jsonl"
    one_error_line(run("measure", "--device", "foo", "--out", out), "unknown device 'foo'", "cpu, cuda, cuda:N")
    assert not out.exists()  # nothing measured, no error records written
    one_error_line(run("measure", "--device", "cpu", "--out", tmp_path), f"--out {tmp_path} is a folder")


# ---- 4. malformed measurement files -----------------------------------------------------------------
def test_validate_skips_and_counts_a_record_with_null_params(tmp_path):
    f = write(tmp_path / "m.jsonl", [*good(3), {**gemm(8), "params": None}])
    r = run("validate", f)
    assert r.exit_code == 0, r.output
    assert "1 malformed record(s) skipped" in r.output and "params is not a JSON object" in r.output
    r = run("calibrate", f, "--dry-run")  # the 3 good GEMMs calibrate (the priors regularise a small set)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "1 malformed record(s) skipped" in r.output


def test_calibrate_skips_non_finite_numbers_and_counts_them(tmp_path):
    f = write(tmp_path / "m.jsonl", [*good(), gemm(8, energy_j=math.inf), gemm(32, time_s=math.nan)])
    r = run("calibrate", f, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "calibrated on 6 records" in r.output and "2 malformed record(s) skipped" in r.output


def test_calibrate_with_power_but_no_energy_reading(tmp_path):
    """A sampled power without an energy reading: no energy residual, no crash."""
    f = write(tmp_path / "m.jsonl", [*good(), gemm(8, energy_j=None)])
    r = run("calibrate", f, "--dry-run")
    assert r.exit_code == 0, r.output


def test_calibrate_says_too_few_valid_records(tmp_path):
    static = {"schema": 1, "key": "static", "kind": "static", "params": {}, "device": "cuda:0", "status": "ok",
              "result": {"time_s": 1.0, "energy_j": 120.0, "avg_power_w": 120.0}, "env": ENV}
    bad = [gemm(1, time_s=-1e-3), gemm(16, time_s=math.nan), gemm(64, time_s=-2.0)]
    f = write(tmp_path / "m.jsonl", bad)
    one_error_line(run("calibrate", f, "--dry-run"), "nothing to calibrate: no record can be predicted",
                   "no positive result.time_s")
    f = write(tmp_path / "s.jsonl", [*bad, static])  # a static power reading alone calibrates static power
    r = run("calibrate", f, "--dry-run")
    assert r.exit_code == 0 and "calibrated on 1 records (1 with power readings)" in r.output, r.output


def test_a_json_document_is_not_a_measurement_file(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}, indent=2))
    one_error_line(run("validate", cfg), f"{cfg} is not a measurement file (a JSON document)")
    text = tmp_path / "notes.jsonl"
    text.write_text("some\nnotes\n")
    one_error_line(run("calibrate", text, "--dry-run"), "is not a measurement file (2 lines, none a measurement record)")
    line = tmp_path / "line.jsonl"  # one JSON object that no measurement wrote: neither validated nor appended to
    line.write_text('{"name": "notes", "x": 1}\n')
    one_error_line(run("validate", line), "is not a measurement file (a JSON document)")
    one_error_line(run("measure", "--suite", "quick", "--device", "cpu", "--part", "micro:power", "--out", line),
                   "is not a measurement file")
    assert line.read_text() == '{"name": "notes", "x": 1}\n'
    garbage = tmp_path / "garbage.jsonl"  # text, not a record cut by an interrupted run
    garbage.write_text("hello world\n")
    one_error_line(run("validate", garbage), "is not a measurement file (1 line, none a measurement record)")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_error_line(run("validate", empty), "nothing to validate: no measurement record in")
    one_error_line(run("calibrate", empty, "--out", tmp_path / "p3.txt"), "a profile file must end in .json")


# ---- 5. pipelines -----------------------------------------------------------------------------------
def test_pipeline_runs_shard_once():
    with pytest.raises(ConfigError, match="runs pass 'shard' 2 times"):
        PassManager.from_pipeline("shard{tp=2},shard{tp=2}")
    with pytest.raises(ConfigError, match="runs pass 'shard' 2 times"):
        PassManager((Shard(tp=2), Shard(tp=2)))
    one_error_line(run("ir", "Qwen/Qwen3-0.6B", "--pipeline", "shard{tp=2},fuse,shard{tp=2}"),
                   "runs pass 'shard' 2 times")


def test_overlap_total_sms_checked_first():
    with pytest.raises(ConfigError, match=r"total_sms must be the GPU's SM count \(>= 2\), got 0"):
        parse_pipeline("shard{tp=2},overlap{comm_sms=0,total_sms=0}")
    one_error_line(run("ir", "Qwen/Qwen3-0.6B", "--pipeline", "shard{tp=2},overlap{comm_sms=0,total_sms=0}"),
                   "total_sms must be the GPU's SM count (>= 2), got 0")


# ---- review fixes (CLI as a new user meets it) -------------------------------------------------------------

LLAMA = "meta-llama/Llama-3.2-1B-Instruct"
MOE = "Qwen/Qwen3-30B-A3B-Instruct-2507"


def test_json_and_export_together_is_an_error():
    one_error_line(run("compile", LLAMA, "--json", "--export", "vllm"), "--json and --export vllm", "give one")


@pytest.mark.parametrize("args, texts", [
    # without --gpus the cluster is a node of 8: the valid tp are those of a node, not of tp x dp = 3
    (("estimate", "meta-llama/Llama-3.1-8B-Instruct", "--tp", "3"), ("tp=3", "valid tp on 8 GPUs: 1, 2, 4, 8")),
    (("estimate", MOE, "--ep", "2"), ("ep=2 on tp x dp = 1 GPU", "needs tp x dp = 2", "valid ep on 1 GPU: 1")),
    (("estimate", MOE, "--ep", "2", "--tp", "4"), ("ep=2 with tp x dp = 4 x 1 = 4 GPUs", "valid ep: 1, 4")),
    (("estimate", LLAMA, "--comm-sms", "16"), ("--comm-sms=16", "no tensor-parallel collective to overlap")),
    (("estimate", LLAMA, "--routing", "zipf"), ("--routing 'zipf' applies to MoE models",)),
    (("estimate", MOE, "--routing", "histogram"), ("--routing histogram needs --routing-histogram",)),
    (("estimate", MOE, "--routing", "histogram", "--routing-histogram", "1,x"), ("entry 2 of 2 is 'x'",)),
    (("estimate", MOE, "--routing", "histogram", "--routing-histogram", "1,2"), ("2 entries", "128 experts")),
    (("estimate", LLAMA, "--gpu", "L40S", "--tp", "2", "--interconnect", "nvlink"), ("valid for it: pcie, ib",)),
    (("estimate", "Qwen/Qwen3-8B-Instruct"), ("Did you mean 'Qwen/Qwen3-8B'?",)),
    (("ir", "Qwen/Qwen3-0.6B", "--pipeline", "shard{tp=2},overlap{comm_sms=120}"),
     ("overlap{comm_sms=120}", "total_sms=108", "total_sms=132")),
    (("ir", "Qwen/Qwen3-0.6B", "--pipeline", "shard{tp=2},shard{tp=2}"), ("passes in order: shard, shard",)),
])
def test_review_errors_are_one_clear_line(args, texts):
    one_error_line(run(*args), *texts)


def test_routing_histogram_from_the_cli():
    counts = ",".join(str(i + 1) for i in range(128))
    r = run("estimate", MOE, "--tp", "2", "--ep", "2", "--routing", "histogram", "--routing-histogram", counts,
            "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["decode"]["latency_s"] > 0


def test_model_paths_that_do_not_exist_or_are_not_configs(tmp_path):
    one_error_line(run("estimate", str(tmp_path / "nothere") + "/"), "does not exist")
    one_error_line(run("estimate", "./nothere"), "does not exist")
    (tmp_path / "notes.txt").write_text("hello")
    one_error_line(run("estimate", tmp_path / "notes.txt"), "is not a model config")


def test_plot_failure_does_not_lose_the_printed_plan(tmp_path):
    r = run("compile", LLAMA, "--gpus", "1", "--export", "vllm", "--plot", tmp_path)  # a folder: refused up front
    one_error_line(r, "it is a folder")


# ---- runtime review fixes --------------------------------------------------------------------------------

def test_calibrate_needs_out_and_checks_it_before_fitting(tmp_path):
    f = write(tmp_path / "m.jsonl", good())
    one_error_line(run("calibrate", f), "give --out FOLDER or FILE.json", "--dry-run")  # never the bundled ones
    one_error_line(run("calibrate", f, "--out", f), "is a file, not a folder")
    (tmp_path / "dir.json").mkdir()
    one_error_line(run("calibrate", f, "--out", tmp_path / "dir.json"), "is a folder")
    r = run("calibrate", f, "--out", tmp_path / "profiles")
    assert r.exit_code == 0 and (tmp_path / "profiles" / "h100-sxm.json").exists(), r.output


def test_calibrate_refuses_fewer_readings_than_coefficients(tmp_path):
    one_error_line(run("calibrate", write(tmp_path / "m.jsonl", [gemm(8)]), "--dry-run"),
                   "too few readings of H100-SXM to calibrate: 1 times and 1 powers for")


@pytest.mark.parametrize("m", [-4, 0, 64.5, "64", True])
def test_impossible_gemm_sizes_are_malformed(tmp_path, m):
    f = write(tmp_path / "m.jsonl", [*good(), {**gemm(8), "params": {**gemm(8)["params"], "m": m}}])
    r = run("calibrate", f, "--dry-run")
    assert r.exit_code == 0 and "1 malformed record(s) skipped" in r.output and "params.m" in r.output, r.output


def test_a_broken_profile_file_is_one_error(tmp_path):
    (tmp_path / "h100-sxm.json").write_text("{not json")
    one_error_line(run("validate", write(tmp_path / "m.jsonl", good()), "--profiles", tmp_path),
                   "is not a readable profile JSON")


@pytest.mark.parametrize("resume", [[], ["--no-resume"]])
def test_measure_never_appends_to_or_deletes_a_file_that_is_not_a_measurement_file(tmp_path, resume):
    victim = tmp_path / "profile.json"
    victim.write_text(json.dumps({"gpu": "H100-SXM", "mem_efficiency": 0.9}, indent=2))
    before = victim.read_text()
    one_error_line(run("measure", "--device", "cpu", "--out", victim, "--budget-s", "5", *resume),
                   "is not a measurement file (a JSON document)")
    assert victim.read_text() == before


def test_the_same_key_on_two_gpus_is_two_measurements(tmp_path):
    a100 = {**ENV, "gpu_name": "NVIDIA A100-SXM4-80GB"}
    f = write(tmp_path / "m.jsonl", [*good(), *[{**r, "env": a100} for r in good()]])
    from energylens.runtime.calibrate import read_measurements

    assert len(read_measurements([f]).records) == 12
    f = write(tmp_path / "r.jsonl", [*good(), *good()])  # a repeated run on one GPU: the newest lines
    assert len(read_measurements([f]).records) == 6


@pytest.mark.parametrize("drop, reason", [("device", "no device in the record"), ("status", "no status"),
                                          ("params", "no params")])
def test_a_record_missing_a_field_says_which(tmp_path, drop, reason):
    bad = {k: v for k, v in gemm(8).items() if k != drop}
    r = run("calibrate", write(tmp_path / "m.jsonl", [*good(), bad]), "--dry-run")
    assert r.exit_code == 0 and "1 malformed record(s) skipped" in r.output and reason in r.output, r.output


def test_calibrate_for_a_gpu_the_files_do_not_hold_names_the_ones_they_do(tmp_path):
    one_error_line(run("calibrate", write(tmp_path / "m.jsonl", good()), "--gpu", "A100-SXM-80GB", "--dry-run"),
                   "nothing to calibrate for A100-SXM-80GB: the files hold records of H100-SXM")


def test_calibrate_does_not_call_undetermined_coefficients_fitted(tmp_path):
    """Decode-sized GEMMs (memory-bound) do not determine the compute efficiency: reported as kept."""
    recs = [gemm(m, time_s=4e-5 + 1e-7 * m) for m in (1, 2, 4, 8, 16)]
    r = run("calibrate", write(tmp_path / "m.jsonl", recs), "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)[0]
    assert "compute_efficiency" not in res["fitted"] and "not determined" in res["kept"]["compute_efficiency"]
    assert "mem_efficiency" in res["fitted"]


def test_choice_names_take_any_case_like_gpu_names() -> None:
    r = run("compile", "Qwen/Qwen3-0.6B", "--gpus", "1", "--batch", "4", "--objective", "Latency", "--export", "VLLM")
    assert r.exit_code == 0, r.output
    assert "energylens latency plan" in r.output and "vllm serve Qwen/Qwen3-0.6B" in r.output
    r = run("estimate", "Qwen/Qwen3-30B-A3B-Instruct-2507", "--batch", "4", "--routing", "Zipf")
    assert r.exit_code == 0, r.output


def test_export_header_gives_no_itl_for_one_output_token() -> None:
    """One output token has no inter-token gap (the report prints '-'): the export header says none."""
    r = run("compile", "Qwen/Qwen3-0.6B", "--gpus", "1", "--batch", "4", "--prompt-len", "16", "--output-len", "1",
            "--export", "vllm")
    assert r.exit_code == 0, r.output
    assert "# predicted: " in r.output and "ITL" not in r.output.split("# predicted: ")[1].splitlines()[0]


def test_prefix_hit_share_is_not_rounded_to_all() -> None:
    from types import SimpleNamespace

    from energylens import Workload
    from energylens.search.report import serving_label

    serving = SimpleNamespace(kv_limited=False, batch=4)
    assert "99.9% prefix hits" in serving_label(Workload(batch=4, prompt_len=8, prefix_cache_hit=0.999), serving)
    assert "50% prefix hits" in serving_label(Workload(batch=4, prompt_len=8, prefix_cache_hit=0.5), serving)


def test_plot_in_a_folder_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(EnergylensError, match="is a file, not a folder"):
        plot_path(tmp_path / "f" / "p.png")


def test_compile_clock_option_restricts_the_searched_clocks() -> None:
    r = run("compile", "Qwen/Qwen3-0.6B", "--gpus", "1", "--batch", "4", "--clock-mhz", "1980", "--json")
    assert r.exit_code == 0, r.output
    assert {p["clock_mhz"] for p in json.loads(r.output)["pareto"]["rows"]} == {1980}
    one_error_line(run("compile", "Qwen/Qwen3-0.6B", "--gpus", "1", "--clock-mhz", "100"),
                   "--clock-mhz must be in 990..1980 MHz on H100-SXM", "got [100]")


def test_a_saved_plan_exports_as_compile_does(tmp_path) -> None:
    """`compile --json` keeps the exporters' fields under "spec"; `export` reads them back (or bare
    PlanSpec fields) and prints what the exporters print; a file that is not a plan is one error."""
    import json

    from energylens.export import PlanSpec, to_vllm

    r = run("compile", "Qwen/Qwen3-0.6B", "--gpus", "2", "--batch", "8", "--json")
    assert r.exit_code == 0, r.output
    saved = json.loads(r.output)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(saved))
    spec = PlanSpec.from_dict(saved["spec"])
    assert spec.to_dict() == saved["spec"] and spec.model == "Qwen/Qwen3-0.6B"
    r = run("export", path)
    assert r.exit_code == 0 and r.output == to_vllm(spec, cli=True), r.output
    (tmp_path / "spec.json").write_text(json.dumps(saved["spec"]))
    r = run("export", tmp_path / "spec.json", "--to", "Megatron")
    assert r.exit_code == 0 and '"tensor_model_parallel_size"' in r.output, r.output
    (tmp_path / "bad.json").write_text(json.dumps(dict(saved["spec"], tp=2)))
    one_error_line(run("export", tmp_path / "bad.json"), "not a plan (unknown plan.tp)")
    (tmp_path / "text.json").write_text("vllm serve x")
    one_error_line(run("export", tmp_path / "text.json"), "is not JSON")
    one_error_line(run("export", tmp_path / "none.json"), "cannot read the plan")
    one_error_line(run("export", path, "--to", "sglang"), "unknown export target 'sglang'")
    r = runner.invoke(app, ["export", "-"], input=json.dumps(saved))  # compile --json | energylens export -
    assert r.exit_code == 0 and r.output == to_vllm(spec, cli=True), r.output
    (tmp_path / "edited.json").write_text(json.dumps(dict(saved, parallel={"tp": 2, "ep": 1, "dp": 1})))
    one_error_line(run("export", tmp_path / "edited.json"), "plan.parallel differ between the plan and its \"spec\"")
    no_ep = dict(saved["spec"], parallel={"tp": 1, "dp": 2})  # a plan's parallel is whole, not defaulted
    (tmp_path / "no_ep.json").write_text(json.dumps(no_ep))
    one_error_line(run("export", tmp_path / "no_ep.json"), "plan.parallel must be")


def test_estimate_and_compile_take_a_profiles_folder(tmp_path) -> None:
    """--profiles: a folder of profile JSONs (as calibrate --out writes) instead of the bundled ones."""
    import json

    from energylens.costmodel.profile import load_profile, profile_path

    base = load_profile("H100-SXM")
    hot = base.with_params(static_power_w=2 * base.static_power_w)
    (tmp_path / profile_path("H100-SXM").name).write_text(hot.model_dump_json())
    args = ("estimate", "Qwen/Qwen3-0.6B", "--batch", "4", "--json")
    plain, edited = (json.loads(run(*args, *extra).output) for extra in ((), ("--profiles", tmp_path)))
    assert edited["decode"]["avg_power_w"] > plain["decode"]["avg_power_w"] * 1.3
    assert edited["profile"].endswith("then edited by hand (static_power_w)")
    r = run("compile", "Qwen/Qwen3-0.6B", "--gpus", "1", "--batch", "4", "--profiles", tmp_path)
    assert r.exit_code == 0 and "edited by hand" in r.output, r.output
    one_error_line(run(*args, "--profiles", tmp_path / "none"), "profile directory", "leave --profiles out")
