"""Reports of a compiled plan: rich tables (``Plan.report``) and the Pareto plot (``Plan.plot``)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from energylens.errors import EnergylensError

__all__ = ["render", "plot", "plot_path", "si", "gpus_used", "serving_label"]


def si(x: float, unit: str) -> str:
    """Human-readable number with an SI prefix: 1.5e9 B -> '1.5 GB'."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
                           (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def gpus_used(plan: Any) -> str:
    """'4 x H100-SXM', or '4 of 8 x H100-SXM' when the plan leaves some of the cluster's GPUs unused."""
    of = f" of {plan.cluster_gpus}" if plan.cluster_gpus not in (None, plan.num_gpus) else ""
    return f"{plan.num_gpus}{of} x {plan.gpu}"


def serving_label(workload: Any, serving: Any) -> str:
    """The name of the steady-state serving row of a phase table (its latency is the median ITL; its
    energy and power are the mean step's), with the running batch where prefill or the KV cache
    keeps it below ``workload.batch`` (``costmodel.serving.running_batch``)."""
    hit = f", {100 * workload.prefix_cache_hit:.4g}% prefix hits" if workload.prefix_cache_hit else ""  # 99.9, not 100
    why = ("the KV cache holds no more at their mean context (vLLM preempts the rest)"
           if serving.kv_limited else "prefill of new prompts fills every step's token budget")
    run = f"; only {serving.batch} of {workload.batch} sequences run: {why}" if serving.batch < workload.batch else ""
    return f"serving (median ITL; mean step, incl. prefill{hit}{run})"


def render(plan: Any, console: Any, top: int = 10) -> None:
    """Print the chosen plan, per-phase summary, top ops and the frontier to a rich ``console``."""
    from rich.table import Table

    from energylens.costmodel.memory import memory_line

    est, wl, p = plan.estimate, plan.workload, plan.parallel
    slo = ", ".join(f"{k} <= {v:g} ms" for k, v in (("ITL", plan.slo.itl_ms), ("TTFT", plan.slo.ttft_ms))
                    if v is not None) or "none"
    head = Table(title=f"{plan.model} on {gpus_used(plan)}: batch {wl.batch}, prompt {wl.prompt_len}, "
                       f"output {wl.output_len}; objective {plan.objective}, SLO {slo}")
    for col in ("tp", "ep", "dp", "batch (max_num_seqs)", "fused", "comm SMs", "GPU clock", "plans searched"):
        head.add_column(col, justify="right")
    clock = "default" if plan.gpu_clock_mhz is None else f"{plan.clock_mhz} MHz (locked)"
    head.add_row(str(p.tp), str(p.ep), str(p.dp), f"{plan.batch} ({plan.max_num_seqs}/replica)",
                 "yes" if plan.fused else "no", str(plan.comm_sms or "-"), clock,
                 f"{plan.plans_evaluated:,} in {plan.search_s:.2f} s")
    console.print(head)
    s = est.serving
    # batch is an upper bound of the search: say what it chose (fewer running than that is the
    # serving row's to explain: prefill's token budget or the KV cache)
    if s is not None and plan.batch < wl.batch:
        cost = "more energy per token" if plan.objective == "energy" else "a longer ITL"
        console.print(f"serves {plan.batch} of the {wl.batch} concurrent sequences asked for (the batch is searched up "
                      f"to it: more would cost {cost}, miss the SLO or not fit); more GPUs or "
                      "replicas serve the rest")
    phases = Table(title="per phase (energies and powers over all GPUs of the plan)")
    for col in ("phase", "latency", "energy", "energy / token", "avg power", "tokens/s"):
        phases.add_column(col, justify="left" if col == "phase" else "right")
    if s is not None:
        itl = si(s.median_itl_s, "s") if wl.output_len > 1 else "-"  # one output token: no inter-token gap
        phases.add_row(serving_label(est.workload, s), itl,
                       si(s.energy_per_output_token_j * s.batch, "J"), si(s.energy_per_output_token_j, "J"),
                       si(s.avg_power_w, "W"), f"{s.output_tokens_per_s:,.0f}")
    pre, dec = est.prefill, est.decode
    phases.add_row(f"prefill of the batch (TTFT, {pre.tokens} tokens)", si(pre.latency_s, "s"), si(pre.energy_j, "J"),
                   si(pre.energy_per_token_j, "J"), si(pre.avg_power_w, "W"), f"{pre.tokens / pre.latency_s:,.0f}")
    phases.add_row("decode step (no prefill)", si(dec.itl_s, "s"), si(dec.energy_j, "J"), si(dec.energy_per_token_j, "J"),
                   si(dec.avg_power_w, "W"), f"{dec.tokens / dec.latency_s:,.0f}")
    console.print(phases)
    m = est.memory
    console.print(memory_line(m))
    console.print(f"pipeline: {plan.graph.pipeline if plan.graph else '-'}")
    console.print(f"cost model: {est.profile}")
    ops = Table(title=f"top {top} ops by energy (all layers; energy summed over the plan's GPUs)")
    for col in ("phase", "op", "kind", "source", "x", "time", "energy"):
        ops.add_column(col, justify="right" if col in ("x", "time", "energy") else "left")
    for o in sorted(est.ops, key=lambda o: o.energy_j, reverse=True)[:top]:
        ops.add_row(o.phase, o.name, o.kind, o.source, str(o.count), si(o.time_s, "s"), si(o.energy_j, "J"))
    console.print(ops)
    rows = list(plan.pareto)
    chosen = (p.tp, p.ep, p.dp, plan.fused, plan.batch, plan.comm_sms, plan.clock_mhz)
    key = [(r.tp, r.ep, r.dp, r.fused, r.batch, r.comm_sms, r.clock_mhz) for r in rows]
    if len(rows) > 12:  # a readable sample: evenly spaced along the frontier, and the chosen plan
        keep = set(np.linspace(0, len(rows) - 1, 12).round().astype(int)) | {i for i, k in enumerate(key) if k == chosen}
        rows, key = [rows[i] for i in sorted(keep)], [key[i] for i in sorted(keep)]
    shown = f"{len(rows)} of {len(plan.pareto)} frontier plans" if len(rows) < len(plan.pareto) else f"{len(rows)} plans"
    fr = Table(title=f"Pareto frontier: energy per output token vs median ITL ({shown}; * = chosen)")
    for col in ("tp", "ep", "dp", "fused", "batch", "comm SMs", "clock MHz", "ITL", "TTFT", "energy / token",
                "power"):
        fr.add_column(col, justify="right")
    off = chosen not in key  # a TTFT target can pick a plan off the energy/ITL frontier
    if off:
        s = plan.estimate.serving
        rows.append(SimpleNamespace(tp=p.tp, ep=p.ep, dp=p.dp, fused=plan.fused, batch=plan.batch,
                                    comm_sms=plan.comm_sms, clock_mhz=plan.clock_mhz, itl_s=s.median_itl_s,
                                    ttft_s=plan.estimate.prefill.latency_s, energy_per_token_j=s.energy_per_output_token_j,
                                    power_w=s.avg_power_w))
        key.append(chosen)
        fr.caption = "* = chosen: off this frontier (the TTFT target ruled the frontier's plans out)"
    for r, k in zip(rows, key, strict=True):
        mark = " *" if k == chosen else ""
        fr.add_row(str(r.tp), str(r.ep), str(r.dp), "yes" if r.fused else "no", str(r.batch), str(r.comm_sms or "-"),
                   _clock(plan, r.clock_mhz), si(r.itl_s, "s") + mark, si(r.ttft_s, "s"), si(r.energy_per_token_j, "J"),
                   si(r.power_w, "W"))
    console.print(fr)


def plot_path(path: str | Path) -> Path:
    """The file a plot to ``path`` is written to: ``path`` if its extension is a format matplotlib
    writes, ``path`` + ``.png`` if it has none (as matplotlib does); else ``EnergylensError``, as for
    a folder (the path must name a file) or a file in a folder that does not exist.

    >>> str(plot_path("pareto")), str(plot_path("pareto.svg"))
    ('pareto.png', 'pareto.svg')
    """
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise EnergylensError("plotting needs matplotlib: pip install matplotlib") from None
    if not str(path).strip():
        raise EnergylensError("empty plot path: give a file such as pareto.png (formats: png, pdf, svg, ...)")
    if str(path).endswith(("/", os.sep)) or Path(path).is_dir():
        raise EnergylensError(f"cannot write a plot to {str(path)!r}: it is a folder; give a file such as "
                              f"{os.path.join(str(path), 'pareto.png')!r}")
    if Path(path).exists() and not Path(path).is_file():  # /dev/null, a pipe: not a picture's place
        raise EnergylensError(f"cannot write a plot to {str(path)!r}: it is not a regular file")
    ext = os.path.splitext(str(path))[1][1:].lower()
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if ext and ext not in formats:
        raise EnergylensError(f"cannot write a plot to {str(path)!r}: unknown image format {ext!r}. "
                              f"Valid extensions: {', '.join(formats)}")
    out = Path(path) if ext else Path(str(path).rstrip(".") + ".png")
    if not out.parent.is_dir():
        what = "is a file, not a folder" if out.parent.exists() else "does not exist"
        raise EnergylensError(f"cannot write a plot to {str(out)!r}: folder {str(out.parent)!r} {what}")
    return out


def plot(plan: Any, path: Path) -> Path:
    """Two panels: energy per output token vs median ITL, and prefill energy per token vs TTFT;
    every searched plan (grey), the frontier (line), the chosen plan (star), the SLO (dashed).
    Returns the file written (``plot_path``: ``.png`` added to a path without an extension)."""
    path = plot_path(path)  # a bad extension fails before the figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = plan.space
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("itl_s", "energy_per_token_j", plan.pareto, "median ITL (ms)", "energy per output token (J)",
               plan.slo.itl_ms, plan.estimate.serving.median_itl_s, plan.estimate.serving.energy_per_output_token_j),
              ("ttft_s", "prefill_energy_per_token_j", plan.prefill_pareto, "TTFT: prefill of the batch (ms)",
               "prefill energy per prompt token (J)", plan.slo.ttft_ms, plan.estimate.prefill.latency_s,
               plan.estimate.prefill.energy_per_token_j))
    for ax, (x, y, front, xl, yl, target, cx, cy) in zip(axes, panels, strict=True):
        if space is not None and len(space):
            tp = space.cols["tp"]
            for t in np.unique(tp):
                m = tp == t
                ax.scatter(space.cols[x][m] * 1e3, space.cols[y][m], s=4, alpha=0.25, label=f"tp={int(t)}")
        fx = [getattr(r, x) * 1e3 for r in front]
        fy = [getattr(r, y) for r in front]
        ax.plot(fx, fy, "k.-", lw=1.2, ms=4, label="Pareto frontier")
        ax.plot([cx * 1e3], [cy], marker="*", color="red", ms=16, ls="none", label="chosen plan")
        if target is not None:
            ax.axvline(target, color="red", ls="--", lw=1, label="SLO")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
        legend = ax.legend(fontsize=7)
        for handle in legend.legend_handles:  # the scatter's tiny faint dots, legible in the legend
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([20])
                handle.set_alpha(1.0)
    p = plan.parallel
    fig.suptitle(f"{plan.model} on {gpus_used(plan)}: chosen tp={p.tp} ep={p.ep} dp={p.dp}, "
                 f"batch {plan.batch}, clock {_clock(plan, plan.clock_mhz)}, comm SMs {plan.comm_sms or '-'} "
                 f"({plan.plans_evaluated:,} plans)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` (from ``plot_path``) and close it; a failed write is one clear error."""
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise EnergylensError(f"cannot write the plot to {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path


def _clock(plan: Any, mhz: int) -> str:
    """A searched clock as the user sets it: MHz to lock, or ``default`` at the maximum (no lock)."""
    from energylens.costmodel.clock import ClockModel
    from energylens.costmodel.hardware import get_gpu

    locked = ClockModel.of(get_gpu(plan.gpu)).lock(mhz)
    return "default" if locked is None else f"{locked} MHz"
