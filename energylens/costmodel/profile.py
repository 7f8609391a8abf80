"""Calibrated per-GPU coefficients of the cost model (``profiles/<gpu>.json``), with provenance.

A profile holds the few numbers the physics cannot take from a datasheet: achieved fractions of
peak bandwidth and compute, the GEMM efficiency curve, fixed per-kernel and per-step overheads,
and the three power coefficients (static watts, pJ per FLOP, pJ per HBM byte). Every profile says
where it came from (``provenance``): the data and fit it was calibrated on and the residuals,
or that it is a datasheet-derived default.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from energylens.costmodel.clock import MIN_CLOCK_FRACTION
from energylens.costmodel.hardware import GPUSpec, get_gpu
from energylens.errors import ConfigError, EstimateError

__all__ = ["Profile", "Provenance", "PRIOR_REFERENCE_GPU", "SOFTWARE_COSTS", "default_profile", "derived_profile", "prior_profile", "load_profile", "profile_path", "PROFILES_DIR"]

PROFILES_DIR = Path(__file__).with_name("profiles")


class Provenance(BaseModel):
    """Where a profile's numbers came from."""

    model_config = ConfigDict(extra="forbid")

    #: "fit", "derived" (another GPU's profile, same die), "datasheet-prior" (datasheet numbers with
    #: a measured GPU's software costs and power shares: ``prior_profile``) or "datasheet-default"
    method: str
    data: str = ""  # file(s) the fit used, with their source
    fit: str = ""  # what was fitted and how
    rows: int = 0
    residuals: dict[str, float] = Field(default_factory=dict)  # e.g. MAPE per target, in %
    notes: str = ""

    def summary(self, gpu: str) -> str:
        """One line for a report: how far a profile of ``gpu`` can be trusted and where it came from."""
        edited = re.search(r"edited: ([\w, ]+)$", self.notes)  # Profile.with_params
        return self._summary(gpu) + (f", then edited by hand ({edited.group(1)})" if edited else "")

    def _summary(self, gpu: str) -> str:
        if self.method == "fit":
            return f"{gpu} profile fitted on {self.data}"
        if self.method == "derived":  # fit: "the H100-SXM profile (...) unchanged"
            return f"{gpu} takes {self.fit.split(' (')[0]} (same die; no {gpu} measurement checks it): {self.data}"
        if self.method == "datasheet-prior":
            ref = re.search(r"and the (\S+) profile", self.data)  # prior_profile's wording
            return (f"{gpu} profile is a datasheet prior (its datasheet with the "
                    f"{ref.group(1) if ref else 'reference'} fit's software costs), not calibrated on any "
                    f"{gpu} measurement")
        return f"{gpu} profile is {self.method} ({self.data}), not calibrated on any measurement"


