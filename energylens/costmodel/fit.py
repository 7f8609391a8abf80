"""Calibrating a GPU profile on serving measurements (ML.ENERGY-style CSV rows).

The physics (roofline per op, MoE distinct experts, mixed chunked-prefill steps, TDP cap) is
fixed; the fit only chooses the twelve per-GPU coefficients of a ``Profile`` (ten where two are
measured on kernels, below):

* time: ``mem_efficiency``, ``attn_mem_efficiency``, ``compute_efficiency``, ``gemm_half_rows``,
  ``kernel_overhead_s``, ``step_overhead_s``, ``seq_overhead_s``, ``kv_seq_overhead_s`` (GPU time
  per sequence in each paged-KV kernel, at busy power, unlike the host's ``seq_overhead_s`` during
  which the GPU idles);
* power: ``static_power_w`` (busy), ``flop_pj``, ``byte_pj``, ``idle_power_w`` (drawn during the
  host overheads of a step, when no kernel runs).

``mem_efficiency`` and ``kernel_overhead_s`` are not fitted either where vLLM's decode GEMMs were
measured on the GPU (``KERNEL_GEMV``: H100-SXM, B200): a weight stream's share of peak bandwidth
and the fixed time per kernel come from those kernels, and the fit chooses the other ten.

``moe_default_tile_efficiency`` (vLLM 0.11's untuned fused-MoE tile) is not fitted on these rows:
it is measured on the kernel (``MOE_DEFAULT_TILE_EFFICIENCY``), and the others are fitted with the
tile priced at it (single-GPU steps with chunked prefill pass the tile switch too; ``fit_gpu_profile``).

Each coefficient has a physical prior (``PRIORS``: what tuned serving kernels reach on any recent
GPU) that the loss pays a small quadratic penalty to leave: serving rows of one task leave some
coefficients degenerate (per-kernel overhead against bandwidth efficiency), and an unregularised
fit trades them into unphysical corners that do not carry over to other models.

Targets per row: median ITL, mean step time (``avg_batch_size / output_tok_per_s``), average
power and energy per output token. Two stages, alternated twice: the eight time coefficients on
the two time targets, then the three power coefficients on power and energy per token with the
times fixed. Loss: sum of Huber (delta 0.05) losses of the log-ratios, minimised by Nelder-Mead
with restarts over bounded, transformed parameters; rows whose time stays off by more than 40%
after the first pass (a run that stalled on something outside the GPU) are dropped once and
listed in the provenance. No per-model constant exists anywhere: a model
enters only through its traced IR graphs.

Re-run the bundled fit with ``python -m energylens.costmodel.fit --data data/public/mlenergy_dev.csv``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from energylens.costmodel.compute import op_time_s
from energylens.costmodel.hardware import GPUSpec, get_gpu, list_gpus
from energylens.costmodel.plan import plan_graph
from energylens.costmodel.power import op_energy
from energylens.costmodel.profile import (
    PRIOR_REFERENCE_GPU,
    PROFILES_DIR,
    Profile,
    Provenance,
    default_profile,
    load_profile,
    prior_profile,
    profile_path,
)
from energylens.costmodel.serving import (
    kv_capacity_tokens,
    prefill_mixture,
    prefill_tokens_per_step,
    serving_context_len,
    stack_works,
    step_ops,
    step_time_s,
)
from energylens.errors import ConfigError, EnergylensError, UnknownNameError
from energylens.typing import Parallel, Workload

__all__ = [
    "TASK_PROMPT_LEN", "TASK_OUTPUT_CV", "MLEnergyRow", "read_mlenergy", "row_skip_reason", "gpu_or_none", "weight_format", "finite_number", "fit_profile", "fit_gpu_profile",
    "FIT_PARAMS",
    "write_profile", "parse_task_shares", "with_default_tile", "kernel_default_tile_efficiency", "mlenergy_profile", "nelder_mead", "fit_bounds", "huber",
]

#: Mean prompt tokens per ML.ENERGY v3.0 task (ML.ENERGY v3.0 blog, Qwen3 tokenizer; data/public/README.md).
TASK_PROMPT_LEN: dict[str, int] = {"lm-arena-chat": 634, "gpqa": 224}
#: Coefficient of variation of the output lengths per task (``Workload.output_len_cv``): a workload
#: fact, not a GPU or model constant. Chat replies spread roughly exponentially (CV ~1, as in
#: LMSYS/ShareGPT traces); GPQA reasoning traces are long and bounded by the generation limit, so
#: they spread less (CV ~0.5, an estimate: ML.ENERGY publishes only the mean).
TASK_OUTPUT_CV: dict[str, float] = {"lm-arena-chat": 1.0, "gpqa": 0.5}

MLENERGY_COLUMNS = (
    "model_id", "task", "gpu_model", "num_gpus", "tp", "ep", "dp", "max_num_seqs", "avg_batch_size",
    "avg_output_len", "avg_power_watts_total", "energy_per_token_j", "output_tok_per_s", "median_itl_ms",
)


@dataclass(frozen=True)
class MLEnergyRow:
    """One ML.ENERGY serving run (the columns energylens uses), with its line number in the file."""

    line: int
    model_id: str
    task: str
    gpu_model: str
    num_gpus: int
    tp: int
    ep: int
    dp: int
    max_num_seqs: int
    avg_batch_size: float
    avg_output_len: float
    avg_power_watts_total: float
    energy_per_token_j: float
    output_tok_per_s: float
    median_itl_ms: float
    #: mean prompt tokens of this row's task when given by the reader (``read_mlenergy``'s
    #: ``prompt_lens``); None: ``TASK_PROMPT_LEN`` of the task
    prompt_len: int | None = None
    #: share of each prompt found in vLLM's prefix cache (``Workload.prefix_cache_hit``), when the
    #: reader is given one for the task (``read_mlenergy``'s ``prefix_hits``); 0 otherwise
    prefix_cache_hit: float = 0.0
    #: why a value of the row could not be read (a row is skipped with it), else None
    problem: str | None = None
    #: the run's ``weight_precision`` cell ("bfloat16", "fp8", ...; empty when the file has none)
    weight_precision: str = ""

    @property
    def mean_step_s(self) -> float:
        """Measured mean time per decode step: running sequences / output tokens per second."""
        return self.avg_batch_size / self.output_tok_per_s

    def parallel(self) -> Parallel:
        """The plan the run used: its tp/ep/dp, except that ML.ENERGY's MoE rows showing ``tp=1, ep=N``
        ran attention with tensor parallelism N plus expert parallelism N over the same N GPUs
        (``--tensor-parallel-size N --enable-expert-parallel``; data/public/mlenergy_dev.README.md)."""
        if self.ep > 1 and self.tp == 1:  # tp x dp spans the run's GPUs (with dp = 1: tp = ep = N)
            return Parallel(tp=max(1, self.num_gpus // self.dp), ep=self.ep, dp=self.dp)
        return Parallel(tp=self.tp, ep=self.ep, dp=self.dp)

    def priced_model(self) -> str:
        """The checkpoint to price: the row's id, or an FP8 checkpoint of it when ``weight_precision``
        says fp8 and the id names a bf16 checkpoint: its ``-FP8`` twin (Qwen's, Meta's 405B), else
        another publisher's (``RedHatAI/<name>-FP8``: the same config with fp8 weights, one scale per
        channel; Meta publishes no FP8 checkpoint of its other models); ``ConfigError`` when there is
        none or the precision is one energylens does not price."""
        from energylens.models import load_config

        precision = weight_format(self.weight_precision)
        if precision is None:
            raise ConfigError(f"weight_precision {self.weight_precision!r} is not priced (bf16/fp16 or fp8 weights)")
        if precision == "bf16" or load_config(self.model_id).quantization == "fp8":
            return self.model_id
        twins = (f"{self.model_id}-FP8", f"RedHatAI/{self.model_id.split('/')[-1]}-FP8")
        for twin in twins:
            try:
                if load_config(twin).quantization == "fp8":
                    return twin
            except EnergylensError:
                pass
        raise ConfigError(f"weight_precision {self.weight_precision!r}, but {self.model_id} is a bf16 checkpoint "
                          f"and no fp8 checkpoint of it ({' or '.join(twins)}) is known")

    def workload(self) -> Workload:
        dp = self.parallel().dp  # each replica runs a whole number of sequences (el.estimate's rule)
        return Workload(batch=dp * max(1, round(self.avg_batch_size / dp)),
                        prompt_len=self.prompt_len or TASK_PROMPT_LEN[self.task],
                        output_len=max(1, round(self.avg_output_len)),
                        output_len_cv=TASK_OUTPUT_CV.get(self.task, 1.0),
                        prefix_cache_hit=self.prefix_cache_hit)


def read_mlenergy(path: str | Path, prompt_lens: Mapping[str, int] | None = None,
                  prefix_hits: Mapping[str, float] | None = None) -> list[MLEnergyRow]:
    """Rows of a CSV with the schema of ML.ENERGY's ``mlenergy_dev.csv`` (extra columns ignored).

    ``prompt_lens`` (task -> mean prompt tokens) gives the prompt length of tasks the file's schema
    does not carry, or overrides ``TASK_PROMPT_LEN`` for a task. ``prefix_hits`` (task -> share of
    each prompt found in the prefix cache; default none) prices those tasks' prompts as partly cached.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM is not part of a name
            return _read_mlenergy(fh, path, {k.strip().lower(): v for k, v in (prompt_lens or {}).items()},
                                  {k.strip().lower(): v for k, v in (prefix_hits or {}).items()})
    except OSError as exc:
        raise EnergylensError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise EnergylensError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV") from None


