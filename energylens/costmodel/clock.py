"""GPU graphics clock: how a locked SM clock changes an op's time and dynamic energy.

The cost-model profiles are calibrated at the GPU's default clocks, i.e. at (or near) the maximum
boost clock ``f_max`` (``GPUSpec.boost_clock_mhz``) under load. Locking the graphics clock to
``f < f_max`` (``nvidia-smi -lgc f,f``) changes, relative to that calibration:

* **compute time** ~ ``1/f``: tensor-core and CUDA-core FLOP rates scale with the SM clock, so the
  compute side of the roofline is multiplied by ``f_max / f``;
* **memory time**: unchanged (HBM has its own clock; an SM clock above ~50% of ``f_max`` still
  keeps enough loads in flight to saturate HBM), and so is the per-kernel launch overhead;
* **dynamic energy per FLOP** ~ ``V(f)^2`` (switching energy ``C V^2`` per operation; dynamic
  power is then ``~ f V(f)^2``), with the simple voltage/frequency curve

      V(f) / V(f_max) = 1 - VOLTAGE_SLOPE * (1 - f / f_max)        (VOLTAGE_SLOPE = 0.6)

  i.e. a straight line through (f_max, 1) reaching 0.7 at half the maximum clock: a common
  first-order DVFS model, in line with published H100/A100 V-f tables (about 0.7 V at half clock
  to about 1.0 V at full boost). This is a documented assumption, not a calibration;
* **energy per HBM byte** and **static power**: unchanged (memory and board power do not follow
  the SM voltage in this model).

The lowest clock offered to the search is ``MIN_CLOCK_FRACTION x f_max`` (below it the memory
system is no longer saturated and the model above does not hold). The GPU's power limiter uses
the same physics: an op that would draw more than TDP runs at the clock where it draws exactly TDP
(``costmodel.power.power_capped``), a locked clock being the highest it may use.

>>> from energylens.costmodel.hardware import get_gpu
>>> c = ClockModel.of(get_gpu("H100-SXM"))
>>> c.compute_scale(990.0), round(float(c.flop_energy_scale(990.0)), 3)
(2.0, 0.49)
>>> c.grid(5)
(990, 1230, 1485, 1740, 1980)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from energylens.costmodel.hardware import GPUSpec
from energylens.errors import InvalidWorkloadError

__all__ = ["VOLTAGE_SLOPE", "MIN_CLOCK_FRACTION", "ClockModel"]

#: Slope of the relative voltage against the relative clock: V/Vmax = 1 - slope * (1 - f/fmax).
VOLTAGE_SLOPE = 0.6
#: Lowest clock the search offers, as a fraction of the maximum boost clock.
MIN_CLOCK_FRACTION = 0.5
#: Clock granularity of ``nvidia-smi -lgc`` on recent NVIDIA GPUs (MHz).
CLOCK_STEP_MHZ = 15


@dataclass(frozen=True)
class ClockModel:
    """Clock scaling of one GPU; ``f_max_mhz`` is the clock its profile was calibrated at."""

    f_max_mhz: float
    voltage_slope: float = VOLTAGE_SLOPE

    @staticmethod
    def of(gpu: GPUSpec) -> ClockModel:
        """The clock model of ``gpu`` (its maximum boost clock; 1 GHz nominal if unpublished)."""
        return ClockModel(float(gpu.boost_clock_mhz or 1000.0))

    def _check(self, f_mhz: Any) -> np.ndarray:
        f = np.asarray(f_mhz, dtype=float)
        if np.any(f <= 0) or np.any(f > self.f_max_mhz * (1 + 1e-9)):
            raise InvalidWorkloadError(f"GPU clock must be in (0, {self.f_max_mhz:g}] MHz, got {f_mhz}")
        return f

    def compute_scale(self, f_mhz: Any) -> Any:
        """Factor on compute time at clock ``f_mhz`` (``f_max / f``; 1 at the maximum clock)."""
        f = self._check(f_mhz)
        return float(self.f_max_mhz / f) if f.ndim == 0 else self.f_max_mhz / f

    def voltage(self, f_mhz: Any) -> Any:
        """Relative voltage ``V(f) / V(f_max)``."""
        f = self._check(f_mhz)
        return 1.0 - self.voltage_slope * (1.0 - f / self.f_max_mhz)

    def flop_energy_scale(self, f_mhz: Any) -> Any:
        """Factor on dynamic energy per FLOP at clock ``f_mhz`` (``V(f)^2``, relative)."""
        return self.voltage(f_mhz) ** 2

    def lock(self, f_mhz: int) -> int | None:
        """The clock to lock for a searched ``f_mhz``: None at the maximum (the default clock, no lock).

        >>> ClockModel(1980.0).lock(1980), ClockModel(1980.0).lock(990)
        (None, 990)
        """
        return None if f_mhz >= self.f_max_mhz else f_mhz

    def grid(self, n: int | None = None) -> tuple[int, ...]:
        """``n`` clocks (MHz) from ``MIN_CLOCK_FRACTION x f_max`` to ``f_max``, on the 15 MHz grid
        (``None``: every 15 MHz step). The last is always ``f_max`` (the default clock: no lock).

        >>> len(ClockModel(1980.0).grid())
        67
        """
        if n is None:
            lo = CLOCK_STEP_MHZ * round(MIN_CLOCK_FRACTION * self.f_max_mhz / CLOCK_STEP_MHZ)
            return (*range(int(lo), int(self.f_max_mhz), CLOCK_STEP_MHZ), int(round(self.f_max_mhz)))
        if n < 1:
            raise InvalidWorkloadError(f"need at least one clock, got {n}")
        if n == 1:
            return (int(round(self.f_max_mhz)),)
        raw = np.linspace(MIN_CLOCK_FRACTION * self.f_max_mhz, self.f_max_mhz, n)
        out = sorted({int(CLOCK_STEP_MHZ * round(x / CLOCK_STEP_MHZ)) for x in raw[:-1]})
        return (*[f for f in out if f < self.f_max_mhz], int(round(self.f_max_mhz)))
