"""Calibrating a GPU profile on raw measurements (``energylens measure`` JSONL files).

Every measured record is predicted through the cost model, and the profile's coefficients are
chosen so that the predictions match:

* a microbenchmark record is priced as the equivalent IR ops (``microbench_graph``): a GEMM is one
  ``mk,nk->mn`` einsum, a copy one ``copy``, an attention the scores / softmax / values einsums
  the HF frontend lowers SDPA to, over the record's shapes;
* an end-to-end record (a prefill forward or a decode step) is priced as
  ``energylens.estimate(model, Cluster(gpu), workload, fused=False)`` prices it (``e2e_workload``:
  the record's batch and lengths; ``tests/test_runtime_calibrate.py`` checks they agree); decode
  attention reads the whole static cache (``attended_kv_len``), as the measured HF run does;
  no fuse pass, since the HF model runs separate QKV / gate / up GEMMs without epilogue fusion.

Work (FLOPs, bytes, GEMM rows, kernels) is computed once per record; the fit then prices all of it
in one vectorised call per trial of coefficients. Two stages, alternated twice (as
``energylens.costmodel.fit``): the time coefficients on log(predicted / measured time), then the
power coefficients on log(predicted / measured average power), where the predicted power is
``static_power_w + dynamic energy / measured time``, the dynamic energy being the one the cost
model prices (for a record over TDP, at the clock its power limiter settles on,
``costmodel.power.power_capped``). Loss: Huber(0.05) of the log-ratios, each op class weighted
equally, plus a weak pull towards the starting profile; optimiser: ``costmodel.fit.nelder_mead``
on bounded, transformed coefficients. Only the coefficients that the data inform are fitted
(``PARAMS`` lists which op classes inform each); the rest are kept from the starting profile and
the provenance says so. Records without energy (a CPU run, a GPU without a readable meter) inform
time only. ``rms_norm_hf`` records (HF's unfused f32 RMSNorm, several kernels) and ``silu_mul``
records (eager ``F.silu(a) * b``, two kernels) are validated but not fitted on (``UNFUSED``): the
cost model prices the fused kernels serving engines run.

SM-contention records give the exponent of the contention slowdown ``(N / (N - k)) ** e``
(``costmodel.overlap``), reported with the fit; overlap profiles themselves are not rewritten.

>>> # calibrate(["data/measurements/h100-sxm-20250101-quick.jsonl"])      # writes profiles/h100-sxm.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from energylens.costmodel.compute import OpWork, op_time_s
from energylens.costmodel.fit import FIT_PARAMS, fit_bounds
from energylens.costmodel.hardware import GPUSpec, get_gpu, list_gpus
from energylens.costmodel.power import op_energy
from energylens.costmodel.profile import PROFILES_DIR, Profile, Provenance, default_profile, load_profile
from energylens.errors import EnergylensError, UnknownNameError
from energylens.ir.core import Decl, Einsum, Elementwise, Graph, Reduce, TensorType, Value
from energylens.typing import Record, Workload

__all__ = [
    "PARAMS", "Measured", "Measurements", "Sample", "Prediction", "read_measurements", "gpu_of_record",
    "microbench_graph", "e2e_workload", "e2e_graph", "build_samples", "predict", "split_holdout", "contention_exponent",
    "CalibrationResult", "calibrate_samples", "calibrate", "write_profile_to", "synthetic_records", "main",
]

#: Microbenchmarks measured as several eager kernels where the cost model prices one fused kernel:
#: validated (with this note), not fitted on.
UNFUSED = {"norm:rms_norm_hf": "HF's unfused f32 RMSNorm: validated, not fitted",
           "elementwise:silu_mul": "eager silu then mul, two kernels (vLLM fuses them): validated, not fitted"}
#: Microbenchmark and end-to-end kinds priced as work (time and energy).
WORK_KINDS = ("gemm", "hbm_copy", "elementwise", "norm", "attention_prefill", "attention_decode",
              "prefill", "decode")
#: Kinds compared on power only.
POWER_KINDS = ("idle", "static")
E2E_KINDS = ("prefill", "decode")

_IR_DTYPE = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "bf16": "bf16", "f16": "f16", "f32": "f32"}


@dataclass(frozen=True)
class _Param:
    name: str
    stage: str  # "time" or "power"
    informed_by: tuple[str, ...]  # op classes (kinds) whose records constrain it

    @property
    def log(self) -> bool:
        """Whether the optimiser moves it on a log scale (``costmodel.fit.FIT_PARAMS``)."""
        return _FIT_LOG[self.name]


#: Log-spacing of the coefficients, from the one bounds table (``costmodel.fit.FIT_PARAMS``).
_FIT_LOG = {name: log for name, _lo, _hi, log in FIT_PARAMS}

#: The coefficients calibration may fit and the op classes that inform them. Their bounds and log
#: spacing are ``costmodel.fit.FIT_PARAMS``'s (see ``fit.fit_bounds``): one table for both fits.
PARAMS: tuple[_Param, ...] = (
    _Param("mem_efficiency", "time", ("hbm_copy", "elementwise", "norm", "gemm", "prefill", "decode")),
    _Param("attn_mem_efficiency", "time", ("attention_decode", "attention_prefill", "decode")),
    _Param("compute_efficiency", "time", ("gemm", "attention_prefill", "prefill")),
    _Param("gemm_half_rows", "time", ("gemm", "prefill", "decode")),
    _Param("kernel_overhead_s", "time", WORK_KINDS),
    _Param("kv_seq_overhead_s", "time", ("attention_decode", "decode")),
    _Param("static_power_w", "power", ("static", *WORK_KINDS)),
    _Param("flop_pj", "power", ("gemm", "attention_prefill", "prefill")),
    _Param("byte_pj", "power", ("hbm_copy", "elementwise", "norm", "attention_decode", "decode")),
)


# ---- reading files --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    """One record of a measurement file (the newest line of its key on its GPU), with where it came from."""

    file: str
    line: int
    rec: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.rec.get("key", f"{self.file}:{self.line}"))

    @property
    def kind(self) -> str:
        return str(self.rec.get("kind", "?"))

    @property
    def ident(self) -> tuple[str | None, str]:
        """(GPU name, key): a later line of the same key on the same GPU replaces an earlier one (a
        resumed or repeated run); the same key on another GPU is another measurement."""
        env = self.rec.get("env")
        gpu = env.get("gpu_name") if isinstance(env, dict) else None
        return (gpu if gpu is None or isinstance(gpu, str) else repr(gpu)), self.key  # a malformed name stays hashable


@dataclass
class Measurements:
    """Records read from measurement files; files left out, torn and other lines, with the reasons."""

    files: list[str] = field(default_factory=list)
    records: list[Measured] = field(default_factory=list)
    excluded_files: list[tuple[str, str]] = field(default_factory=list)
    torn_lines: int = 0
    other_lines: int = 0  # lines that are neither a record nor a torn one (not JSON, or not a record)
    repeated_records: int = 0  # records identical to one of an earlier file (a copied file), read once
    digests: dict[str, str] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """One line per thing read around: files left out, torn, repeated and other lines."""
        out = [f"file left out: {f}: {why}" for f, why in self.excluded_files]
        if self.torn_lines:
            out.append(f"{self.torn_lines} torn line(s) ignored (an interrupted run)")
        if self.repeated_records:
            out.append(f"{self.repeated_records} record(s) identical to one of an earlier file (a copy) read once")
        if self.other_lines:
            out.append(f"{self.other_lines} line(s) that are not measurement records ignored "
                       "(not JSON, or JSON without a key or status)")
        return out


def _listed_in_readme(path: Path) -> str | None:
    """Why ``path`` may not be used (None: it may): a folder whose README.md keeps a table of its
    files (data/measurements/) must list the file (see the rule in that README)."""
    readme = path.parent / "README.md"
    if path.name == readme.name:
        return "the folder's README, not a measurement file"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if "| file |" not in text:
        return None
    if f"`{path.name}`" in text or f"| {path.name} " in text or f"|{path.name}|" in text:
        return None
    return f"not listed in {readme} (every measurement file needs its row there: GPU, date, command, commit)"


def read_measurements(paths: Iterable[str | Path]) -> Measurements:
    """The records of the JSONL files in ``paths`` (files, or folders: their ``*.jsonl``; a file
    reached twice is read once).

    Within a file the newest line of a key wins (a rerun redoes errors); a record identical to one
    of an earlier file (a copy) is read once (``repeated_records``); a torn last line of an
    interrupted run is ignored. Raises ``EnergylensError`` when ``paths`` hold no ``.jsonl`` file.
    """
    out = Measurements()
    files: list[Path] = []
    if isinstance(paths, str | Path):  # one path, not its letters
        paths = [paths]
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.jsonl"))
        elif p.is_file():
            files.append(p)
        else:
            raise EnergylensError(f"{p}: no such file or folder")
    first: dict[Path, Path] = {}
    for f in files:  # a file reached twice (named again, or in a folder given) is read once
        first.setdefault(f.resolve(), f)
    files = list(first.values())
    if not files:
        where = ", ".join(map(str, paths)) or "(no path given)"
        raise EnergylensError(f"no measurement files (*.jsonl) in {where}; take a run on a "
                              "GPU with `energylens measure` (see data/measurements/README.md)")
    seen: set[str] = set()  # every record read so far, as text
    for f in files:
        reason = _listed_in_readme(f)
        if reason:
            out.excluded_files.append((str(f), reason))
            continue
        out.files.append(str(f))
        data = f.read_bytes()
        out.digests[str(f)] = hashlib.sha256(data).hexdigest()[:12]
        newest: dict[tuple[str | None, str], Measured] = {}
        records, torn, other = file_records(f, data.decode("utf-8", errors="replace"))
        for m in records:
            newest.pop(m.ident, None)  # keep file order of the newest lines
            newest[m.ident] = m
        out.torn_lines += torn
        out.other_lines += other
        for m in newest.values():
            text = json.dumps(m.rec, sort_keys=True, default=str)
            if text in seen:
                out.repeated_records += 1
                continue
            seen.add(text)
            out.records.append(m)
    return out


def file_records(f: Path, text: str) -> tuple[list[Measured], int, int]:
    """The records of measurement file ``f`` with text ``text`` (JSON object lines with a ``key`` or
    a ``status``, as ``energylens measure`` writes them), how many lines were torn (a JSON object
    cut by an interrupted run) and how many are something else (not JSON, or JSON but not a record);
    ``EnergylensError`` for a file that holds no record (``_not_a_measurement_file``)."""
    records, torn, other = [], 0, 0
    for i, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if line.lstrip().startswith("{"):
                torn += 1
            else:
                other += 1
            continue
        if isinstance(rec, dict) and ("key" in rec or "status" in rec):
            records.append(Measured(str(f), i, rec))
        else:
            other += 1
    if not records and (other or torn > 1):
        _not_a_measurement_file(f, text, torn + other)
    return records, torn, other


def _not_a_measurement_file(f: Path, text: str, lines: int) -> None:
    """Raise for a file with no record line: a JSON document (a config, a profile, notes) or other
    text. One torn line alone is a run cut while writing its first record, and is only counted."""
    try:
        json.loads(text)
        what = "a JSON document"
    except json.JSONDecodeError:
        what = f"{lines} line{'s' if lines > 1 else ''}, none a measurement record"
    raise EnergylensError(f"{f} is not a measurement file ({what}): `energylens measure` writes one JSON record "
                          "per line (see data/measurements/README.md)")


# ---- which GPU a record was taken on ----------------------------------------------------------------


def gpu_of_record(rec: dict[str, Any]) -> tuple[GPUSpec | None, str | None]:
    """(GPU of the hardware DB, None) a record was taken on, or (None, why not)."""
    device = str(rec.get("device") or "")
    env = rec.get("env") or {}
    if not device:
        return None, f"{MALFORMED}: no device in the record (cuda:N or cpu)"
    if not device.startswith("cuda"):
        return None, (f"taken on device {device or '?'!r}, which is not a GPU of the hardware DB (`energylens gpus`): "
                      "the cost model predicts GPUs only (CPU runs check that the campaign runs; timing only)")
    name = str(env.get("gpu_name") or "")
    if not name:
        return None, "no env.gpu_name in the record: cannot tell which GPU it ran on"
    try:
        return get_gpu(name), None  # nvidia-smi's names ("NVIDIA H100 80GB HBM3") are looked up as they are
    except UnknownNameError:
        pass
    return None, (f"GPU {name!r} is not in the hardware DB (known: {', '.join(list_gpus())}); add a spec or an "
                  "alias under energylens/costmodel/hardware/")


# ---- records as IR work -----------------------------------------------------------------------------
def microbench_graph(kind: str, params: dict[str, Any]) -> tuple[Graph, dict[str, float]]:
    """The IR graph of a microbenchmark and the binding of its symbols (B, S, K).

    >>> g, b = microbench_graph("gemm", {"m": 8, "n": 16, "k": 32, "dtype": "bfloat16"})
    >>> [op.spec for op, _ in g.walk()], b
    (['mk,nk->mn'], {})
    """
    def size(name: str) -> int:  # a malformed record (ValueError) unless a positive whole number
        v = params[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or v <= 0:
            raise ValueError(f"params.{name} must be a positive whole number, got {v!r}")
        return int(v)

    dt = _IR_DTYPE.get(str(params.get("dtype", "bfloat16")))
    if dt is None:
        raise EnergylensError(f"microbenchmark dtype {params.get('dtype')!r} has no IR dtype (valid: {', '.join(_IR_DTYPE)})")

    def tt(dims: tuple[str, ...], dtype: str = dt) -> TensorType:
        return TensorType(dims, dtype)

    def graph(dims: dict[str, int | None], decls: list[Decl], ops: list[Any]) -> Graph:
        return Graph(name=f"micro_{kind}", dims=tuple(dims.items()), decls=tuple(decls), body=tuple(ops),
                     outputs=(ops[-1].result.name,), attrs=(("phase", "micro"),))

    if kind in ("gemm", "sm_contention"):
        x, w = Value("x", tt(("m", "k"))), Value("w", tt(("n", "k")))
        op = Einsum(result=Value("y", tt(("m", "n"))), operands=(x, w), spec="mk,nk->mn")
        return graph({"m": size("m"), "n": size("n"), "k": size("k")},
                     [Decl(x, "input"), Decl(w, "param")], [op]), {}
    if kind == "hbm_copy":
        n = size("bytes") // TensorType(("n",), dt).itemsize
        x = Value("x", tt(("n",)))
        return graph({"n": n}, [Decl(x, "input")], [Elementwise(result=Value("y", tt(("n",))), operands=(x,),
                                                                 fn="copy")]), {}
    if kind in ("elementwise", "norm"):
        t, h, fn = size("tokens"), size("hidden"), str(params["op"])
        a = Value("a", tt(("t", "h")))
        if kind == "elementwise":
            b = Value("b", tt(("t", "h")))
            op = Elementwise(result=Value("y", tt(("t", "h"))), operands=(a, b), fn=fn)
            return graph({"t": t, "h": h}, [Decl(a, "input"), Decl(b, "input")], [op]), {}
        w = Value("w", tt(("h",)))
        op = Reduce(result=Value("y", tt(("t", "h"))), operands=(a, w), fn="rms_norm", dims=("h",))
        return graph({"t": t, "h": h}, [Decl(a, "input"), Decl(w, "param")], [op]), {}
    if kind in ("attention_prefill", "attention_decode"):
        nh, nkv, d = size("heads"), size("kv_heads"), size("head_dim")
        if nh % nkv:
            raise EnergylensError(f"attention with {nh} query heads over {nkv} KV heads: not a GQA layout")
        dims: dict[str, int | None] = {"B": None, "S": None, "K": None, "g": nkv, "r": nh // nkv, "d": d}
        q = Value("q", tt(("B", "g", "r", "S", "d")))
        kc, vc = Value("key_cache", tt(("B", "g", "K", "d"))), Value("value_cache", tt(("B", "g", "K", "d")))
        scores = Einsum(result=Value("scores", tt(("B", "g", "r", "S", "K"))), operands=(q, kc),
                        spec="bgrsd,bgkd->bgrsk", causal=True)
        probs = Reduce(result=Value("probs", tt(("B", "g", "r", "S", "K"))), operands=(scores.result,),
                       fn="softmax", dims=("K",))
        out = Einsum(result=Value("attn", tt(("B", "g", "r", "S", "d"))), operands=(probs.result, vc),
                     spec="bgrsk,bgkd->bgrsd", causal=True)  # FlashAttention skips masked blocks in both
        g = graph(dims, [Decl(q, "input"), Decl(kc, "cache"), Decl(vc, "cache")], [scores, probs, out])
        b = float(size("batch"))
        if kind == "attention_prefill":
            return g, {"B": b, "S": float(size("seq")), "K": float(size("seq"))}
        return g, {"B": b, "S": 1.0, "K": float(size("kv_len"))}
    raise UnknownNameError("microbenchmark kind with an IR equivalent", kind,
                           ("gemm", "sm_contention", "hbm_copy", "elementwise", "norm", "attention_prefill",
                            "attention_decode"))


def _count(v: Any, name: str) -> int:
    """A whole positive count of a record (1.5, "4" or true is malformed, not truncated)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v != int(v) or v < 1:
        raise ValueError(f"{name} {v!r} is not a whole positive number")
    return int(v)