def _read_mlenergy(fh: Any, path: str | Path, prompt_lens: Mapping[str, int] | None,
                   prefix_hits: Mapping[str, float] | None) -> list[MLEnergyRow]:
    reader = csv.DictReader(fh)
    reader.fieldnames = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
    missing = [c for c in MLENERGY_COLUMNS if c not in reader.fieldnames]
    if missing:
        raise EnergylensError(f"{path}: not an ML.ENERGY CSV, missing columns {', '.join(missing)}"
                              + ("" if reader.fieldnames else " (the file is empty)"))
    rows = []
    for r in reader:
        i = reader.line_num  # the record's (last) line in the file
        values, problems = {}, []
        for k in _INT_COLUMNS + _MEASURED_COLUMNS:
            text = (r.get(k) or "").strip()
            if not text and k in _DEFAULT_ONE:
                text = "1"  # no parallelism of that kind
            v = _positive_number(text)
            if v is not None and k in _INT_COLUMNS and v != int(v):
                v = None  # 1.5 GPUs
            if v is None and k != "max_num_seqs":  # max_num_seqs is only shown
                problems.append(f"{k}={r.get(k)!r}")
            values[k] = (int(v) if k in _INT_COLUMNS else v) if v is not None else 0
        problem = f"not a positive number (a whole one for counts): {', '.join(problems)}" if problems else None
        model_id, gpu_model = (r["model_id"] or "").strip(), (r["gpu_model"] or "").strip()
        task = (r["task"] or "").strip().lower()  # ML.ENERGY's task names are lower case
        if not model_id or not task or not gpu_model:
            empty = [k for k, v in (("model_id", model_id), ("task", task), ("gpu_model", gpu_model)) if not v]
            problem = "; ".join(filter(None, [problem, f"empty {', '.join(empty)}"]))
        rows.append(MLEnergyRow(line=i, model_id=model_id, task=task, gpu_model=gpu_model, **values,
                                prompt_len=(prompt_lens or {}).get(task),
                                prefix_cache_hit=(prefix_hits or {}).get(task, 0.0), problem=problem,
                                weight_precision=(r.get("weight_precision") or "").strip()))
    return rows


def weight_format(precision: str) -> str | None:
    """"bf16" or "fp8" for a ``weight_precision`` cell as ML.ENERGY may write it (empty: bf16, the
    checkpoint's own), None for a format energylens does not price (int4, nvfp4, ...).

    >>> weight_format("bfloat16"), weight_format("FP8"), weight_format("float8_e4m3fn"), weight_format("int4")
    ('bf16', 'fp8', 'fp8', None)
    """
    p = precision.strip().lower()
    if p in ("", "bfloat16", "bf16", "float16", "fp16", "half", "auto"):
        return "bf16"
    return "fp8" if any(s in p for s in ("fp8", "float8", "e4m3")) else None


_INT_COLUMNS = ("num_gpus", "tp", "ep", "dp", "max_num_seqs")
_DEFAULT_ONE = ("tp", "ep", "dp")  # an empty cell: 1
_MEASURED_COLUMNS = ("avg_batch_size", "avg_output_len", "avg_power_watts_total", "energy_per_token_j",
                     "output_tok_per_s", "median_itl_ms")


