"""Measurement campaign: microbenchmarks and an end-to-end sweep, written as raw JSON lines.

``measure("quick" | "full", out)`` runs the parts of a suite in order, appends one JSON line per
measurement to ``out`` (each with the environment it was taken in), and skips the measurements
whose key is already in ``out``, so an interrupted campaign resumes where it stopped. Each part
stops after ``budget_s`` seconds (8 minutes by default) and says that a rerun will continue it.

Parts: ``micro:gemm``, ``micro:memory``, ``micro:attention``, ``micro:power`` (idle and static
power, SM contention), then ``e2e:<model>`` for each model of the sweep (prefill over batch x
prompt length, decode steps over batch x context length). On a CPU the models are tiny configs of
the same architectures, timing only: every record's energy is null with the reason.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
>>> s = measure("quick", out, device="cpu", parts=["micro:memory"], progress=lambda line: None)
>>> s.written > 0 and s.errors == 0
True

Schema: data/measurements/README.md.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energylens.errors import DeviceUnavailableError, EnergylensError, InvalidWorkloadError, UnknownNameError
from energylens.models import attention_shape
from energylens.runtime.meter import Meter, NullMeter, open_meter
from energylens.typing import Record

__all__ = ["SCHEMA_VERSION", "SUITES", "E2E_MODELS", "MeasureSummary", "environment", "plan_parts", "measure",
           "interrupted", "main"]

SCHEMA_VERSION = 1
SUITES = ("quick", "full")
#: Models of the end-to-end sweep (bundled configs; random weights).
E2E_MODELS = (
    "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
)
_PREFILL_TOKEN_CAP = 65536  # batch x prompt above this is skipped: serving engines chunk such prefills
_MEMORY_HEADROOM = 0.85  # weights + KV cache must stay under this share of the GPU's memory


@dataclass(frozen=True)
class MeasureSummary(Record):
    """What a ``measure`` call did: records written, found already present, skipped, failed."""

    out: str
    suite: str
    device: str
    written: int
    already_present: int
    skipped: int
    errors: int
    incomplete_parts: tuple[str, ...]
    elapsed_s: float


# ---- environment ----------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str | None:
    """The energylens commit a run measures with: ``$ENERGYLENS_COMMIT`` (a copy of the tree without
    its git history, e.g. on a lent GPU machine), else the checkout's ``git rev-parse HEAD``, else None."""
    import subprocess

    if os.environ.get("ENERGYLENS_COMMIT"):
        return os.environ["ENERGYLENS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str, meter: Meter) -> dict[str, Any]:
    """Where a measurement was taken: hardware, driver, clocks, power limit, software versions.

    The hostname is hashed (the first 12 hex digits of its SHA-256), GPU UUIDs likewise.
    """
    import torch
    import transformers

    import energylens

    env: dict[str, Any] = {
        "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "energylens": energylens.__version__,
        "energylens_commit": _commit(),
        "nvidia_ml_py": _version("nvidia-ml-py"),
        "device": device,
        "cuda_runtime": torch.version.cuda,
    }
    if device.startswith("cuda"):
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        env.update(
            gpu_name=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_bytes=props.total_memory,
            gpu_sms=props.multi_processor_count, gpu_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
        )
    env["meter"] = meter.environment()
    env["env_id"] = hashlib.sha256(json.dumps(env, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return env


# ---- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    key: str
    kind: str
    params: dict[str, Any]
    run: Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class _Part:
    name: str
    items: Callable[[], Iterator[_Item]]
    close: Callable[[], None] = lambda: None


def _short(model: str) -> str:
    return model.split("/")[-1].replace("-Instruct-2507", "").replace("-Instruct", "")


def _e2e_grid(suite: str, gpu: bool) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(batches, prompt lengths, decode context lengths)."""
    if not gpu:
        return (1, 4), (16, 64), (16, 64)
    if suite == "quick":
        return (1, 16, 64), (128, 1024), (128, 1024)
    return (1, 4, 16, 64, 256), (128, 512, 2048, 8192), (128, 512, 2048, 8192)


def _e2e_models(suite: str, gpu: bool) -> tuple[str, ...]:
    if not gpu:  # one tiny config per architecture
        return ("meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen3-8B", "Qwen/Qwen3-30B-A3B-Instruct-2507")
    return E2E_MODELS[:1] if suite == "quick" else E2E_MODELS


def plan_parts(suite: str, device: str) -> list[str]:
    """Names of the parts of a suite on a device, in the order they run.

    >>> plan_parts("quick", "cpu")[:2]
    ['micro:gemm', 'micro:memory']
    """
    if suite not in SUITES:
        raise UnknownNameError("suite", suite, SUITES)
    gpu = device.startswith("cuda")
    return ["micro:gemm", "micro:memory", "micro:attention", "micro:power"] + [
        f"e2e:{_short(m)}" for m in _e2e_models(suite, gpu)
    ]


def _micro_part(name: str, benches: list[Any], device: str, meter: Meter, repeats: int) -> _Part:
    from energylens.runtime.microbench import run_bench

    def items() -> Iterator[_Item]:
        for b in benches:
            yield _Item(f"{name}|{b.key}", b.kind, b.params,
                        lambda b=b: run_bench(b, device=device, meter=meter, repeats=repeats))

    return _Part(name, items)


def _e2e_part(name: str, model: str, suite: str, device: str, meter: Meter, repeats: int) -> _Part:
    from energylens.runtime.execute import Executor, hf_config, kv_cache_bytes, tiny_config

    gpu = device.startswith("cuda")
    config: Any = tiny_config(model) if not gpu else model
    batches, prompts, contexts = _e2e_grid(suite, gpu)
    state: dict[str, Any] = {}

    def executor() -> Any:
        if "error" in state:  # the model could not be built: every point says so, without retrying
            raise RuntimeError(f"building {model} failed: {state['error']}")
        if "ex" not in state:
            try:
                state["ex"] = Executor(config, device=device, meter=meter, repeats=repeats, cuda_graphs=gpu,
                                       warmup=1, decode_steps=8 if gpu else 2)
            except Exception as exc:
                state["error"] = f"{type(exc).__name__}: {exc}"[:300]
                raise
        return state["ex"]

    def close() -> None:
        state.clear()
        gc.collect()
        if gpu:
            import torch

            torch.cuda.empty_cache()

    def fits(batch: int, kv_len: int) -> str | None:
        if not gpu:
            return None
        import torch

        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        c = hf_config(config)
        n_params = _param_count(c)
        need = 2 * n_params + kv_cache_bytes(c, batch, kv_len)
        if need > _MEMORY_HEADROOM * total:
            return (f"weights ({2 * n_params / 2**30:.1f} GiB) + KV cache of {batch} x {kv_len} tokens "
                    f"({kv_cache_bytes(c, batch, kv_len) / 2**30:.1f} GiB) exceed {_MEMORY_HEADROOM:.0%} "
                    f"of the GPU's {total / 2**30:.0f} GiB")
        return None

    def point(phase: str, batch: int, length: int) -> dict[str, Any]:
        if phase == "prefill" and batch * length > _PREFILL_TOKEN_CAP:
            return {"status": "skipped", "reason": f"prefill of {batch * length} tokens > {_PREFILL_TOKEN_CAP} "
                    "(serving engines chunk such prefills)"}
        reason = fits(batch, length + 8)
        if reason:
            return {"status": "skipped", "reason": reason}
        ex = executor()
        try:
            m = ex.prefill(batch, length) if phase == "prefill" else ex.decode(batch, length)
        except Exception as exc:
            if gpu and type(exc).__name__ == "OutOfMemoryError":
                import torch

                torch.cuda.empty_cache()
                return {"status": "skipped", "reason": f"out of GPU memory: {str(exc)[:200]}"}
            raise
        t = m.timing
        return {
            "status": "ok",
            "result": {
                "time_s": m.time_s, "time_s_min": t.time_s_min, "time_s_spread": t.time_s_spread,
                "energy_j": m.energy_j, "energy_per_token_j": m.energy_per_token_j, "avg_power_w": m.avg_power_w,
                "tokens": m.tokens, "tokens_per_s": m.tokens_per_s, "iters": t.iters, "repeats": t.repeats,
                "steps_per_round": m.steps_per_round, "attended_kv_len": m.attended_kv_len,
                "cuda_graph": m.cuda_graph, "energy_source": t.energy_source,
                "energy_unavailable_reason": t.unavailable_reason, "note": m.note,
            },
            "windows": [w.to_dict() for w in t.windows],
        }

    def items() -> Iterator[_Item]:
        mname = model if gpu else f"tiny:{model}"
        for phase, lengths in (("prefill", prompts), ("decode", contexts)):
            for b in batches:
                for n in lengths:
                    params = {"model": mname, "phase": phase, "batch": b,
                              ("prompt_len" if phase == "prefill" else "context_len"): n,
                              "dtype": "bfloat16" if gpu else "float32"}
                    key = f"{name}|{phase}:{json.dumps(params, sort_keys=True, separators=(',', ':'))}"
                    yield _Item(key, phase, params, lambda p=phase, b=b, n=n: point(p, b, n))

    return _Part(name, items, close)


def _param_count(c: Any) -> int:
    """Parameters of a Llama/Qwen3/Qwen3-MoE config (for the memory check; embeddings included)."""
    h, layers, v = c.hidden_size, c.num_hidden_layers, c.vocab_size
    nh, nkv, hd = attention_shape(c)
    attn = h * hd * (2 * nh + 2 * nkv)
    if getattr(c, "num_experts", None):
        mlp = c.num_experts * 3 * h * c.moe_intermediate_size + h * c.num_experts
    else:
        mlp = 3 * h * c.intermediate_size
    heads = 1 if getattr(c, "tie_word_embeddings", False) else 2
    return layers * (attn + mlp) + heads * v * h


# ---- the file -------------------------------------------------------------------------------------
def _existing_keys(out: Path) -> dict[str | None, set[str]]:
    """Keys of the complete records (ok or skipped) in ``out``, per GPU name (``env.gpu_name``; None on
    a CPU): a resumed run skips those of its own GPU only. Errors and torn lines are redone. A file
    that holds no record (a config, a profile, notes) is refused: records are never appended to it."""
    from energylens.runtime.calibrate import file_records

    keys: dict[str | None, set[str]] = {}
    if not out.exists():
        return keys
    for m in file_records(out, out.read_text(encoding="utf-8", errors="replace"))[0]:
        if m.rec.get("status") in ("ok", "skipped") and "key" in m.rec:
            gpu, key = m.ident
            keys.setdefault(gpu, set()).add(key)
    return keys


def _open_append(out: Path) -> Any:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise EnergylensError(f"--out {out}: {out.parent} is a file, not a folder") from None
    if out.exists() and out.stat().st_size > 0:
        with out.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:  # finish the line an interrupted run left, so the next record starts on its own line
            with out.open("a") as f:
                f.write("\n")
    return out.open("a")


@contextmanager
def _cpu_threads(device: str) -> Iterator[None]:
    """One intra-op thread on CPU runs: steadier timings on a shared machine."""
    import torch

    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(
    suite: str = "quick",
    out: Path | str = Path("data/measurements/measurements.jsonl"),
    device: str | None = None,
    resume: bool = True,
    *,
    parts: Sequence[str] | None = None,
    budget_s: float = 480.0,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> MeasureSummary:
    """Run a measurement campaign and append its raw records to ``out`` (JSON lines).

    ``suite``: "quick" (minutes) or "full". ``device``: "cuda", "cuda:N" or "cpu" (default: CUDA
    when torch sees a GPU). ``resume``: skip measurements already in ``out`` (``False`` starts the
    file anew). ``parts``: run only these parts (names from ``plan_parts``). ``budget_s``: time
    limit of each part; an unfinished part is listed in ``incomplete_parts`` and a rerun continues
    it. On a GPU the meter needs NVML (``pip install 'energylens[gpu]'``), else
    ``DeviceUnavailableError``; on a CPU energy is null with the reason.
    """
    import torch

    from energylens.runtime.execute import tiny_config
    from energylens.runtime.microbench import suite_benches

    if suite not in SUITES:
        raise UnknownNameError("suite", suite, SUITES)
    if not (math.isfinite(budget_s) and budget_s > 0) or repeats < 1:  # nan or inf would never stop a part
        raise InvalidWorkloadError(f"budget_s must be a finite number > 0 and repeats >= 1, got {budget_s}, {repeats}")
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):  # before any record is written
        raise UnknownNameError("device", device, ("cpu", "cuda", "cuda:N"))
    if Path(out).is_dir():
        raise InvalidWorkloadError(f"--out {out} is a folder; give the JSONL file to write, e.g. {Path(out) / 'run.jsonl'}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    if gpu:
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {device!r} requested but torch sees no CUDA GPU; use --device cpu")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {device!r} requested but torch sees {torch.cuda.device_count()} "
                                         f"GPU(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
        if ":" not in device:  # "cuda": the current GPU (set_device needs an index)
            device = f"cuda:{torch.cuda.current_device()}"  # meter this GPU only, not every GPU of the node
        torch.cuda.set_device(torch.device(device))
    say = progress or (lambda line: print(line, flush=True))
    out = Path(out)
    all_parts = plan_parts(suite, device)
    wanted = ([parts] if isinstance(parts, str) else list(parts)) if parts is not None else all_parts
    for p in wanted:
        if p not in all_parts:
            raise UnknownNameError("part", p, all_parts)
    existing = _existing_keys(out)  # refuses a file that is not a measurement file, even one to replace
    meter = open_meter(device) if gpu else NullMeter()  # before the old file goes: no meter, nothing lost
    if not resume and out.exists():
        dropped = sum(len(k) for k in existing.values())
        out.unlink()
        existing = {}
        if dropped:  # raw readings are the ground truth: never discarded without a word
            say(f"--no-resume: {out} started anew; its {dropped} earlier record(s) were discarded")
    started = time.perf_counter()
    written = present = skipped = errors = 0
    incomplete: list[str] = []
    threads = _cpu_threads(device)
    threads.__enter__()
    try:
        env = environment(device, meter)
        done = set(existing.get(env.get("gpu_name"), set()))  # another GPU's records are not this one's
        dtype = "bfloat16" if gpu else "float32"
        e2e = _e2e_models(suite, gpu)
        bench_models: list[Any] = list(e2e) if gpu else [tiny_config(m) for m in e2e]
        micro = suite_benches(suite, device, bench_models, dtype)
        builders: dict[str, Callable[[], _Part]] = {
            f"micro:{k}": (lambda k=k: _micro_part(f"micro:{k}", micro[k], device, meter, repeats)) for k in micro
        }
        for m in e2e:
            builders[f"e2e:{_short(m)}"] = lambda m=m: _e2e_part(f"e2e:{_short(m)}", m, suite, device, meter, repeats)
        others = {g or "cpu": len(k) for g, k in existing.items() if g != env.get("gpu_name")}
        also = "".join(f"; {n} record(s) of {g} there too, kept as they are" for g, n in sorted(others.items()))
        say(f"energylens measure: suite={suite} device={device} out={out} "
            f"({len(done)} records already there{also}; energy {'on' if meter.energy_available else 'unavailable'})")
        with _open_append(out) as f:
            for i, name in enumerate(p for p in all_parts if p in wanted):
                part = builders[name]()
                t_part = time.perf_counter()
                n_items = 0
                try:
                    for item in part.items():
                        n_items += 1
                        if item.key in done:
                            present += 1
                            continue
                        if time.perf_counter() - t_part > budget_s:
                            incomplete.append(name)
                            say(f"[{name}] time budget of {budget_s:g} s spent: stopping this part; "
                                "run the same command again to continue it")
                            break
                        t0 = time.perf_counter()
                        try:
                            res = item.run()
                        except Exception as exc:  # one failed point must not end the campaign
                            res = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:500]}
                        rec = {
                            "schema": SCHEMA_VERSION, "key": item.key, "suite": suite, "part": name,
                            "kind": item.kind, "params": item.params, "device": device,
                            "t_unix": time.time(), "wall_s": time.perf_counter() - t0,
                            **{k: v for k, v in res.items() if k not in ("kind", "params")},
                            "env": env,
                        }
                        f.write(json.dumps(rec, default=_json_default) + "\n")
                        f.flush()
                        done.add(item.key)
                        status = rec["status"]
                        written += 1
                        skipped += status == "skipped"
                        errors += status == "error"
                        shown = " ".join(f"{k}={v}" for k, v in item.params.items() if k != "sources")
                        say(f"[{i + 1}/{len(wanted)} {name}] {n_items} {item.kind} {shown}: " + _brief(rec))
                finally:
                    part.close()
                say(f"[{name}] done in {time.perf_counter() - t_part:.1f} s")
    finally:
        threads.__exit__(None, None, None)
        meter.close()
    summary = MeasureSummary(str(out), suite, device, written, present, skipped, errors, tuple(incomplete),
                             time.perf_counter() - started)
    say(f"energylens measure: {written} written ({skipped} skipped, {errors} errors), {present} already "
        f"present, {summary.elapsed_s:.0f} s" + (f"; incomplete: {', '.join(incomplete)}" if incomplete else ""))
    return summary


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def _brief(rec: dict[str, Any]) -> str:
    if rec["status"] != "ok":
        return f"{rec['status']}: {rec.get('reason', '')}"[:160]
    r = rec.get("result", {})
    t = r.get("time_s")
    e = r.get("energy_j")
    s = f"{t * 1e3:.3f} ms" if isinstance(t, float) else "ok"
    if isinstance(e, float):
        s += f", {e:.4g} J"
    if isinstance(r.get("avg_power_w"), float):
        s += f", {r['avg_power_w']:.0f} W"
    return s


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m energylens.runtime.measure --suite quick --out FILE [--device cuda] [--no-resume]``."""
    p = argparse.ArgumentParser(prog="energylens measure", description=measure.__doc__.splitlines()[0])
    p.add_argument("--suite", choices=SUITES, default="quick")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--part", action="append", default=None, help="only this part (repeatable)")
    p.add_argument("--budget-s", type=float, default=480.0)
    a = p.parse_args(argv)
    try:
        s = measure(a.suite, a.out, a.device, not a.no_resume, parts=a.part, budget_s=a.budget_s)
    except EnergylensError as e:  # as `energylens measure` says it: one line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted(a.out), file=sys.stderr)
        return 130
    return 1 if s.errors else 0


def interrupted(out: str | Path) -> str:
    """What a measurement stopped by Ctrl-C (or ``timeout --signal=INT``) says: nothing is lost."""
    return (f"interrupted: the records written so far are kept in {out}; run the same command again to "
            "continue where it stopped")


if __name__ == "__main__":
    sys.exit(main())
