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

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from energylens.costmodel.hardware import GPUSpec
from energylens.errors import InvalidTypeError, InvalidWorkloadError

__all__ = ["VOLTAGE_SLOPE", "MIN_CLOCK_FRACTION", "ClockModel", "locked_clock", "search_clocks"]

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


# -- clocks a user asks for (estimate's clock_mhz, the search's num_clocks / clocks_mhz) --------------

def _whole_mhz(f: Any) -> bool:
    """A clock ``nvidia-smi -lgc`` takes: a whole number of MHz (a bool is not one)."""
    return isinstance(f, numbers.Real) and not isinstance(f, bool) and math.isfinite(f) and float(f).is_integer()


def _no_maximum(gpu: GPUSpec, name: str, got: Any) -> InvalidWorkloadError:
    return InvalidWorkloadError(f"{gpu.name} has no published maximum clock, so a locked clock cannot be priced or "
                                f"applied; got {name}={got!r}. Leave it unset (the default clock)")


def _check_range(gpu: GPUSpec, name: str, clocks: Sequence[int], got: Any) -> None:
    """The clocks the model holds on ``gpu``: the search's lowest (about ``MIN_CLOCK_FRACTION`` of the
    maximum) up to the maximum."""
    lo, hi = ClockModel.of(gpu).grid()[0], gpu.boost_clock_mhz
    if not all(lo <= f <= hi for f in clocks):
        raise InvalidWorkloadError(f"{name} must be in {lo}..{hi:.0f} MHz on {gpu.name} (about half the maximum "
                                   f"clock: the search's lowest 15 MHz step, up to it, where the clock model holds), got {got!r}")


def locked_clock(clock_mhz: Any, gpu: GPUSpec) -> int | None:
    """``estimate``'s ``clock_mhz`` as the clock to lock: None for the default (maximum) clock, else
    a whole MHz in the search's range. A GPU without a published maximum clock takes only the
    placeholder maximum its plans report (``Plan.clock_mhz``), as the default."""
    if clock_mhz is None:
        return None
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, numbers.Real):
        raise InvalidTypeError(f"clock_mhz must be a number of MHz, got {type(clock_mhz).__name__} {clock_mhz!r}")
    if not _whole_mhz(clock_mhz):
        raise InvalidWorkloadError(f"clock_mhz must be a whole number of MHz (nvidia-smi -lgc takes no "
                                   f"fractions), got {clock_mhz!r}")
    f, model = int(clock_mhz), ClockModel.of(gpu)
    if gpu.boost_clock_mhz is None:
        if f == round(model.f_max_mhz):
            return None
        raise _no_maximum(gpu, "clock_mhz", clock_mhz)
    _check_range(gpu, "clock_mhz", [f], clock_mhz)
    return model.lock(f)


def search_clocks(num_clocks: Any, clocks_mhz: Any, gpu: GPUSpec) -> tuple[int, ...]:
    """The clocks a search prices. ``num_clocks``: None (every 15 MHz step) or a count >= 1;
    ``clocks_mhz``: None or a non-empty sequence of whole-MHz clocks in the range the clock model
    holds (instead of ``num_clocks``, not with it). A GPU without a published maximum clock has
    only its default clock.

    >>> from energylens.costmodel.hardware import get_gpu
    >>> search_clocks(3, None, get_gpu("H100-SXM")), search_clocks(None, [1500], get_gpu("H100-SXM"))
    ((990, 1485, 1980), (1500,))
    """
    if num_clocks is not None and (isinstance(num_clocks, bool) or not isinstance(num_clocks, numbers.Integral)
                                   or num_clocks < 1):
        raise InvalidWorkloadError(f"num_clocks must be a whole number >= 1 (or None: every 15 MHz step), "
                                   f"got {num_clocks!r}")
    if clocks_mhz is None:
        return ClockModel.of(gpu).grid(num_clocks if gpu.boost_clock_mhz is not None else 1)
    if (not isinstance(clocks_mhz, Sequence) or isinstance(clocks_mhz, str) or not clocks_mhz
            or not all(_whole_mhz(f) for f in clocks_mhz)):
        raise InvalidWorkloadError(f"clocks_mhz must be a non-empty list of whole MHz, e.g. [990, 1410], "
                                   f"got {clocks_mhz!r}")
    if num_clocks is not None:
        raise InvalidWorkloadError(f"give num_clocks (a count of clocks to spread over the range) or clocks_mhz "
                                   f"(the clocks themselves), not both; got num_clocks={num_clocks!r}, "
                                   f"clocks_mhz={list(clocks_mhz)!r}")
    if gpu.boost_clock_mhz is None:  # only the placeholder its plans report, as in locked_clock
        default = ClockModel.of(gpu).grid(1)
        if {int(f) for f in clocks_mhz} == set(default):
            return default
        raise _no_maximum(gpu, "clocks_mhz", list(clocks_mhz))
    _check_range(gpu, "clocks_mhz", clocks_mhz, list(clocks_mhz))
    return tuple(sorted({int(f) for f in clocks_mhz}))  # a clock given twice is one clock to price