def finite_number(text: str | None) -> float | None:
    """A CSV cell ``text`` as a finite number, else None (empty, not a number, nan, inf)."""
    try:
        v = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _positive_number(text: str | None) -> float | None:
    """``text`` as a finite number > 0, else None (``finite_number``'s None, or <= 0)."""
    v = finite_number(text)
    return v if v is not None and v > 0 else None


def parse_task_shares(items: Sequence[str]) -> dict[str, float]:
    """``["lm-arena-chat=0.5", ...]`` -> ``{"lm-arena-chat": 0.5}`` (shares in [0, 1)); ValueError
    naming the bad item otherwise."""
    out = {}
    for item in items:
        task, _, share = item.partition("=")
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not task or not 0 <= value < 1:
            raise ValueError(f"--task-prefix-hit {item!r}: expected TASK=SHARE with a share in [0, 1), "
                             "e.g. lm-arena-chat=0.5")
        out[task] = value
    return out


def row_skip_reason(row: MLEnergyRow) -> str | None:
    """Why a row cannot be predicted yet (None: it can). Unknown models are found when tracing."""
    if row.problem:
        return row.problem
    try:
        row.priced_model()  # an fp8 row needs an fp8 checkpoint to price
    except UnknownNameError:
        pass  # found when tracing, with the model named
    except EnergylensError as exc:
        return str(exc)
    if row.num_gpus > 1 or row.tp > 1 or row.ep > 1 or row.dp > 1:
        return f"multi-GPU plans come with issue 4 ({row.num_gpus} GPUs, tp={row.tp} ep={row.ep} dp={row.dp})"
    if row.prompt_len is None and row.task not in TASK_PROMPT_LEN:
        return f"unknown prompt length for task {row.task!r} (known: {', '.join(TASK_PROMPT_LEN)})"
    if gpu_or_none(row.gpu_model) is None:
        return f"unknown GPU {row.gpu_model!r}"
    return None


def gpu_or_none(name: str) -> GPUSpec | None:
    """The GPU named ``name``, or None for a name the hardware database does not know."""
    try:
        return get_gpu(name)
    except EnergylensError:
        return None


# -- the fitted parameters: name, lower, upper (bounded by a logistic transform; log-spaced when log) --
FIT_PARAMS: tuple[tuple[str, float, float, bool], ...] = (
    ("mem_efficiency", 0.3, 1.0, False),
    ("attn_mem_efficiency", 0.15, 1.0, False),
    ("compute_efficiency", 0.3, 1.0, False),
    ("gemm_half_rows", 1.0, 2048.0, True),
    ("kernel_overhead_s", 1e-7, 5e-5, True),
    ("step_overhead_s", 1e-5, 2e-2, True),
    ("seq_overhead_s", 1e-8, 2e-4, True),
    ("kv_seq_overhead_s", 1e-9, 2e-6, True),
    ("static_power_w", 0.05, 0.95, False),  # as a fraction of TDP
    ("flop_pj", 0.01, 10.0, True),
    ("byte_pj", 1.0, 500.0, True),
    ("idle_power_w", 0.05, 0.95, False),  # as a fraction of TDP
)

#: ``Profile.host_overlap_p`` of the fitted profiles. vLLM 0.11 with async scheduling (the
#: ML.ENERGY runs) overlaps the host's per-sequence work with the GPU's step, which argues for a
#: large p; on these rows it does not pay: with p = 4 (or 20) the fit drives ``seq_overhead_s`` to
#: its prior (the host never binds) and moves the B200's large-batch slowness into an unphysical
#: ``attn_mem_efficiency`` of 0.29, and the held-out folds do not improve overall (ITL worse on two
#: of three). Kept in series (1.0) until rows that separate host from GPU time exist (a host-time
#: trace per step, or the same GPU under two CPUs). Likewise ``Profile.kv_byte_pj`` is not fitted:
#: decode attention's extra power comes from its padded MMA tiles (``power.ATTENTION_TILE_ROWS``),
#: FLOP energy that the power limiter can shed by lowering the clock. (Measured before the padded
#: tiles and the DVFS cap, under a time-stretching per-op cap: a fitted ``kv_byte_pj`` turned decode
#: attention into a power-capped stream that over-predicted the long-context GPQA rows by 15-40%,
#: and a cap per step instead of per op made held-out single-GPU ITL worse, Qwen3-8B fold 23.1% ->
#: 25.0-25.4%, Llama-3.1-8B fold 12.6% -> 15.9-16.3%, for at most ~1 point of power. Tried again
#: with the padded tiles, the clock-lowering cap and the kernel-measured GEMV coefficients: fitted
#: kv_byte_pj 173 against byte_pj 116 on H100 (78 against 144 on B200), in-sample H100 power 5.7% ->
#: 5.2%, but the held-out folds got worse in power and energy per token: Qwen3-8B 22.0/31.8/9.6 ->
#: 21.3/34.0/11.0, Llama-3.1-8B 11.0/18.3/6.0 -> 10.3/19.8/8.9, Qwen3-30B-A3B 8.2/8.2/11.8 -> 8.2/8.7/12.1.)
HOST_OVERLAP_P = 1.0

