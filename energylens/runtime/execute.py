"""Plan executor: the real HF model from its config, random weights, prefill and decode, metered.

The model is built from its bundled config (``energylens.models.load_config``; no hub, no
checkpoint) with random weights, in bf16 on a GPU (f32 on a CPU), and run with transformers'
``StaticCache``. Prefill runs the whole prompt of the batch in one forward; decode runs steps of
one token per sequence against a cache holding ``context_len`` tokens. Each measurement is a set of
repeated, metered windows after a warm-up (``energylens.runtime.timing``). On a GPU, a decode
round can be captured once as a CUDA graph and replayed (``cuda_graphs=True``), which removes the
Python launch overhead that dominates small-batch decode in eager mode.

>>> from energylens.runtime.meter import NullMeter
>>> ex = Executor(tiny_config("Llama-3.2-1B"), meter=NullMeter(), min_window_s=0.0, repeats=1, warmup=0)
>>> m = ex.prefill(batch=2, prompt_len=8)
>>> m.phase, m.tokens, m.energy_j is None
('prefill', 16, True)

Tensor parallelism runs under ``torchrun`` (one process per GPU, NCCL; gloo on CPU)::

    torchrun --nproc-per-node 2 -m energylens.runtime.execute --model Llama-3.1-8B --batch 8 \\
        --prompt-len 1024 --output-len 128 --out tp2.jsonl

Each rank builds the full model from the same seed, then transformers' TP plan (``tp_plan="auto"``)
shards it; every rank meters its own GPU and rank 0 sums the energy over the ranks. Building the
full model on every rank needs it to fit on one GPU (true of the models up to 30B in bf16 on 80 GB).
"""

from __future__ import annotations

import argparse
import copy
import functools
import inspect
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from energylens.errors import ConfigError, DeviceUnavailableError, EnergylensError, InvalidWorkloadError
from energylens.runtime.meter import Meter, NullMeter, open_meter
from energylens.runtime.timing import Timing, merge_windows, time_windows
from energylens.typing import Record, Workload

__all__ = [
    "hf_config",
    "tiny_config",
    "resolve_dtype",
    "build_model",
    "kv_cache_bytes",
    "PhaseMeasurement",
    "WorkloadMeasurement",
    "Executor",
    "init_distributed",
    "run_distributed",
    "main",
]

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "f16": "float16", "fp16": "float16",
           "float16": "float16", "f32": "float32", "fp32": "float32", "float32": "float32"}


def resolve_dtype(dtype: Any, device: str) -> Any:
    """A torch dtype from a name ("bf16", "f32"...) or dtype; None: bf16 on a GPU, f32 on a CPU."""
    import torch

    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise InvalidWorkloadError(f"unknown dtype {dtype!r}; valid: {', '.join(sorted(_DTYPES))}")
    return getattr(torch, name)


def _spec_dict(model: Any) -> tuple[str, dict[str, Any]]:
    """(name, config dict) of a model given as an id, path, dict, ModelSpec or PretrainedConfig."""
    from energylens.models import config_dict, load_config

    spec = load_config(model)
    return spec.name, copy.deepcopy(dict(config_dict(spec.config)))


def hf_config(model: Any) -> Any:
    """The transformers ``PretrainedConfig`` of a model (HF id, path, dict, ModelSpec or config).

    >>> hf_config("Qwen3-8B").num_hidden_layers
    36
    """
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return copy.deepcopy(model)
    name, d = _spec_dict(model)
    model_type = d.pop("model_type")
    for key in ("architectures", "transformers_version", "quantization_config"):
        d.pop(key, None)
    try:
        cfg = AutoConfig.for_model(model_type, **d)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"transformers cannot build a {model_type!r} config for {name}: {exc}") from exc
    cfg._name_or_path = name
    return cfg


