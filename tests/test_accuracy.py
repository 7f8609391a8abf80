"""benchmarks/accuracy.py on a small sample CSV: runs, prints the table, skips with reasons, final line."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "data" / "public" / "mlenergy_dev.csv"


def sample(tmp_path: Path) -> Path:
    rows = _dev_rows()
    pick = [r for r in rows if r["num_gpus"] == "1" and r["model_id"] == "meta-llama/Llama-3.1-8B-Instruct"][:2]
    pick.append(next(r for r in rows if r["num_gpus"] == "2"))  # multi-GPU: predicted as tp=N, ep=N
    # ran at batch 691 on one H100 (prefix caching shares KV blocks): predicted despite the memory check
    pick.append(next(r for r in rows if r["gpu_model"] == "H100" and r["max_num_seqs"] == "768"
                     and r["model_id"] == "meta-llama/Llama-3.1-8B-Instruct"))
    unknown = dict(pick[0], model_id="acme/NoSuchModel-7B")  # unknown model: skipped
    other_task = dict(pick[1], task="mystery-task")  # unknown prompt length: skipped
    # rows of kinds the dev file lacks (placeholder measurements: only that they are predicted counts)
    pick.append(dict(pick[0], gpu_model="H200"))  # priced with the H100-SXM profile (same die)
    pick.append(dict(next(r for r in rows if r["num_gpus"] == "1" and "30B" in r["model_id"]),
                     model_id="Qwen/Qwen3-30B-A3B-Thinking-2507", task="gpqa"))  # the Instruct-2507 architecture
    out = tmp_path / "sample.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*pick, unknown, other_task])
    return out


def test_accuracy_script_on_sample(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--dataset", "mlenergy",
                          "--data", str(sample(tmp_path))], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert re.fullmatch(r"MAPE itl=\d+\.\d% power=\d+\.\d% energy_per_token=\d+\.\d% rows=6 skipped=2", lines[-1])
    assert sum(1 for ln in lines if ln.startswith("MAPE")) == 1
    out = res.stdout
    assert "unknown model 'acme/NoSuchModel-7B'" in out
    assert re.search(r"multi-GPU: itl \d+\.\d%  power \d+\.\d%  energy/token \d+\.\d%  \(1 rows\)", out)
    assert "unknown prompt length for task 'mystery-task'" in out and "--task-prompt-len mystery-task=TOKENS" in out
    assert re.search(r"  H200: itl \d+\.\d%", out) and "Qwen3-30B-A3B-Thinking-2507" in out
    assert "predicted despite memory 1 rows" in out and re.search(r"│ +5\* │ meta-llama/Llama-3.1-8B-Instruct", out)


def test_task_prompt_len_predicts_other_tasks(monkeypatch, tmp_path, capsys):
    """A task outside the built-in means is predicted once its mean prompt length is given."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    csv_path = sample(tmp_path)
    assert main(["--dataset", "mlenergy", "--data", str(csv_path), "--task-prompt-len", "mystery-task=500"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"rows=7 skipped=1$", out.strip()) and "mystery-task" in out
    from energylens.costmodel.fit import read_mlenergy

    row = next(r for r in read_mlenergy(csv_path, {"mystery-task": 500}) if r.task == "mystery-task")
    assert row.workload().prompt_len == 500


def test_task_prefix_hit_lowers_prefill_and_is_checked(monkeypatch, tmp_path, capsys):
    """``--task-prefix-hit`` prices a task's prompts as partly cached (fewer prefill tokens, less
    energy per token); a share outside [0, 1) is a usage error naming it."""
    import pytest

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    from energylens.costmodel.fit import parse_task_shares, read_mlenergy

    csv_path = sample(tmp_path)
    cold, hit = (next(r for r in read_mlenergy(csv_path, prefix_hits=h) if r.task == "lm-arena-chat").workload()
                 for h in (None, {"lm-arena-chat": 0.5}))
    assert cold.prefix_cache_hit == 0.0 and hit.prefix_cache_hit == 0.5
    assert cold.prefill_len == 2 * hit.prefill_len
    assert parse_task_shares(["gpqa=0", "lm-arena-chat=0.25"]) == {"gpqa": 0.0, "lm-arena-chat": 0.25}
    for bad in ("lm-arena-chat=1", "lm-arena-chat", "=0.5", "lm-arena-chat=x"):
        with pytest.raises(ValueError, match="expected TASK=SHARE"):
            parse_task_shares([bad])
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "mlenergy", "--data", str(csv_path), "--task-prefix-hit", "lm-arena-chat=1.5"])
    assert exit_info.value.code == 2 and "'lm-arena-chat=1.5'" in capsys.readouterr().err