#: ``Profile.attn_kernel_overhead_s`` of the fitted GPUs, not fitted: the shortest decode-attention
#: call AIConfigurator measured of vLLM's kernels on that GPU (min ``latency_us`` of
#: data/public/aiconfigurator_kernels/attention_<gpu>.csv: FlashAttention-3 on H100 11.6 us,
#: FlashInfer TRT-LLM decode on B200 8.6 us; batch 1, 128-token KV cache). The fit's other
#: coefficients are fitted around it.
ATTENTION_KERNEL_S: dict[str, float] = {"H100-SXM": 11.6e-6, "B200": 8.6e-6}
#: ``Profile.moe_call_overhead_s`` of the fitted GPUs, not fitted: the median of measured minus
#: priced time of one fused-MoE layer over the 40 decode-range rows (8-1024 tokens; Qwen3-30B-A3B and
#: Qwen3-235B-A22B expert shapes, ep 1-8) of the AIConfigurator H100 table
#: (data/public/aiconfigurator_kernels/moe_h100_sxm.csv; the H200 table gives 29 us). The B200 has
#: no MoE table: none.
MOE_CALL_OVERHEAD_S: dict[str, float] = {"H100-SXM": 28e-6}
#: ``Profile.moe_default_tile_efficiency`` of the fitted GPUs, not fitted on serving rows: measured on
#: the untuned fused-MoE kernel itself, ``kernel_default_tile_efficiency`` of AIConfigurator's
#: SGLang 0.5.10 H100 table (data/public/aiconfigurator_kernels/moe_default_tile_h100_sxm.csv; the
#: same Triton kernel and default tile as vLLM 0.11.1, Qwen3-30B-A3B's experts at ep 2-8). The B200
#: has no such table (and its ML.ENERGY rows show no slowdown past the switch): none.
MOE_DEFAULT_TILE_EFFICIENCY: dict[str, float] = {"H100-SXM": 0.245}
#: ``Profile.mem_efficiency`` and ``Profile.kernel_overhead_s`` of the fitted GPUs, not fitted on
#: serving rows: measured on vLLM's own decode GEMMs (``kernel_gemv_coefficients`` of the m <= 8 rows
#: of data/public/aiconfigurator_kernels/gemm_<gpu>.csv: a weight stream at that share of peak HBM
#: bandwidth plus a fixed time per kernel). H200 (4.0 us, 0.87) takes H100's profile (same die).
KERNEL_GEMV: dict[str, dict[str, float]] = {
    "H100-SXM": {"mem_efficiency": 0.900, "kernel_overhead_s": 3.77e-6},
    "B200": {"mem_efficiency": 0.894, "kernel_overhead_s": 4.57e-6},
}
#: A bundled model of each (query heads, KV heads) of the attention tables (head_dim 128).
ATTENTION_MODELS: dict[tuple[int, int], str] = {
    (32, 8): "meta-llama/Llama-3.1-8B-Instruct", (40, 8): "Qwen/Qwen3-14B", (64, 8): "meta-llama/Llama-3.1-70B-Instruct",
    (32, 4): "Qwen/Qwen3-30B-A3B-Instruct-2507", (64, 4): "Qwen/Qwen3-235B-A22B-Instruct-2507"}
#: Rows of the GEMM table that are weight streams (decode): m, the token rows, at most this.
KERNEL_GEMV_MAX_ROWS = 8
#: Tokens from which a default-tile kernel row enters ``kernel_default_tile_efficiency``: M >> E, so
#: every local expert's rows fill whole 64-row tiles and the padded FLOPs are the real ones.
KERNEL_TILE_MIN_TOKENS = 1024


def kernel_default_tile_efficiency(rows: Sequence[Mapping[str, str]], gpu: GPUSpec) -> float:
    """The share of dense bf16 peak at which the untuned fused-MoE kernel runs its FLOPs: the median
    over ``rows`` (of ``moe_default_tile_<gpu>.csv``) with at least ``KERNEL_TILE_MIN_TOKENS`` tokens of
    FLOPs / (peak x (latency - weight stream)), the weight stream (its local experts' weights) at the
    prior HBM efficiency. The tile term of ``costmodel.compute`` is priced so: in series with the
    weight stream. In that table the time does not shrink with ep (ep 2, 4 and 8 agree within 1% at
    large M), so each GPU is taken to run every token's top-k slots on its local experts."""
    eff = []
    for r in rows:
        m = int(r["num_tokens"])
        if m < KERNEL_TILE_MIN_TOKENS:
            continue
        h, n, k = int(r["hidden_size"]), int(r["inter_size"]), int(r["topk"])
        flops = 2.0 * m * k * 3 * h * n  # gate, up and down projections
        weights = int(r["num_experts"]) / int(r["moe_ep_size"]) * 3 * h * n * 2.0
        stream = weights / (gpu.hbm_bandwidth_bytes_per_s * PRIORS["mem_efficiency"][0])
        compute_s = float(r["latency_us"]) * 1e-6 - stream
        if compute_s > 0:  # a row faster than its weight stream has no tile time to read
            eff.append(flops / (gpu.peak_flops_per_s("bf16") * compute_s))
    if not eff:
        raise EnergylensError(f"no default-tile kernel rows with >= {KERNEL_TILE_MIN_TOKENS} tokens")
    return float(np.median(eff))

def kernel_gemv_coefficients(rows: Sequence[Mapping[str, str]], gpu: GPUSpec) -> dict[str, float]:
    """``mem_efficiency`` and ``kernel_overhead_s`` of the decode GEMMs in ``rows`` (of
    ``gemm_<gpu>.csv``, m <= ``KERNEL_GEMV_MAX_ROWS``): the least-squares fit, in relative error, of
    ``latency = bytes / (efficiency x peak HBM bandwidth) + overhead``, bytes = the operands and the
    result in bf16. ``costmodel.compute`` prices a GEMV so."""
    t, b = [], []
    for r in rows:
        m, n, k = (int(r[c]) for c in ("m", "n", "k"))
        if m <= KERNEL_GEMV_MAX_ROWS:
            t.append(float(r["latency_us"]) * 1e-6)
            b.append(2.0 * (m * k + k * n + m * n))
    if len(t) < 2:
        raise EnergylensError(f"need at least 2 GEMM rows with m <= {KERNEL_GEMV_MAX_ROWS}, got {len(t)}")
    tt, bb = np.array(t), np.array(b)
    design = np.stack([bb / gpu.hbm_bandwidth_bytes_per_s, np.ones_like(bb)], axis=1) / tt[:, None]
    (inv_eff, overhead), *_ = np.linalg.lstsq(design, np.ones_like(tt), rcond=None)
    return {"mem_efficiency": float(1.0 / inv_eff), "kernel_overhead_s": float(overhead)}