def e2e_workload(rec: dict[str, Any]) -> tuple[Workload, dict[str, float]]:
    """The ``Workload`` whose ``estimate`` prices an end-to-end record, and the record's binding.

    Prefill: ``batch`` prompts of ``prompt_len``. Decode: one step of ``batch`` sequences with
    ``output_len=1``, so ``decode_context_len`` is the KV length attention reads
    (``attended_kv_len``: the measured static cache attends over its whole allocation).
    """
    p = rec["params"]
    b = _count(p["batch"], "batch")
    if rec["kind"] == "prefill":
        s = _count(p["prompt_len"], "prompt_len")
        return Workload(batch=b, prompt_len=s, output_len=1), {"B": b, "S": s, "K": s}
    kv = _count((rec.get("result") or {}).get("attended_kv_len") or p["context_len"], "context_len")
    return Workload(batch=b, prompt_len=kv, output_len=1), {"B": b, "S": 1, "K": kv}


def e2e_graph(rec: dict[str, Any], gpu: GPUSpec) -> tuple[Graph, dict[str, float]]:
    """The graph ``energylens.estimate`` prices for an end-to-end record (one GPU, without the fuse
    pass: the measured HF model runs its own kernels, separate QKV / gate / up GEMMs and no epilogue
    fusion; SDPA attention and pointwise chains are fused as in every plan) and its binding."""
    from energylens.api import estimate, resolve_model
    from energylens.typing import Cluster

    model = str(rec["params"]["model"])
    if model.startswith("tiny:"):
        from energylens.runtime.execute import tiny_config

        traced: Any = resolve_model(tiny_config(model[len("tiny:"):]))
    else:
        traced = resolve_model(model)
    wl, binding = e2e_workload(rec)
    est = estimate(traced, Cluster(gpu.name), wl, fused=False, profile=default_profile(gpu))
    return (est.graphs.prefill if rec["kind"] == "prefill" else est.graphs.decode), binding


