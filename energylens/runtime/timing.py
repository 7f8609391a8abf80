"""Repeated timed windows around a callable: warm-up, calibration to a minimum window, statistics.

>>> from energylens.runtime.meter import NullMeter
>>> t = time_windows(lambda: sum(range(1000)), NullMeter(), "sum", warmup=1, repeats=3, min_window_s=0.001)
>>> t.repeats, t.iters >= 1, t.energy_j is None
(3, True, True)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from energylens.errors import InvalidWorkloadError
from energylens.runtime.meter import GpuWindow, Meter, Window
from energylens.typing import Record

__all__ = ["Timing", "time_windows", "merge_windows"]


@dataclass(frozen=True)
class Timing(Record):
    """Statistics of ``repeats`` windows of ``iters`` calls each; per-call values are medians.

    ``time_s``/``energy_j`` are per call (window duration or energy divided by ``iters``);
    ``energy_j`` is None when energy is unavailable, and ``unavailable_reason`` says why.
    ``time_s_spread`` is (max - min) / median of the window durations.
    """

    iters: int
    repeats: int
    time_s: float
    time_s_min: float
    time_s_spread: float
    energy_j: float | None
    avg_power_w: float | None
    energy_source: str | None
    unavailable_reason: str | None
    windows: tuple[Window, ...]

    @classmethod
    def from_windows(cls, windows: Sequence[Window], iters: int) -> Timing:
        if not windows:
            raise ValueError("no windows")
        durations = [w.duration_s for w in windows]
        med = statistics.median(durations)
        energies = [w.energy_j for w in windows]
        energy = None if any(e is None for e in energies) else statistics.median(energies) / iters  # type: ignore[type-var]
        sources = {w.source for w in windows}
        source = None if energy is None else ("counter" if sources == {"counter"} else "sampled")
        reason = next((w.unavailable_reason for w in windows if w.unavailable_reason), None)
        powers = [w.avg_power_w for w in windows if w.avg_power_w is not None]  # a 0 s window has none
        avg = None if energy is None or not powers else statistics.median(powers)
        return cls(
            iters=iters,
            repeats=len(windows),
            time_s=med / iters,
            time_s_min=min(durations) / iters,
            time_s_spread=(max(durations) - min(durations)) / med if med > 0 else 0.0,
            energy_j=energy,
            avg_power_w=avg,
            energy_source=source,
            unavailable_reason=None if energy is not None else reason,
            windows=tuple(windows),
        )


def time_windows(
    fn: Callable[[], object],
    meter: Meter,
    name: str,
    *,
    warmup: int = 2,
    repeats: int = 3,
    min_window_s: float = 0.2,
    max_iters: int = 10_000,
    sync: Callable[[], None] | None = None,
    agree: Callable[[int], int] | None = None,
) -> Timing:
    """Run ``fn`` ``warmup`` times, then ``repeats`` metered windows of ``iters`` calls each.

    ``iters`` is chosen from one timed call so that a window lasts at least ``min_window_s``
    (NVML's counters update every few tens of ms: keep windows >= 0.1 s on a GPU), capped at
    ``max_iters``. ``sync`` waits for queued device work (the meter's own sync by default).
    ``agree`` makes the ranks of a distributed run use one ``iters`` (e.g. an all-reduce max).
    """
    if repeats < 1 or warmup < 0 or max_iters < 1:
        raise InvalidWorkloadError(f"need repeats >= 1, warmup >= 0, max_iters >= 1; got {repeats}, {warmup}, {max_iters}")
    sync = sync or meter._sync
    for _ in range(warmup):
        fn()
    sync()
    clock = meter.clock
    t0 = clock()
    fn()
    sync()
    one = clock() - t0
    iters = max(1, min(max_iters, math.ceil(min_window_s / max(one, 1e-9) * (1 - 1e-9))))
    if agree is not None:
        iters = agree(iters)
    windows = []
    for _ in range(repeats):
        with meter.window(name) as w:
            for _ in range(iters):
                fn()
        windows.append(w.record)
    return Timing.from_windows(windows, iters)


def merge_windows(per_rank: Sequence[Window]) -> Window:
    """One window from the same window measured on several ranks (each metering its own GPUs).

    Duration is the longest; energy is the sum (None if any rank's is unknown).
    """
    if not per_rank:
        raise ValueError("no windows to merge")
    gpus: tuple[GpuWindow, ...] = tuple(g for w in per_rank for g in w.gpus)
    energies = [w.energy_j for w in per_rank]
    energy = None if any(e is None for e in energies) else float(sum(energies))  # type: ignore[arg-type]
    duration = max(w.duration_s for w in per_rank)
    sources = {w.source for w in per_rank}
    source = None if energy is None else ("counter" if sources == {"counter"} else "sampled")
    reasons = sorted({w.unavailable_reason for w in per_rank if w.unavailable_reason})
    return Window(
        name=per_rank[0].name,
        duration_s=duration,
        energy_j=energy,
        avg_power_w=None if energy is None or duration <= 0 else energy / duration,
        source=source,
        gpus=gpus,
        unavailable_reason="; ".join(reasons) if energy is None and reasons else None,
        trace=tuple(s for w in per_rank for s in w.trace),
    )