def tiny_config(model: Any, **overrides: Any) -> dict[str, Any]:
    """A 2-layer, 64-wide config of the same architecture as ``model`` (for CPU runs and tests).

    Keeps the model type and its options (RoPE scaling, tied embeddings, QK norm, MoE routing) and
    shrinks the sizes; ``overrides`` replace any field.

    >>> d = tiny_config("Qwen/Qwen3-30B-A3B-Instruct-2507")
    >>> d["model_type"], d["num_experts"], d["hidden_size"]
    ('qwen3_moe', 8, 64)
    """
    name, d = _spec_dict(model)
    kv = min(2, int(d.get("num_key_value_heads") or d["num_attention_heads"]))
    d.update(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv, head_dim=16,
        intermediate_size=128, vocab_size=256, bos_token_id=1, eos_token_id=2, pad_token_id=None,
        max_position_embeddings=max(int(d.get("max_position_embeddings") or 0), 4096),
    )
    if d.get("num_experts"):
        d.pop("num_local_experts", None)  # transformers 5's other name of num_experts: one value only
        d.update(num_experts=8, num_experts_per_tok=min(2, int(d["num_experts_per_tok"])), moe_intermediate_size=32,
                 mlp_only_layers=[], max_window_layers=2)
    elif "max_window_layers" in d:
        d["max_window_layers"] = 2
    d.pop("quantization_config", None)
    d["_name_or_path"] = f"tiny:{name}"
    d.update(overrides)
    return d


