"""Export a plan to Megatron-Core configuration fields.

Names and meanings are those of megatron-core ``0.16.1`` (:data:`MEGATRON_CORE_VERSION`, the last
release for Python 3.11): ``megatron/core/model_parallel_config.py`` (``ModelParallelConfig``),
``megatron/core/transformer/transformer_config.py`` (``TransformerConfig``, a subclass),
``megatron/core/parallel_state.py`` (``initialize_model_parallel``) and
``megatron/core/inference/model_inference_wrappers/inference_wrapper_config.py``.

Mapping (plan, in vLLM's meaning -> Megatron-Core):

- ``tp`` -> ``tensor_model_parallel_size``; pipeline parallel is 1.
- ``dp`` is not a config field: Megatron derives it in ``initialize_model_parallel`` as
  ``world_size // (tensor x pipeline x context parallel)``, so the plan's dp follows from launching
  ``num_gpus`` ranks (``torchrun`` world size); :func:`megatron_extras` gives both, for checking.
- ``ep`` -> ``expert_model_parallel_size``; experts are spread over the same ``tp x dp`` GPUs, so
  ``expert_tensor_parallel_size = tp x dp / ep`` (expert data parallel 1). ``ep = tp x dp`` gives
  expert tensor parallel 1 (vLLM's ``--enable-expert-parallel``); ``ep = 1`` tensor-shards experts
  over all GPUs (vLLM without it). Megatron also runs the sizes in between, but a plan's ``ep`` has
  vLLM's meaning, so those are a ``ShardingError`` here as in the shard pass (which is what the
  cost model prices; see ``energylens.passes.shard``).
- MoE models only (``export.plan.has_experts``; a dense model gets no expert fields):
  ``moe_token_dispatcher_type="allgather"``, the dispatch the cost model prices (vLLM's default
  all-gather of the tokens and reduce-scatter of the expert outputs; Megatron's ``alltoall`` and
  DeepEP ``flex`` dispatchers move fewer bytes and are not what was priced). Experts span the dp
  replicas (``ep = tp x dp``, or ``expert_tensor_parallel_size = tp x dp``), so the replicas must
  step together: a note says so when ``dp > 1`` (Megatron's dynamic engine runs dummy steps for
  that, its static engine does not).
- ``sequence_parallel``: Megatron's inference (``TextGenerationController``) runs sequence
  parallelism only in the MoE layers of a model with ``tp > 1`` and ``ep > 1``, where it is required
  (the expert dispatch uses its communication); it raises ``NotImplementedError`` for a config with
  ``sequence_parallel`` otherwise. So the field is on for such MoE plans and for a plan that asks for
  it (with a note where Megatron inference refuses it); Megatron refuses it without tensor
  parallelism.
- ``comm_sms`` (SMs for communication overlapping compute):
  tensor parallel: ``tp_comm_overlap=True`` plus Transformer Engine userbuffers settings
  ``{"num_sm": k, "set_sm_margin": 1}`` for the forward GEMMs (``qkv_fprop``, ``proj_fprop``,
  ``fc1_fprop``, ``fc2_fprop``; names and keys from TE's ``initialize_ub``). Those settings are not
  a ``TransformerConfig`` field: Megatron-LM reads them from the YAML file named by
  ``--tp-comm-overlap-cfg`` (``tp_comm_overlap_cfg``), see :attr:`MegatronExtras.tp_comm_overlap_cfg`.
  Megatron overlaps TP communication only with sequence parallelism (Megatron-LM asserts it), so
  only a plan that asks for it gets them. Expert parallel: Megatron's SM setting for the MoE
  dispatch (``moe_deepep_num_sms``) is DeepEP's, not the priced all-gather: a note.
- ``fused`` -> Megatron's fusion switches ``bias_activation_fusion``, ``masked_softmax_fusion``,
  ``bias_dropout_fusion``, ``apply_rope_fusion`` (needs Transformer Engine) and, with experts,
  ``moe_permute_fusion``.
- ``quantization="fp8"`` -> ``fp8="e4m3"`` (FP8 through Transformer Engine), ``fp8_param=True``
  (weights kept in fp8, as the plan's memory counts them; Megatron keeps bf16 parameters otherwise)
  and ``fp8_recipe``: ``"blockwise"`` for a checkpoint scaled in weight blocks (Qwen's 128 x 128),
  else ``"tensorwise"`` (one scale per tensor, current scaling; a per-channel checkpoint's scales
  are coarsened to it).
- ``max_num_seqs`` / ``max_model_len`` -> ``InferenceWrapperConfig.inference_max_requests`` /
  ``inference_max_seq_length`` (in :attr:`MegatronExtras.inference_wrapper`), as they are for a plan
  that runs the dynamic engine (MoE over dp replicas: its paged cache is sized by a note's
  ``DynamicInferenceContext`` arguments); the static inference cache holds requests x that length, so with ``kv_cache_tokens`` known the length is at most
  ``kv_cache_tokens // max_num_seqs``, and the requests fewer where a request of ``request_len``
  tokens would not fit (``_static_limits``). Megatron's cache is in the activations' dtype (bf16), so
  a checkpoint whose KV cache the plan priced in fp8 (ModelOpt's) holds half the tokens there.
- ``gpu_clock_mhz`` is not a Megatron setting: :attr:`MegatronExtras.gpu_clock_command`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from energylens.errors import InvalidWorkloadError, ShardingError
from energylens.export.plan import (
    PlanLike,
    check_plan,
    clock_commands,
    has_experts,
    model_note,
    model_spec,
    node_gpus,
    weight_quantization,
)
from energylens.typing import Record

__all__ = ["MEGATRON_CORE_VERSION", "UB_FPROP_LAYERS", "MegatronExtras", "to_megatron", "megatron_extras"]

MEGATRON_CORE_VERSION = "0.16.1"
"""The megatron-core release whose field names this exporter follows."""

UB_FPROP_LAYERS: tuple[str, ...] = ("qkv_fprop", "proj_fprop", "fc1_fprop", "fc2_fprop")
"""Transformer Engine userbuffers keys of the forward GEMMs (inference runs no backward)."""


def _check_megatron(plan: PlanLike) -> None:
    check_plan(plan)
    if plan.sequence_parallel and plan.parallel.tp == 1:
        raise ShardingError(
            "sequence_parallel needs tensor parallelism (tp > 1) in Megatron-Core; "
            "set sequence_parallel=False or tp > 1"
        )


def _tp_overlap(plan: PlanLike) -> bool:
    return plan.comm_sms is not None and plan.parallel.tp > 1 and plan.sequence_parallel


def _moe_sequence_parallel(plan: PlanLike, moe: bool) -> bool:
    """Whether Megatron's inference needs sequence parallelism in the MoE layers (``moe``: the model
    has experts; tp > 1 and ep > 1)."""
    return moe and plan.parallel.tp > 1 and plan.parallel.ep > 1


def to_megatron(plan: PlanLike) -> dict[str, Any]:
    """Megatron-Core config fields for ``plan``: every key is a field of ``TransformerConfig``
    (those of its base ``ModelParallelConfig`` included), so
    ``TransformerConfig(num_layers=..., hidden_size=..., num_attention_heads=..., **to_megatron(plan))``.

    Raises :class:`~energylens.errors.ShardingError` when ``tp x dp != num_gpus``, when ``ep`` is
    neither 1 nor ``tp x dp``, or for sequence parallelism without tensor parallelism.

    >>> from energylens.export.plan import PlanSpec
    >>> from energylens.typing import Parallel
    >>> plan = PlanSpec("Qwen/Qwen3-30B-A3B", "H100-SXM", 8, Parallel(tp=4, ep=8, dp=2), 64, 1280)
    >>> cfg = to_megatron(plan)
    >>> cfg["tensor_model_parallel_size"], cfg["expert_model_parallel_size"], cfg["expert_tensor_parallel_size"]
    (4, 8, 1)
    >>> bad = PlanSpec("Qwen/Qwen3-30B-A3B", "H100-SXM", 8, Parallel(tp=4, ep=4, dp=2), 64, 1280)
    >>> to_megatron(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    energylens.errors.ShardingError: ep=4 with tp x dp = 4 x 2 = 8 GPUs: ... valid ep: 1, 8
    """
    _check_megatron(plan)
    p = plan.parallel
    moe = has_experts(plan)
    cfg: dict[str, Any] = {
        "tensor_model_parallel_size": int(p.tp),  # plain ints: the config is JSON
        "pipeline_model_parallel_size": 1,
        "sequence_parallel": plan.sequence_parallel or _moe_sequence_parallel(plan, moe),
        "tp_comm_overlap": _tp_overlap(plan),
    }
    if moe:
        cfg["expert_model_parallel_size"] = int(p.ep)
        cfg["expert_tensor_parallel_size"] = int(p.tp * p.dp // p.ep)
        cfg["moe_token_dispatcher_type"] = "allgather"
    fused = bool(plan.fused)
    cfg["bias_activation_fusion"] = fused
    cfg["masked_softmax_fusion"] = fused
    cfg["bias_dropout_fusion"] = fused
    cfg["apply_rope_fusion"] = fused
    if moe:
        cfg["moe_permute_fusion"] = fused
    if weight_quantization(plan) == "fp8":  # an FP8 checkpoint runs in fp8 whatever the plan left unset
        cfg["fp8"] = "e4m3"
        cfg["fp8_recipe"] = _fp8_recipe(plan)[0]
        cfg["fp8_param"] = True
    return cfg


@dataclass(frozen=True)
class MegatronExtras(Record):
    """What a Megatron-Core deployment needs besides config fields.

    - ``world_size``: ranks to launch (``torchrun`` total); Megatron derives
      ``data_parallel_size = world_size // (tp x pp x cp)`` from it.
    - ``initialize_model_parallel``: keyword arguments of
      ``megatron.core.parallel_state.initialize_model_parallel``.
    - ``inference_wrapper``: fields of ``InferenceWrapperConfig`` (batch and sequence limits).
    - ``tp_comm_overlap_cfg``: Transformer Engine userbuffers settings (write as YAML for
      Megatron-LM's ``--tp-comm-overlap-cfg``, or pass as ``ub_cfgs`` to TE's ``initialize_ub``);
      None without TP overlap.
    - ``gpu_clock_command``: the command (root) that sets the plan's clock, or None at the default
      clock (``energylens.export.plan.clock_commands``), on each node.
    - ``node_gpus``: ranks on each node (``energylens.export.plan.node_gpus``: whole
      tensor-parallel groups per node; ``torchrun --nnodes`` is its length).
    - ``notes``: parts of the plan Megatron-Core cannot express.
    """

    world_size: int
    data_parallel_size: int
    expert_data_parallel_size: int
    initialize_model_parallel: dict[str, int]
    inference_wrapper: dict[str, Any]
    tp_comm_overlap_cfg: dict[str, dict[str, int]] | None = None
    gpu_clock_command: str | None = None
    notes: tuple[str, ...] = field(default=())
    node_gpus: tuple[int, ...] = (1,)

    @property
    def launch(self) -> str:
        """The ``torchrun`` launch of the ranks on their nodes (torchrun numbers the ranks of
        nodes with different ``--nproc-per-node`` in node-rank order).

        >>> MegatronExtras(16, 2, 16, {}, {}, node_gpus=(8, 8)).launch
        'torchrun --nnodes 2 --nproc-per-node 8 on each node, with --node-rank and --master-addr'
        >>> MegatronExtras(12, 3, 12, {}, {}, node_gpus=(8, 4)).launch
        'torchrun --nnodes 2 --nproc-per-node 8 on each node (4 on the last), with --node-rank and --master-addr'
        """
        n, first, last = len(self.node_gpus), self.node_gpus[0], self.node_gpus[-1]
        if n == 1:
            return f"torchrun --nproc-per-node {first}"
        tail = "" if last == first else f" ({last} on the last)"
        return f"torchrun --nnodes {n} --nproc-per-node {first} on each node{tail}, with --node-rank and --master-addr"


def _static_limits(plan: PlanLike) -> tuple[int, int, list[str]]:
    """(requests, sequence length, notes) of Megatron's static inference cache, which holds requests x
    length tokens: the plan's ``max_num_seqs`` at up to ``max_model_len`` within ``kv_cache_tokens``
    (half of them where the plan priced an fp8 KV cache, which Megatron keeps in bf16); fewer requests
    (and a note) where that would cut a request of ``request_len`` tokens short."""
    held, need = getattr(plan, "kv_cache_tokens", None), getattr(plan, "request_len", None)
    seqs, longest = int(plan.max_num_seqs), int(plan.max_model_len)
    if held is None:
        return seqs, longest, []
    notes = []
    spec = model_spec(plan)
    priced = held = int(held)
    if spec is not None and spec.kv_cache_fp8:
        held //= 2
        notes.append(f"KV cache sized in bf16 ({held} tokens per replica): Megatron-Core keeps it in the "
                     "activations' dtype, not in the checkpoint's fp8 that the plan was priced with")
    length = min(longest, held // seqs)
    if need is None and length < 1:  # fewer tokens than requests: a request's length unknown, take the longest
        need = longest
    if need is None or length >= need:
        return seqs, length, notes
    if held < need:  # only with the halving above: check_plan holds need <= max_model_len <= kv_cache_tokens
        raise InvalidWorkloadError(f"Megatron-Core's bf16 KV cache holds {held} tokens per replica (the plan priced "
                                   f"{priced} fp8 ones), less than one request of {need}: this plan cannot run "
                                   "there; use more GPUs, shorter requests, or vLLM (which keeps the fp8 cache)")
    fewer = held // int(need)
    notes.append(f"inference_max_requests={fewer}, not the plan's {seqs}: Megatron's static "
                 f"cache holds every request at full length ({need} tokens) within the {held} tokens "
                 "of KV cache the plan leaves; vLLM pages the cache and runs them all")
    return fewer, int(need), notes


def _fp8_recipe(plan: PlanLike) -> tuple[str, str | None]:
    """Megatron's fp8 recipe for the plan's checkpoint on its GPU, and the note when it is not the
    checkpoint's own: ``blockwise`` for weights scaled in blocks (Qwen's 128 x 128) where Transformer
    Engine runs block-scaled GEMMs (NVIDIA compute capability 9.0+: TE's
    ``_compute_fp8_block_scaling_support``; not on ROCm), else ``tensorwise``."""
    from energylens.costmodel.hardware import get_gpu

    spec = model_spec(plan)
    block = spec.fp8_block if spec is not None else None
    if block is None:
        return "tensorwise", None
    cc = get_gpu(plan.gpu).compute_capability
    if cc is not None and tuple(int(x) for x in cc.split(".")) >= (9, 0):
        return "blockwise", None
    return "tensorwise", (f"fp8_recipe tensorwise: the checkpoint's {'x'.join(map(str, block))} weight blocks need "
                          f"Transformer Engine's block-scaled GEMMs, which {plan.gpu} lacks (compute capability "
                          "9.0+), so its weights are scaled per tensor instead")


def _kv_buffer_gib(plan: PlanLike) -> float | None:
    """GiB of KV cache per GPU the plan leaves (``kv_cache_tokens`` at the checkpoint's KV dtype and the
    GPU's share of the KV heads), as ``DynamicInferenceContext``'s ``buffer_size_gb``; None if unknown."""
    held, spec = getattr(plan, "kv_cache_tokens", None), model_spec(plan)
    if held is None or spec is None:
        return None
    from energylens.models import attention_shape

    _, kv, head_dim = attention_shape(spec)
    layers = spec.get("num_hidden_layers")
    per_token = 2 * layers * max(1, kv // plan.parallel.tp) * head_dim * (1 if spec.kv_cache_fp8 else 2)
    return held * per_token / 2**30


def _dynamic_engine(plan: PlanLike, cfg: dict[str, Any]) -> bool:
    """Whether the plan needs Megatron-Core's dynamic engine: experts spread over dp replicas, which
    must step together (the dynamic engine runs dummy steps for an idle replica, the static does not)."""
    return "expert_model_parallel_size" in cfg and plan.parallel.dp > 1


def _notes(plan: PlanLike, cfg: dict[str, Any]) -> list[str]:
    """What Megatron-Core's inference cannot run as the plan was priced."""
    p, notes = plan.parallel, []
    note = model_note(plan)
    if note is not None:
        notes.append(note)
    recipe_note = _fp8_recipe(plan)[1] if "fp8_recipe" in cfg else None
    if recipe_note is not None:
        notes.append(recipe_note)
    if "expert_model_parallel_size" in cfg and p.ep == 1 and p.tp > 1:
        notes.append(f"experts tensor-parallel over {p.tp * p.dp} GPUs with ep=1: Megatron-Core's all-gather "
                     "dispatcher assumes sequence-parallel tokens ([S/TP, B, H]), which its inference runs only "
                     f"with ep > 1, so each of the {p.tp} tp ranks dispatches the whole batch ({p.tp} copies of the "
                     "expert work the plan prices once, as vLLM runs it; Megatron refuses this setup in training); "
                     "prefer ep = tp x dp for Megatron")
    if plan.sequence_parallel and not _moe_sequence_parallel(plan, "expert_model_parallel_size" in cfg):
        notes.append("sequence_parallel: Megatron-Core's inference runs it only in the MoE layers of a model "
                     "with tp > 1 and ep > 1 (TextGenerationController raises NotImplementedError otherwise)")
    if _dynamic_engine(plan, cfg):
        buffer = _kv_buffer_gib(plan)
        notes.append(f"the experts span the {p.dp} data-parallel replicas, which must step together: run "
                     "Megatron-Core's dynamic inference engine (its static engine does not), with "
                     f"DynamicInferenceContext(max_requests={plan.max_num_seqs}, max_sequence_length="
                     f"{plan.max_model_len}" + ("" if buffer is None else f", buffer_size_gb={buffer:.2f}")
                     + "); its paged KV cache, like vLLM's, holds requests at their length so far")
    if plan.comm_sms is not None:
        if p.tp > 1 and not plan.sequence_parallel:
            notes.append(f"comm_sms={plan.comm_sms} not applied to tensor-parallel communication: Megatron "
                         "overlaps it with GEMMs only under sequence parallelism, which its inference does not "
                         "run in attention and dense layers")
        if p.ep > 1:
            notes.append(f"comm_sms={plan.comm_sms} not applied to the MoE dispatch: Megatron's SM setting for it "
                         "(moe_deepep_num_sms) is DeepEP's all-to-all, not the all-gather the plan was priced with")
        if p.tp == 1 and p.ep == 1:
            notes.append(f"comm_sms={plan.comm_sms} not applied: the plan has no tensor or expert parallel "
                         "communication")
    return notes


def megatron_extras(plan: PlanLike) -> MegatronExtras:
    """Launch size, parallel-state arguments, inference limits and overlap settings for ``plan``.

    >>> from energylens.export.plan import PlanSpec
    >>> from energylens.typing import Parallel
    >>> ex = megatron_extras(PlanSpec("m", "H100-SXM", 8, Parallel(tp=4, dp=2), 64, 1280))
    >>> ex.world_size, ex.data_parallel_size
    (8, 2)
    """
    cfg = to_megatron(plan)
    tp, pp = cfg["tensor_model_parallel_size"], cfg["pipeline_model_parallel_size"]
    # a dense model: Megatron's defaults (experts, had there been any, would follow tp)
    etp, ep = cfg.get("expert_tensor_parallel_size", tp), cfg.get("expert_model_parallel_size", 1)
    # the static engine's cache holds every request at full length; the dynamic one pages it
    requests, length, static_notes = ((int(plan.max_num_seqs), int(plan.max_model_len), []) if _dynamic_engine(plan, cfg)
                                      else _static_limits(plan))
    inference: dict[str, Any] = {"inference_max_requests": requests, "inference_max_seq_length": length}
    if "fp8" in cfg:
        inference["fp8"] = cfg["fp8"]
    notes = static_notes + _notes(plan, cfg)
    ub = None
    if cfg["tp_comm_overlap"]:
        ub = {name: {"num_sm": plan.comm_sms, "set_sm_margin": 1} for name in UB_FPROP_LAYERS}
    clock = (clock_commands(plan) or (None,))[0]
    return MegatronExtras(
        world_size=int(plan.num_gpus),
        data_parallel_size=int(plan.num_gpus) // (tp * pp),
        expert_data_parallel_size=int(plan.num_gpus) // (etp * ep * pp),
        initialize_model_parallel={
            "tensor_model_parallel_size": tp,
            "pipeline_model_parallel_size": pp,
            "expert_model_parallel_size": ep,
            "expert_tensor_parallel_size": etp,
        },
        inference_wrapper=inference,
        tp_comm_overlap_cfg=ub,
        gpu_clock_command=clock,
        notes=tuple(notes),
        node_gpus=node_gpus(plan),
    )
