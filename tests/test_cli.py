"""The command line: the README's main command, listings, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from energylens.cli import app, main

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_readme_main_command_compiles_a_plan_for_the_cluster():
    """The README's first command: Llama-3.1-70B (full size, traced on meta) on 8 x H100."""
    r = run("compile", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "H100-SXM", "--gpus", "8", "--batch", "64",
            "--prompt-len", "1024", "--output-len", "256", "--slo-itl-ms", "40")
    assert r.exit_code == 0, r.output
    for text in ("meta-llama/Llama-3.1-70B-Instruct on 4 of 8 x H100-SXM", "SLO ITL <= 40 ms", "plans searched",
                 "serving (median ITL", "memory per GPU", "top 10 ops by energy", "Pareto frontier",
                 "cost model: H100-SXM profile fitted on data/public/mlenergy_dev.csv"):
        assert text in r.output, text
    assert "Traceback" not in r.output


def test_estimate_prints_phases_memory_and_top_ops():
    r = run("estimate", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "H100-SXM", "--batch", "32",
            "--prompt-len", "1024", "--output-len", "256", "--top", "5")
    assert r.exit_code == 0, r.output
    for text in ("prefill (whole batch)", "decode step (context 1152)", "memory per GPU", "top 5 ops by energy",
                 "model.layers.mlp.down_proj"):
        assert text in r.output


def test_estimate_says_when_its_profile_is_not_calibrated_on_the_gpu():
    """An uncalibrated GPU is priced from a datasheet prior: the report says so, it is not silent."""
    r = run("estimate", "Qwen/Qwen3-0.6B", "--gpu", "L40S", "--batch", "4")
    assert r.exit_code == 0, r.output
    assert "cost model: L40S profile is a datasheet prior" in r.output and "not calibrated on any L40S" in r.output


def test_estimate_json_is_plain_data():
    r = run("estimate", "Qwen/Qwen3-0.6B", "--batch", "4", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["decode"]["itl_s"] > 0 and d["prefill"]["energy_j"] > 0
    assert d["memory"]["total_bytes"] > d["memory"]["weights_bytes"] > 1e9


def test_70b_does_not_fit_on_one_h100():
    r = run("estimate", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "H100-SXM", "--batch", "8")
    assert r.exit_code == 2
    assert "H100-SXM has 72.0 GiB for it (90% of 80.0 GiB" in r.output and "over" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize(("args", "message"), [
    (("--batch", "0"), "--batch must be a positive integer, got 0"),
    (("--prompt-len", "-3"), "--prompt-len must be a positive integer, got -3"),
    (("--output-len", "0"), "--output-len must be a positive integer, got 0"),
    (("--gpu", "H1000"), "unknown GPU 'H1000'. Did you mean 'H200'?"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    r = run("estimate", "meta-llama/Llama-3.1-8B-Instruct", *args)
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {r.output.strip()[len('error: '):]}"
    assert message in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["estimate", "Qwen/Qwen3-0.6B", "--batch", "abc"], "Invalid value for '--batch'"),
    (["estimate", "Qwen/Qwen3-0.6B", "--batch=1.5"], "Invalid value for '--batch'"),
    (["estimate", "Qwen/Qwen3-0.6B", "--batch", "1", "--batch", "abc"], "Invalid value for '--batch'"),  # click reads the last
    (["estimate", "Qwen/Qwen3-0.6B", "--gpux", "H100-SXM"], "No such option: --gpux"),
    (["estimate"], "Missing argument"),
    (["bogus"], "No such command 'bogus'"),
])
def test_malformed_command_line_is_one_line_exit_2(argv, message, capsys):
    """click's usage errors (through ``main``, the installed entry point) read like the others."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    if "--batch" in message:
        assert "(got 'abc')" in err or "(got '1.5')" in err


def test_unknown_model_suggests_closest():
    r = run("estimate", "llama-3.1-8b-instrct")
    assert r.exit_code == 2
    assert "Did you mean 'meta-llama/Llama-3.1-8B-Instruct'?" in r.output


def test_malformed_config_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama"')
    r = run("estimate", str(bad))
    assert r.exit_code == 2
    assert "is not valid JSON" in r.output and len(r.output.strip().splitlines()) == 1


def test_models_and_gpus_list():
    r = run("models")
    assert r.exit_code == 0 and "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8" in r.output
    r = run("gpus")
    assert r.exit_code == 0 and "H100-SXM" in r.output and "MI300X" in r.output
    rows = {line.split("│")[1].strip(): line.split("│")[-2].strip() for line in r.output.splitlines() if "│" in line}
    assert rows["H100-SXM"] == rows["B200"] == "fitted on measurements"
    assert rows["H200"] == "H100-SXM's (same die)" and rows["L40S"] == "datasheet prior (not calibrated)"


def test_ir_prints_text_that_parses():
    from energylens.ir.text import parse_graph

    r = run("ir", "Qwen/Qwen3-0.6B", "--phase", "prefill")
    assert r.exit_code == 0, r.output
    g = parse_graph(r.output)
    assert g.attr["phase"] == "prefill"
    r = run("ir", "Qwen/Qwen3-0.6B", "--phase", "both")
    assert r.exit_code == 2 and "unknown phase 'both'" in r.output


def test_ir_pipeline_and_print_after_all():
    from energylens.ir.text import parse_graph

    r = run("ir", "Qwen/Qwen3-0.6B", "--pipeline", "shard{tp=2},fuse")
    assert r.exit_code == 0, r.output
    assert "collective.all_reduce[tp]" in r.output and parse_graph(r.output).attr["mesh"].startswith("tp=2")
    r = run("ir", "Qwen/Qwen3-0.6B", "--pipeline", "shard{tp=2},fuse", "--print-after-all")
    assert r.exit_code == 0, r.output
    banners = [line for line in r.output.splitlines() if line.startswith("// after")]
    assert banners == ["// after trace", "// after shard", "// after fuse"]  # as the Python API's
    r = run("ir", "Qwen/Qwen3-0.6B", "--pipeline", "shrd{tp=2}")
    assert r.exit_code == 2 and "Did you mean 'shard'?" in r.output
    r = run("ir", "Qwen/Qwen3-0.6B", "--pipeline", "overlap", "--print-after-all")  # refused before tracing
    assert r.exit_code == 2 and "// after" not in r.output and "give them as overlap{comm_sms=...}" in r.output
    r = run("ir", "Qwen/Qwen3-0.6B", "--pipeline", "overlap{comm_sms=16}")  # nothing to overlap: not a no-op
    assert r.exit_code == 2 and "no tensor-parallel collective to overlap" in r.output
    r = run("ir", "Qwen/Qwen3-0.6B", "--pipeline", "shard{tp=2},moe,moe{routing=zipf}")
    assert r.exit_code == 2 and "runs pass 'moe' 2 times" in r.output