@dataclass(frozen=True)
class Sample:
    """A measured record ready to be predicted: its measured values and its profile-independent work.

    ``time_s``/``energy_j`` are per call (a kernel, a prefill forward, a decode step); ``tokens``
    the tokens one call produces (decode: the batch); ``works`` the op work with repetition counts
    (empty for power-only kinds); ``fit`` whether calibration uses it.
    """

    file: str
    key: str
    kind: str
    op_class: str
    gpu: str
    label: str
    env_id: str
    time_s: float | None
    energy_j: float | None
    power_w: float | None
    tokens: int
    works: tuple[tuple[OpWork, int], ...]
    fit: bool = True
    contention: tuple[int, int, float] | None = None  # (SMs, blocks held, GEMM time alone) of sm_contention
    note: str = ""
    energy_unavailable: str = ""  # why the record has no energy reading (the meter's reason)


def _label(rec: dict[str, Any]) -> str:
    p = {k: v for k, v in (rec.get("params") or {}).items() if k not in ("sources", "dtype", "phase")}
    if "model" in p:
        p["model"] = str(p["model"]).split("/")[-1]
    return " ".join(f"{k}={v}" for k, v in p.items())


def _op_class(rec: dict[str, Any]) -> str:
    kind = str(rec.get("kind"))
    if kind in ("elementwise", "norm"):
        return f"{kind}:{rec['params'].get('op')}"
    return kind