def test_unreadable_values_skip_the_row_naming_them(monkeypatch, tmp_path, capsys):
    """A row whose measured values are empty, zero, nan or not numbers is skipped with the column and
    the value, not a traceback; an empty tp/ep/dp reads as 1 (and max_num_seqs is only shown)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    rows = _dev_rows()
    good = next(r for r in rows if r["num_gpus"] == "1" and r["gpu_model"] == "H100")
    bad = [dict(good, median_itl_ms=""), dict(good, output_tok_per_s="0"), dict(good, num_gpus="two"),
           dict(good, avg_power_watts_total="nan"), dict(good, tp="1.5"), dict(good, tp="-1")]
    blank = dict(good, tp="", ep="", dp="", max_num_seqs="")
    out = tmp_path / "bad.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*bad, blank])
    assert main(["--dataset", "mlenergy", "--data", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip().endswith("rows=1 skipped=6")
    for what in ("median_itl_ms=''", "output_tok_per_s='0'", "num_gpus='two'", "avg_power_watts_total='nan'",
                 "tp='1.5'", "tp='-1'"):
        assert f"not a positive number (a whole one for counts): {what}" in text


def test_no_predicted_row_is_a_failure_not_a_nan_line_alone(monkeypatch, tmp_path, capsys):
    """A file whose every row is skipped still ends with the one MAPE line (nan, rows=0), says why on
    stderr and exits 1: a script reading the exit code must not take it for a result."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    good = next(r for r in _dev_rows() if r["num_gpus"] == "1")
    path = _write(tmp_path / "none.csv", [dict(good, gpu_model="TPU-v5")], list(good))
    assert main(["--dataset", "mlenergy", "--data", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out.strip().endswith("MAPE itl=nan% power=nan% energy_per_token=nan% rows=0 skipped=1")
    assert "no row of" in err and "TPU-v5" in out


def _dev_rows() -> list[dict]:
    with open(DEV, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict], fieldnames: list[str], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        w = csv.DictWriter(fh, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)
    return path


def test_file_level_problems_are_one_error(monkeypatch, tmp_path, capsys):
    """A missing file, a file of another schema or another encoding: one error line (exit 2); a BOM,
    upper-case or padded header names and padded text cells are read as the plain ones."""
    import pytest

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    rows = _dev_rows()
    good = next(r for r in rows if r["num_gpus"] == "1" and r["gpu_model"] == "H100")
    names = list(rows[0])
    for path, message in ((tmp_path / "nothere.csv", "cannot read"),
                          (_write(tmp_path / "other.csv", [{"a": 1}], ["a"]), "missing columns model_id"),
                          (_write(tmp_path / "latin1.csv", [dict(good, task="caf\xe9")], names, "latin-1"),
                           "is not UTF-8 text")):
        with pytest.raises(SystemExit) as e:
            main(["--dataset", "mlenergy", "--data", str(path)])
        assert e.value.code == 2 and message in capsys.readouterr().err
    padded = dict(good, model_id=f" {good['model_id']} ", task=" LM-Arena-Chat", gpu_model="H100 ")
    odd = _write(tmp_path / "odd.csv", [padded], names, "utf-8-sig")  # with a BOM
    body = odd.read_text(encoding="utf-8-sig").split("\n", 1)[1]
    odd.write_text("\ufeff" + ",".join(f" {n.upper()} " for n in names) + "\n" + body, encoding="utf-8")
    assert main(["--dataset", "mlenergy", "--data", str(odd)]) == 0
    assert capsys.readouterr().out.strip().endswith("rows=1 skipped=0")


def test_rows_read_as_the_run_was_made(monkeypatch, tmp_path, capsys):
    """weight_precision fp8 prices the -FP8 twin (or another publisher's); an MoE row with dp > 1
    spans its GPUs with tp x dp; GPUs the plan does not use, or weights that cannot fit, skip the row."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    from energylens.costmodel.fit import read_mlenergy

    rows = _dev_rows()
    qwen = next(r for r in rows if r["num_gpus"] == "1" and r["model_id"] == "Qwen/Qwen3-8B" and r["gpu_model"] == "H100")
    moe = next(r for r in rows if r["num_gpus"] == "2" and "30B" in r["model_id"])
    llama = next(r for r in rows if r["num_gpus"] == "1" and "Llama" in r["model_id"] and r["gpu_model"] == "H100")
    picked = [dict(qwen, weight_precision="fp8"), dict(llama, weight_precision="fp8"),
              dict(moe, num_gpus="8", tp="1", ep="8", dp="4", max_num_seqs="64", avg_batch_size="64"),
              dict(llama, num_gpus="4", tp="2", dp="1"),
              dict(llama, model_id="meta-llama/Llama-3.1-70B-Instruct")]
    path = _write(tmp_path / "runs.csv", picked, list(rows[0]))
    read = read_mlenergy(path)
    assert read[0].priced_model() == "Qwen/Qwen3-8B-FP8"
    # Meta publishes no FP8 8B: another publisher's (the same config, fp8 weights with channel scales)
    assert read[1].priced_model() == "RedHatAI/Llama-3.1-8B-Instruct-FP8"
    assert read[2].parallel() == __import__("energylens").Parallel(tp=2, ep=8, dp=4)
    assert main(["--dataset", "mlenergy", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "num_gpus=4 but tp x dp = 2 x 1 = 2" in out
    assert "weights alone need 131.4 GiB per GPU, more than the 80 GiB" in out
    assert out.strip().endswith("rows=3 skipped=2")


def test_holdout_model_in_any_case_and_unknown_models_left_out_of_the_fit(monkeypatch, tmp_path, capsys):
    """--holdout-model matches the file's spelling in any case, and a row of an unknown model among
    the others is not fitted on (it made the whole GPU's held-out fit fail)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    rows = _dev_rows()
    b200 = [r for r in rows if r["gpu_model"] == "B200" and r["model_id"] == "Qwen/Qwen3-8B"][:5]
    held = [r for r in rows if r["gpu_model"] == "B200" and r["model_id"] == "meta-llama/Llama-3.1-8B-Instruct"][:2]
    path = _write(tmp_path / "holdout.csv", [*b200, *held, dict(b200[0], model_id="acme/NoSuchModel-7B")],
                  list(rows[0]))
    assert main(["--dataset", "mlenergy", "--data", str(path),
                 "--holdout-model", "META-LLAMA/llama-3.1-8b-instruct "]) == 0
    out = capsys.readouterr().out
    assert re.search(r"fitted B200 on \d+ rows of Qwen/Qwen3-8B\n", out) and "no held-out fit" not in out
    assert "acme/NoSuchModel-7B" not in out  # neither fitted on nor reported
    assert re.search(r"rows=2 skipped=0$", out.strip())


def test_rows_priced_at_fewer_sequences_than_measured_are_said(monkeypatch, tmp_path, capsys):
    """A batch prefill cannot keep running within the 8192-token budget is priced at what runs, and
    the table says so instead of showing only the measured batch."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    rows = _dev_rows()
    row = next(r for r in rows if r["gpu_model"] == "H100" and r["model_id"] == "Qwen/Qwen3-8B")
    path = _write(tmp_path / "big.csv", [dict(row, max_num_seqs="20000", avg_batch_size="20000")], list(rows[0]))
    assert main(["--dataset", "mlenergy", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"20000→\d+", out) and re.search(r"line 2: .* batch 20000 priced as \d+ running: prefill", out)


def test_rows_priced_at_more_sequences_than_measured_are_said(monkeypatch, tmp_path, capsys):
    """Fewer sequences than dp replicas: each replica still runs one, and the table says so."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import main

    rows = _dev_rows()
    row = next(r for r in rows if r["num_gpus"] == "2")  # MoE on 2 GPUs: tp=2, ep=2 (the caveat's reading)
    path = _write(tmp_path / "dp.csv", [dict(row, tp="1", ep="2", dp="2", max_num_seqs="8", avg_batch_size="1")],
                  list(rows[0]))
    assert main(["--dataset", "mlenergy", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1→2" in out and re.search(r"line 2: .* batch 1 priced as 2 running: each of the 2 data-parallel", out)


def test_holdout_fallbacks_never_use_the_bundled_fits(monkeypatch, tmp_path):
    """The bundled profiles are fitted on every dev row, the held-out model's too: a GPU without a
    held-out fit takes its prior from the held-out reference fit, or from the reference GPU's
    datasheet default when that has none, never from the bundled H100-SXM fit."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from accuracy import _fit_holdout
    from rich.console import Console

    from energylens.costmodel.fit import read_mlenergy
    from energylens.costmodel.profile import load_profile

    rows = _dev_rows()
    few_h100 = [r for r in rows if r["gpu_model"] == "H100" and r["model_id"] == "Qwen/Qwen3-8B"][:2]
    held = [r for r in rows if r["gpu_model"] == "B200" and r["model_id"] == "meta-llama/Llama-3.1-8B-Instruct"][:2]
    path = _write(tmp_path / "few.csv", [*few_h100, *held], list(rows[0]))
    out = tmp_path / "profiles"
    console = Console(record=True, width=300)
    _fit_holdout(read_mlenergy(path), "meta-llama/Llama-3.1-8B-Instruct", out, str(path), console)
    text = console.export_text()
    assert "no held-out fit for H100-SXM" in text and "B200: no single-GPU rows" in text
    assert load_profile("H100-SXM", out).provenance.method == "datasheet-default"
    b200 = load_profile("B200", out)
    assert b200.provenance.method == "datasheet-prior" and "mlenergy" not in b200.provenance.data
