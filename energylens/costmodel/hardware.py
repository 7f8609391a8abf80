"""GPU datasheet specs: ``hardware/*.yaml`` validated by pydantic, looked up by name or alias.

Every number in a spec file has a ``source`` (datasheet, vendor brief, or an explicit estimate);
a missing source is a validation error. Rates are *dense* (non-sparse) tensor-core rates.

>>> get_gpu("h100").name
'H100-SXM'
>>> get_gpu("H100-SXM").peak_flops_per_s("bf16")
989400000000000.0
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from energylens.errors import EstimateError, UnknownNameError

__all__ = ["GPUSpec", "get_gpu", "list_gpus"]

_NUMERIC_FIELDS = (
    "compute_units", "max_threads_per_compute_unit", "bf16_dense_tflops", "fp16_dense_tflops", "fp8_dense_tflops",
    "hbm_capacity_bytes", "hbm_bandwidth_bytes_per_s", "tdp_w", "idle_power_w",
    "nvlink_bandwidth_bytes_per_s", "pcie_bandwidth_bytes_per_s", "base_clock_mhz", "boost_clock_mhz",
)


class GPUSpec(BaseModel):
    """Datasheet numbers of one GPU; units in the field names; ``sources`` names where each came from.

    ``compute_units`` counts SMs (NVIDIA) or CUs (AMD); ``max_threads_per_compute_unit`` is how
    many threads one of them holds at once (a collective kernel's block of ``b`` threads takes
    ``b`` of them from compute). ``hbm_*`` describe the device memory
    (GDDR6 on an L40S). Link bandwidths are per direction. ``None`` means not supported or not
    published (its source says which). ``profile_from`` names another GPU built on the same die,
    with the same clocks and TDP (H200: H100-SXM), whose cost-model profile this GPU takes when it
    has none of its own (``energylens.costmodel.profile.load_profile``); its source says why.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    aliases: tuple[str, ...] = ()
    vendor: Literal["nvidia", "amd"]
    compute_units: PositiveInt
    max_threads_per_compute_unit: PositiveInt
    bf16_dense_tflops: PositiveFloat
    fp16_dense_tflops: PositiveFloat
    fp8_dense_tflops: PositiveFloat | None
    hbm_capacity_bytes: PositiveInt
    hbm_bandwidth_bytes_per_s: PositiveFloat
    tdp_w: PositiveFloat
    idle_power_w: PositiveFloat
    nvlink_bandwidth_bytes_per_s: PositiveFloat | None
    pcie_bandwidth_bytes_per_s: PositiveFloat
    base_clock_mhz: PositiveFloat | None
    boost_clock_mhz: PositiveFloat | None
    profile_from: str | None = None
    #: CUDA compute capability ("9.0"), NVIDIA only: software keys kernels and defaults on it
    compute_capability: str | None = None
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> GPUSpec:
        sourced = (_NUMERIC_FIELDS + (("profile_from",) if self.profile_from else ())
                   + (("compute_capability",) if self.compute_capability else ()))
        missing = [f for f in sourced if not self.sources.get(f, "").strip()]
        if missing:
            raise ValueError(f"{self.name}: no source for {', '.join(missing)}")
        unknown = sorted(set(self.sources) - set(sourced))
        if unknown:
            raise ValueError(f"{self.name}: sources for unknown fields {unknown}")
        if self.idle_power_w >= self.tdp_w:
            raise ValueError(f"{self.name}: idle power {self.idle_power_w} W is not below TDP {self.tdp_w} W")
        return self

    def peak_flops_per_s(self, dtype: str) -> float:
        """Dense tensor-core peak in FLOP/s for a GEMM whose inputs have ``dtype``.

        fp32 GEMMs are priced at the bf16 rate (TF32/bf16 tensor cores, as inference engines run
        them); an fp8 GEMM on a GPU without fp8 tensor cores raises ``EstimateError``.
        """
        if dtype in ("bf16", "f32"):
            return self.bf16_dense_tflops * 1e12
        if dtype == "f16":
            return self.fp16_dense_tflops * 1e12
        if dtype == "fp8":
            if self.fp8_dense_tflops is None:
                raise EstimateError(f"{self.name} has no fp8 tensor cores; use bf16 weights on this GPU")
            return self.fp8_dense_tflops * 1e12
        if dtype in ("i8", "i32", "i64", "bool"):
            return self.bf16_dense_tflops * 1e12
        raise EstimateError(f"no peak FLOP rate for dtype {dtype!r} on {self.name}")


@functools.cache
def _registry() -> dict[str, GPUSpec]:
    specs: dict[str, GPUSpec] = {}
    folder = resources.files("energylens.costmodel").joinpath("hardware")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        spec = GPUSpec.model_validate(yaml.safe_load(entry.read_text()))
        if spec.name in specs:
            raise ValueError(f"GPU {spec.name!r} defined twice (second in {entry.name})")
        specs[spec.name] = spec
    for spec in specs.values():
        if spec.profile_from is not None and (spec.profile_from not in specs or specs[spec.profile_from].profile_from):
            raise ValueError(f"{spec.name}: profile_from {spec.profile_from!r} must name a GPU with a "
                             f"profile of its own; GPUs: {', '.join(sorted(specs))}")
    return specs


def _key(name: str) -> str:
    """A GPU name as looked up: any case, spaces and underscores as hyphens, without the vendor
    prefix nvidia-smi prints ("NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3")."""
    k = re.sub(r"[\s_]+", "-", str(name).strip().lower())
    return k.removeprefix("nvidia-").removeprefix("amd-").removeprefix("instinct-")


def _by_memory_words(key: str, table: dict[str, str]) -> str | None:
    """The GPU a ``_key`` names once the memory words nvidia-smi adds are dropped ("h200-141gb-hbm3e"
    -> H200), if its HBM capacity is the one the name gives (within 10%): "a100-40gb" is not the
    80 GB A100, "h100-94gb" not the 80 GB H100-SXM."""
    words = key.split("-")
    name = table.get("-".join(w for w in words if not re.fullmatch(r"\d*gb|hbm\d*e?", w)))
    if name is None:
        return None
    gib = _registry()[name].hbm_capacity_bytes / 2**30
    sizes = [float(w[:-2]) for w in words if re.fullmatch(r"\d+gb", w)]
    return name if all(abs(s / gib - 1) <= 0.1 for s in sizes) else None


@functools.cache
def _lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for spec in _registry().values():
        for key in (spec.name, *spec.aliases):
            k = _key(key)
            if k in table and table[k] != spec.name:
                raise ValueError(f"alias {key!r} names both {table[k]} and {spec.name}")
            table[k] = spec.name
    return table


def list_gpus() -> list[str]:
    """Canonical names of the GPUs with a spec file, sorted.

    >>> "B200" in list_gpus()
    True
    """
    return sorted(_registry())


def get_gpu(name: str) -> GPUSpec:
    """The spec of GPU ``name`` (case-insensitive; aliases such as ``"H100"`` -> H100-SXM; nvidia-smi's
    names, spaces or underscores for hyphens: ``"NVIDIA H100 80GB HBM3"``, ``"H100 PCIe"``).

    Raises ``UnknownNameError`` listing the valid names (and the closest one).
    """
    table, k = _lookup(), _key(name)
    key = table.get(k) or _by_memory_words(k, table)
    if key is None:
        raise UnknownNameError("GPU", str(name), list_gpus())
    return _registry()[key]
