"""Accuracy of energylens against published serving measurements.

Predicts every supported row of an ML.ENERGY-schema CSV through the public API
(``energylens.estimate``, its steady-state serving view, with the profiles set to price the runs'
engine, vLLM 0.11.1: ``fit.mlenergy_profile``) and compares median ITL, average power and
energy per output token. Prints a per-row table, the skipped rows with their reasons, the rows
predicted despite the memory check (a measured run held a batch whose private KV caches would not
fit: vLLM's prefix cache shares the blocks of multi-turn prompts; they are priced with
``el.estimate(..., check_memory=False)`` and marked ``*`` in the table), and ends with exactly one
line ``MAPE itl=X% power=Y% energy_per_token=Z% rows=N skipped=M``. A row's batch is its measured
running batch (``avg_batch_size``), so it is priced as held (``check_memory=False``) also where the
KV cache would otherwise run fewer sequences at the workload's mean context.

Dev-set error (profiles fitted on the same file)::

    python benchmarks/accuracy.py --dataset mlenergy --data data/public/mlenergy_dev.csv

Compute/communication overlap sweep (schema of data/public/overlap_sweep_dev.csv; see
benchmarks/accuracy_overlap.py for its held-out protocol, ``--fit-windows``)::

    python benchmarks/accuracy.py --dataset overlap --data data/public/overlap_sweep_dev.csv

Held-out protocol (fit the GPU profiles on the other models' rows, report on this model only)::

    python benchmarks/accuracy.py --dataset mlenergy --data data/public/mlenergy_dev.csv \\
        --holdout-model Qwen/Qwen3-8B

The schema has no prompt length: tasks with a known mean (``fit.TASK_PROMPT_LEN``: lm-arena-chat,
gpqa) are predicted; rows of other tasks are skipped unless ``--task-prompt-len TASK=TOKENS`` gives it.
No prompt is priced as found in vLLM's prefix cache unless ``--task-prefix-hit TASK=SHARE`` says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: use its energylens

import energylens as el  # noqa: E402
from energylens.api import resolve_model  # noqa: E402
from energylens.costmodel.fit import (  # noqa: E402
    TASK_PROMPT_LEN,
    fit_gpu_profile,
    gpu_or_none,
    mlenergy_profile,
    parse_task_shares,
    read_mlenergy,
    row_skip_reason,
    write_profile,
)
from energylens.costmodel.hardware import get_gpu  # noqa: E402
from energylens.costmodel.profile import PRIOR_REFERENCE_GPU, default_profile, profile_path  # noqa: E402
from energylens.errors import DoesNotFitError, EnergylensError, UnknownNameError  # noqa: E402

DATASETS = ("mlenergy", "overlap")


@dataclass
class Result:
    row: object
    itl_s: float
    power_w: float
    energy_per_token_j: float
    #: sequences priced as running when fewer than the row's batch (prefill cannot keep it full), else None
    ran: int | None = None


def _skip_reason(row) -> str | None:
    """``row_skip_reason`` of the fit, except that multi-GPU rows are predicted (as ``MLEnergyRow.parallel``),
    unless the run had GPUs its plan does not use: their power is in the measurement, not in the plan."""
    reason = row_skip_reason(dataclasses.replace(row, num_gpus=1, tp=1, ep=1, dp=1))
    if reason and reason.startswith("unknown prompt length"):
        reason += f"; give it with --task-prompt-len {row.task}=TOKENS"
    if reason is None and row.num_gpus > (par := row.parallel()).num_gpus:
        reason = (f"num_gpus={row.num_gpus} but tp x dp = {par.tp} x {par.dp} = {par.num_gpus}: the measured power "
                  "covers GPUs the plan does not use")
    return reason


def _pct(pred: float, meas: float) -> float:
    return (pred / meas - 1.0) * 100.0


def _same_model(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _priceable(row: Any) -> bool:
    """Whether the row's checkpoint is known (a row of another model family cannot be fitted on)."""
    from energylens.models import load_config

    try:
        load_config(row.priced_model())
    except EnergylensError:
        return False
    return True