def _positive(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and math.isfinite(x) else None


#: Reasons of records skipped for their shape (wrong types, non-finite numbers) start with this.
MALFORMED = "malformed record"


def _malformed(rec: dict[str, Any]) -> str | None:
    """Why a measured (status ok) record cannot be read (None: it can): the reason, without the value."""
    for name in ("params", "result", "env"):
        v = rec.get(name)
        if v is None and name == "params":  # params is required
            return f"{MALFORMED}: no params" if name not in rec else f"{MALFORMED}: params is not a JSON object"
        if not isinstance(v, dict) and v is not None:
            return f"{MALFORMED}: {name} is not a JSON object"
    for name in ("time_s", "energy_j", "avg_power_w"):
        x = (rec.get("result") or {}).get(name)
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)):
            return f"{MALFORMED}: result.{name} is not a finite number or null"
    return None


def build_samples(measured: Iterable[Measured]) -> tuple[list[Sample], list[tuple[Measured, str]]]:
    """Samples of the records the cost model can predict, and the others with the reason
    (a malformed record's reason starts with ``MALFORMED``)."""
    from energylens.costmodel.analysis import WorkAnalysis

    samples: list[Sample] = []
    skipped: list[tuple[Measured, str]] = []
    for m in measured:
        rec = m.rec
        status = rec.get("status")
        bad = _malformed(rec) if status == "ok" else None
        if bad:
            skipped.append((m, bad))
            continue
        if status is None:
            skipped.append((m, f"{MALFORMED}: no status (ok, skipped or error)"))
            continue
        if status != "ok":
            skipped.append((m, f"not measured: status {status!r} ({str(rec.get('reason', ''))[:120]})"))
            continue
        gpu, why = gpu_of_record(rec)
        if gpu is None:
            skipped.append((m, str(why)))
            continue
        kind, res = m.kind, rec.get("result") or {}
        env_id = str((rec.get("env") or {}).get("env_id", ""))
        energy = _positive(res.get("energy_j"))
        power = _positive(res.get("avg_power_w"))
        common = dict(file=m.file, key=m.key, kind=kind, op_class=_op_class(rec), gpu=gpu.name, label=_label(rec),
                      env_id=env_id, energy_unavailable=str(res.get("energy_unavailable_reason") or ""))
        try:
            if kind in POWER_KINDS:
                if power is None:
                    skipped.append((m, f"{kind} power record without a power reading"))
                    continue
                samples.append(Sample(**common, time_s=None, energy_j=None, power_w=power, tokens=1, works=(),
                                      fit=kind == "static"))
                continue
            t = _positive(res.get("time_s"))
            if t is None:
                skipped.append((m, "no positive result.time_s"))
                continue
            if kind in E2E_KINDS:
                dtype = str(rec["params"].get("dtype", "bfloat16"))
                if dtype != "bfloat16":
                    skipped.append((m, f"ran in {dtype}; the cost model prices the bf16 graphs serving engines run"))
                    continue
                graph, binding = e2e_graph(rec, gpu)
                tokens = int(binding["B"] * binding["S"])
            elif kind in WORK_KINDS or kind == "sm_contention":
                graph, binding = microbench_graph(kind, rec["params"])
                tokens = 1
            else:
                skipped.append((m, f"kind {kind!r} has no cost-model equivalent"))
                continue
            works = tuple((w, count) for _op, count, w in WorkAnalysis(graph, binding, gpu).run())
        except EnergylensError as exc:
            skipped.append((m, f"cannot be priced: {exc}"))
            continue
        except (KeyError, TypeError, ValueError) as exc:  # a param missing or of the wrong type
            skipped.append((m, f"{MALFORMED}: params of a {kind} record: {type(exc).__name__} {exc}"[:200]))
            continue
        if energy is not None and power is None:
            power = energy / t
        if power is not None and not math.isfinite(power):  # finite readings whose ratio overflows
            skipped.append((m, f"{MALFORMED}: energy_j / time_s is not a finite power"))
            continue
        contention = None
        if kind == "sm_contention":
            alone_rec = rec.get("alone")
            alone = _positive(alone_rec.get("time_s")) if isinstance(alone_rec, dict) else None
            try:
                sms = int(rec.get("sms") or gpu.compute_units)
                blocks = int(rec["params"].get("blocks", 0))
            except (TypeError, ValueError):
                skipped.append((m, f"{MALFORMED}: sms or params.blocks is not an integer"))
                continue
            if alone is None:
                skipped.append((m, "sm_contention record without the GEMM's time alone"))
                continue
            if not 0 < blocks < sms:  # the copy kernel must leave the GEMM some SMs
                skipped.append((m, f"{MALFORMED}: params.blocks {blocks} is not in 1..sms-1 ({sms - 1})"))
                continue
            contention = (sms, blocks, alone)
            energy = power = None  # the window's energy covers the copy kernel too
        note = UNFUSED.get(common["op_class"], "")
        samples.append(Sample(**common, time_s=t, energy_j=energy, power_w=power, tokens=tokens, works=works,
                              fit=not note and kind != "sm_contention", contention=contention, note=note))
    return samples, skipped


# ---- predicting -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction(Record):
    """Predicted time (s), energy (J) and average power (W) of one call of a sample (None: n/a)."""

    time_s: float | None
    energy_j: float | None
    power_w: float | None
    dynamic_j: float | None  # energy above static power