def kernel_attention_coefficients(rows: Sequence[Mapping[str, str]], gpu: GPUSpec,
                                   trace: Callable[[str], Any]) -> dict[str, float]:
    """``attn_mem_efficiency`` and ``kv_seq_overhead_s`` that vLLM's decode-attention kernels in ``rows`` (of
    ``attention_<gpu>.csv``; head counts of ``ATTENTION_MODELS``): least squares in relative error of
    the roofline time (``compute.op_time_s``, before any power cap: the kernels ran at their own
    clock) of the attention ops of each model's decode graph at that batch and KV length, without
    the KV-cache write, which the table does not time. The per-kernel times are the measured ones
    (``KERNEL_GEMV``, ``ATTENTION_KERNEL_S``) where known, the others the prior's.

    A check, not a source of the profiles: on the B200 the kernels give 0.90 and 9 ns where the
    serving fit gives 0.42 and 153 ns, and fixing the kernel values made the held-out serving
    folds worse (README, Kernel-level check)."""
    from energylens.costmodel.analysis import WorkAnalysis, is_attention_op
    from energylens.ir.core import Gather

    def kernel(op: Any) -> bool:
        return is_attention_op(op) and not (isinstance(op, Gather) and op.fn == "scatter")

    works, meas = [], []
    for r in rows:
        model = ATTENTION_MODELS.get((int(r["num_heads"]), int(r["num_key_value_heads"])))
        if model is None:
            continue
        binding = {"B": int(r["batch_size"]), "S": 1, "K": int(r["step"])}
        works.append([w for _, _, w in WorkAnalysis(trace(model).decode, binding, gpu).run(kernel)])
        meas.append(float(r["latency_us"]) * 1e-6)
    if len(meas) < 2:
        raise EnergylensError(f"need at least 2 attention rows with the head counts of {list(ATTENTION_MODELS)}")
    t = np.array(meas)
    base = default_profile(gpu).with_params(**KERNEL_GEMV.get(gpu.name, {}))
    if gpu.name in ATTENTION_KERNEL_S:
        base = base.with_params(attn_kernel_overhead_s=ATTENTION_KERNEL_S[gpu.name])

    def loss(x: np.ndarray) -> float:
        prof = base.with_params(attn_mem_efficiency=1 / (1 + np.exp(-x[0])), kv_seq_overhead_s=float(np.exp(x[1])))
        pred = np.array([sum(float(op_time_s(w, gpu, prof)) for w in ws) for ws in works])
        return float(np.mean((pred / t - 1) ** 2))

    x, _ = nelder_mead(loss, np.array([1.0, np.log(5e-8)]), step=0.5, iters=400)
    return {"attn_mem_efficiency": float(1 / (1 + np.exp(-x[0]))), "kv_seq_overhead_s": float(np.exp(x[1]))}


#: Parameters stored as a fraction of TDP in the optimiser's space.
_TDP_FRACTION = ("static_power_w", "idle_power_w")


#: The first N_TIME_PARAMS of FIT_PARAMS set times; the rest set power.
N_TIME_PARAMS = 8

#: Physical priors (centre, sigma of the log): what tuned serving kernels achieve on any recent GPU
#: (a GEMV streams weights at ~85% of peak HBM bandwidth, paged decode attention at ~60%, a large
#: GEMM reaches ~70% of dense peak, half of it at ~64 rows; ~2.5 us per kernel under CUDA graphs,
#: ~1 ms per step of scheduling, sampling and sync, a few us per sequence on the host, ~0.1 us per
#: sequence in each paged-KV kernel (a block-table read and a partial tile); a busy GPU's static draw
#: is ~25% of TDP). Serving rows of one task leave several of these degenerate (per-kernel overhead
#: against bandwidth efficiency, per-sequence overhead against KV-read time), so the fit pays
#: ``PRIOR_WEIGHT * 0.5 * (log(value / centre) / sigma)**2`` to leave them; centres are datasheet
#: knowledge, not fitted to any row. ``static_power_w`` is a fraction of TDP; the pJ priors are
#: the datasheet-default profile's.
PRIORS: dict[str, tuple[float, float]] = {
    "mem_efficiency": (0.85, 0.08),
    "attn_mem_efficiency": (0.60, 0.30),
    "compute_efficiency": (0.70, 0.20),
    "gemm_half_rows": (64.0, 1.0),
    "kernel_overhead_s": (2.5e-6, 0.7),
    "step_overhead_s": (1e-3, 1.0),
    "seq_overhead_s": (5e-6, 1.5),
    "kv_seq_overhead_s": (1e-7, 2.0),
    "static_power_w": (0.25, 0.4),
    "idle_power_w": (0.15, 0.4),
}
PRIOR_WEIGHT = 0.02


def _prior_penalty(params: dict[str, float], gpu: GPUSpec, names: Sequence[str]) -> float:
    total = 0.0
    for name in names:
        if name not in PRIORS:
            continue
        centre, sigma = PRIORS[name]
        v = params[name] / gpu.tdp_w if name in _TDP_FRACTION else params[name]
        total += 0.5 * (math.log(v / centre) / sigma) ** 2
    return PRIOR_WEIGHT * total


def _prior_params(gpu: GPUSpec) -> dict[str, float]:
    """The fit's starting point: the priors' centres (the datasheet default for the pJ)."""
    base = default_profile(gpu)
    out = {name: getattr(base, name) for name, *_ in FIT_PARAMS}
    out.update({k: c * gpu.tdp_w if k in _TDP_FRACTION else c for k, (c, _) in PRIORS.items()})
    out["idle_power_w"] = max(out["idle_power_w"], gpu.idle_power_w * 1.05)
    return out


def _bounds(gpu: GPUSpec) -> list[tuple[str, float, float, bool]]:
    """FIT_PARAMS with the static power floored at the GPU's idle power (a busy GPU never draws less)."""
    return [(n, max(lo, gpu.idle_power_w / gpu.tdp_w) if n in _TDP_FRACTION else lo, hi, log)
            for n, lo, hi, log in FIT_PARAMS]


def fit_bounds(gpu: GPUSpec) -> dict[str, tuple[float, float]]:
    """Each fitted coefficient's (lower, upper) bound on ``gpu`` in the profile's units (watts for
    the powers, which the optimiser bounds as fractions of TDP, the busy static power floored at
    the GPU's idle power). ``runtime.calibrate`` bounds its coefficients with the same table."""
    return {n: (lo * gpu.tdp_w, hi * gpu.tdp_w) if n in _TDP_FRACTION else (lo, hi)
            for n, lo, hi, _log in _bounds(gpu)}


def _free(gpu: GPUSpec, fixed: Mapping[str, float]) -> list[tuple[str, float, float, bool]]:
    """``_bounds`` of the coefficients the fit chooses (not those ``fixed`` from kernel tables)."""
    return [b for b in _bounds(gpu) if b[0] not in fixed]


def _decode(x: np.ndarray, gpu: GPUSpec, fixed: Mapping[str, float]) -> dict[str, float]:
    tdp_w = gpu.tdp_w
    out = dict(fixed)
    for xi, (name, lo, hi, log) in zip(x, _free(gpu, fixed), strict=True):
        s = 1.0 / (1.0 + math.exp(-float(np.clip(xi, -30, 30))))
        v = math.exp(math.log(lo) + s * (math.log(hi) - math.log(lo))) if log else lo + s * (hi - lo)
        out[name] = v * tdp_w if name in _TDP_FRACTION else v
    return out


