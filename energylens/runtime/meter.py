"""Energy meter: windows over NVML's total-energy counter, with power sampling as the fallback.

A window reads, on every metered GPU, the total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
millijoules since the driver was loaded, Volta and newer) at its start and at its end, after waiting
for the GPU work queued so far (``sync``). GPUs without the counter (or where reading it is not
permitted) are measured by sampling their power (``nvmlDeviceGetPowerUsage``, or the instantaneous
power field where the driver has it) in a background thread and integrating the samples over the
window. Sampling also gives a power trace when asked for (``trace=True``). SM and memory clocks,
temperature and the clock event ("throttle") reasons are read at both ends of every window.

>>> meter = NullMeter()                      # CPU runs: timing only, energy unavailable
>>> with meter.window("decode") as w:
...     pass
>>> w.record.energy_j is None, w.record.unavailable_reason
(True, 'no energy meter: CPU run (timing only)')

On a GPU::

    meter = NvmlMeter()                      # the GPUs visible to CUDA; needs energylens[gpu]
    with meter.window("decode") as w:
        run_decode_steps()
    w.record.energy_j, w.record.avg_power_w, w.record.gpus[0].throttle_reasons

Facts about NVML this module relies on (pynvml, nvidia-ml-py 12/13):

* The counter is an unsigned 64-bit number of mJ; it is reset when the driver is reloaded. A
  decrease is read as a wrap modulo 2**64 when that gives a plausible energy (below twice the
  power limit times the window), else as a reset, and the window falls back to sampled power.
* The counter and power readings update every few tens of milliseconds, so windows shorter than
  about 0.1 s are imprecise; the runtime repeats work until a window lasts ``min_window_s``.
* ``nvmlDeviceGetPowerUsage`` is a one-second running average on Ampere and newer (drivers >= 530);
  ``NVML_FI_DEV_POWER_INSTANT`` (field 186) is the instantaneous power and is used where supported.
* Errors are ``pynvml.NVMLError`` subclasses carrying ``.value``: ``NVML_ERROR_NOT_SUPPORTED`` (3),
  ``NVML_ERROR_NO_PERMISSION`` (4), ``NVML_ERROR_FUNCTION_NOT_FOUND`` (13, old driver),
  ``NVML_ERROR_LIBRARY_NOT_FOUND`` (12) / ``NVML_ERROR_DRIVER_NOT_LOADED`` (9) from ``nvmlInit``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from energylens.errors import DeviceUnavailableError
from energylens.typing import Record

__all__ = [
    "PowerSample",
    "GpuWindow",
    "Window",
    "WindowHandle",
    "Meter",
    "NullMeter",
    "NvmlMeter",
    "open_meter",
    "integrate_power_j",
    "counter_delta_mj",
    "throttle_reason_names",
    "COUNTER_MODULUS_MJ",
]

COUNTER_MODULUS_MJ = 2**64
"""The energy counter is an unsigned 64-bit count of millijoules."""

# NVML return codes (identical in every pynvml release; the module's own constants are used when present).
_NOT_SUPPORTED, _NO_PERMISSION, _FUNCTION_NOT_FOUND = 3, 4, 13
_FIELD_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT, milliwatts
_TEMPERATURE_GPU, _CLOCK_SM, _CLOCK_MEM = 0, 1, 2

# nvmlClocksEventReason* bits (formerly nvmlClocksThrottleReason*).
_THROTTLE_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_reason_names(mask: int | None) -> tuple[str, ...]:
    """Names of the set bits of a clock event (throttle) reason mask; unknown bits as hex.

    >>> throttle_reason_names(0x4 | 0x1)
    ('gpu_idle', 'sw_power_cap')
    """
    if not mask:
        return ()
    names = [name for bit, name in _THROTTLE_BITS.items() if mask & bit]
    unknown = mask & ~sum(_THROTTLE_BITS)
    if unknown:
        names.append(hex(unknown))
    return tuple(names)


def counter_delta_mj(start_mj: int, end_mj: int, modulus: int = COUNTER_MODULUS_MJ) -> int:
    """Energy between two readings of a wrapping counter, in mJ (a decrease is one wrap).

    >>> counter_delta_mj(2**64 - 1000, 500)
    1500
    """
    return (end_mj - start_mj) % modulus


def integrate_power_j(times_s: Sequence[float], powers_w: Sequence[float], t0: float, t1: float) -> float:
    """Energy in J of a sampled power signal over ``[t0, t1]`` (trapezoid rule).

    Samples outside the window are clipped; the signal is held constant before the first and
    after the last sample. ``times_s`` must be sorted.

    >>> integrate_power_j([0.0, 1.0], [100.0, 300.0], 0.0, 1.0)
    200.0
    >>> integrate_power_j([0.5], [100.0], 0.0, 2.0)
    200.0
    """
    if t1 < t0:
        raise ValueError(f"window ends before it starts: t0={t0}, t1={t1}")
    if not times_s:
        raise ValueError("no power samples to integrate")
    if len(times_s) != len(powers_w):
        raise ValueError("times_s and powers_w differ in length")

    def power_at(t: float) -> float:  # linear interpolation, held constant outside the samples
        if t <= times_s[0]:
            return powers_w[0]
        if t >= times_s[-1]:
            return powers_w[-1]
        lo, hi = 0, len(times_s) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if times_s[mid] <= t:
                lo = mid
            else:
                hi = mid
        span = times_s[hi] - times_s[lo]
        frac = 0.0 if span == 0 else (t - times_s[lo]) / span
        return powers_w[lo] + frac * (powers_w[hi] - powers_w[lo])

    points = [(t0, power_at(t0))]
    points += [(t, p) for t, p in zip(times_s, powers_w, strict=True) if t0 < t < t1]
    points.append((t1, power_at(t1)))
    return sum((tb - ta) * (pa + pb) / 2 for (ta, pa), (tb, pb) in zip(points, points[1:], strict=False))


@dataclass(frozen=True)
class PowerSample(Record):
    """One power reading of one GPU; ``t_s`` is seconds since the window started."""

    gpu: int
    t_s: float
    power_w: float


@dataclass(frozen=True)
class GpuWindow(Record):
    """What one GPU did during a window.

    ``source`` is "counter" (total-energy counter), "sampled" (integrated power samples) or None
    (energy unavailable; ``note`` says why). Clocks are the mean of the readings at the window's
    two ends, in MHz; temperatures in degrees C; ``throttle_reasons`` is the union of the clock
    event reasons seen at either end (``throttle_mask`` the raw bits).
    """

    gpu: int
    energy_j: float | None
    avg_power_w: float | None
    source: str | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    temp_start_c: float | None
    temp_end_c: float | None
    throttle_mask: int | None
    throttle_reasons: tuple[str, ...]
    power_samples: int = 0
    note: str | None = None


@dataclass(frozen=True)
class Window(Record):
    """A timed window: duration, energy summed over the metered GPUs, and the per-GPU details.

    ``energy_j`` is None when any metered GPU's energy is unknown (``unavailable_reason`` says why);
    ``source`` is "counter" when every GPU used its counter, "sampled" when any used power samples.
    """

    name: str
    duration_s: float
    energy_j: float | None
    avg_power_w: float | None
    source: str | None
    gpus: tuple[GpuWindow, ...] = ()
    unavailable_reason: str | None = None
    trace: tuple[PowerSample, ...] = ()

    @property
    def energy_j_per_gpu(self) -> tuple[float | None, ...]:
        return tuple(g.energy_j for g in self.gpus)


class WindowHandle:
    """Returned by ``meter.window(name)``; its ``record`` (a ``Window``) exists once the block has ended."""

    def __init__(self, meter: Meter, name: str):
        self._meter, self.name = meter, name
        self._state: Any = None
        self._record: Window | None = None

    def __enter__(self) -> WindowHandle:
        self._meter._sync()
        self._state = self._meter._begin(self.name)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:  # the work failed: stop the sampler, record nothing
            self._meter._abort(self._state)
            return
        self._meter._sync()
        self._record = self._meter._end(self.name, self._state)
        self._meter.records.append(self._record)

    @property
    def record(self) -> Window:
        if self._record is None:
            raise RuntimeError(f"window {self.name!r} has not ended: read .record after the `with` block")
        return self._record


def _default_sync() -> None:
    import sys

    torch = sys.modules.get("torch")  # a meter never imports torch itself
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Meter:
    """Base of the meters: ``window(name)``, the list of ``records``, ``environment()``, ``close()``."""

    energy_available: bool = False
    unavailable_reason: str | None = None

    def __init__(self, sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self._sync = sync or _default_sync
        self._clock = clock
        self.records: list[Window] = []

    @property
    def clock(self) -> Callable[[], float]:
        """The meter's clock (seconds; ``time.perf_counter`` unless a test gives another)."""
        return self._clock

    def set_sync(self, sync: Callable[[], None]) -> None:
        """Wait with ``sync`` (device work done, ranks at a barrier...) at both edges of every window."""
        self._sync = sync

    def window(self, name: str) -> WindowHandle:
        """A context manager timing (and metering) the work done in its block."""
        return WindowHandle(self, name)

    def environment(self) -> dict[str, Any]:
        """What the meter knows of the machine (GPU names, driver, power limits...), plain data."""
        return {"meter": type(self).__name__, "energy_available": self.energy_available}

    def close(self) -> None:
        """Release NVML (a no-op for meters without it)."""

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # subclasses
    def _begin(self, name: str) -> Any:
        raise NotImplementedError

    def _end(self, name: str, state: Any) -> Window:
        raise NotImplementedError

    def _abort(self, state: Any) -> None:
        pass


