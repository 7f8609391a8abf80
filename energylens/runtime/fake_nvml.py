"""A test double of the pynvml functions the meter calls, driven by a virtual clock.

Each fake GPU draws a power (constant, or a function of time) and integrates it into a total-energy
counter (uint64 mJ, wrapping), so the meter's window arithmetic can be checked exactly on a CPU.
Errors are raised as pynvml does: an ``NVMLError`` whose ``.value`` is the NVML return code.

>>> clock = FakeClock()
>>> nvml = FakeNVML([FakeGpu(power_w=250.0)], clock)
>>> nvml.nvmlInit(); h = nvml.nvmlDeviceGetHandleByIndex(0)
>>> clock.advance(2.0); nvml.nvmlDeviceGetTotalEnergyConsumption(h)
500000
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FakeClock", "FakeGpu", "FakeNVML", "FakeNVMLError"]

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
}


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``: ``.value`` is the return code, ``str()`` its message."""

    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


class FakeClock:
    """A clock that moves only when told to (seconds)."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, dt_s: float) -> None:
        self.now += dt_s


@dataclass
class FakeGpu:
    """One fake GPU. ``counter``/``power``: "ok", or the NVML error code their reads raise."""

    power_w: float | Callable[[float], float] = 300.0
    energy_start_mj: int = 0
    counter: str | int = "ok"
    power: str | int = "ok"
    reset_counter_at_s: float | None = None  # virtual time at which the driver "reloads" (counter -> 0)
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    temp_c: int = 45
    throttle_mask: int = 0
    name: str = "NVIDIA H100 80GB HBM3"
    power_limit_mw: int = 700_000
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    _t_origin: float | None = field(default=None, repr=False)

    def energy_j(self, t0: float, t1: float) -> float:
        if not callable(self.power_w):
            return self.power_w * (t1 - t0)
        steps = 2000
        dt = (t1 - t0) / steps
        return sum(self.power_w(t0 + (k + 0.5) * dt) for k in range(steps)) * dt

    def power_now_w(self, t: float) -> float:
        return self.power_w(t) if callable(self.power_w) else self.power_w


class FakeNVML:
    """The subset of pynvml that ``NvmlMeter`` uses; ``calls`` counts the calls by function name."""

    NVMLError = FakeNVMLError
    NVML_SUCCESS = NVML_SUCCESS
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    NVML_ERROR_FUNCTION_NOT_FOUND = NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[FakeGpu], clock: FakeClock | None = None, init_error: int | None = None,
                 call_s: float = 0.0):
        self.gpus, self.clock, self.init_error = gpus, clock or FakeClock(), init_error
        self.call_s = call_s  # each call takes this long on the clock (a real NVML call: tens of us)
        self.initialized = 0
        self.calls: dict[str, int] = {}
        for g in gpus:
            g._t_origin = self.clock()

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _gpu(self, handle: int) -> FakeGpu:
        if not self.initialized:
            raise FakeNVMLError(NVML_ERROR_UNINITIALIZED)
        self.clock.advance(self.call_s)  # every device query
        return self.gpus[handle]

    @staticmethod
    def _check(mode: str | int) -> None:
        if mode != "ok":
            raise FakeNVMLError(int(mode))

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        if not self.initialized:
            raise FakeNVMLError(NVML_ERROR_UNINITIALIZED)
        self.initialized -= 1

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialized:
            raise FakeNVMLError(NVML_ERROR_UNINITIALIZED)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        for i, g in enumerate(self.gpus):
            if g.uuid == uuid:
                return i
        raise FakeNVMLError(NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self._count("nvmlDeviceGetTotalEnergyConsumption")
        g = self._gpu(handle)
        self._check(g.counter)
        now = self.clock()
        origin, base = g._t_origin or now, g.energy_start_mj
        if g.reset_counter_at_s is not None and now >= g.reset_counter_at_s:
            origin, base = g.reset_counter_at_s, 0
        return (int(base) + int(round(1000.0 * g.energy_j(origin, now)))) % 2**64

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._count("nvmlDeviceGetPowerUsage")
        g = self._gpu(handle)
        self._check(g.power)
        return int(round(g.power_now_w(self.clock()) * 1000))

    def nvmlDeviceGetClockInfo(self, handle: int, kind: int) -> int:
        g = self._gpu(handle)
        return g.sm_clock_mhz if kind == self.NVML_CLOCK_SM else g.mem_clock_mhz

    def nvmlDeviceGetMaxClockInfo(self, handle: int, kind: int) -> int:
        return self.nvmlDeviceGetClockInfo(handle, kind)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self._gpu(handle).temp_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self._gpu(handle).throttle_mask

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._gpu(handle).power_limit_mw

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._gpu(handle).uuid

    def nvmlSystemGetDriverVersion(self) -> str:
        return "560.35.03"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12060