def kv_cache_bytes(config: Any, batch: int, max_len: int, dtype_bytes: int = 2, tp: int = 1) -> int:
    """Bytes of a static KV cache of ``batch`` x ``max_len`` tokens on one of ``tp`` ranks."""
    from energylens.models import attention_shape

    c = hf_config(config)
    _, kv_heads, head_dim = attention_shape(c)
    return 2 * c.num_hidden_layers * batch * max_len * -(-kv_heads // tp) * head_dim * dtype_bytes


def build_model(model: Any, *, device: str = "cpu", dtype: Any = None, tp: int = 1, seed: int = 0) -> Any:
    """The HF causal LM of ``model``'s config with random weights (seeded), in eval mode, on ``device``.

    With ``tp > 1`` torch.distributed must be initialised with ``tp`` ranks (``init_distributed``);
    the model is then sharded with transformers' tensor-parallel plan of the architecture.
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(model)
    if tp > 1 and getattr(cfg, "tie_word_embeddings", False):
        # transformers' TP plan cannot shard a tied lm_head (it looks the tied weight up by its second
        # name); untying adds only the head's memory (sharded over the ranks) and computes the same
        cfg.tie_word_embeddings = False
    torch_dtype = resolve_dtype(dtype, device)
    torch.manual_seed(seed)
    with torch.device(device):
        net = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype, attn_implementation="sdpa")
    net.eval()
    if tp > 1:
        net = _distribute(net, tp)
    return net


def _distribute(net: Any, tp: int) -> Any:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise DeviceUnavailableError(
            f"tp={tp} needs torch.distributed: launch with `torchrun --nproc-per-node {tp} -m "
            "energylens.runtime.execute ...` (or call init_distributed() in each process)"
        )
    if dist.get_world_size() != tp:
        raise InvalidWorkloadError(f"tp={tp} but torch.distributed has {dist.get_world_size()} ranks")
    try:
        from transformers.distributed import DistributedConfig

        cls = type(net)
        dconf, _, mesh = cls.prepare_distribute_model(DistributedConfig(tp_size=tp, tp_plan="auto"))
        return cls.maybe_distribute_model(net, dconf, mesh)
    except (ImportError, AttributeError) as exc:  # another transformers release
        raise DeviceUnavailableError(
            f"this transformers release has no tensor-parallel API that energylens knows ({exc}); "
            "tensor-parallel runs need transformers 5.x with `transformers.distributed.DistributedConfig`"
        ) from exc


@dataclass(frozen=True)
class PhaseMeasurement(Record):
    """One measured phase point: a prefill of ``batch`` x ``prompt_len`` tokens, or a decode step.

    ``time_s``/``energy_j`` are per forward (a whole prefill, or one decode step of the batch);
    ``context_len`` is the KV length before the step (decode) or the prompt length (prefill);
    ``attended_kv_len`` is the length the static cache makes attention read (``StaticCache``
    attends over its whole allocation, masked). ``energy_j`` is None when unavailable
    (``timing.unavailable_reason``).
    """

    phase: str
    batch: int
    context_len: int
    tokens: int
    steps_per_round: int
    attended_kv_len: int
    time_s: float
    energy_j: float | None
    avg_power_w: float | None
    cuda_graph: bool
    note: str | None
    timing: Timing

    @property
    def energy_per_token_j(self) -> float | None:
        return None if self.energy_j is None else self.energy_j / self.tokens

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_s


@dataclass(frozen=True)
class WorkloadMeasurement(Record):
    """A workload run: its prefill and decode points, with the model, device, dtype and tp."""

    model: str
    device: str
    dtype: str
    tp: int
    workload: Workload
    prefill: PhaseMeasurement
    decode: tuple[PhaseMeasurement, ...]

    @property
    def ttft_s(self) -> float:
        return self.prefill.time_s

    @property
    def itl_s(self) -> float:
        return statistics.mean(d.time_s for d in self.decode)


class Executor:
    """Runs prefill and decode of one model on one device (or one TP group), metered.

    ``model``: HF id / path / config dict / ModelSpec / PretrainedConfig, or an already built
    ``torch.nn.Module``. ``min_window_s``: a window repeats its work until it lasts this long
    (default 0.25 s on a GPU, for NVML's update period; 0.02 s on a CPU). ``cuda_graphs``: capture
    each decode round as a CUDA graph (one GPU only; falls back to eager and says so in ``note``).
    The meter (default: this GPU's NVML meter, or a ``NullMeter`` on a CPU) is set to wait for
    the device, and under TP for every rank, at the edges of its windows.
    """

    def __init__(
        self,
        model: Any,
        *,
        device: str = "cpu",
        dtype: Any = None,
        tp: int = 1,
        meter: Meter | None = None,
        seed: int = 0,
        warmup: int = 1,
        repeats: int = 3,
        min_window_s: float | None = None,
        decode_steps: int = 8,
        cuda_graphs: bool = False,
    ):
        import torch

        if decode_steps < 1:
            raise InvalidWorkloadError(f"decode_steps must be >= 1, got {decode_steps}")
        self.device = device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {device!r} requested but torch sees no CUDA GPU; use device='cpu'")
        self.dtype = resolve_dtype(dtype, device)
        self.tp = tp
        if isinstance(model, torch.nn.Module):
            self.model = model
            self.name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        else:
            self.model = build_model(model, device=device, dtype=self.dtype, tp=tp, seed=seed)
            self.name = str(self.model.config._name_or_path)
        self.config = self.model.config
        if meter is None:  # this GPU only ("cuda" alone would meter every GPU of the node)
            if device == "cpu":
                meter = NullMeter()
            else:
                index = torch.device(device).index
                meter = open_meter(f"cuda:{torch.cuda.current_device() if index is None else index}")
        self.meter = meter
        self.meter.set_sync(self._sync)  # window edges wait for the device (and, under TP, for every rank)
        self.warmup, self.repeats = warmup, repeats
        self.min_window_s = min_window_s if min_window_s is not None else (0.25 if device.startswith("cuda") else 0.02)
        self.decode_steps = decode_steps
        self.cuda_graphs = cuda_graphs and device.startswith("cuda") and tp == 1  # no NCCL inside graphs
        self._gen = torch.Generator().manual_seed(seed + 1)

    # ---- plumbing -----------------------------------------------------------------------------
    def _sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        if self.tp > 1:
            import torch.distributed as dist

            dist.barrier()

    def _agree(self, n: int) -> int:
        if self.tp == 1:
            return n
        import torch
        import torch.distributed as dist

        t = torch.tensor([n], device=self.device if self.device.startswith("cuda") else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _tokens(self, batch: int, length: int) -> Any:
        import torch

        ids = torch.randint(0, int(self.config.vocab_size), (batch, length), generator=self._gen)
        return ids.to(self.device)

    def _cache(self, max_len: int) -> Any:
        from transformers import StaticCache

        return StaticCache(config=self.config, max_cache_len=max_len)

    @staticmethod
    def _set_len(cache: Any, n: int) -> None:
        for layer in cache.layers:
            length = getattr(layer, "cumulative_length", None)
            if getattr(layer, "is_initialized", False) and hasattr(length, "fill_"):
                length.fill_(n)

    def _forward(self, ids: Any, cache: Any) -> Any:
        return self.model(input_ids=ids, **{self._cache_arg: cache}, use_cache=True, logits_to_keep=1)

    @functools.cached_property
    def _cache_arg(self) -> str:
        """The keyword of the model's KV cache: ``cache`` in transformers >= 5.2x, ``past_key_values``
        before (5.17 takes an unknown ``cache=`` into ``**kwargs`` and silently runs without it)."""
        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _check_cache(self, cache: Any, expected: int) -> None:
        """The forwards wrote the cache where the measurement puts them: else a decode step would
        attend to one token, not the context, or a round would run past the cache's end."""
        got = int(cache.get_seq_length())
        if got != expected:
            import transformers

            raise EnergylensError(
                f"the model's KV cache holds {got} tokens after a forward that should leave {expected}: "
                f"{type(self.model).__name__} (transformers {transformers.__version__}) did not use the cache "
                f"passed as {self._cache_arg}=, or its length cannot be reset (StaticLayer.cumulative_length); "
                "the measurement would not be of the workload")

    def _time(self, fn: Callable[[], object], name: str) -> Timing:
        import torch

        with torch.no_grad():
            timing = time_windows(
                fn, self.meter, name, warmup=self.warmup, repeats=self.repeats, min_window_s=self.min_window_s,
                sync=self._sync, agree=self._agree,
            )
        return self._merge_ranks(timing)

    def _merge_ranks(self, timing: Timing) -> Timing:
        if self.tp == 1:
            return timing
        import torch.distributed as dist

        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, timing.windows)
        merged = [merge_windows([rank[i] for rank in gathered]) for i in range(len(timing.windows))]
        return Timing.from_windows(merged, timing.iters)

    def _check(self, **sizes: int) -> None:
        for k, v in sizes.items():
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InvalidWorkloadError(f"{k} must be a positive integer, got {v!r}")

    # ---- phases -------------------------------------------------------------------------------
    def forward_logits(self, ids: Any) -> Any:
        """Logits of a plain forward without cache (for checks), on this rank."""
        import torch

        with torch.no_grad():
            return self.model(input_ids=ids.to(self.device), use_cache=False).logits

    def prefill(self, batch: int, prompt_len: int) -> PhaseMeasurement:
        """Time (and meter) the prefill of ``batch`` prompts of ``prompt_len`` tokens, writing the KV cache."""
        import torch

        self._check(batch=batch, prompt_len=prompt_len)
        ids, cache = self._tokens(batch, prompt_len), self._cache(prompt_len)

        def run() -> None:
            self._set_len(cache, 0)
            self._forward(ids, cache)

        with torch.no_grad():
            run()  # allocates the cache
            self._check_cache(cache, prompt_len)
            run()  # and the reset to 0 took: each timed run writes the same positions
            self._check_cache(cache, prompt_len)
        timing = self._time(run, f"prefill b={batch} s={prompt_len}")
        return PhaseMeasurement(
            phase="prefill", batch=batch, context_len=prompt_len, tokens=batch * prompt_len, steps_per_round=1,
            attended_kv_len=prompt_len, time_s=timing.time_s, energy_j=timing.energy_j,
            avg_power_w=timing.avg_power_w, cuda_graph=False, note=None, timing=timing,
        )

    def decode(self, batch: int, context_len: int) -> PhaseMeasurement:
        """Time (and meter) decode steps of ``batch`` sequences whose KV cache holds ``context_len`` tokens.

        A round resets the cache length to ``context_len`` and runs ``decode_steps`` steps; values
        are per step. The cache is allocated for ``context_len + decode_steps`` tokens.
        """
        import torch

        self._check(batch=batch, context_len=context_len)
        steps = self.decode_steps
        max_len = context_len + steps
        ids, cache = self._tokens(batch, 1), self._cache(max_len)

        def round_() -> None:
            self._set_len(cache, context_len)
            for _ in range(steps):
                self._forward(ids, cache)

        with torch.no_grad():
            self._forward(ids, cache)  # allocates the cache
            self._check_cache(cache, 1)
            round_()  # the reset to context_len took (else rounds would run past the cache's end)
            self._check_cache(cache, max_len)
        fn: Callable[[], object] = round_
        graph, note = None, None
        if self.cuda_graphs:
            try:
                graph = _capture_cuda_graph(round_)
                fn = graph.replay
            except Exception as exc:  # capture is best effort: eager still measures the same work
                graph, note = None, f"CUDA graph capture failed, eager: {type(exc).__name__}: {exc}"[:300]
        timing = self._time(fn, f"decode b={batch} k={context_len}")
        per_step = replace(
            timing,
            iters=timing.iters * steps,
            time_s=timing.time_s / steps,
            time_s_min=timing.time_s_min / steps,
            energy_j=None if timing.energy_j is None else timing.energy_j / steps,
        )
        del graph
        return PhaseMeasurement(
            phase="decode", batch=batch, context_len=context_len, tokens=batch, steps_per_round=steps,
            attended_kv_len=max_len, time_s=per_step.time_s, energy_j=per_step.energy_j,
            avg_power_w=per_step.avg_power_w, cuda_graph=self.cuda_graphs and note is None, note=note,
            timing=per_step,
        )

    def run(self, workload: Workload, decode_context_lens: Sequence[int] | None = None) -> WorkloadMeasurement:
        """Prefill of the workload, and decode steps at ``decode_context_lens``.

        By default decode is measured at the workload's mean decode context
        (``prompt_len + output_len // 2``), the point the cost model prices.
        """
        ctxs = tuple(decode_context_lens) if decode_context_lens else (workload.decode_context_len,)
        pre = self.prefill(workload.batch, workload.prompt_len)
        dec = tuple(self.decode(workload.batch, k) for k in ctxs)
        return WorkloadMeasurement(
            model=self.name, device=self.device, dtype=str(self.dtype).replace("torch.", ""), tp=self.tp,
            workload=workload, prefill=pre, decode=dec,
        )


def _capture_cuda_graph(fn: Callable[[], object]) -> Any:
    """Capture ``fn`` (in-place work on static tensors) as a CUDA graph after a side-stream warm-up."""
    import torch

    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    torch.cuda.synchronize()
    return graph


# ---- distributed ----------------------------------------------------------------------------------
def init_distributed(backend: str | None = None) -> tuple[int, int, str]:
    """Initialise torch.distributed from torchrun's environment; returns (rank, world_size, device).

    NCCL with one GPU per local rank when CUDA is available, else gloo on the CPU.
    """
    import torch
    import torch.distributed as dist

    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise DeviceUnavailableError(
            f"not launched by torchrun (missing {', '.join(missing)}): run "
            "`torchrun --nproc-per-node N -m energylens.runtime.execute ...`"
        )
    cuda = torch.cuda.is_available() and backend != "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return dist.get_rank(), dist.get_world_size(), device


def run_distributed(
    model: Any,
    workload: Workload,
    *,
    decode_context_lens: Sequence[int] | None = None,
    dtype: Any = None,
    backend: str | None = None,
    meter: Meter | None = None,
    **executor_kwargs: Any,
) -> WorkloadMeasurement:
    """One rank of a tensor-parallel run over all the ranks of torch.distributed (call it on every rank).

    Every rank meters its own GPU (``NullMeter`` on CPU); the returned windows are merged over
    the ranks (energy summed, longest duration) and are the same on every rank.
    """
    rank, world, device = init_distributed(backend)
    if meter is None:
        if device == "cpu":
            meter = NullMeter(reason="no energy meter: CPU run (timing only)")
        else:
            meter = open_meter(device)
    ex = Executor(model, device=device, dtype=dtype, tp=world, meter=meter, **executor_kwargs)
    return ex.run(workload, decode_context_lens)


def _summary(m: WorkloadMeasurement) -> dict[str, Any]:
    def phase(p: PhaseMeasurement) -> dict[str, Any]:
        return {k: getattr(p, k) for k in ("phase", "batch", "context_len", "tokens", "time_s", "energy_j",
                                           "avg_power_w", "cuda_graph", "note")}

    return {"model": m.model, "device": m.device, "tp": m.tp, "workload": m.workload.to_dict(),
            "prefill": phase(m.prefill), "decode": [phase(d) for d in m.decode]}


def main(argv: Sequence[str] | None = None) -> int:
    """``[torchrun ...] python -m energylens.runtime.execute --model M --batch B --prompt-len S ...``."""
    p = argparse.ArgumentParser(prog="energylens.runtime.execute", description=main.__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--tiny", action="store_true", help="a 2-layer config of the same architecture")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--decode-context", type=int, nargs="*", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="append the full record (JSON line) here")
    a = p.parse_args(argv)
    if a.out is not None and a.out.is_dir():  # before the run, not after it
        p.error(f"--out {a.out} is a directory; give a file to append the record to")
    try:
        return _run(a)
    except EnergylensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    model: Any = tiny_config(a.model) if a.tiny else a.model
    workload = Workload(batch=a.batch, prompt_len=a.prompt_len, output_len=a.output_len)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        result = run_distributed(model, workload, decode_context_lens=a.decode_context, dtype=a.dtype,
                                 repeats=a.repeats, cuda_graphs=a.cuda_graphs)
        import torch.distributed as dist

        is_main = dist.get_rank() == 0
    else:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        ex = Executor(model, device=device, dtype=a.dtype, repeats=a.repeats, cuda_graphs=a.cuda_graphs)
        result, is_main = ex.run(workload, a.decode_context), True
    if is_main:
        print(json.dumps(_summary(result)))
        if a.out is not None:
            with a.out.open("a") as f:
                f.write(json.dumps(result.to_dict(), default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