class Profile(BaseModel):
    """Cost-model coefficients of one GPU. Units in field names; efficiencies are fractions of peak."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu: str
    mem_efficiency: float = Field(gt=0, le=1)  # achieved / peak HBM bandwidth, streaming kernels
    attn_mem_efficiency: float = Field(gt=0, le=1)  # same, decode attention reading the KV cache
    compute_efficiency: float = Field(gt=0, le=1)  # achieved / dense peak, large GEMMs
    gemm_half_rows: float = Field(ge=0)  # GEMM rows at which efficiency is half of compute_efficiency
    vector_flops_fraction: float = Field(gt=0, le=1)  # CUDA-core (non-tensor) rate / dense bf16 peak
    kernel_overhead_s: float = Field(ge=0)  # launch + tail per kernel (CUDA graphs on)
    #: fixed time of one decode-attention kernel call (split-KV partials and their combine): the
    #: floor of the measured kernels (data/public/aiconfigurator_kernels, ``fit.ATTENTION_KERNEL_S``).
    #: None: ``kernel_overhead_s`` (GPUs without a measured attention kernel).
    attn_kernel_overhead_s: float | None = Field(default=None, ge=0)
    #: fixed time of one fused-MoE call beyond its kernels' work (the routing alignment that sorts
    #: tokens by expert, its small kernels and the GEMMs' tails): the median excess of the measured
    #: fused-MoE layers over their priced work (``fit.MOE_CALL_OVERHEAD_S``). None: 0 (not measured).
    moe_call_overhead_s: float | None = Field(default=None, ge=0)
    #: achieved fraction of dense peak of the padded FLOPs of a MoE expert GEMM on vLLM 0.11's
    #: untuned default tile (``costmodel.fused_moe``), in series with its weight stream; measured on
    #: the kernel (``fit.MOE_DEFAULT_TILE_EFFICIENCY``). Used only with ``legacy_moe_tiles``.
    moe_default_tile_efficiency: float | None = Field(default=None, gt=0, le=1)
    #: price the engine of the calibration rows, vLLM 0.11.1 (ML.ENERGY v3.0), whose fused MoE runs
    #: untuned expert shapes on a fixed default tile (``costmodel.fused_moe``). False (default):
    #: vLLM >= 0.19 (the exports target 0.33.0), whose default tile grows with the token count and
    #: whose measured fused-MoE kernels the roofline matches (benchmarks/kernel_check.py --op moe).
    legacy_moe_tiles: bool = False
    #: fixed time per sequence in each kernel walking the paged KV cache (decode attention, KV
    #: write): block-table reads, the partial last block, split-KV combine (``costmodel.compute``)
    kv_seq_overhead_s: float = Field(default=0.0, ge=0)
    step_overhead_s: float = Field(ge=0)  # per serving step: scheduler, sampler launch, sync
    seq_overhead_s: float = Field(ge=0)  # per sequence per serving step: sampling, logits processing
    static_power_w: float = Field(gt=0)  # power drawn while busy regardless of work (idle + clocks up)
    flop_pj: float = Field(ge=0)  # dynamic energy per FLOP, picojoules
    byte_pj: float = Field(ge=0)  # dynamic energy per HBM byte, picojoules
    #: dynamic energy per KV-cache byte streamed by decode attention (paged gathers, softmax on
    #: CUDA cores, padded tensor-core tiles; ``energylens.costmodel.power``). None: ``byte_pj``.
    kv_byte_pj: float | None = Field(default=None, ge=0)
    #: power while the GPU waits on the host between kernels of a step (scheduling, sampling,
    #: launch of the next step): no kernel runs, clocks stay up. None: ``static_power_w``.
    idle_power_w: float | None = Field(default=None, gt=0)
    #: how the per-sequence host time of a step (``seq_overhead_s x batch``) combines with its GPU
    #: time: ``(gpu^p + host^p)^(1/p)`` (``energylens.costmodel.serving.step_time_s``). 1: in series
    #: (synchronous scheduling); large: overlapped (vLLM's async scheduling prepares step n+1 on
    #: the CPU while the GPU runs step n, so a step takes the longer of the two).
    host_overlap_p: float = Field(default=1.0, ge=1.0)
    #: SM clock the profile prices at, as a fraction of the maximum boost clock: 1 = default clocks
    #: (as calibrated); lower = a locked clock (``search.evaluate.clock_profile``): compute time
    #: ``/ x``, energy per FLOP ``V(x)^2`` of its calibrated value (``costmodel.clock``, ``costmodel.power``)
    sm_clock_fraction: float = Field(default=1.0, ge=MIN_CLOCK_FRACTION, le=1)
    provenance: Provenance

    @property
    def overhead_power_w(self) -> float:
        """Power during the per-step and per-sequence host overheads (``idle_power_w``)."""
        return self.static_power_w if self.idle_power_w is None else self.idle_power_w

    def with_params(self, **params: Any) -> Profile:
        """This profile with ``params`` changed, checked as a profile file is (field names and
        bounds): ``ConfigError`` names a bad one. A profile edited so says so in its provenance,
        unless only its clock changed (the search's locked clocks)."""
        unknown = sorted(set(params) - set(type(self).model_fields))
        if unknown:
            raise ConfigError(f"profile has no field {', '.join(map(repr, unknown))}; fields: "
                              f"{', '.join(type(self).model_fields)}")
        data = {**self.model_dump(), **params}
        edited = sorted(k for k in params if k not in ("sm_clock_fraction", "provenance") and params[k] != getattr(self, k))
        if edited and "provenance" not in params:
            data["provenance"] = dict(data["provenance"], notes=f"{data['provenance']['notes']} edited: "
                                      f"{', '.join(edited)}".strip())
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            bad = "; ".join(f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{self.gpu} profile: {bad}") from None


#: Default efficiencies for a GPU without measurements (typical of tuned inference kernels).
_DEFAULTS: dict[str, float] = {
    "mem_efficiency": 0.80,
    "attn_mem_efficiency": 0.65,
    "compute_efficiency": 0.75,
    "gemm_half_rows": 64.0,
    "kernel_overhead_s": 3e-6,
    "kv_seq_overhead_s": 1e-7,  # per sequence per paged-KV kernel (fits: H100 0.9e-7, B200 2.3e-7)
    "step_overhead_s": 1e-3,
    "seq_overhead_s": 5e-6,
}


def default_profile(gpu: GPUSpec) -> Profile:
    """A datasheet-derived profile: default efficiencies, idle + 15% of TDP as static power,
    and dynamic energies that put a compute-bound GEMM and a bandwidth-bound stream at about TDP."""
    static_w = gpu.idle_power_w + 0.15 * gpu.tdp_w
    dyn_w = gpu.tdp_w - static_w
    flop_pj = dyn_w / (gpu.bf16_dense_tflops * 1e12 * _DEFAULTS["compute_efficiency"]) * 1e12
    byte_pj = dyn_w / (gpu.hbm_bandwidth_bytes_per_s * _DEFAULTS["mem_efficiency"]) * 1e12
    return Profile(
        gpu=gpu.name, vector_flops_fraction=1 / 15, static_power_w=static_w, flop_pj=flop_pj,
        byte_pj=byte_pj, **_DEFAULTS,
        provenance=Provenance(
            method="datasheet-default",
            data=f"energylens/costmodel/hardware/ ({gpu.name} datasheet numbers only)",
            fit="none: default efficiencies; static power = idle + 15% TDP; pJ/FLOP and pJ/byte put "
                "a compute-bound GEMM or a bandwidth-bound stream at TDP",
            notes="not calibrated against measurements on this GPU; expect larger errors",
        ),
    )


#: The fitted GPU whose software costs and power shares the GPUs without measurements take
#: (``prior_profile``): the one with the most rows and a measured fused-MoE call.
PRIOR_REFERENCE_GPU = "H100-SXM"

#: Coefficients a GPU without measurements takes from a measured one (``prior_profile``): the costs
#: of vLLM's kernels and host loop, which no datasheet gives.
SOFTWARE_COSTS: tuple[str, ...] = ("kernel_overhead_s", "attn_kernel_overhead_s", "moe_call_overhead_s",
                                   "kv_seq_overhead_s", "step_overhead_s", "seq_overhead_s")


def prior_profile(gpu: GPUSpec, reference: Profile) -> Profile:
    """``default_profile(gpu)`` with what a datasheet cannot give taken from ``reference``, a profile
    fitted on measurements of another GPU: its software costs (``SOFTWARE_COSTS``: the per-kernel,
    decode-attention and fused-MoE-call floors, the per-KV-sequence, per-step and per-sequence
    times; left at zero, a GPU without measurements would price vLLM's overheads as free and come
    out faster than a faster GPU), and the power a bandwidth-bound stream draws as a share of TDP
    (the H100 fit: 0.76; the datasheet default puts it at TDP, so batch-1 decode would run at TDP).

    >>> from energylens.costmodel.hardware import get_gpu
    >>> a100 = prior_profile(get_gpu("A100-SXM-80GB"), load_profile("H100-SXM"))
    >>> a100.moe_call_overhead_s == load_profile("H100-SXM").moe_call_overhead_s, a100.provenance.method
    (True, 'datasheet-prior')
    """
    ref_gpu = get_gpu(reference.gpu)
    stream_share = (reference.static_power_w + reference.byte_pj * 1e-12 * ref_gpu.hbm_bandwidth_bytes_per_s
                    * reference.mem_efficiency) / ref_gpu.tdp_w
    base = default_profile(gpu)
    stream_w = max(0.0, stream_share * gpu.tdp_w - base.static_power_w)
    return base.with_params(
        **{k: getattr(reference, k) for k in SOFTWARE_COSTS},
        byte_pj=stream_w / (gpu.hbm_bandwidth_bytes_per_s * base.mem_efficiency) * 1e12,
        provenance=Provenance(
            method="datasheet-prior",
            data=f"energylens/costmodel/hardware/ ({gpu.name} datasheet numbers) and the {reference.gpu} "
                 f"profile ({reference.provenance.method}: {reference.provenance.data})",
            fit=f"none: default efficiencies; static power = idle + 15% TDP; pJ/FLOP puts a compute-bound "
                f"GEMM at TDP; pJ/byte puts a bandwidth-bound stream at {stream_share:.2f} of TDP, the "
                f"{reference.gpu}'s measured share; {', '.join(SOFTWARE_COSTS)} are the {reference.gpu}'s",
            notes="not calibrated against measurements on this GPU; expect larger errors"))


def derived_profile(base: Profile, gpu: GPUSpec) -> Profile:
    """``base``'s coefficients for ``gpu``, a GPU on the same die (``GPUSpec.profile_from``).

    Every coefficient is a property of the die, its clocks and the kernels (achieved fractions of
    peak, overheads, static power, energy per FLOP and per byte), so it carries over unchanged;
    the roofline then uses ``gpu``'s own bandwidth and capacity.

    >>> from energylens.costmodel.hardware import get_gpu
    >>> h200 = load_profile("H200")
    >>> h200.provenance.method, h200.mem_efficiency == load_profile("H100-SXM").mem_efficiency
    ('derived', True)
    """
    src = base.provenance
    return base.model_copy(update={"gpu": gpu.name, "provenance": Provenance(
        method="derived", data=src.data,
        fit=f"the {base.gpu} profile ({src.method}: {src.fit or 'see its provenance'}) unchanged",
        rows=0, residuals={},
        notes=f"{gpu.name} takes the {base.gpu} profile: {gpu.sources.get('profile_from', '')}. "
              f"No {gpu.name} measurement checks it; the {base.gpu} residuals were: {src.residuals}")})


def profile_path(gpu_name: str, directory: Path | None = None) -> Path:
    return (directory or PROFILES_DIR) / f"{gpu_name.lower()}.json"


@functools.cache
def _load(path: str) -> Profile:
    try:
        return Profile.model_validate(json.loads(Path(path).read_text()))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSON and pydantic errors are ValueErrors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EstimateError(f"profile {path} is not a readable profile JSON: {first}") from None


def load_profile(gpu: str | GPUSpec, directory: str | Path | None = None) -> Profile:
    """The profile of ``gpu`` from ``directory`` (default: the bundled ``profiles/``).

    A GPU with no profile file takes the profile of the GPU it shares a die with
    (``GPUSpec.profile_from``: ``derived_profile``), else ``prior_profile`` of the reference fit
    (``PRIOR_REFERENCE_GPU``, from ``directory`` where it is there, else the bundled one); the
    provenance says so.
    That holds in a given ``directory`` too; a ``directory`` that does not exist raises ``EstimateError``.
    """
    spec = gpu if isinstance(gpu, GPUSpec) else get_gpu(gpu)
    # a folder the user named must exist: a typo must not silently give the fallback profile
    # ('' too: it is not "the bundled profiles", None is)
    if directory is not None and (not isinstance(directory, str | Path) or str(directory) == ""
                                  or not Path(directory).is_dir()):
        raise EstimateError(f"profile directory {directory!r} does not exist or is not a folder; give a folder "
                            f"of profile JSONs (<gpu>.json, e.g. {profile_path(spec.name).name}) or None for the bundled ones")
    path = profile_path(spec.name, Path(directory) if directory is not None else None)
    if not path.exists():
        if spec.profile_from is not None:
            return derived_profile(load_profile(spec.profile_from, directory), spec)
        # the prior of the folder's reference fit where it has one, else the bundled one
        ref_dir = directory if directory is not None and profile_path(PRIOR_REFERENCE_GPU, Path(directory)).exists() else None
        if spec.name == PRIOR_REFERENCE_GPU and ref_dir is None:
            return default_profile(spec)
        return prior_profile(spec, load_profile(PRIOR_REFERENCE_GPU, ref_dir))
    prof = _load(str(path.resolve()))
    if prof.gpu != spec.name:
        raise EstimateError(f"profile {path} is for {prof.gpu}, not {spec.name}")
    return prof