def _fit_holdout(rows: Sequence, holdout: str, out_dir: Path, data: str, console: Console) -> None:
    train = [r for r in rows if not _same_model(r.model_id, holdout) and row_skip_reason(r) is None and _priceable(r)]
    gpus = sorted({get_gpu(r.gpu_model).name for r in train})
    held = [r for r in rows if _same_model(r.model_id, holdout)]
    prior = (f"its datasheet prior (profile.prior_profile, with the held-out {PRIOR_REFERENCE_GPU} fit's software "
             "costs, or its datasheet default's where that has no fit)")
    for gpu in sorted({g.name for r in held if (g := gpu_or_none(r.gpu_model))} - set(gpus)):
        console.print(f"[yellow]{gpu}: no single-GPU rows of the other models to fit on; the held-out rows on it "
                      f"use {prior}[/]")
    for gpu in gpus:
        try:
            prof = fit_gpu_profile(gpu, train, resolve_model, data_label=f"{data} without {holdout} (held-out fit)")
        except EnergylensError as exc:
            console.print(f"[yellow]no held-out fit for {gpu}: {exc}; it uses {prior}[/]")
            continue
        write_profile(prof, out_dir)
        console.print(f"fitted {gpu} on {prof.provenance.rows} rows of "
                      f"{', '.join(sorted({r.model_id for r in train if get_gpu(r.gpu_model).name == gpu}))}")
    if not profile_path(PRIOR_REFERENCE_GPU, out_dir).exists():
        # the bundled profiles are fitted on every dev row, the held-out model's too: no fallback may use them
        write_profile(default_profile(get_gpu(PRIOR_REFERENCE_GPU)), out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--dataset", choices=DATASETS)
    known, rest = first.parse_known_args(argv)
    if known.dataset == "overlap":  # the overlap sweep has its own script and options
        sys.path.insert(0, str(Path(__file__).parent))
        from accuracy_overlap import main as main_overlap

        return main_overlap(rest)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=DATASETS, required=True)
    ap.add_argument("--data", required=True, help="CSV with the schema of data/public/mlenergy_dev.csv")
    ap.add_argument("--profiles", default=None, help="folder of profile JSONs (default: the bundled ones)")
    ap.add_argument("--holdout-model", default=None,
                    help="fit profiles on the other models' rows and report on this model's rows only")
    ap.add_argument("--task-prompt-len", action="append", default=[], metavar="TASK=TOKENS",
                    help="mean prompt tokens of a task (repeatable); needed for tasks other than "
                         f"{', '.join(TASK_PROMPT_LEN)}, whose means are built in")
    ap.add_argument("--task-prefix-hit", action="append", default=[], metavar="TASK=SHARE",
                    help="price TASK's prompts as this share found in vLLM's prefix cache (repeatable; "
                         "default: none), in the fit of --holdout-model too")
    args = ap.parse_args(argv)
    console = Console(width=200, highlight=False)

    prompt_lens = {}
    for item in args.task_prompt_len:
        task, _, tokens = item.partition("=")
        if not task or not tokens.isdigit() or int(tokens) <= 0:
            ap.error(f"--task-prompt-len {item!r}: expected TASK=TOKENS with a positive integer, "
                     "e.g. lm-arena-chat=634")
        prompt_lens[task] = int(tokens)
    try:
        prefix_hits = parse_task_shares(args.task_prefix_hit)
    except ValueError as e:
        ap.error(str(e))
    try:
        rows = read_mlenergy(args.data, prompt_lens, prefix_hits)
    except EnergylensError as e:
        ap.error(str(e))
    profiles = args.profiles
    tmp = None
    if args.holdout_model:
        if not any(_same_model(r.model_id, args.holdout_model) for r in rows):
            ap.error(f"--holdout-model {args.holdout_model!r} has no rows in {args.data}")
        tmp = tempfile.TemporaryDirectory(prefix="energylens-holdout-")
        _fit_holdout(rows, args.holdout_model, Path(tmp.name), args.data, console)
        profiles = tmp.name
        rows = [r for r in rows if _same_model(r.model_id, args.holdout_model)]  # any case, as the rows name it

    results: list[Result] = []
    skipped: list[tuple[object, str]] = []
    over_memory: list[tuple[object, str]] = []  # predicted with el.estimate(..., check_memory=False)
    for r in rows:
        reason = _skip_reason(r)
        if reason is None:
            try:
                args_ = (r.priced_model(), el.Cluster(r.gpu_model, num_gpus=r.num_gpus), r.workload(), r.parallel())
                prof = mlenergy_profile(r.gpu_model, profiles)  # ML.ENERGY v3.0's engine, vLLM 0.11.1
                try:
                    est = el.estimate(*args_, profile=prof)
                    if est.serving.kv_limited:  # the run held its measured batch: price that batch
                        est = el.estimate(*args_, profile=prof, check_memory=False)
                except DoesNotFitError as exc:
                    # the run held this batch (its measured avg_batch_size): vLLM's prefix cache shares
                    # the KV blocks of multi-turn prompts, which the memory estimate does not see. Weights
                    # that alone overflow the GPU are another matter: a misread precision or plan
                    est = el.estimate(*args_, profile=prof, check_memory=False)
                    hbm = get_gpu(r.gpu_model).hbm_capacity_bytes
                    if est.memory.weights_bytes > hbm:
                        raise DoesNotFitError(
                            f"weights alone need {est.memory.weights_bytes / 2**30:.1f} GiB per GPU, more than the "
                            f"{hbm / 2**30:.0f} GiB of a {get_gpu(r.gpu_model).name} (precision or parallelism "
                            "misread?)", required_bytes=est.memory.weights_bytes, capacity_bytes=hbm) from None
                    over_memory.append((r, str(exc)))
            except UnknownNameError as exc:
                reason = f"unknown {exc.kind} {exc.name!r}"
            except EnergylensError as exc:
                reason = f"cannot estimate: {exc}"
            else:
                s = est.serving
                ran = s.batch if s.batch != round(r.avg_batch_size) else None
                results.append(Result(r, s.median_itl_s, s.avg_power_w, s.energy_per_output_token_j, ran))
        if reason is not None:
            skipped.append((r, reason))

    table = Table(title=f"{args.dataset}: {args.data}" + (f" (held out: {args.holdout_model})" if args.holdout_model else ""))
    for col in ("line", "model", "task", "gpu", "batch", "ITL ms meas", "pred", "err%",
                "power W meas", "pred", "err%", "J/tok meas", "pred", "err%"):
        table.add_column(col, justify="left" if col in ("model", "task", "gpu") else "right")
    over_memory_lines = {r.line for r, _ in over_memory}
    for res in results:
        r = res.row
        table.add_row(
            str(r.line) + ("*" if r.line in over_memory_lines else ""), r.model_id, r.task, r.gpu_model,
            f"{r.avg_batch_size:.0f}" + (f"→{res.ran}" if res.ran else ""),
            f"{r.median_itl_ms:.2f}", f"{res.itl_s * 1e3:.2f}", f"{_pct(res.itl_s * 1e3, r.median_itl_ms):+.1f}",
            f"{r.avg_power_watts_total:.0f}", f"{res.power_w:.0f}", f"{_pct(res.power_w, r.avg_power_watts_total):+.1f}",
            f"{r.energy_per_token_j:.4f}", f"{res.energy_per_token_j:.4f}",
            f"{_pct(res.energy_per_token_j, r.energy_per_token_j):+.1f}")
    console.print(table)
    if skipped:
        console.print(f"skipped {len(skipped)} rows:")
        for r, reason in skipped:
            console.print(f"  line {r.line}: {r.model_id} {r.task} {r.gpu_model} x{r.num_gpus or '?'} "
                          f"max_num_seqs={r.max_num_seqs or '?'}: {reason}", soft_wrap=True)
    if over_memory:
        console.print(f"predicted despite memory {len(over_memory)} rows (measured runs that held the batch; "
                      "priced with check_memory=False, mean KV length capped at the cache capacity):")
        for r, why in over_memory:
            console.print(f"  line {r.line}: {r.model_id} {r.task} {r.gpu_model} x{r.num_gpus} "
                          f"batch {r.avg_batch_size:.0f}: memory estimate says {why}", soft_wrap=True)
    other = [res for res in results if res.ran]
    if other:
        console.print(f"priced at another batch than measured {len(other)} rows (batch column: measured→priced):")
        for res in other:
            r = res.row
            why = ("prefill of new prompts or the KV cache keeps fewer running" if res.ran < r.workload().batch else
                   f"each of the {r.parallel().dp} data-parallel replicas runs a whole number of sequences, at least one")
            console.print(f"  line {r.line}: {r.model_id} {r.task} {r.gpu_model} x{r.num_gpus} batch "
                          f"{r.avg_batch_size:g} priced as {res.ran} running: {why}", soft_wrap=True)
    if tmp is not None:
        tmp.cleanup()

    def summary(sub: Sequence[Result]) -> tuple[float, float, float]:  # MAPE of ITL, power, energy/token (%)
        if not sub:
            return (float("nan"),) * 3
        errs = [(abs(x.itl_s * 1e3 / x.row.median_itl_ms - 1), abs(x.power_w / x.row.avg_power_watts_total - 1),
                 abs(x.energy_per_token_j / x.row.energy_per_token_j - 1)) for x in sub]
        return tuple(100 * sum(e[i] for e in errs) / len(errs) for i in range(3))

    groups = {gpu: [x for x in results if get_gpu(x.row.gpu_model).name == gpu]  # "H100", "NVIDIA H100 80GB HBM3": one
              for gpu in sorted({get_gpu(x.row.gpu_model).name for x in results})}
    groups["multi-GPU"] = [x for x in results if x.row.num_gpus > 1]
    for name, sub in groups.items():
        if sub:
            itl, power, ept = summary(sub)
            console.print(f"  {name}: itl {itl:.1f}%  power {power:.1f}%  energy/token {ept:.1f}%  ({len(sub)} rows)")
    sys.stdout.flush()
    itl, power, ept = summary(results)
    print(f"MAPE itl={itl:.1f}% power={power:.1f}% energy_per_token={ept:.1f}% rows={len(results)} skipped={len(skipped)}")
    if not results:
        why = "see the skipped rows above" if skipped else "it has no rows"
        print(f"error: no row of {args.data} could be predicted ({why})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
