"""Export a plan to vLLM engine arguments, or to a ``vllm serve`` command line.

Argument names and meanings are those of vLLM ``0.33.0`` (:data:`VLLM_VERSION`), read from its
source (``vllm/engine/arg_utils.py``: ``EngineArgs`` and ``EngineArgs.add_cli_args``;
``vllm/config/parallel.py``; ``vllm/model_executor/layers/fused_moe/config.py``:
``FusedMoEParallelConfig.make``). The accepted names are vendored in ``vllm_args_0.33.0.txt`` and
every key this module emits is checked against that list.

Mapping (plan -> vLLM):

- ``tp`` -> ``tensor_parallel_size``; ``dp`` -> ``data_parallel_size``.
- ``ep``: vLLM has no expert-parallel *size*. With ``enable_expert_parallel`` the MoE layers use
  ``ep_size = tp x dp`` (x prefill context parallel, 1 here) and expert tensor parallel 1; without
  it experts are tensor-sharded over all ``tp x dp`` GPUs (ep 1). So ``ep`` must be 1 or ``tp x dp``.
- ``max_num_seqs``, ``max_model_len`` map one to one; ``max_num_batched_tokens`` is the cost
  model's chunked-prefill budget (``costmodel.serving.MAX_NUM_BATCHED_TOKENS``, at least
  ``max_num_seqs``), since vLLM 0.33's default depends on the GPU and on API server vs ``LLM``
  (``EngineArgs._set_default_args``: 8192 or 16384 on H100, 16384 on B200, 2048 on an A100).
- ``quantization``: nothing for a pre-quantized checkpoint, whose method vLLM reads from its config
  (``ModelConfig._verify_quantization``; a ``--quantization fp8`` that differs from it, such as
  ``fbgemm_fp8``, ``modelopt`` or ``compressed-tensors``, makes vLLM refuse to start). A plan
  priced with fp8 weights on a bf16 checkpoint -> ``quantization="fp8"``: vLLM's ``Fp8Config``
  quantizes the bf16 weights to fp8 when it loads them (``is_checkpoint_fp8_serialized`` False).
  When the model's config cannot be read, a note says to add it for a bf16 checkpoint.
- ``max_num_seqs`` above vLLM's default CUDA-graph ceiling (``VllmConfig._set_cudagraph_sizes``:
  1024 tokens on datacenter Blackwell, compute capability 10.x, 512 elsewhere; larger decode
  batches run without CUDA graphs) -> ``max_cudagraph_capture_size``: ``max_num_seqs`` rounded up
  to vLLM's capture stride of 16, since the cost model prices decode steps as graph replays
  (the ML.ENERGY MoE runs above 512 sequences, eager in vLLM 0.11, were 5-22 ms slower than it).
- ``fused=False`` -> ``compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}``
  (``CompilationMode.NONE``: no torch.compile, so none of vLLM's Inductor fusion passes). vLLM's
  default CUDA-graph mode, ``FULL_AND_PIECEWISE``, needs piecewise compilation and would fall back to
  no graphs at all (``VllmConfig.__post_init__``: "Cudagraph mode ... is not compatible with compilation
  mode ... Overriding to NONE"); whole-step graphs of pure decode steps keep the graph replays the
  cost model prices (steps that also carry prefill chunks then run eager). ``fused=True`` keeps
  vLLM's default (``VLLM_COMPILE`` with its fusion passes), so nothing is emitted.
- ``sequence_parallel`` -> ``compilation_config={"pass_config": {"enable_sp": true}}``, vLLM's
  sequence-parallel compile pass (off by default: ``IS_DENSE`` is False in ``vllm/config/vllm.py``);
  it needs ``VLLM_COMPILE``, so an unfused plan reports it by :func:`vllm_notes` instead.
- ``comm_sms`` (SMs for communication while it overlaps compute): vLLM has no knob that gives a
  number of SMs to tensor-parallel or all-gather/reduce-scatter MoE collectives (its only SM count,
  ``VLLM_DBO_COMM_SMS``, is for dual batch overlap with DeepEP all-to-all kernels, a different MoE
  dispatch from the one the cost model prices, which also turns CUDA graphs off with dp > 1), so it
  is reported by :func:`vllm_notes`.
- ``gpu_clock_mhz`` is not a vLLM argument: :func:`vllm_notes` gives the command that sets it
  (``energylens.export.plan.clock_commands``: ``nvidia-smi -lgc``, or ``rocm-smi`` on AMD), which the
  CLI form carries as a comment.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, overload

from energylens.costmodel.comm import GPUS_PER_NODE
from energylens.costmodel.serving import GPU_MEMORY_UTILIZATION
from energylens.errors import InvalidWorkloadError
from energylens.export.plan import PlanLike, check_plan, clock_note, model_note, model_spec, node_gpus

__all__ = [
    "VLLM_VERSION",
    "VllmArg",
    "load_vllm_args",
    "to_vllm",
    "vllm_notes",
    "cudagraph_ceiling",
]

VLLM_VERSION = "0.33.0"
"""The vLLM release whose argument names and meanings this exporter follows."""

DEFAULT_GPU_MEMORY_UTILIZATION = GPU_MEMORY_UTILIZATION
"""Fraction of each GPU's memory vLLM may use: the limit energylens checks plans against (vLLM 0.33's
own default is 0.92)."""


@dataclass(frozen=True)
class VllmArg:
    """One vLLM engine argument: its ``EngineArgs`` name, argparse kind and CLI flags."""

    dest: str
    kind: str  # "bool" (--flag / --no-flag), "store_true" or "value"
    flags: tuple[str, ...]

    @property
    def flag(self) -> str:
        """The canonical ``--kebab-case`` flag."""
        return next(f for f in self.flags if f.startswith("--"))


@cache
def load_vllm_args(version: str = VLLM_VERSION) -> dict[str, VllmArg]:
    """The vendored argument list of vLLM ``version``: ``EngineArgs`` name -> :class:`VllmArg`."""
    path = Path(__file__).with_name(f"vllm_args_{version}.txt")
    if not path.exists():
        have = sorted(p.stem.removeprefix("vllm_args_") for p in path.parent.glob("vllm_args_*.txt"))
        raise InvalidWorkloadError(
            f"no vendored argument list for vLLM {version}; available: {', '.join(have)}"
        )
    args: dict[str, VllmArg] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        dest, kind, *flags = line.split()
        args[dest] = VllmArg(dest, kind, tuple(flags))
    return args


def vllm_notes(plan: PlanLike) -> list[str]:
    """Parts of the plan vLLM cannot express (empty when the export is exact)."""
    check_plan(plan)
    notes = []
    per_node = node_gpus(plan)
    n = len(per_node)
    if _per_node_lines(plan) is not None:
        notes.append(
            f"the plan's {plan.num_gpus} GPUs span {n} nodes of {GPUS_PER_NODE} ({' + '.join(map(str, per_node))} GPUs, "
            "whole tensor-parallel groups per node): vLLM's multi-node data parallel, one vllm serve per node with "
            "its --data-parallel-size-local ranks and node 0's --data-parallel-address, the others --headless "
            "with their --data-parallel-start-rank (the CLI form writes the lines)")
    elif n > 1:  # tensor-parallel groups wider than a node
        tp = plan.parallel.tp
        notes.append(
            f"the plan's {plan.num_gpus} GPUs span {n} nodes of {GPUS_PER_NODE} ({' + '.join(map(str, per_node))} GPUs, "
            f"each tensor-parallel group of {tp} over {-(-tp // GPUS_PER_NODE)} nodes): serve it as a vLLM multi-node deployment (a Ray cluster over "
            "the nodes with --distributed-executor-backend ray, or on each node the mp backend's "
            "--nnodes/--node-rank/--master-addr; data-parallel replicas with --data-parallel-size-local, "
            "--data-parallel-start-rank and --data-parallel-address); the vllm serve line is the whole plan's, "
            "to adapt per node")
    clock = clock_note(plan, "a vLLM argument")
    if clock is not None:
        notes.append(clock)
    if plan.comm_sms is not None:
        notes.append(
            f"comm_sms={plan.comm_sms} not applied: vLLM {VLLM_VERSION} has no setting that gives SMs to "
            "tensor-parallel or all-gather/reduce-scatter MoE collectives (VLLM_DBO_COMM_SMS is for DeepEP "
            "all-to-all under dual batch overlap, a dispatch the plan was not priced with)"
        )
    if plan.sequence_parallel and plan.parallel.tp == 1:
        notes.append(f"sequence_parallel not applied: it needs tensor parallelism (vLLM {VLLM_VERSION} turns "
                     "enable_sp off at tp=1)")
    elif plan.sequence_parallel and not plan.fused:
        notes.append(
            f"sequence_parallel not applied: vLLM {VLLM_VERSION}'s sequence-parallel pass (pass_config "
            "enable_sp) runs only under torch.compile, which the unfused plan turns off"
        )
    if plan.quantization == "fp8" and model_spec(plan) is None:
        notes.append(f"the plan was priced with fp8 weights, but {plan.model}'s config cannot be read: if its "
                     "checkpoint is not FP8, add --quantization fp8 (vLLM then quantizes the weights as it loads them)")
    note = model_note(plan)
    if note is not None:
        notes.append(note)
    if plan.model.endswith(".json"):
        notes.append(
            f"{plan.model} is a bare config file; vLLM serves a hub id or a checkpoint directory: save it as "
            "config.json in the checkpoint's directory and serve that directory"
        )
    elif "/" not in plan.model and not Path(plan.model).is_dir():
        notes.append(  # a config's _name_or_path or model_type, or a module's class name
            f"{plan.model!r} is not a hub id or a checkpoint directory (the name a config or module gave "
            "the model): put the checkpoint to serve in its place"
        )
    return notes


def cudagraph_ceiling(gpu: str) -> int:
    """Largest decode batch vLLM captures as a CUDA graph by default on ``gpu`` (an energylens GPU
    name): 1024 on datacenter Blackwell (compute capability 10.x), else 512.

    >>> cudagraph_ceiling("H100-SXM"), cudagraph_ceiling("B200")
    (512, 1024)
    """
    from energylens.costmodel.hardware import get_gpu

    return 1024 if (get_gpu(gpu).compute_capability or "").startswith("10.") else 512


def _engine_args(plan: PlanLike, gpu_memory_utilization: float) -> dict[str, Any]:
    from energylens.costmodel.serving import MAX_NUM_BATCHED_TOKENS  # the priced chunked-prefill budget

    check_plan(plan)
    if isinstance(gpu_memory_utilization, bool) or not isinstance(gpu_memory_utilization, (int, float)) or not (
            0 < gpu_memory_utilization <= 1):
        raise InvalidWorkloadError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    p = plan.parallel
    args: dict[str, Any] = {  # plain ints: a numpy count must not reach the JSON of the export
        "model": plan.model,
        "tensor_parallel_size": int(p.tp),
        "data_parallel_size": int(p.dp),
    }
    if p.ep > 1:
        args["enable_expert_parallel"] = True
    args["max_num_seqs"] = int(plan.max_num_seqs)
    args["max_model_len"] = int(plan.max_model_len)
    args["max_num_batched_tokens"] = max(MAX_NUM_BATCHED_TOKENS, args["max_num_seqs"])
    if plan.max_num_seqs > cudagraph_ceiling(plan.gpu):
        args["max_cudagraph_capture_size"] = -(-args["max_num_seqs"] // 16) * 16
    args["gpu_memory_utilization"] = gpu_memory_utilization
    spec = model_spec(plan) if plan.quantization == "fp8" else None
    if spec is not None and spec.quantization != "fp8":  # a bf16 checkpoint served with fp8 weights
        args["quantization"] = "fp8"
    if not plan.fused:  # CompilationMode.NONE; graphs that need no compilation
        args["compilation_config"] = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    elif plan.sequence_parallel and plan.parallel.tp > 1:
        args["compilation_config"] = {"pass_config": {"enable_sp": True}}
    known = load_vllm_args()
    unknown = sorted(set(args) - set(known))
    if unknown:  # a bug in this module, not a user error
        raise AssertionError(f"vLLM {VLLM_VERSION} has no engine argument(s) {unknown}")
    return args


def _per_node_lines(plan: PlanLike) -> list[tuple[int, int]] | None:
    """(data-parallel ranks, first rank) on each node of a plan whose replicas span nodes with whole
    tensor-parallel groups on each (vLLM's multi-node data parallel: ``--data-parallel-size-local``,
    ``--data-parallel-start-rank``); None on one node or with tensor-parallel groups across nodes."""
    per_node, tp = node_gpus(plan), plan.parallel.tp
    if len(per_node) == 1 or tp > GPUS_PER_NODE:
        return None
    out, start = [], 0
    for gpus in per_node:
        out.append((gpus // tp, start))
        start += gpus // tp
    return out


#: The placeholder of node 0's address in per-node lines (a shell variable the user sets).
_HEAD = "$HEAD_IP"


def _serve_line(args: dict[str, Any], extra: str = "") -> str:
    known = load_vllm_args()
    parts = [f"vllm serve {shlex.quote(args['model'])}" + extra]
    for key, value in args.items():
        if key == "model":
            continue
        arg = known[key]
        if arg.kind in ("bool", "store_true"):
            if value:
                parts.append(arg.flag)
            elif arg.kind == "bool":
                parts.append("--no-" + arg.flag[2:])
            continue
        text = json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else str(value)
        parts.append(f"{arg.flag} " + ('"$HEAD_IP"' if value == _HEAD else shlex.quote(text)))  # the shell expands it
    return " \\\n    ".join(parts)


def _cli(plan: PlanLike, args: dict[str, Any]) -> str:
    p = plan.parallel
    lines = [
        f"# energylens plan for vLLM {VLLM_VERSION}: {plan.model} on {plan.num_gpus}x {plan.gpu} "
        f"(tp={p.tp}, ep={p.ep}, dp={p.dp})"
    ]
    lines += [f"# note: {n}" for n in vllm_notes(plan)]
    nodes = _per_node_lines(plan)
    if nodes is None:
        lines.append(_serve_line(args))
        return "\n".join(lines) + "\n"
    for k, (local, start) in enumerate(nodes):
        node = dict(args, data_parallel_size_local=local, data_parallel_address=_HEAD)
        if k:
            node["data_parallel_start_rank"] = start
        lines.append(f"# node {k}" + (" (API server; HEAD_IP=its address)" if k == 0 else ""))
        # --headless is vllm serve's own option (no API server on this node), not an EngineArgs field
        lines.append(_serve_line(node, " --headless" if k else ""))
    return "\n".join(lines) + "\n"


@overload
def to_vllm(
    plan: PlanLike, cli: Literal[False] = ..., *, gpu_memory_utilization: float = ...
) -> dict[str, Any]: ...
@overload
def to_vllm(plan: PlanLike, cli: Literal[True], *, gpu_memory_utilization: float = ...) -> str: ...
def to_vllm(
    plan: PlanLike, cli: bool = False, *, gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
) -> dict[str, Any] | str:
    """vLLM engine arguments for ``plan`` (``vllm.EngineArgs(**to_vllm(plan))``), or with
    ``cli=True`` the ``vllm serve MODEL --tensor-parallel-size ...`` command, preceded by comment
    lines for what is not an argument (:func:`vllm_notes`: GPU clock, parts vLLM cannot express).

    Raises :class:`~energylens.errors.ShardingError` when ``tp x dp != num_gpus`` or when ``ep`` is
    neither 1 nor ``tp x dp`` (the only expert-parallel sizes vLLM can run).

    >>> from energylens.export.plan import PlanSpec
    >>> from energylens.typing import Parallel
    >>> plan = PlanSpec("meta-llama/Llama-3.1-70B-Instruct", "H100-SXM", 4, Parallel(tp=4),
    ...                 max_num_seqs=64, max_model_len=1280)
    >>> to_vllm(plan)["tensor_parallel_size"]
    4
    >>> print(to_vllm(plan, cli=True).splitlines()[1])
    vllm serve meta-llama/Llama-3.1-70B-Instruct \\
    """
    args = _engine_args(plan, gpu_memory_utilization)
    return _cli(plan, args) if cli else args