class _Stack:
    """All samples' op work stacked into arrays, to price every sample in one vectorised call."""

    def __init__(self, samples: Sequence[Sample]):
        from energylens.costmodel.serving import stack_works

        works, counts, seg = [], [], []
        for i, s in enumerate(samples):
            for w, c in s.works:
                works.append(w)
                counts.append(c)
                seg.append(i)
        self.n = len(samples)
        self.work = stack_works(works) if works else None
        self.count = np.array(counts, float)
        self.seg = np.array(seg, int)

    def price(self, gpu: GPUSpec, profile: Profile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(time_s, energy_j, dynamic_j) per sample (zeros for samples without work)."""
        if self.work is None:
            z = np.zeros(self.n)
            return z, z, z
        t0 = op_time_s(self.work, gpu, profile)
        t, static_j, flop_j, byte_j = op_energy(self.work, t0, gpu, profile)
        c = self.count
        time_s = np.bincount(self.seg, weights=c * t, minlength=self.n)
        dyn = np.bincount(self.seg, weights=c * (flop_j + byte_j), minlength=self.n)
        energy = np.bincount(self.seg, weights=c * static_j, minlength=self.n) + dyn
        return time_s, energy, dyn


def _sm_exponent(gpu: GPUSpec, profile: Profile) -> float:
    """The contention exponent the cost model uses on ``gpu``: its own overlap fit, else the A100's
    carried over (``costmodel.plan.overlap_params``)."""
    from energylens.costmodel.plan import overlap_params

    return overlap_params(gpu, profile).sm_exponent


def predict(samples: Sequence[Sample], profile: Profile, *, sm_exponent: float | None = None,
            _stack: _Stack | None = None) -> list[Prediction]:
    """Cost-model predictions of ``samples`` (all of ``profile.gpu``) with ``profile``.

    Work kinds: time, energy and power of one call (identical to ``estimate``/``price_graph``).
    ``static``: the profile's static power; ``idle``: the hardware DB's idle power.
    ``sm_contention``: the GEMM's measured time alone x the contention slowdown
    ``(N / (N - k)) ** sm_exponent`` (``sm_exponent`` default: the GPU's overlap fit, else the A100's
    carried over, as the cost model prices overlap).
    """
    gpu = get_gpu(profile.gpu)
    if any(s.gpu != gpu.name for s in samples):
        raise EnergylensError(f"predict: every sample must be of {gpu.name}")
    stack = _stack or _Stack(samples)
    time_s, energy, dyn = stack.price(gpu, profile)
    if sm_exponent is None and any(s.contention for s in samples):
        sm_exponent = _sm_exponent(gpu, profile)
    out = []
    for i, s in enumerate(samples):
        if s.kind == "static":
            out.append(Prediction(None, None, profile.static_power_w, None))
        elif s.kind == "idle":
            out.append(Prediction(None, None, gpu.idle_power_w, None))
        elif s.contention is not None:
            sms, blocks, alone = s.contention
            t = None if sm_exponent is None else alone * (sms / (sms - blocks)) ** sm_exponent
            out.append(Prediction(t, None, None, None))
        else:
            t, e = float(time_s[i]), float(energy[i])
            out.append(Prediction(t, e, e / t, float(dyn[i])))
    return out


# ---- splitting --------------------------------------------------------------------------------------
def split_holdout(samples: Sequence[Sample], seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(calibration half, held-out half): within each op class, samples ordered by a seeded hash
    of their GPU and key alternate between the halves, so both halves cover every op class. The
    hash takes no file: a checkout anywhere splits the same way, and the same measurement taken
    again (another file of the same GPU) falls in the same half, so it cannot be fitted on and
    checked against."""
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.op_class].append(s)
    train: list[Sample] = []
    test: list[Sample] = []
    for cls in sorted(by_class):
        digest = {id(s): hashlib.sha256(f"{seed}:{s.gpu}:{s.key}".encode()).hexdigest() for s in by_class[cls]}
        group = sorted(by_class[cls], key=lambda s: digest[id(s)])
        # whole runs of one digest (repeats of a measurement) go to one half
        halves: tuple[list[Sample], list[Sample]] = ([], [])
        for _, run in itertools.groupby(group, key=lambda s: digest[id(s)]):
            halves[len(halves[0]) > len(halves[1])].extend(run)  # the smaller half (train on a tie)
        train += halves[0]
        test += halves[1]
    return train, test


# ---- fitting ----------------------------------------------------------------------------------------
def contention_exponent(samples: Sequence[Sample]) -> dict[str, float] | None:
    """Least-squares ``e`` of ``slowdown = (N / (N - k)) ** e`` over SM-contention samples (k > 0)."""
    rows = [(math.log(sms / (sms - k)), math.log(s.time_s / alone)) for s in samples if s.contention
            for sms, k, alone in [s.contention] if 0 < k < sms and s.time_s]
    if not rows:
        return None
    a = np.array([r[0] for r in rows])
    b = np.array([r[1] for r in rows])
    e = float(a @ b / (a @ a))
    mape = float(np.mean(np.abs(np.exp(e * a - b) - 1)) * 100)
    return {"sm_exponent": round(e, 4), "rows": float(len(rows)), "mape_slowdown_pct": round(mape, 2)}


def _bounds(p: _Param, gpu: GPUSpec) -> tuple[float, float]:
    """``p``'s (lower, upper) bound in the profile's units, as ``costmodel.fit`` bounds it on ``gpu``."""
    try:
        return fit_bounds(gpu)[p.name]
    except KeyError:
        raise KeyError(f"{p.name!r} has no bounds in costmodel.fit.FIT_PARAMS") from None


def _to_x(p: _Param, v: float, gpu: GPUSpec) -> float:
    lo, hi = _bounds(p, gpu)
    v = min(max(v, lo), hi)  # a start outside the bounds (e.g. a datasheet 0) starts at the nearest one
    s = (math.log(v / lo) / math.log(hi / lo)) if p.log else (v - lo) / (hi - lo)
    s = min(max(s, 1e-4), 1 - 1e-4)
    return math.log(s / (1 - s))


def _from_x(p: _Param, x: float, gpu: GPUSpec) -> float:
    lo, hi = _bounds(p, gpu)
    s = 1.0 / (1.0 + math.exp(-float(np.clip(x, -30, 30))))
    return math.exp(math.log(lo) + s * math.log(hi / lo)) if p.log else lo + s * (hi - lo)


def _mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred / meas - 1)) * 100) if len(meas) else float("nan")


@dataclass(frozen=True)
class CalibrationResult(Record):
    """A fitted profile with what was fitted, what was kept, and in-sample residuals per op class."""

    gpu: str
    profile: Profile
    fitted: tuple[str, ...]
    kept: dict[str, str]  # coefficient -> why it was not fitted
    residuals: dict[str, float]
    contention: dict[str, float] | None
    samples: int
    energy_samples: int
    notes: tuple[str, ...]
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["profile"] = self.profile.model_dump()
        return d