def _encode(params: dict[str, float], gpu: GPUSpec, fixed: Mapping[str, float]) -> np.ndarray:
    tdp_w = gpu.tdp_w
    x = []
    for name, lo, hi, log in _free(gpu, fixed):
        v = params[name] / tdp_w if name in _TDP_FRACTION else params[name]
        s = ((math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))) if log else (v - lo) / (hi - lo)
        s = min(max(s, 1e-4), 1 - 1e-4)
        x.append(math.log(s / (1 - s)))
    return np.array(x)


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 0.5, iters: int = 3000,
                tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """Minimise ``f`` from ``x0`` with the Nelder-Mead simplex (standard coefficients)."""
    n = len(x0)
    simplex = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    vals = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(vals)
        simplex, vals = [simplex[i] for i in order], [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        xr = centroid + (centroid - simplex[-1])
        fr = f(xr)
        if fr < vals[0]:
            xe = centroid + 2 * (centroid - simplex[-1])
            fe = f(xe)
            simplex[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            simplex[-1], vals[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(xc)
            if fc < vals[-1]:
                simplex[-1], vals[-1] = xc, fc
            else:
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                vals = [vals[0]] + [f(x) for x in simplex[1:]]
    i = int(np.argmin(vals))
    return simplex[i], vals[i]


@dataclass
class _Features:
    """Stacked op work of every training row's mean step and median step."""

    work: Any
    count: np.ndarray
    seg: np.ndarray  # step variant of each op
    seg_row: np.ndarray  # row of each step variant
    seg_weight: np.ndarray  # Poisson weight of the variant in the mean step (0: the median step)
    median_seg: np.ndarray  # the median-step variant of each row
    batch: np.ndarray
    n_rows: int


def _features(rows: Sequence[MLEnergyRow], trace: Callable[[str], Any], gpu: GPUSpec) -> _Features:
    works, counts, segs, seg_row, seg_weight, median_seg = [], [], [], [], [], []
    prof = default_profile(gpu)
    for i, row in enumerate(rows):
        wl = row.workload()
        traced = trace(row.priced_model())
        # the graphs ``energylens.estimate`` prices: the single-GPU plan (fused kernels)
        prefill_g, decode_g = plan_graph(traced.prefill), plan_graph(traced.decode)
        ctx = serving_context_len(wl, kv_capacity_tokens(decode_g, gpu))
        mixture = prefill_mixture(wl)
        variants = [*mixture, (0.0, prefill_tokens_per_step(wl, median=True, mixture=mixture))]
        for w, p in variants:
            seg = len(seg_row)
            seg_row.append(i)
            seg_weight.append(w)
            for po in step_ops(prefill_g, decode_g, wl.batch, ctx, wl.prompt_len, p, gpu, prof,
                               prefill_len=wl.prefill_len):
                works.append(po.work)
                counts.append(po.count)
                segs.append(seg)
        median_seg.append(len(seg_row) - 1)
    return _Features(work=stack_works(works), count=np.array(counts, float), seg=np.array(segs),
                     seg_row=np.array(seg_row), seg_weight=np.array(seg_weight), median_seg=np.array(median_seg),
                     batch=np.array([r.workload().batch for r in rows], float), n_rows=len(rows))


def _predict(feat: _Features, gpu: GPUSpec, params: dict[str, float],
             moe_default_tile_efficiency: float | None = None) -> dict[str, np.ndarray]:
    # the rows ran vLLM 0.11.1: its untuned fused-MoE tile is priced whenever its rate is known
    prof = SimpleNamespace(vector_flops_fraction=1 / 15, host_overlap_p=HOST_OVERLAP_P,
                           attn_kernel_overhead_s=ATTENTION_KERNEL_S.get(gpu.name),
                           moe_call_overhead_s=MOE_CALL_OVERHEAD_S.get(gpu.name),
                           legacy_moe_tiles=True, moe_default_tile_efficiency=moe_default_tile_efficiency, **params)
    t0 = op_time_s(feat.work, gpu, prof)  # type: ignore[arg-type]
    t, static_j, flop_j, byte_j = op_energy(feat.work, t0, gpu, prof)  # type: ignore[arg-type]
    n = len(feat.seg_row)
    gpu_t = np.bincount(feat.seg, weights=feat.count * t, minlength=n)
    step_t = step_time_s(gpu_t, feat.batch[feat.seg_row], prof)  # type: ignore[arg-type]
    step_e = (np.bincount(feat.seg, weights=feat.count * (static_j + flop_j + byte_j), minlength=n)
              + params["idle_power_w"] * (step_t - gpu_t))
    mean_t = np.bincount(feat.seg_row, weights=feat.seg_weight * step_t, minlength=feat.n_rows)
    mean_e = np.bincount(feat.seg_row, weights=feat.seg_weight * step_e, minlength=feat.n_rows)
    med_t = step_t[feat.median_seg]
    return {"itl_s": med_t, "step_s": mean_t, "power_w": mean_e / mean_t, "energy_per_token_j": mean_e / feat.batch}


#: Rows whose fitted time is off by more than this log-ratio are refitted without (robust fit).
OUTLIER_LOG = math.log(1.4)


def huber(r: np.ndarray, delta: float = 0.05) -> np.ndarray:
    """Huber loss of residuals ``r`` (quadratic within ``delta``, linear beyond)."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred / meas - 1)) * 100)


def fit_profile(gpu_name: str, rows: Sequence[MLEnergyRow], trace: Callable[[str], Any], *,
                data_label: str = "", restarts: int = 4, moe_default_tile_efficiency: float | None = None,
                fixed: Mapping[str, float] | None = None) -> Profile:
    """Fit the twelve coefficients of ``gpu_name``'s profile on ``rows`` (all of that GPU, single-GPU),
    except those ``fixed`` (name -> value, e.g. ``KERNEL_GEMV``'s, measured on kernels).

    ``moe_default_tile_efficiency`` (fixed, not fitted: ``MOE_DEFAULT_TILE_EFFICIENCY``, measured on
    the kernel) prices the steps whose MoE expert GEMMs run on vLLM 0.11's untuned default tile."""
    gpu = get_gpu(gpu_name)
    rows = [r for r in rows if gpu_or_none(r.gpu_model) == gpu and row_skip_reason(r) is None]
    if len(rows) < 4:
        raise EnergylensError(f"need at least 4 single-GPU rows of {gpu.name} to fit a profile, got {len(rows)}")
    feat = _features(rows, trace, gpu)
    meas = {"itl_s": np.array([r.median_itl_ms / 1e3 for r in rows]),
            "step_s": np.array([r.mean_step_s for r in rows]),
            "power_w": np.array([r.avg_power_watts_total for r in rows]),
            "energy_per_token_j": np.array([r.energy_per_token_j for r in rows])}

    keep = np.ones(len(rows), bool)
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - {n for n, *_ in FIT_PARAMS})
    if unknown:
        raise EnergylensError(f"fixed coefficients {unknown} are not fitted ones: {[n for n, *_ in FIT_PARAMS]}")
    n_time = sum(1 for n, *_ in FIT_PARAMS[:N_TIME_PARAMS] if n not in fixed)
    names = [n for n, *_ in _free(gpu, fixed)]  # the prior holds only what the fit chooses

    def loss_of(x: np.ndarray, targets: tuple[str, ...]) -> float:
        params = _decode(x, gpu, fixed)
        pred = _predict(feat, gpu, params, moe_default_tile_efficiency)
        return float(sum(huber(np.log(pred[k] / meas[k]))[keep].sum() for k in targets)
                     + _prior_penalty(params, gpu, names))

    def solve(x: np.ndarray, free: slice, targets: tuple[str, ...]) -> tuple[np.ndarray, float]:
        def f(sub: np.ndarray) -> float:
            full = x.copy()
            full[free] = sub
            return loss_of(full, targets)

        sub, best = x[free].copy(), f(x[free])
        for k in range(restarts):
            s_new, val = nelder_mead(f, sub, step=1.0 if k == 0 else 0.3)
            if val < best:
                sub, best = s_new, val
        out = x.copy()
        out[free] = sub
        return out, best

    def two_stage(x: np.ndarray) -> np.ndarray:
        # time coefficients on the time targets, then power coefficients on power and energy per
        # token with the times fixed; twice, since the TDP cap couples them a little
        for _ in range(2):
            x, _ = solve(x, slice(0, n_time), ("itl_s", "step_s"))
            x, _ = solve(x, slice(n_time, None), ("power_w", "energy_per_token_j"))
        return x

    x = two_stage(_encode(_prior_params(gpu), gpu, fixed))
    # Robust refit: rows whose time is off by more than OUTLIER_LOG (a run that stalled on something
    # outside the GPU's physics) are dropped once, then the fit is repeated on the rest.
    pred = _predict(feat, gpu, _decode(x, gpu, fixed), moe_default_tile_efficiency)
    worst = np.maximum(np.abs(np.log(pred["itl_s"] / meas["itl_s"])), np.abs(np.log(pred["step_s"] / meas["step_s"])))
    keep = worst <= OUTLIER_LOG
    if keep.sum() >= 4 and not keep.all():
        x = two_stage(x)
    best = loss_of(x, ("itl_s", "step_s", "power_w", "energy_per_token_j"))
    dropped = [f"{r.model_id} {r.task} batch {r.avg_batch_size:g} (line {r.line})" for r, k in zip(rows, keep, strict=True)
               if not k]
    params = _decode(x, gpu, fixed)
    pred = _predict(feat, gpu, params, moe_default_tile_efficiency)
    models = sorted({r.model_id for r in rows})
    residuals = {f"mape_{k}_pct": round(_mape(pred[k][keep], meas[k][keep]), 2) for k in meas}
    residuals.update({f"mape_{k}_pct_all_rows": round(_mape(pred[k], meas[k]), 2) for k in meas})
    residuals["loss"] = round(best, 5)
    return Profile(
        gpu=gpu.name, vector_flops_fraction=1 / 15, host_overlap_p=HOST_OVERLAP_P,
        attn_kernel_overhead_s=ATTENTION_KERNEL_S.get(gpu.name),
        moe_call_overhead_s=MOE_CALL_OVERHEAD_S.get(gpu.name),
        moe_default_tile_efficiency=moe_default_tile_efficiency, **params,
        provenance=Provenance(
            method="fit", data=data_label or "ML.ENERGY rows", rows=int(keep.sum()),
            fit=("two-stage Nelder-Mead on bounded transformed parameters: time coefficients on median ITL "
                 "and mean step time, then power coefficients (busy static, idle-during-host-overhead, "
                 "pJ/FLOP, pJ/byte) on average power and energy per token; loss = sum of Huber(0.05) of "
                 f"log(pred/meas) + {PRIOR_WEIGHT} x 0.5 x sum((log(value/prior)/sigma)^2) over the physical "
                 "priors " + ", ".join(f"{k}={c:g}(+-{sg:g} log)" for k, (c, sg) in PRIORS.items())
                 + " (static/idle power as fractions of TDP); kv_seq_overhead_s = GPU time per sequence in each "
                 "paged-KV kernel (decode attention, KV write), at busy power; host overheads in series with the kernels "
                 f"(host_overlap_p={HOST_OVERLAP_P:g}; kv_byte_pj not fitted, = byte_pj: see fit.HOST_OVERLAP_P); "
                 "attn_kernel_overhead_s and moe_call_overhead_s not fitted: taken from the measured kernel tables "
                 "(fit.ATTENTION_KERNEL_S, fit.MOE_CALL_OVERHEAD_S)"
                 + (f"; {', '.join(f'{k}={v:g}' for k, v in sorted(fixed.items()))} not fitted: measured on "
                    "vLLM's decode GEMMs (fit.KERNEL_GEMV, fit.kernel_gemv_coefficients)" if fixed else "")
                 + "; serving context: length-biased running batch "
                 "(prompt + output x (1+cv^2)/2, cv per task in TASK_OUTPUT_CV) capped by the KV-cache "
                 "capacity; models: " + ", ".join(models)),
            residuals=residuals,
            notes=("in-sample residuals (dev-set error, not a held-out claim; *_all_rows include the "
                   "dropped rows). Outlier rows dropped from the fit after a first pass (time off by > "
                   f"{math.exp(OUTLIER_LOG) - 1:.0%}: runs whose step time the GPU physics cannot explain, "
                   "e.g. B200 steps of 30-48 ms at 300-470 W almost flat in batch, or a 3x jump between "
                   "neighbouring batch sizes; they stay in every reported MAPE): "
                   + ("; ".join(dropped) or "none")),
        ),
    )


#: vLLM 0.11.1 captures CUDA graphs of decode steps up to 512 tokens; larger batches run eagerly,
#: with host time the model does not price, so they do not enter ``with_default_tile``'s residuals.
CUDA_GRAPH_MAX_BATCH = 512


def mlenergy_profile(gpu: str | GPUSpec, directory: str | Path | None = None) -> Profile:
    """The profile of ``gpu`` (``load_profile``) set to price the engine of ML.ENERGY v3.0's runs,
    vLLM 0.11.1 (``Profile.legacy_moe_tiles``): what ML.ENERGY rows are fitted and checked with."""
    return load_profile(gpu, directory).with_params(legacy_moe_tiles=True)


def with_default_tile(profile: Profile, rows: Sequence[MLEnergyRow], efficiency: float | None) -> Profile:
    """``profile`` pricing vLLM 0.11's untuned fused-MoE tile at ``efficiency`` (None: not priced),
    with the median-ITL MAPE of the rows it concerns, before and after, in its residuals: the
    multi-GPU rows of its GPU whose decode steps run MoE expert GEMMs on the default tile (the
    single-GPU fit does not price plans), batch <= ``CUDA_GRAPH_MAX_BATCH``."""
    from energylens.api import estimate
    from energylens.typing import Cluster

    profile = profile.with_params(moe_default_tile_efficiency=efficiency)
    if efficiency is None:
        return profile
    gpu = get_gpu(profile.gpu)
    cand = [r for r in rows if gpu_or_none(r.gpu_model) == gpu and r.num_gpus > 1
            and r.avg_batch_size <= CUDA_GRAPH_MAX_BATCH
            and row_skip_reason(dataclasses.replace(r, num_gpus=1, tp=1, ep=1, dp=1)) is None]

    def itl(r: MLEnergyRow, prof: Profile) -> float:
        return estimate(r.priced_model(), Cluster(gpu.name, num_gpus=r.num_gpus), r.workload(), r.parallel(),
                        profile=prof, check_memory=False).serving.median_itl_s

    base = profile.with_params(moe_default_tile_efficiency=None, legacy_moe_tiles=True)
    tiled = base.with_params(moe_default_tile_efficiency=efficiency)
    used = [r for r in cand if itl(r, tiled) > itl(r, base) * (1 + 1e-6)]
    src = profile.provenance
    note = (f"; moe_default_tile_efficiency = {efficiency:g}, not fitted on these rows: measured on the kernel "
            "(fit.MOE_DEFAULT_TILE_EFFICIENCY, fit.kernel_default_tile_efficiency)")
    if not used:
        return profile.model_copy(update={"provenance": src.model_copy(update={"fit": src.fit + note})})
    meas = np.array([r.median_itl_ms / 1e3 for r in used])
    before = _mape(np.array([itl(r, base) for r in used]), meas)
    after = _mape(np.array([itl(r, tiled) for r in used]), meas)
    return profile.model_copy(update={"provenance": src.model_copy(update={
        "fit": src.fit + note + f"; it prices the {len(used)} multi-GPU rows whose decode steps run that tile "
               f"(batch <= {CUDA_GRAPH_MAX_BATCH}): " + ", ".join(sorted({f"{r.model_id} x{r.num_gpus}" for r in used})),
        "residuals": {**src.residuals, "mape_itl_s_pct_default_tile_rows_before": round(before, 2),
                      "mape_itl_s_pct_default_tile_rows": round(after, 2)}})})


def fit_gpu_profile(gpu_name: str, rows: Sequence[MLEnergyRow], trace: Callable[[str], Any], *,
                    data_label: str = "") -> Profile:
    """The whole fit of ``gpu_name``'s profile on ``rows``: ``fit_profile`` on its single-GPU rows with
    the GEMV coefficients of ``KERNEL_GEMV`` and vLLM 0.11's untuned MoE tile priced at
    ``MOE_DEFAULT_TILE_EFFICIENCY`` (``with_default_tile``), both measured on kernels."""
    name = get_gpu(gpu_name).name
    eff = MOE_DEFAULT_TILE_EFFICIENCY.get(name)
    prof = fit_profile(gpu_name, rows, trace, data_label=data_label, moe_default_tile_efficiency=eff,
                       fixed=KERNEL_GEMV.get(name))
    return with_default_tile(prof, rows, eff)


def write_profile(profile: Profile, directory: str | Path = PROFILES_DIR) -> Path:
    path = profile_path(profile.gpu, Path(directory))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = profile.model_dump()
    for k, v in list(data.items()):
        if isinstance(v, float):
            data[k] = float(f"{v:.6g}")
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fit energylens GPU profiles on ML.ENERGY serving rows")
    ap.add_argument("--data", default="data/public/mlenergy_dev.csv")
    ap.add_argument("--out", default=str(PROFILES_DIR))
    ap.add_argument("--exclude-model", action="append", default=[], help="leave this model's rows out")
    ap.add_argument("--task-prefix-hit", action="append", default=[], metavar="TASK=SHARE",
                    help="price TASK's prompts as this share found in the prefix cache (repeatable)")
    ap.add_argument("--defaults", action="store_true", help="also write datasheet-prior profiles "
                    "for GPUs without rows (except those that take a same-die GPU's profile: GPUSpec.profile_from)")
    args = ap.parse_args(argv)
    from energylens.api import resolve_model

    try:
        hits = parse_task_shares(args.task_prefix_hit)
    except ValueError as e:
        ap.error(str(e))
    rows = [r for r in read_mlenergy(args.data, prefix_hits=hits) if r.model_id not in args.exclude_model]
    fitted = set()
    for gpu_name in sorted({g.name for r in rows if (g := gpu_or_none(r.gpu_model))}):
        prof = fit_gpu_profile(gpu_name, rows, resolve_model, data_label=f"{args.data} (ML.ENERGY Benchmark "
                               "v3.0 dev rows; see data/public/mlenergy_dev.README.md)")
        print(f"{gpu_name}: {write_profile(prof, args.out)}  {prof.provenance.residuals}")
        fitted.add(gpu_name)
    if args.defaults:
        reference = load_profile(PRIOR_REFERENCE_GPU, args.out)  # the one just fitted, where it was
        for name in list_gpus():
            if name not in fitted and get_gpu(name).profile_from is None:  # others derive theirs
                prior = prior_profile(get_gpu(name), reference)
                print(f"{name}: {write_profile(prior, args.out)}  (datasheet prior from {reference.gpu})")


if __name__ == "__main__":
    main()
