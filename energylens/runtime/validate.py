"""Validating the cost model against raw measurements: predicted vs measured, per run and per op class.

``validate(paths)`` reads measurement files (``energylens measure`` JSONL; a folder means its
``*.jsonl``, and in data/measurements/ only the files its README lists), predicts every record it
can with the cost model (``energylens.runtime.calibrate.predict``: the same work and pricing as
``energylens.estimate``) and reports, for each run, measured and predicted time, energy and
average power; per op class (microbenchmark kind, prefill, decode) the mean absolute percentage
errors; and the headline MAPEs: prefill energy, prefill latency, decode ITL, decode energy per
token and average power (end-to-end runs). A metric without measured values says why
(``n/a (no energy readings)``). Records that cannot be compared (taken on a CPU, a GPU missing
from the hardware DB, a failed point) are listed with the reason. Runs on a CPU from committed
files; no GPU needed.

``holdout(paths)`` calibrates on one half of the runs (``calibrate.split_holdout``) and validates
on the other half: the held-out error of a calibration.

>>> # rep = validate(["data/measurements/"]); rep.print(); rep.parity_plot("parity.png")
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from energylens.costmodel.profile import Profile, load_profile
from energylens.errors import EnergylensError
from energylens.runtime.calibrate import (
    MALFORMED,
    POWER_KINDS,
    CalibrationResult,
    Measured,
    Measurements,
    Sample,
    build_samples,
    calibrate_samples,
    predict,
    read_measurements,
    split_holdout,
)
from energylens.typing import Record

__all__ = ["Comparison", "Metric", "ClassSummary", "ValidationReport", "HoldoutResult", "validate",
           "validate_samples", "holdout", "METRICS"]

#: Headline metrics: name -> (record kind, quantity compared).
METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "prefill energy": (("prefill",), "energy"),
    "prefill latency": (("prefill",), "time"),
    "decode ITL": (("decode",), "time"),
    "decode energy/token": (("decode",), "energy_per_token"),
    "average power": (("prefill", "decode"), "power"),
}


def _err(pred: float | None, meas: float | None) -> float | None:
    if pred is None or meas is None or not meas:
        return None
    return pred / meas - 1.0


@dataclass(frozen=True)
class Comparison(Record):
    """One run: measured and predicted time (s per call), energy (J per call) and power (W)."""

    _derived: ClassVar[tuple[str, ...]] = ("time_err", "energy_err", "power_err")

    file: str
    key: str
    kind: str
    op_class: str
    gpu: str
    label: str
    env_id: str
    tokens: int
    measured_time_s: float | None
    predicted_time_s: float | None
    measured_energy_j: float | None
    predicted_energy_j: float | None
    measured_power_w: float | None
    predicted_power_w: float | None

    @property
    def time_err(self) -> float | None:
        """predicted / measured - 1 (None: not comparable)."""
        return _err(self.predicted_time_s, self.measured_time_s)

    @property
    def energy_err(self) -> float | None:
        return _err(self.predicted_energy_j, self.measured_energy_j)

    @property
    def power_err(self) -> float | None:
        return _err(self.predicted_power_w, self.measured_power_w)

    def err(self, quantity: str) -> float | None:
        return {"time": self.time_err, "energy": self.energy_err, "energy_per_token": self.energy_err,
                "power": self.power_err}[quantity]


@dataclass(frozen=True)
class Metric(Record):
    """MAPE (%) of one quantity over ``n`` runs, or None with a note saying why not."""

    name: str
    n: int
    mape_pct: float | None
    note: str = ""

    def text(self) -> str:
        return f"{self.mape_pct:.1f}%" if self.mape_pct is not None else self.note


@dataclass(frozen=True)
class ClassSummary(Record):
    """Errors of one op class: MAPE (%) of time, energy, power (None: nothing to compare) and the
    median predicted / measured time (bias)."""

    op_class: str
    n: int
    mape_time_pct: float | None
    mape_energy_pct: float | None
    mape_power_pct: float | None
    median_time_ratio: float | None


@dataclass(frozen=True)
class ValidationReport(Record):
    """Everything ``validate`` found; ``print()`` shows it as tables, ``to_dict()`` as plain data."""

    files: tuple[str, ...]
    runs: tuple[Comparison, ...]
    metrics: tuple[Metric, ...]
    classes: tuple[ClassSummary, ...]
    not_compared: tuple[dict[str, str], ...]  # file, key, kind, reason
    profiles: dict[str, str]  # GPU -> provenance of the profile the predictions used
    excluded_files: tuple[tuple[str, str], ...] = ()
    torn_lines: int = 0
    other_lines: int = 0
    repeated_records: int = 0
    measured_kinds: dict[str, int] = field(default_factory=dict)
    energy_note: str = ""  # how many measured records carry energy readings, and why the others do not

    @property
    def compared(self) -> int:
        return len(self.runs)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    # -- printing --------------------------------------------------------------------------------
    def print(self, console: Any = None, max_runs: int = 30) -> None:
        """Rich tables: headline MAPEs, per op class, per run (``max_runs``; 0: all), not compared."""
        from rich.console import Console
        from rich.table import Table

        con = console or Console()
        n_rec = self.compared + len(self.not_compared)
        con.print(f"energylens validate: {n_rec} records in {len(self.files)} file(s); {self.compared} compared "
                  f"with the cost model, {len(self.not_compared)} not compared")
        read = Measurements(excluded_files=list(self.excluded_files), torn_lines=self.torn_lines,
                            other_lines=self.other_lines, repeated_records=self.repeated_records)
        for line in read.notes():
            con.print(line, markup=False)
        malformed = [r for r in self.not_compared if r["reason"].startswith(MALFORMED)]
        if malformed:
            con.print(f"{len(malformed)} malformed record(s) skipped (first: {malformed[0]['file']} "
                      f"{malformed[0]['key']}: {malformed[0]['reason'][len(MALFORMED) + 2:]})")
        if self.runs:
            t = Table(title="prediction error (MAPE) of end-to-end runs")
            for col in ("metric", "runs", "MAPE"):
                t.add_column(col, justify="left" if col == "metric" else "right")
            for m in self.metrics:
                t.add_row(m.name, str(m.n), m.text())
            con.print(t)
            t = Table(title="per op class (microbenchmark kind, prefill, decode)")
            for col in ("op class", "runs", "time MAPE", "energy MAPE", "power MAPE", "median pred/meas time"):
                t.add_column(col, justify="left" if col == "op class" else "right")
            for c in self.classes:
                t.add_row(c.op_class, str(c.n), _pct(c.mape_time_pct), _pct(c.mape_energy_pct),
                          _pct(c.mape_power_pct, "n/a (no energy readings)" if c.mape_time_pct is not None else "n/a"),
                          "-" if c.median_time_ratio is None else f"{c.median_time_ratio:.3g}")
            con.print(t)
            shown = list(self.runs) if max_runs <= 0 else list(self.runs)[:max_runs]
            t = Table(title=f"runs ({len(shown)} of {len(self.runs)}{'' if len(shown) == len(self.runs) else '; --runs 0 shows all'})")
            for col in ("gpu", "class", "run", "time meas", "time pred", "err", "energy meas", "energy pred",
                        "err", "power meas", "power pred", "err"):
                t.add_column(col, justify="left" if col in ("gpu", "class", "run") else "right")
            for r in shown:
                t.add_row(r.gpu, r.op_class, r.label[:48],
                          _si(r.measured_time_s, "s"), _si(r.predicted_time_s, "s"), _sig(r.time_err),
                          _si(r.measured_energy_j, "J"), _si(r.predicted_energy_j, "J"), _sig(r.energy_err),
                          _si(r.measured_power_w, "W"), _si(r.predicted_power_w, "W"), _sig(r.power_err))
            con.print(t)
            for gpu, prov in sorted(self.profiles.items()):
                con.print(f"profile of {gpu}: {prov}")
        else:
            why = "reasons below" if self.not_compared else "the files hold no record"
            con.print(f"[bold]nothing compared[/]: no record could be predicted by the cost model ({why})")
            if self.measured_kinds:
                con.print("measured (not compared): " + ", ".join(f"{k} x{n}" for k, n in sorted(self.measured_kinds.items())))
        if self.energy_note:
            con.print(self.energy_note)
        if self.not_compared:
            groups: dict[str, list[str]] = defaultdict(list)
            for row in self.not_compared:
                groups[row["reason"]].append(row["kind"])
            t = Table(title="not compared")
            for col in ("records", "kinds", "reason"):
                t.add_column(col, justify="right" if col == "records" else "left", overflow="fold")
            for reason, kinds in sorted(groups.items(), key=lambda kv: -len(kv[1])):
                t.add_row(str(len(kinds)), ", ".join(f"{k} x{n}" for k, n in sorted(Counter(kinds).items())), reason)
            con.print(t)

    # -- plotting --------------------------------------------------------------------------------
    def parity_plot(self, path: str | Path) -> Path:
        """Predicted vs measured time and energy per call (log-log, one colour per op class) to ``path``;
        returns the file written (``.png`` added to a path without an extension)."""
        from energylens.search.report import plot_path, save_figure

        out = plot_path(path)  # a bad extension fails before the figure is drawn
        if not self.runs:
            raise EnergylensError("no parity plot: no record was compared with the cost model (see the reasons above)")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        classes = sorted({r.op_class for r in self.runs})
        cmap = plt.get_cmap("tab20")
        for ax, (q, unit, meas, pred) in zip(axes, (
                ("time", "s", "measured_time_s", "predicted_time_s"),
                ("energy", "J", "measured_energy_j", "predicted_energy_j")), strict=True):
            pts = [(getattr(r, meas), getattr(r, pred), r.op_class) for r in self.runs
                   if getattr(r, meas) and getattr(r, pred)]
            ax.set_title(f"{q} per call ({len(pts)} runs)")
            ax.set_xlabel(f"measured {q} ({unit})")
            ax.set_ylabel(f"predicted {q} ({unit})")
            if not pts:
                ax.text(0.5, 0.5, "n/a (no energy readings)" if q == "energy" else "n/a", ha="center", va="center",
                        transform=ax.transAxes)
                continue
            for i, cls in enumerate(classes):
                xs = [m for m, _p, c in pts if c == cls]
                ys = [p for _m, p, c in pts if c == cls]
                if xs:
                    ax.scatter(xs, ys, s=14, color=cmap(i % 20), label=cls)
            lo = min(min(m, p) for m, p, _ in pts) / 1.5
            hi = max(max(m, p) for m, p, _ in pts) * 1.5
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            ax.fill_between([lo, hi], [lo * 0.8, hi * 0.8], [lo * 1.2, hi * 1.2], color="0.85", zorder=0,
                            label="±20%")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.legend(fontsize=7, loc="upper left")
        gpus = ", ".join(sorted({r.gpu for r in self.runs}))
        fig.suptitle(f"energylens: predicted vs measured ({gpus})")
        fig.tight_layout()
        return save_figure(fig, out, dpi=120)


def _pct(x: float | None, none: str = "n/a") -> str:
    return none if x is None else f"{x:.1f}%"


def _sig(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def _si(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    for factor, prefix in ((1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _mape(errs: Sequence[float]) -> float | None:
    return 100.0 * statistics.fmean(abs(e) for e in errs) if errs else None


def _metrics(runs: Sequence[Comparison]) -> tuple[Metric, ...]:
    out = []
    for name, (kinds, q) in METRICS.items():
        rs = [r for r in runs if r.kind in kinds]
        errs = [e for r in rs if (e := r.err(q)) is not None]
        if not rs:
            note = f"n/a (no {'/'.join(kinds)} runs compared)"
        elif not errs:
            note = "n/a (no energy readings)" if q != "time" else "n/a"
        else:
            note = ""
        out.append(Metric(name=name, n=len(errs), mape_pct=_mape(errs), note=note))
    return tuple(out)


def _classes(runs: Sequence[Comparison]) -> tuple[ClassSummary, ...]:
    out = []
    for cls in sorted({r.op_class for r in runs}):
        rs = [r for r in runs if r.op_class == cls]
        te = [r.time_err for r in rs if r.time_err is not None]
        ee = [r.energy_err for r in rs if r.energy_err is not None]
        pe = [r.power_err for r in rs if r.power_err is not None]
        out.append(ClassSummary(op_class=cls, n=len(rs), mape_time_pct=_mape(te), mape_energy_pct=_mape(ee),
                                mape_power_pct=_mape(pe),
                                median_time_ratio=statistics.median(1 + e for e in te) if te else None))
    return tuple(out)


def validate_samples(samples: Sequence[Sample], not_compared: Sequence[tuple[Measured, str]] = (), *,
                     profiles: Mapping[str, Profile] | None = None, profiles_dir: str | Path | None = None,
                     files: Sequence[str] = (), excluded_files: Sequence[tuple[str, str]] = (),
                     torn_lines: int = 0, other_lines: int = 0, repeated_records: int = 0) -> ValidationReport:
    """Compare ``samples`` with their predictions. A GPU's profile is ``profiles[gpu]`` when given,
    else the one in ``profiles_dir`` (default: the bundled profiles)."""
    by_gpu: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_gpu[s.gpu].append(s)
    runs: list[Comparison] = []
    provs: dict[str, str] = {}
    order = {id(s): i for i, s in enumerate(samples)}
    pairs = []
    for gpu, ss in by_gpu.items():
        prof = (profiles or {}).get(gpu) or load_profile(gpu, profiles_dir)
        provs[gpu] = f"{prof.provenance.method}: {prof.provenance.data}"[:300]
        pairs += list(zip(ss, predict(ss, prof), strict=True))
    pairs.sort(key=lambda sp: order[id(sp[0])])
    for s, p in pairs:
        runs.append(Comparison(
            file=s.file, key=s.key, kind=s.kind, op_class=s.op_class, gpu=s.gpu, label=s.label, env_id=s.env_id,
            tokens=s.tokens, measured_time_s=s.time_s, predicted_time_s=p.time_s if s.time_s else None,
            measured_energy_j=s.energy_j, predicted_energy_j=p.energy_j,
            measured_power_w=s.power_w, predicted_power_w=p.power_w))
    nc = tuple({"file": m.file, "key": m.key, "kind": m.kind, "reason": why} for m, why in not_compared)
    kinds = Counter(m.kind for m, _ in not_compared if m.rec.get("status") == "ok")
    ok = [r if isinstance(r := m.rec.get("result"), dict) else {} for m, _ in not_compared
          if m.rec.get("status") == "ok"]
    # idle/static power records are compared by their power: counted apart, not as energy-less
    power_kinds = sum(1 for s in samples if s.kind in POWER_KINDS)
    ok += [{"energy_j": s.energy_j, "avg_power_w": s.power_w,
            "energy_unavailable_reason": s.energy_unavailable} for s in samples if s.kind not in POWER_KINDS]
    with_e = sum(1 for r in ok if r.get("energy_j") is not None)
    power_only = sum(1 for r in ok if r.get("energy_j") is None and r.get("avg_power_w") is not None)
    why = Counter(str(r.get("energy_unavailable_reason")) for r in ok if r.get("energy_j") is None
                  and r.get("energy_unavailable_reason"))
    energy_note = f"energy readings: {with_e} of {len(ok)} measured records" + (
        f" (the others: {'; '.join(f'{k} x{n}' for k, n in why.most_common(3))})" if why else "") + (
        f"; {power_only} with power readings alone" if power_only else "") + (
        f"; {power_kinds} idle/static power record(s), compared by their power" if power_kinds else "")
    return ValidationReport(files=tuple(files or sorted({s.file for s in samples})), runs=tuple(runs),
                            metrics=_metrics(runs), classes=_classes(runs), not_compared=nc, profiles=provs,
                            excluded_files=tuple(excluded_files), torn_lines=torn_lines, other_lines=other_lines,
                            repeated_records=repeated_records, measured_kinds=dict(kinds), energy_note=energy_note if ok else "")


def validate(paths: Sequence[str | Path], *, profiles_dir: str | Path | None = None,
             profiles: Mapping[str, Profile] | None = None) -> ValidationReport:
    """Predicted vs measured for every record of the measurement files ``paths`` (see the module doc).

    Raises ``EnergylensError`` when ``paths`` hold no measurement file, or when every file was
    left out (a file of data/measurements/ not listed in its README).
    """
    try:
        ms = read_measurements(paths)
    except EnergylensError as exc:
        raise EnergylensError(f"nothing to validate: {exc}") from None
    if not ms.files:
        raise EnergylensError("nothing to validate: every measurement file was left out ("
                              + "; ".join(f"{f}: {r}" for f, r in ms.excluded_files) + ")")
    if not ms.records:
        raise EnergylensError(f"nothing to validate: no measurement record in {', '.join(ms.files)}"
                              + (f" ({ms.torn_lines} torn line(s) of an interrupted run)" if ms.torn_lines else ""))
    samples, skipped = build_samples(ms.records)
    return validate_samples(samples, skipped, profiles=profiles, profiles_dir=profiles_dir, files=ms.files,
                            excluded_files=ms.excluded_files, torn_lines=ms.torn_lines, other_lines=ms.other_lines,
                            repeated_records=ms.repeated_records)


@dataclass(frozen=True)
class HoldoutResult(Record):
    """A calibration on one half of the runs per GPU and its validation on the other half."""

    calibrations: tuple[CalibrationResult, ...]
    report: ValidationReport
    train_runs: int
    test_runs: int

    def summary(self) -> str:
        m = {x.name: x.text() for x in self.report.metrics}
        cls = "; ".join(f"{c.op_class} time {_pct(c.mape_time_pct)}, energy {_pct(c.mape_energy_pct)}"
                        for c in self.report.classes)
        return (f"held-out validation: calibrated on {self.train_runs} runs, validated on {self.test_runs}: "
                + ", ".join(f"{k} {v}" for k, v in m.items()) + f" | per op class: {cls}")


def holdout(paths: Sequence[str | Path] | None = None, *, samples: Sequence[Sample] | None = None,
            seed: int = 0, base: str = "bundled") -> HoldoutResult:
    """Calibrate on one half of the runs of each GPU and validate on the other half (nothing written).

    ``paths``: measurement files (or give ``samples``). ``base``: starting profile, ``"bundled"``
    or ``"datasheet"``.
    """
    from energylens.costmodel.hardware import get_gpu
    from energylens.costmodel.profile import default_profile

    if samples is None:
        if paths is None:
            raise EnergylensError("holdout needs measurement files or samples")
        ms = read_measurements(paths)
        samples, _ = build_samples(ms.records)
    if not samples:
        raise EnergylensError("holdout: no record could be predicted by the cost model")
    train, test = split_holdout(samples, seed)
    cals, fitted = [], {}
    for gpu in sorted({s.gpu for s in train}):
        start = load_profile(gpu) if base == "bundled" else default_profile(get_gpu(gpu))
        cal = calibrate_samples([s for s in train if s.gpu == gpu], base=start,
                                data_label=f"holdout half (seed {seed})")
        cals.append(cal)
        fitted[gpu] = cal.profile
    report = validate_samples([s for s in test if s.gpu in fitted], profiles=fitted)
    return HoldoutResult(calibrations=tuple(cals), report=report, train_runs=len(train), test_runs=len(test))