def calibrate_samples(samples: Sequence[Sample], *, base: Profile | None = None, data_label: str = "",
                      restarts: int = 3, prior: float = 1e-3) -> CalibrationResult:
    """Fit the profile of the samples' GPU (all samples of one GPU) starting from ``base``
    (default: the bundled profile of that GPU). See the module docstring for the method."""
    from energylens.costmodel.fit import huber, nelder_mead

    gpus = {s.gpu for s in samples}
    if len(gpus) != 1:
        raise EnergylensError(f"calibrate_samples needs samples of one GPU, got {sorted(gpus) or 'none'}")
    gpu = get_gpu(gpus.pop())
    base = base or load_profile(gpu)
    used = [s for s in samples if s.fit]
    work = [s for s in used if s.works]
    timed = [s for s in work if s.time_s]
    powered = [s for s in used if s.power_w is not None and (s.works or s.kind == "static")]
    classes_t = {s.op_class.split(":")[0] for s in timed}
    classes_p = {s.op_class.split(":")[0] for s in powered}
    fields = set(type(base).model_fields)
    free: list[_Param] = []
    kept: dict[str, str] = {}
    for p in PARAMS:
        have = classes_t if p.stage == "time" else classes_p
        if p.name not in fields:
            continue
        if p.name == "gemm_half_rows" and len({w.rows for s in timed if s.kind == "gemm" for w, _ in s.works}) < 2 \
                and not have & set(E2E_KINDS):
            kept[p.name] = "needs GEMMs of at least two row counts"
        elif have & set(p.informed_by):
            free.append(p)
        else:
            need = "needs records with energy readings of " if p.stage == "power" else "needs records of "
            kept[p.name] = need + "/".join(p.informed_by)
    if not timed and not powered:  # e.g. every time negative or NaN (the priors regularise small sets)
        raise EnergylensError(f"too few valid records of {gpu.name} to calibrate: none with a positive finite "
                              f"time_s or an energy reading, {len(samples)} in all")
    if len(timed) + len(powered) < len(free):  # fewer readings than coefficients: the fit would be the prior's
        raise EnergylensError(f"too few readings of {gpu.name} to calibrate: {len(timed)} times and {len(powered)} "
                              f"powers for {len(free)} coefficients ({', '.join(p.name for p in free)}); measure "
                              "a suite (energylens measure --suite quick)")
    stack = _Stack(work)
    t_meas = np.array([s.time_s for s in work])
    p_meas = np.array([s.power_w if s.power_w is not None else np.nan for s in work])
    has_p = np.isfinite(p_meas)
    static_p = np.array([s.power_w for s in used if s.kind == "static" and s.power_w is not None])

    def weights(ss: Sequence[Sample], mask: np.ndarray) -> np.ndarray:
        n = Counter(s.op_class for s, k in zip(ss, mask, strict=True) if k)
        return np.array([1.0 / n[s.op_class] if k else 0.0 for s, k in zip(ss, mask, strict=True)])

    w_t = weights(work, np.ones(len(work), bool))
    w_p = weights(work, has_p)
    w_static = 1.0 / len(static_p) if len(static_p) else 0.0
    x0 = {p.name: _to_x(p, float(getattr(base, p.name)), gpu) for p in free}

    def profile_of(x: dict[str, float]) -> Profile:
        return base.model_copy(update={p.name: _from_x(p, x[p.name], gpu) for p in free})

    def loss(x: dict[str, float], stage: str) -> float:
        prof = profile_of(x)
        t, _e, dyn = stack.price(gpu, prof)
        pull = prior * sum((x[p.name] - x0[p.name]) ** 2 for p in free if p.stage == stage)
        if stage == "time":
            return float(np.sum(w_t * huber(np.log(t / t_meas)))) + pull
        total = pull
        if has_p.any():
            p_pred = prof.static_power_w + dyn[has_p] / t_meas[has_p]
            total += float(np.sum(w_p[has_p] * huber(np.log(p_pred / p_meas[has_p]))))
        if len(static_p):
            total += w_static * float(np.sum(huber(np.log(prof.static_power_w / static_p))))
        return total

    x = dict(x0)
    for _ in range(2):  # time, then power with the times fixed; twice (the TDP cap couples them)
        for stage in ("time", "power"):
            names = [p.name for p in free if p.stage == stage]
            if not names:
                continue

            def f(v: np.ndarray, names: list[str] = names, stage: str = stage) -> float:
                return loss({**x, **dict(zip(names, map(float, v), strict=True))}, stage)

            best_v = np.array([x[n] for n in names])
            best = f(best_v)
            for k in range(restarts):
                v, val = nelder_mead(f, best_v, step=1.0 if k == 0 else 0.3, iters=2000)
                if val < best - 1e-12:
                    best_v, best = v, val
            x.update(dict(zip(names, map(float, best_v), strict=True)))
    prof = profile_of(x)
    # a coefficient these records do not determine (no prediction moves with it) is not "fitted":
    # it goes back to its starting value and is reported as kept
    t, _e, dyn = stack.price(gpu, prof)

    def moved(alt: Profile) -> float:
        t1, _e1, dyn1 = stack.price(gpu, alt)
        out = float(np.max(np.abs(t1 / t - 1))) if len(t) else 0.0
        if has_p.any():
            p0 = prof.static_power_w + dyn[has_p] / t_meas[has_p]
            p1 = alt.static_power_w + dyn1[has_p] / t_meas[has_p]
            out = max(out, float(np.max(np.abs(p1 / p0 - 1))))
        if len(static_p):
            out = max(out, abs(alt.static_power_w / prof.static_power_w - 1))
        return out

    for p in list(free):
        v = float(getattr(prof, p.name))
        if max(moved(prof.model_copy(update={p.name: v * f})) for f in (1.2, 1 / 1.2)) < UNDETERMINED:
            free.remove(p)
            kept[p.name] = f"not determined by these records (a 20% change moves no prediction by {UNDETERMINED:.1%})"
            prof = prof.model_copy(update={p.name: getattr(base, p.name)})
            x[p.name] = x0[p.name]
    t, e, dyn = stack.price(gpu, prof)
    residuals: dict[str, float] = {}
    for cls in sorted({s.op_class for s in work}):
        idx = np.array([s.op_class == cls for s in work])
        residuals[f"mape_time_{cls}_pct"] = round(_mape(t[idx], t_meas[idx]), 2)
        pi = idx & has_p
        has_e = np.array([s.energy_j is not None for s in work], bool)
        if pi.any():
            residuals[f"mape_power_{cls}_pct"] = round(_mape(prof.static_power_w + dyn[pi] / t_meas[pi], p_meas[pi]), 2)
            ei = pi & has_e  # a power reading without an energy one (sampled power) has no energy residual
            if ei.any():
                e_meas = np.array([s.energy_j for s, k in zip(work, ei, strict=True) if k])
                residuals[f"mape_energy_{cls}_pct"] = round(_mape(e[ei], e_meas), 2)
    if len(static_p):
        residuals["mape_power_static_pct"] = round(_mape(np.full(len(static_p), prof.static_power_w), static_p), 2)
    residuals["loss"] = round(loss(x, "time") + loss(x, "power"), 5)
    notes: list[str] = []
    n_energy = int(has_p.sum()) + len(static_p)
    if n_energy == 0:
        notes.append("no energy readings (timing-only records, e.g. a CPU run or a GPU without a readable "
                     "meter): time coefficients only; power coefficients kept from the starting profile")
    skipped_fit = [s for s in samples if not s.fit and s.kind not in ("idle", "sm_contention")]
    if skipped_fit:
        notes.append(f"{len(skipped_fit)} records validated but not fitted on "
                     f"({'; '.join(sorted({f'{s.op_class}: {s.note}' for s in skipped_fit}))})")
    contention = contention_exponent(samples)
    if contention:
        notes.append(f"SM contention: slowdown (N/(N-k))^{contention['sm_exponent']:g} fits {int(contention['rows'])} "
                     f"records (MAPE {contention['mape_slowdown_pct']:g}%); overlap profiles are not rewritten")
    idle = [s.power_w for s in samples if s.kind == "idle" and s.power_w]
    if idle:
        notes.append(f"measured idle power {float(np.median(idle)):.1f} W (hardware DB prior {gpu.idle_power_w:g} W)")
    kept_txt = "; ".join(f"{k} ({v})" for k, v in kept.items()) or "none"
    envs = sorted({s.env_id for s in used if s.env_id})
    provenance = Provenance(
        method="fit",
        data=(data_label or "measurement records") + f"; env ids: {', '.join(envs) or 'none'}",
        fit=("energylens.runtime.calibrate: two-stage Nelder-Mead (costmodel.fit.nelder_mead) on bounded "
             "transformed coefficients, time coefficients on log(pred/meas) time, then power coefficients on "
             "log(pred/meas) average power at the measured time; loss = Huber(0.05), op classes weighted "
             f"equally, pull {prior:g} towards the start; fitted: {', '.join(p.name for p in free) or 'none'}; "
             f"kept from the start ({base.provenance.method}): {kept_txt}"),
        rows=len(used),
        residuals=residuals,
        notes="in-sample residuals (held-out error: energylens validate on other runs). " + " ".join(notes),
    )
    profile = prof.model_copy(update={"provenance": provenance})
    profile = Profile.model_validate(profile.model_dump())  # bounds and types checked
    return CalibrationResult(gpu=gpu.name, profile=profile, fitted=tuple(p.name for p in free), kept=kept,
                             residuals=residuals, contention=contention, samples=len(used),
                             energy_samples=n_energy, notes=tuple(notes))