class NullMeter(Meter):
    """Timing only: every window has ``energy_j=None`` and says why (CPU runs, or no NVML)."""

    def __init__(
        self,
        reason: str = "no energy meter: CPU run (timing only)",
        sync: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        super().__init__(sync=sync, clock=clock)
        self.unavailable_reason = reason

    def environment(self) -> dict[str, Any]:
        return {**super().environment(), "unavailable_reason": self.unavailable_reason}

    def _begin(self, name: str) -> float:
        return self._clock()

    def _end(self, name: str, state: float) -> Window:
        duration = self._clock() - state
        return Window(name, duration, None, None, None, (), self.unavailable_reason)


@dataclass
class _Gpu:
    index: int
    handle: Any
    has_counter: bool
    counter_note: str | None
    power_limit_w: float | None
    instant_power: bool


@dataclass
class _Reading:
    t: float
    energy_mj: int | None
    energy_error: str | None
    sm_mhz: float | None
    mem_mhz: float | None
    temp_c: float | None
    throttle: int | None
    power_w: float | None


@dataclass
class _State:
    t0: float
    start: list[_Reading]
    sampler: _Sampler | None


class _Sampler(threading.Thread):
    """Reads every GPU's power every ``interval_s`` until stopped."""

    def __init__(self, read: Callable[[int], float | None], gpus: int, interval_s: float, clock: Callable[[], float]):
        super().__init__(name="energylens-power-sampler", daemon=True)
        self._read, self._gpus, self._interval, self._clock = read, gpus, interval_s, clock
        self._stop_event = threading.Event()
        self.samples: list[list[tuple[float, float]]] = [[] for _ in range(gpus)]

    def run(self) -> None:
        while not self._stop_event.is_set():
            for i in range(self._gpus):
                p = self._read(i)
                if p is not None:
                    self.samples[i].append((self._clock(), p))
            self._stop_event.wait(self._interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _visible_nvml_indices(nvml: Any, count: int) -> list[int]:
    """NVML indices of the GPUs CUDA sees (``CUDA_VISIBLE_DEVICES``: indices or GPU UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return list(range(count)) if visible is None else []
    out: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.lstrip("-").isdigit():
            if int(entry) < 0:
                break  # CUDA stops at the first invalid index
            out.append(int(entry))
        elif entry.startswith("GPU-"):
            out.append(int(nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(entry))))
        else:
            raise DeviceUnavailableError(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} is neither a GPU index nor a GPU UUID (MIG instances "
                "have no energy counter of their own); pass the NVML indices to NvmlMeter(gpus=[...])"
            )
    return out


class NvmlMeter(Meter):
    """Energy windows over NVML on the given GPUs (NVML indices; default: those CUDA sees).

    ``sample_interval_s``: period of the power sampler (used for GPUs without the counter, and
    for ``trace=True``). ``nvml``: the pynvml module, or a test double with the same functions.
    Raises ``DeviceUnavailableError`` when nvidia-ml-py, the driver, a GPU, or the permission to
    read energy or power is missing.
    """

    energy_available = True

    def __init__(
        self,
        gpus: Sequence[int] | None = None,
        *,
        sample_interval_s: float = 0.01,
        trace: bool = False,
        sync: Callable[[], None] | None = None,
        nvml: Any = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        super().__init__(sync=sync, clock=clock)
        if sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be positive, got {sample_interval_s}")
        self.sample_interval_s, self.trace = sample_interval_s, trace
        self._nvml = nvml if nvml is not None else _import_pynvml()
        nv = self._nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise DeviceUnavailableError(
                f"NVML could not start ({exc}): this machine has no usable NVIDIA driver. Energy cannot be "
                "measured here; use a NullMeter (device='cpu') for timing only."
            ) from exc
        self._open = True
        try:
            count = int(nv.nvmlDeviceGetCount())
            indices = list(gpus) if gpus is not None else _visible_nvml_indices(nv, count)
            if not indices:
                raise DeviceUnavailableError("NVML sees no GPU to meter (CUDA_VISIBLE_DEVICES is empty?)")
            bad = [i for i in indices if not 0 <= i < count]
            if bad:
                raise DeviceUnavailableError(
                    f"GPU index {bad[0]} does not exist: NVML sees {count} GPU(s), indices 0..{count - 1}"
                )
            self._gpus = [self._probe(i) for i in indices]
        except nv.NVMLError as exc:
            self.close()
            raise DeviceUnavailableError(f"NVML failed while opening the GPUs {indices}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # ---- set-up -------------------------------------------------------------------------------
    def _code(self, exc: BaseException) -> int | None:
        return getattr(exc, "value", None)

    def _err(self, name: str, default: int) -> int:
        return int(getattr(self._nvml, name, default))

    def _unsupported(self, exc: BaseException) -> bool:
        return self._code(exc) in (
            self._err("NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED),
            self._err("NVML_ERROR_NO_PERMISSION", _NO_PERMISSION),
            self._err("NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND),
        )

    def _probe(self, index: int) -> _Gpu:
        nv = self._nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        has_counter, note = True, None
        try:
            nv.nvmlDeviceGetTotalEnergyConsumption(handle)
        except nv.NVMLError as exc:
            if not self._unsupported(exc):
                raise DeviceUnavailableError(f"GPU {index}: reading the energy counter failed: {exc}") from exc
            has_counter, note = False, f"energy counter unavailable ({exc}); power sampled instead"
        instant = self._probe_instant_power(handle)
        if not has_counter:
            try:
                nv.nvmlDeviceGetPowerUsage(handle)
            except nv.NVMLError as exc:
                raise DeviceUnavailableError(
                    f"GPU {index}: NVML gives neither the energy counter nor the power ({exc}). Energy needs a "
                    "GPU of the Volta generation or newer and the permission to read power (on a shared or "
                    "virtualised GPU, ask the administrator); use a NullMeter for timing only."
                ) from exc
        limit_w = None
        for fn in ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit"):
            try:
                limit_w = getattr(nv, fn)(handle) / 1000.0
                break
            except (nv.NVMLError, AttributeError):
                continue
        return _Gpu(index, handle, has_counter, note, limit_w, instant)

    def _probe_instant_power(self, handle: Any) -> bool:
        nv = self._nvml
        if not hasattr(nv, "nvmlDeviceGetFieldValues"):
            return False
        try:
            value = nv.nvmlDeviceGetFieldValues(handle, [_FIELD_POWER_INSTANT])[0]
            return int(value.nvmlReturn) == 0 and self._field_mw(value) > 0
        except Exception:  # an old driver rejects the field id; averaged power then
            return False

    @staticmethod
    def _field_mw(value: Any) -> float:
        kind = int(value.valueType)
        union = value.value
        return float(
            {0: union.dVal, 1: union.uiVal, 2: union.ulVal, 3: union.ullVal, 4: union.sllVal, 5: union.siVal}.get(
                kind, union.uiVal
            )
        )

    # ---- readings -----------------------------------------------------------------------------
    def _safe(self, fn: str, *args: Any) -> Any:
        """A best-effort reading (clocks, temperature): None where unsupported or not permitted."""
        nv = self._nvml
        f = getattr(nv, fn, None)
        if f is None:
            return None
        try:
            return f(*args)
        except nv.NVMLError:
            return None

    def _power_w(self, i: int) -> float | None:
        gpu, nv = self._gpus[i], self._nvml
        try:
            if gpu.instant_power:
                value = nv.nvmlDeviceGetFieldValues(gpu.handle, [_FIELD_POWER_INSTANT])[0]
                # a field read reports its failure in its own nvmlReturn, not by raising: not a 0 W sample
                return self._field_mw(value) / 1000 if int(value.nvmlReturn) == 0 else None
            return nv.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
        except nv.NVMLError:
            return None

    def _temperature(self, handle: Any) -> float | None:
        sensor = getattr(self._nvml, "NVML_TEMPERATURE_GPU", _TEMPERATURE_GPU)
        temp = self._safe("nvmlDeviceGetTemperatureV", handle, sensor)  # the non-deprecated call (NVML 12.8+)
        return self._safe("nvmlDeviceGetTemperature", handle, sensor) if temp is None else temp

    def _throttle(self, handle: Any) -> int | None:
        mask = self._safe("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if mask is None:
            mask = self._safe("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return None if mask is None else int(mask)

    def _counter(self, i: int) -> tuple[int | None, str | None]:
        gpu, nv = self._gpus[i], self._nvml
        if not gpu.has_counter:
            return None, None
        try:
            return int(nv.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)), None
        except nv.NVMLError as exc:
            return None, f"energy counter read failed ({exc})"

    def _states(self, sampling: bool) -> list[tuple[float, tuple]]:
        """Every GPU's clocks, temperature, throttle reasons and (``sampling``) power, with the time."""
        out = []
        for i, gpu in enumerate(self._gpus):
            nv = self._nvml
            sm = self._safe("nvmlDeviceGetClockInfo", gpu.handle, getattr(nv, "NVML_CLOCK_SM", _CLOCK_SM))
            mem = self._safe("nvmlDeviceGetClockInfo", gpu.handle, getattr(nv, "NVML_CLOCK_MEM", _CLOCK_MEM))
            temp, throttle = self._temperature(gpu.handle), self._throttle(gpu.handle)
            out.append((self._clock(), (sm, mem, temp, throttle, self._power_w(i) if sampling else None)))
        return out

    def _edge(self) -> tuple[float, list[tuple[int | None, str | None]]]:
        """A window's edge: its clock, then every GPU's energy counter in one pass. The other reads,
        several NVML calls per GPU, stay outside the window (read in between, they lengthened every
        GPU's energy window by their time, more with more GPUs); read right after the clock at both
        edges, each GPU's counter window is as long as the timed one."""
        return self._clock(), [self._counter(i) for i in range(len(self._gpus))]

    @staticmethod
    def _merge(counters: list[tuple[int | None, str | None]], states: list[tuple[float, tuple]]) -> list[_Reading]:
        return [_Reading(t, energy, err, *state) for (energy, err), (t, state) in zip(counters, states, strict=True)]

    def _sampling(self) -> bool:
        return self.trace or any(not g.has_counter for g in self._gpus)

    # ---- windows ------------------------------------------------------------------------------
    def _begin(self, name: str) -> _State:
        if not self._open:
            raise DeviceUnavailableError("this NvmlMeter is closed; open a new one")
        sampling = self._sampling()
        states = self._states(sampling)
        t0, counters = self._edge()
        start = self._merge(counters, states)
        sampler = None
        if sampling:
            sampler = _Sampler(self._power_w, len(self._gpus), self.sample_interval_s, self._clock)
            sampler.start()
        return _State(t0, start, sampler)

    def _abort(self, state: _State | None) -> None:
        if state is not None and state.sampler is not None:
            state.sampler.stop()

    def _end(self, name: str, state: _State) -> Window:
        sampling = state.sampler is not None
        t1, counters = self._edge()
        if state.sampler is not None:
            state.sampler.stop()
        end = self._merge(counters, self._states(sampling))
        duration = t1 - state.t0
        gpus, trace = [], []
        for i, gpu in enumerate(self._gpus):
            samples: list[tuple[float, float]] = []
            if sampling:
                a, b = state.start[i], end[i]
                inner = state.sampler.samples[i] if state.sampler else []
                samples = [(a.t, a.power_w)] if a.power_w is not None else []
                samples += inner
                if b.power_w is not None:
                    samples.append((b.t, b.power_w))
                samples.sort()
                trace += [PowerSample(gpu.index, t - state.t0, p) for t, p in samples]
            gpus.append(self._gpu_window(gpu, state.start[i], end[i], state.t0, t1, samples))
        known = [g.energy_j for g in gpus]
        total = None if any(e is None for e in known) else sum(known)  # type: ignore[arg-type]
        reason = None
        if total is None:
            reason = "; ".join(f"GPU {g.gpu}: {g.note}" for g in gpus if g.energy_j is None)
        source = None if total is None else ("counter" if all(g.source == "counter" for g in gpus) else "sampled")
        avg = None if total is None or duration <= 0 else total / duration
        return Window(name, duration, total, avg, source, tuple(gpus), reason, tuple(trace) if self.trace else ())

    def _gpu_window(
        self, gpu: _Gpu, a: _Reading, b: _Reading, t0: float, t1: float, samples: list[tuple[float, float]]
    ) -> GpuWindow:
        duration = t1 - t0
        energy_j, source, note = None, None, gpu.counter_note
        if gpu.has_counter and a.energy_mj is not None and b.energy_mj is not None:
            delta_j = counter_delta_mj(a.energy_mj, b.energy_mj) / 1000.0
            limit_w = gpu.power_limit_w or 1500.0
            # the counter's update period (tens of ms) at full power, plus twice the power limit
            plausible_j = 2.0 * limit_w * max(duration, 0.0) + 0.1 * limit_w
            if delta_j <= plausible_j:
                energy_j, source = delta_j, "counter"
                if b.energy_mj < a.energy_mj:
                    note = "energy counter wrapped"
            else:
                note = (
                    f"energy counter jumped from {a.energy_mj} to {b.energy_mj} mJ (driver reloaded?)"
                    + ("; power sampled instead" if samples else "")
                )
        elif gpu.has_counter:
            note = a.energy_error or b.energy_error
        if energy_j is None and samples:
            times, powers = [t for t, _ in samples], [p for _, p in samples]
            energy_j, source = integrate_power_j(times, powers, t0, t1), "sampled"
        elif energy_j is None and note is None:
            note = "no energy reading"
        elif energy_j is None and note.endswith("; power sampled instead"):  # and no power reading came
            note = note.removesuffix("; power sampled instead") + "; no power reading either"
        avg = None if energy_j is None or duration <= 0 else energy_j / duration
        mask = None if a.throttle is None and b.throttle is None else (a.throttle or 0) | (b.throttle or 0)
        return GpuWindow(
            gpu=gpu.index,
            energy_j=energy_j,
            avg_power_w=avg,
            source=source,
            sm_clock_mhz=_mean(a.sm_mhz, b.sm_mhz),
            mem_clock_mhz=_mean(a.mem_mhz, b.mem_mhz),
            temp_start_c=None if a.temp_c is None else float(a.temp_c),
            temp_end_c=None if b.temp_c is None else float(b.temp_c),
            throttle_mask=mask,
            throttle_reasons=throttle_reason_names(mask),
            power_samples=len(samples),
            note=note,
        )

    # ---- environment and shutdown -------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        nv = self._nvml
        driver = self._safe("nvmlSystemGetDriverVersion")
        cuda = self._safe("nvmlSystemGetCudaDriverVersion")
        gpus = []
        for g in self._gpus:
            h = g.handle
            uuid = self._safe("nvmlDeviceGetUUID", h)
            mem = self._safe("nvmlDeviceGetMemoryInfo", h)
            gpus.append(
                {
                    "index": g.index,
                    "name": _text(self._safe("nvmlDeviceGetName", h)),
                    "uuid_hash": None if uuid is None else hashlib.sha256(_text(uuid).encode()).hexdigest()[:12],
                    "memory_bytes": None if mem is None else int(mem.total),
                    "energy_source": "counter" if g.has_counter else "sampled",
                    "power_reading": "instant" if g.instant_power else "average",
                    "power_limit_w": g.power_limit_w,
                    "default_power_limit_w": _div(self._safe("nvmlDeviceGetPowerManagementDefaultLimit", h), 1000),
                    "sm_clock_mhz": self._safe("nvmlDeviceGetClockInfo", h, getattr(nv, "NVML_CLOCK_SM", _CLOCK_SM)),
                    "mem_clock_mhz": self._safe(
                        "nvmlDeviceGetClockInfo", h, getattr(nv, "NVML_CLOCK_MEM", _CLOCK_MEM)
                    ),
                    "max_sm_clock_mhz": self._safe(
                        "nvmlDeviceGetMaxClockInfo", h, getattr(nv, "NVML_CLOCK_SM", _CLOCK_SM)
                    ),
                    "max_mem_clock_mhz": self._safe(
                        "nvmlDeviceGetMaxClockInfo", h, getattr(nv, "NVML_CLOCK_MEM", _CLOCK_MEM)
                    ),
                    "persistence_mode": self._safe("nvmlDeviceGetPersistenceMode", h),
                    "temperature_c": self._temperature(h),
                }
            )
        return {
            **super().environment(),
            "driver_version": _text(driver),
            "cuda_driver_version": _cuda_version(cuda),
            "gpus": gpus,
        }

    @property
    def gpu_indices(self) -> tuple[int, ...]:
        return tuple(g.index for g in self._gpus)

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down twice, or a driver gone: nothing to release
                pass


def _mean(a: float | None, b: float | None) -> float | None:
    vals = [float(v) for v in (a, b) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _div(v: float | None, d: float) -> float | None:
    return None if v is None else v / d


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _cuda_version(v: int | None) -> str | None:
    return None if v is None else f"{v // 1000}.{(v % 1000) // 10}"


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise DeviceUnavailableError(
            "NVML is not installed: energy metering needs nvidia-ml-py (`pip install 'energylens[gpu]'`). "
            "Without it, use device='cpu' / NullMeter for timing only."
        ) from exc
    return pynvml


def open_meter(device: str | None = None, *, trace: bool = False, **kwargs: Any) -> Meter:
    """The meter for a torch device string: NullMeter for "cpu", NvmlMeter for "cuda" / "cuda:N".

    "cuda:N" meters the N-th GPU that CUDA sees; "cuda" meters every GPU that CUDA sees. Raises ``DeviceUnavailableError``
    for a CUDA device without NVML (it never silently drops to timing only on a GPU).

    >>> open_meter("cpu").energy_available
    False
    """
    device = (device or "cpu").strip()
    if device == "cpu":
        return NullMeter(**{k: v for k, v in kwargs.items() if k in ("sync", "clock")})
    if device == "cuda" or device.startswith("cuda:"):
        if device.startswith("cuda:") and "gpus" not in kwargs:
            nv = kwargs.get("nvml") or _import_pynvml()
            try:
                nv.nvmlInit()
                try:
                    visible = _visible_nvml_indices(nv, int(nv.nvmlDeviceGetCount()))
                finally:
                    nv.nvmlShutdown()
            except nv.NVMLError as exc:
                raise DeviceUnavailableError(f"NVML could not start ({exc}); no energy on {device}") from exc
            n = int(device.split(":", 1)[1])
            if not 0 <= n < len(visible):
                raise DeviceUnavailableError(f"{device} does not exist: CUDA sees {len(visible)} GPU(s)")
            kwargs["gpus"] = [visible[n]]
        return NvmlMeter(trace=trace, **kwargs)
    raise DeviceUnavailableError(f"no energy meter for device {device!r}; valid: 'cpu', 'cuda', 'cuda:N'")