#: A fitted coefficient whose 20% change moves no prediction by this much is reported as kept.
UNDETERMINED = 0.005


def _data_label(ms: Measurements, samples: Sequence[Sample]) -> str:
    files = sorted({s.file for s in samples})
    synthetic = {m.file for m in ms.records if isinstance(env := m.rec.get("env"), dict) and env.get("synthetic")}
    return "; ".join(f"{f} (sha256 {ms.digests.get(f, '?')}, {sum(1 for s in samples if s.file == f)} records"
                     f"{', SYNTHETIC: generated by the cost model, not measured' if f in synthetic else ''})"
                     for f in files)


def _one_file(out: str | Path) -> bool:
    """``out`` names one profile file (``.json``, any case), not a folder of them."""
    return str(out).lower().endswith(".json")


def check_out(out: str | Path) -> None:
    """Raise ``EnergylensError`` unless profiles can be written to ``out`` (a ``.json`` file, or a
    folder), before any fitting: a folder that is a file, or a place that cannot be written."""
    path = Path(out)
    if not str(out).strip():
        raise EnergylensError("empty profile destination: give a folder or a .json file")
    if not _one_file(out) and path.exists() and not path.is_dir():
        raise EnergylensError(f"{out} is a file, not a folder; a profile file must end in .json")
    if _one_file(out) and path.is_dir():
        raise EnergylensError(f"{out} is a folder; a profile file must be a file ending in .json")
    if not _one_file(out) and not path.is_dir() and path.suffix:  # p3.txt would become a folder
        raise EnergylensError(f"{out}: a profile file must end in .json (or give a folder, without an extension)")
    place = path.parent if _one_file(out) else path
    while not place.exists():
        place = place.parent
    if not place.is_dir() or not os.access(place, os.W_OK):
        raise EnergylensError(f"cannot write profiles to {out}: {place} is not a writable folder")


def write_profile_to(profile: Profile, out: str | Path) -> Path:
    """Write ``profile`` to ``out`` (a ``.json`` file, or a folder: ``<folder>/<gpu>.json``;
    ``energylens/costmodel/profiles/`` replaces the bundled one), numbers rounded as
    ``costmodel.fit`` writes them."""
    import tempfile

    from energylens.costmodel.fit import write_profile

    try:
        if not _one_file(out):
            return write_profile(profile, Path(out))
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            path.write_text(write_profile(profile, tmp).read_text())
        return path
    except OSError as exc:  # the check before the fit passed, the write did not (a read-only or odd place)
        raise EnergylensError(f"cannot write the profile to {out}: {exc.strerror or exc}") from None


def calibrate(paths: Sequence[str | Path], *, gpu: str | None = None, out: str | Path | None = None,
              base: str = "bundled", write: bool = True,
              progress: Callable[[str], None] | None = None) -> list[CalibrationResult]:
    """Fit the profile of every GPU in the measurement files ``paths`` (or only ``gpu``) and write
    each to ``out`` (a folder or a ``.json`` file; ``energylens/costmodel/profiles`` replaces the
    bundled profiles, which is never done by default) unless ``write=False``.

    ``base``: the starting profile, ``"bundled"`` (the GPU's shipped profile) or ``"datasheet"``.
    Raises ``EnergylensError`` when no record can be fitted (the message gives the reasons).
    """
    if base not in ("bundled", "datasheet"):
        raise UnknownNameError("base profile", base, ("bundled", "datasheet"))
    if write:
        if out is None:
            raise EnergylensError("say where to write the profiles: --out FOLDER or FILE.json (out= in Python; "
                                  f"{PROFILES_DIR} replaces the bundled ones), or --dry-run (write=False) to only fit")
        check_out(out)  # before the fit, not after it
    say = progress or (lambda line: None)
    ms = read_measurements(paths)
    samples, skipped = build_samples(ms.records)
    want = get_gpu(gpu).name if gpu else None
    by_gpu: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if want is None or s.gpu == want:
            by_gpu[s.gpu].append(s)
    if not by_gpu and want and samples:
        raise EnergylensError(f"nothing to calibrate for {want}: the files hold records of "
                              f"{', '.join(sorted({s.gpu for s in samples}))}; give one of those with --gpu, or none")
    if not by_gpu:
        reasons = Counter(r for _m, r in skipped)
        why = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3)) or "no records"
        if ms.excluded_files:
            why += "; files left out: " + "; ".join(f"{f}: {r}" for f, r in ms.excluded_files)
        target = f" of {want}" if want else ""
        raise EnergylensError(f"nothing to calibrate: no record{target} can be predicted ({why})")
    if write and out is not None and _one_file(out) and len(by_gpu) > 1:
        raise EnergylensError(f"--out {out} is one file but the data hold {len(by_gpu)} GPUs ({', '.join(sorted(by_gpu))}); "
                              "give a folder, or pick one GPU with --gpu")
    malformed = [(m, r) for m, r in skipped if r.startswith(MALFORMED)]
    read_notes = ms.notes() + ([f"{len(malformed)} malformed record(s) skipped (first: {malformed[0][0].file}:"
                                f"{malformed[0][0].line}: {malformed[0][1][len(MALFORMED) + 2:]})"] if malformed else [])
    results = []
    for name, ss in sorted(by_gpu.items()):
        spec = get_gpu(name)
        start = load_profile(spec) if base == "bundled" else default_profile(spec)
        try:
            res = calibrate_samples(ss, base=start, data_label=_data_label(ms, ss))
        except EnergylensError as exc:  # say why the other records were left out
            reasons = Counter(r for _m, r in skipped)
            why = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
            raise EnergylensError(f"{exc}" + (f"; records left out: {why}" if why else "")) from None
        if read_notes:
            res = dataclasses.replace(res, notes=(*res.notes, *read_notes))
        if write:
            res = dataclasses.replace(res, path=str(write_profile_to(res.profile, out)))
        say(f"{name}: {len(ss)} records, fitted {', '.join(res.fitted) or 'nothing'}"
            + (f" -> {res.path}" if res.path else ""))
        results.append(res)
    return results


# ---- synthetic records (tests; checking that a campaign identifies the coefficients) -------------------
def synthetic_records(gpu: str, profile: Profile, *, suite: str = "quick", seed: int = 0, noise: float = 0.03,
                      energy: bool = True, e2e_models: Sequence[str] = ("meta-llama/Llama-3.2-1B-Instruct",),
                      ) -> list[dict[str, Any]]:
    """SYNTHETIC records, not measurements: the GPU shapes of ``suite`` (``energylens measure``'s
    plan) priced by the cost model with ``profile``, times and energies multiplied by seeded
    log-normal noise (sigma ``noise``). ``env.synthetic`` is true in every record. For tests, and to
    check before a GPU campaign that its records identify the coefficients (fit them back).
    """
    from energylens.runtime.measure import SCHEMA_VERSION, _e2e_grid, _short
    from energylens.runtime.microbench import suite_benches

    spec = get_gpu(gpu)
    rng = np.random.default_rng(seed)
    env = {"synthetic": True, "env_id": f"synthetic-{seed}", "gpu_name": spec.name,
           "note": "generated from the cost model with known coefficients: not a measurement"}
    recs: list[dict[str, Any]] = []

    def add(part: str, kind: str, params: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        p = {k: v for k, v in params.items() if k != "sources"}
        recs.append({"schema": SCHEMA_VERSION, "suite": suite, "part": part, "kind": kind, "params": params,
                     "key": f"{part}|{kind}:{json.dumps(p, sort_keys=True, separators=(',', ':'))}",
                     "device": "cuda:0", "status": "ok", "result": {"time_s": 1.0, "energy_j": 1.0, "avg_power_w": 1.0, **(extra or {})},
                     "env": env})

    benches = suite_benches(suite, "cuda", list(e2e_models), "bfloat16")
    for part, bs in benches.items():
        for b in bs:
            if b.kind in ("gemm", "hbm_copy", "elementwise", "norm", "attention_prefill", "attention_decode",
                          "static"):
                add(f"micro:{part}", b.kind, b.params)
    batches, prompts, contexts = _e2e_grid(suite, True)
    for model in e2e_models:
        for b in batches:
            for n in prompts:
                add(f"e2e:{_short(model)}", "prefill",
                    {"model": model, "phase": "prefill", "batch": b, "prompt_len": n, "dtype": "bfloat16"})
            for n in contexts:
                add(f"e2e:{_short(model)}", "decode",
                    {"model": model, "phase": "decode", "batch": b, "context_len": n, "dtype": "bfloat16"},
                    {"attended_kv_len": n + 8})
    samples, skipped = build_samples([Measured("synthetic", i, r) for i, r in enumerate(recs)])
    if skipped:
        raise EnergylensError(f"synthetic records that cannot be priced: {skipped[0][1]}")
    for rec, s, pred in zip(recs, samples, predict(samples, profile.with_params(gpu=spec.name)), strict=True):
        res = rec["result"]
        if s.kind == "static":
            res.update(time_s=1.0, avg_power_w=pred.power_w * float(rng.lognormal(0, noise)))
            res["energy_j"] = res["avg_power_w"]
        else:
            t = pred.time_s * float(rng.lognormal(0, noise))
            e = pred.energy_j * float(rng.lognormal(0, noise))
            res.update(time_s=t, energy_j=e, avg_power_w=e / t)
        res["energy_source"] = "synthetic"
        if not energy:
            res.update(energy_j=None, avg_power_w=None, energy_source=None,
                       energy_unavailable_reason="synthetic timing-only records")
    return recs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m energylens.runtime.calibrate PATH... [--gpu G] [--out DIR|FILE] [--base datasheet]``."""
    ap = argparse.ArgumentParser(prog="energylens calibrate", description=calibrate.__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--gpu", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--base", default="bundled", choices=("bundled", "datasheet"))
    ap.add_argument("--dry-run", action="store_true", help="fit and print, write nothing")
    a = ap.parse_args(argv)
    try:
        results = calibrate(a.paths, gpu=a.gpu, out=a.out, base=a.base, write=not a.dry_run, progress=print)
    except EnergylensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(json.dumps({"gpu": r.gpu, "path": r.path, "fitted": r.fitted, "residuals": r.residuals}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
