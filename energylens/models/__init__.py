"""Bundled HF ``config.json`` files of the supported models, and ``load_config``.

Each ``<org>--<name>.json`` file here is the Hugging Face ``config.json`` of one checkpoint
(file name = repo id with ``/`` replaced by ``--``), copied unchanged from public sources (see
``/work/shared/models/README.md``) or written from the model card; no hub is contacted at run
time. ``<id>.hf_quant_config.json`` holds NVIDIA ModelOpt's separate quantization file.
Written from model cards (not in the shared set): Qwen3-14B, Qwen3-4B and Qwen3-4B-Instruct-2507
(the 2507 checkpoint differs only in ``rope_theta`` 5e6 and 262,144 positions), Llama-3.2-1B/3B.
From the AIConfigurator wheel the shared set comes from, beyond it: Qwen3-Coder-480B-A35B-Instruct,
Qwen3-32B-FP8 and Qwen3-30B-A3B-FP8. Also from the shared set: Qwen3-30B-A3B, Qwen3-235B-A22B and
Qwen3-235B-A22B-FP8, the original checkpoints (40,960 positions).

Other ids resolve to a bundled config (``_aliases``): case variants and bare names
(``qwen3-8b``); checkpoints with a bundled architecture and other weights (``-Thinking-2507``,
Llama base models, ``_TWINS``), which keep their own id as the name exports serve; and
``<bundled id>-FP8`` of Qwen and of other publishers (``_fp8_twin``).

Importing this module imports neither torch nor transformers.

>>> spec = load_config("llama-3.1-8b-instruct")
>>> spec.name, spec.family, spec.config["hidden_size"]
('meta-llama/Llama-3.1-8B-Instruct', 'llama', 4096)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energylens.errors import ConfigError, UnknownNameError

__all__ = ["ModelSpec", "list_models", "load_config", "REQUIRED_FIELDS", "MODEL_TYPES", "config_dict", "max_context"]

_DIR = Path(__file__).resolve().parent
_QUANT_SUFFIX = ".hf_quant_config.json"

#: Fields every supported config must have (MoE configs additionally need the MoE fields).
REQUIRED_FIELDS: tuple[str, ...] = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "vocab_size",
)
_MOE_FIELDS: tuple[str, ...] = ("num_experts", "num_experts_per_tok", "moe_intermediate_size")
#: Other names of a field: transformers 5 stores Qwen3-MoE's ``num_experts`` as ``num_local_experts``.
_ALIASES: dict[str, str] = {"num_experts": "num_local_experts"}
#: RoPE types transformers knows (``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` and
#: ``default``); listed here since this module must not import transformers.
ROPE_TYPES: tuple[str, ...] = ("default", "dynamic", "linear", "llama3", "longrope", "proportional", "yarn")
#: The one supported quantization: fp8 weights (``quant_method`` / ModelOpt ``quant_algo`` naming fp8).
_QUANT_SUPPORTED = "fp8"
_FAMILIES: dict[str, str] = {"llama": "llama", "qwen3": "qwen3", "qwen3_moe": "qwen3_moe"}
#: The supported HF ``model_type`` values.
MODEL_TYPES: tuple[str, ...] = tuple(_FAMILIES)


@dataclass(frozen=True)
class ModelSpec:
    """A model to trace: its name, its HF config (a dict, or a ``PretrainedConfig``), family and quantization.

    ``family`` is the HF ``model_type`` (``llama``, ``qwen3``, ``qwen3_moe``); ``quantization`` is
    ``"fp8"`` for FP8 checkpoints, else None. ``quant_config`` is the checkpoint's quantization
    section (``quantization_config`` or ModelOpt's ``hf_quant_config.json``), or None.
    """

    name: str
    config: Any
    family: str
    quantization: str | None = None
    quant_config: Any = None
    source: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        """A config field, for dict and ``PretrainedConfig`` configs alike (and under its other name)."""
        return _field(self.config, key, default)

    @property
    def is_moe(self) -> bool:
        return self.family == "qwen3_moe"  # MoE keys in a dense family's config are not its layers

    @property
    def fp8_moe_refine(self) -> bool:
        """Whether vLLM may refine this checkpoint's fp8 MoE block scales to finer blocks when an
        expert's slice per GPU is not whole blocks: HF ``fp8`` checkpoints (vLLM 0.33's
        ``Fp8MoEMethod``), not compressed-tensors ones (their MoE method checks strictly)."""
        return self.fp8_block is not None and isinstance(self.quant_config, dict) and (
            self.quant_config.get("quant_method") == "fp8")

    @property
    def kv_cache_fp8(self) -> bool:
        """Whether the checkpoint stores its KV cache in fp8 (ModelOpt's ``kv_cache_quant_algo``)."""
        qc = self.quant_config
        algo = (qc.get("quantization") or {}).get("kv_cache_quant_algo") if isinstance(qc, dict) else None
        return bool(algo) and "fp8" in str(algo).lower()

    @property
    def fp8_block(self) -> tuple[int, int] | None:
        """(rows, columns) of the weight blocks an fp8 checkpoint scales together (Qwen's and
        DeepSeek's ``weight_block_size``, compressed-tensors' ``block_structure``), None for
        per-tensor or per-channel scales. vLLM loads such a checkpoint only on plans whose weight
        slices are whole blocks (``passes.shard.check_parallel``)."""
        qc = self.quant_config if self.quantization == "fp8" and isinstance(self.quant_config, dict) else {}
        blocks = [qc.get("weight_block_size")]
        blocks += [((g or {}).get("weights") or {}).get("block_structure")
                   for g in (qc.get("config_groups") or {}).values()]
        for b in blocks:
            if isinstance(b, (list, tuple)) and len(b) == 2 and all(_positive_int(x) for x in b):
                return int(b[0]), int(b[1])
        return None


def _field(config: Any, key: str, default: Any = None) -> Any:
    """``config``'s field ``key`` (a dict's item or a ``PretrainedConfig``'s attribute), else the
    field under its other name (``_ALIASES``), else ``default``."""
    read = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    value = read(key)
    if value is None and key in _ALIASES:
        value = read(_ALIASES[key])
    return default if value is None else value


def attention_shape(config: Any) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) of a config (a dict, a ``PretrainedConfig`` or a ``ModelSpec``),
    with HF's defaults where a field is unset: KV heads = heads, head dim = hidden size / heads."""
    if isinstance(config, ModelSpec):
        config = config.config
    heads = int(_field(config, "num_attention_heads"))
    kv = int(_field(config, "num_key_value_heads") or heads)
    return heads, kv, int(_field(config, "head_dim") or int(_field(config, "hidden_size")) // heads)


@functools.cache  # the package's files do not change while it runs
def _bundled() -> dict[str, Path]:
    """Canonical HF id -> bundled file."""
    out = {}
    for p in sorted(_DIR.glob("*.json")):
        if p.name.endswith(_QUANT_SUFFIX):
            continue
        out[p.stem.replace("--", "/", 1)] = p
    return out


def list_models() -> list[str]:
    """HF ids of the bundled model configs, sorted.

    >>> "Qwen/Qwen3-8B" in list_models()
    True
    """
    return sorted(_bundled())


#: Checkpoints with the architecture of a bundled one and other weights: Qwen3-Coder-30B-A3B-Instruct's
#: model card gives Qwen3-30B-A3B-Instruct-2507's numbers (48 layers, 32 query / 4 KV heads, 128
#: experts with 8 active, 30.5B / 3.3B parameters, 262,144 positions).
_TWINS: dict[str, str] = {"Qwen/Qwen3-Coder-30B-A3B-Instruct": "Qwen/Qwen3-30B-A3B-Instruct-2507"}


@functools.cache
def _aliases() -> dict[str, tuple[str, str]]:
    """Lower-cased HF id or bare name -> (bundled id whose config it uses, HF id of the checkpoint it names).

    * a bundled id, and Qwen ids without ``-Instruct`` / ``-Instruct-2507`` (no such repos): that
      checkpoint;
    * other checkpoints with a bundled architecture and other weights, which keep their own id
      (the exports serve it): Qwen's ``-Thinking-2507`` twins of ``-Instruct-2507`` ones
      (``/work/shared/models/README.md``), Meta's Llama 3.1 and 3.2 base models, the
      ``Meta-Llama-3.1-*`` names Meta first gave Llama 3.1, and ``_TWINS``.
    """
    out: dict[str, tuple[str, str]] = {}

    def add(checkpoint: str, config: str, named: str | None = None) -> None:
        for form in (checkpoint, checkpoint.split("/", 1)[1]):
            out.setdefault(form.lower(), (config, named or checkpoint))

    bundled = list(_bundled())
    for name in bundled:  # a bundled id is its own checkpoint, never another one's alias
        add(name, name)
    for name in bundled:
        org, bare = name.split("/", 1)
        if org == "meta-llama":
            base = name.replace("-Instruct", "")
            if "Llama-3.1-" in name or "Llama-3.2-" in name:  # Meta's base models (and Llama-3.1-405B-FP8)
                add(base, name)
            if "Llama-3.1-" in name:  # the names Meta first gave Llama 3.1
                add(f"meta-llama/Meta-{bare}", name)
                add(f"meta-llama/Meta-{base.split('/', 1)[1]}", name)
            add(base, name, name)  # else (Llama-3.3-70B): a short form of this checkpoint
        else:
            add(name.replace("-Instruct-2507", "-Thinking-2507"), name)
            add(name.replace("-Instruct-2507", ""), name, name)
            add(name.replace("-Instruct", ""), name, name)
    for twin, name in _TWINS.items():
        add(twin, name)
    return out


#: The bundled checkpoint whose ``quantization_config`` every Qwen ``-FP8`` checkpoint shares
#: (fine-grained fp8: e4m3 weights in 128 x 128 blocks, dynamic activation scales).
_QWEN_FP8_SOURCE = "Qwen/Qwen3-32B-FP8"


#: ``quantization_config`` of an FP8 checkpoint that other publishers (RedHatAI/neuralmagic
#: compressed-tensors, NVIDIA ModelOpt) make of a bundled model: fp8 weights with one scale per
#: tensor or per channel, no weight blocks (so no plan is refused for splitting a block).
_CHANNEL_FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic"}
_FP8_SUFFIXES = ("-fp8-dynamic", "-fp8")
#: Publishers whose ``<model>-FP8`` checkpoints of Llama/Qwen models are priced (lower case): Red Hat
#: AI (formerly Neural Magic; compressed-tensors) and NVIDIA (ModelOpt, whose checkpoints store the
#: KV cache in fp8 too: the ``hf_quant_config.json`` bundled with nvidia/Llama-3.1-70B-Instruct-FP8).
_FP8_PUBLISHERS = ("redhatai", "neuralmagic", "nvidia")
_MODELOPT_FP8_SOURCE = "nvidia/Llama-3.1-70B-Instruct-FP8"


def _fp8_twin(asked: str) -> ModelSpec | None:
    """An FP8 checkpoint of a bundled bf16 model, named ``<id>-FP8`` (or ``-FP8-dynamic``): the
    bundled ``config.json`` plus a ``quantization_config``. Qwen publishes an FP8 twin of each of its
    models (``Qwen/Qwen3-8B-FP8``, ``Qwen/Qwen3-30B-A3B-Instruct-2507-FP8``...) with the block-wise
    section of ``_QWEN_FP8_SOURCE``; another publisher's (``RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8``,
    ``nvidia/Llama-3.1-8B-Instruct-FP8``; ``_FP8_PUBLISHERS``) with ``_CHANNEL_FP8``, NVIDIA's with the
    fp8 KV cache of ``_MODELOPT_FP8_SOURCE``. Every one keeps the id asked for (the exports serve it).
    None if ``asked`` is not of that form or names no such publisher: Meta's own ``-FP8`` ids are
    bundled (405B), and a bare Llama name does not say whose FP8 checkpoint it is."""
    suffix = next((s for s in _FP8_SUFFIXES if asked.lower().endswith(s)), None)
    if suffix is None:
        return None
    stem = asked[: -len(suffix)]
    base, checkpoint = _aliases().get(stem.lower()) or _aliases().get(stem.split("/", 1)[-1].lower()) or ("", "")
    if not base:
        return None
    path = _bundled()[base]
    d = _read_json(path)
    if d.get("quantization_config"):  # the stem is an fp8 checkpoint already
        return None
    org = asked.split("/", 1)[0].lower() if "/" in asked else None
    if base.startswith("Qwen/") and org in (None, "qwen"):
        qc = _read_json(_bundled()[_QWEN_FP8_SOURCE])["quantization_config"]
        name = checkpoint + ("-FP8" if suffix == "-fp8" else asked[len(stem):])  # Qwen's spelling of its own ids
        return _spec(name, {**d, "quantization_config": qc}, f"{path} with the quantization_config of {_QWEN_FP8_SOURCE}")
    if org not in _FP8_PUBLISHERS:
        return None
    if org == "nvidia":
        modelopt = _bundled()[_MODELOPT_FP8_SOURCE]
        return _spec(asked, d, f"{path} with the hf_quant_config.json of {_MODELOPT_FP8_SOURCE}",
                     _read_json(modelopt.with_name(modelopt.stem + _QUANT_SUFFIX)))
    return _spec(asked, {**d, "quantization_config": _CHANNEL_FP8},
                 f"{path} with a per-channel fp8 quantization_config (another publisher's FP8 checkpoint)")


def _fp8_publisher_hint(asked: str) -> str | None:
    """For ``<bundled Llama id>-FP8`` without a publisher (Meta publishes no such checkpoint but the
    405B's): which publishers' ids are priced."""
    suffix = next((s for s in _FP8_SUFFIXES if asked.lower().endswith(s)), None)
    stem = asked[: -len(suffix)] if suffix else ""
    alias = (_aliases().get(stem.lower()) or _aliases().get(stem.split("/", 1)[-1].lower())) if suffix else None
    if alias is None or not alias[0].startswith("meta-llama/") or asked.lower().split("/")[0] not in (
            "meta-llama", asked.lower()):
        return None
    return (f"Meta publishes no FP8 checkpoint of {alias[1]}; another publisher's is priced under its own id "
            "(RedHatAI/, neuralmagic/ or nvidia/ and the name as that publisher spells it).")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from exc
    except UnicodeDecodeError as exc:  # JSON files are UTF-8
        raise ConfigError(f"model config {path} is not valid UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model config {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"model config {path} must hold a JSON object, got {type(data).__name__}")
    return data


def config_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form of a config (dict or ``PretrainedConfig``), with every field also under its
    canonical name (``_ALIASES``: transformers 5 writes Qwen3-MoE's expert count as ``num_local_experts``)."""
    if isinstance(config, dict):
        d = config
    else:
        to_dict = getattr(config, "to_dict", None)
        if to_dict is None:
            raise ConfigError(f"cannot read a model config from {type(config).__name__}")
        d = to_dict()
    missing = {k: d[a] for k, a in _ALIASES.items() if d.get(k) is None and d.get(a) is not None}
    return {**d, **missing} if missing else d


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check(config: Any, where: str) -> str:
    d = config_dict(config)
    mt = d.get("model_type")
    if mt is not None and mt not in _FAMILIES:  # before the fields: another family names them otherwise
        raise ConfigError(f"model config {where}: model_type {mt!r} is not supported; "
                          f"supported: {', '.join(_FAMILIES)}")
    for key in REQUIRED_FIELDS:
        if d.get(key) is None:
            raise ConfigError(f"model config {where} lacks the required field {key!r}")
    for bias in ("attention_bias", "mlp_bias"):  # no supported checkpoint has them; they are not priced
        if d.get(bias):
            raise ConfigError(f"model config {where}: {bias}=true is not supported (the supported "
                              f"{', '.join(_FAMILIES)} checkpoints have none); it must be false")
    act = d.get("hidden_act", "silu")
    if act != "silu":  # vLLM's Llama and Qwen MLPs run SiLU gating only (they raise on any other)
        raise ConfigError(f"model config {where}: hidden_act {act!r} is not supported; it must be 'silu'")
    optional = ("head_dim", "num_key_value_heads")
    if mt == "qwen3_moe":
        for key in _MOE_FIELDS:
            if _field(d, key) is None:
                raise ConfigError(f"model config {where} lacks the required field {key!r}")
        optional += _MOE_FIELDS
    for key in REQUIRED_FIELDS[1:] + optional:
        v = _field(d, key)
        if (key in REQUIRED_FIELDS or v is not None) and not _positive_int(v):
            raise ConfigError(f"model config {where}: field {key!r} must be a positive integer, got {v!r}")
    if mt == "qwen3_moe":
        _check_moe(d, where)
    _check_layers(d, where)
    _check_rope(d, where)
    return _FAMILIES[mt]


def _check_moe(d: dict[str, Any], where: str) -> None:
    k, e = d["num_experts_per_tok"], _field(d, "num_experts")
    local = d.get(_ALIASES["num_experts"])
    if local is not None and local != e:
        raise ConfigError(f"model config {where}: num_experts {e} and num_local_experts {local} disagree; "
                          "give one expert count")
    if e < 2:
        raise ConfigError(f"model config {where}: num_experts {e} is not a mixture of experts; it must be >= 2 "
                          "(a one-expert model is a dense qwen3 model)")
    if k > e:
        raise ConfigError(f"model config {where}: num_experts_per_tok {k} exceeds num_experts {e}; "
                          f"it must be 1..{e}")
    # one traced layer stands for all: dense MLP layers among the MoE ones are not modelled
    if d.get("mlp_only_layers"):
        raise ConfigError(f"model config {where}: mlp_only_layers {d['mlp_only_layers']!r} is not supported "
                          "(only models whose layers are all MoE are); it must be []")
    if d.get("decoder_sparse_step", 1) not in (None, 1):
        raise ConfigError(f"model config {where}: decoder_sparse_step {d['decoder_sparse_step']!r} is not "
                          "supported (only models whose layers are all MoE are); it must be 1")


def _check_layers(d: dict[str, Any], where: str) -> None:
    """One traced layer is repeated ``num_hidden_layers`` times: every layer must be full attention."""
    n = d["num_hidden_layers"]
    for key in ("layer_types", "mlp_layer_types"):
        types = d.get(key)
        if types is None:
            continue
        if not isinstance(types, list) or len(types) != n:
            raise ConfigError(f"model config {where}: {key} must list one type per layer "
                              f"(num_hidden_layers {n}), got {types!r}")
        kinds = sorted(set(map(str, types)))
        if len(kinds) > 1:
            counts = ", ".join(f"{types.count(t)} x {t!r}" for t in kinds)
            raise ConfigError(f"model config {where}: {key} mixes layer types ({counts}); only models whose "
                              "layers are all the same type are supported")
    types = d.get("layer_types")
    if types is not None:  # when given, it says which layers slide
        sliding = types[0] != "full_attention"
    else:  # Qwen-style: layers from max_window_layers on use the sliding window (all of a qwen3_moe's:
        # transformers' Qwen3-MoE reads no max_window_layers); transformers' default where not given
        every = d.get("model_type") == "qwen3_moe"
        sliding = bool(d.get("use_sliding_window")) and d.get("sliding_window") is not None
        start = 0
        if sliding and not every:  # transformers is imported only for a sliding config that omits it
            start = d["max_window_layers"] if "max_window_layers" in d else (
                _config_default(d.get("model_type"), "max_window_layers") or 0)
            sliding = start < n
    if sliding:  # the IR prices attention over the whole KV length
        got = (f"layer_types {types[0]!r}" if types else
               f"use_sliding_window with sliding_window {d['sliding_window']} (every layer of a {d.get('model_type')} "
               "model slides)" if every else
               f"use_sliding_window with max_window_layers {start} < num_hidden_layers {n}")
        raise ConfigError(f"model config {where}: {got} is not supported; only full_attention layers are "
                          "(sliding-window attention is not modelled)")


def _check_rope(d: dict[str, Any], where: str) -> None:
    for key in ("rope_scaling", "rope_parameters"):
        rope = d.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise ConfigError(f"model config {where}: {key} must be an object, got {rope!r}")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ConfigError(f"model config {where}: {key} rope_type {kind!r} is not supported; "
                              f"supported: {', '.join(ROPE_TYPES)}")


def _quant(d: dict[str, Any], extra: dict[str, Any] | None, where: str) -> tuple[str | None, Any]:
    qc = d.get("quantization_config")
    if extra is not None:
        qc = extra
    if not qc:
        return None, None
    if not isinstance(qc, dict):
        qc = config_dict(qc)
    # the method: ModelOpt's ``quant_algo`` (in hf_quant_config.json's ``quantization``, or in a
    # config.json ``quantization_config`` with ``quant_method: modelopt``), else HF ``quant_method``
    modelopt = qc.get("quantization") if isinstance(qc.get("quantization"), dict) else qc
    if "quant_algo" in modelopt:
        method = modelopt["quant_algo"]
        if method is None:  # ModelOpt without weight quantization (KV cache only)
            return None, qc
    else:
        method = qc.get("quant_method")
    if method == "compressed-tensors":
        method = _compressed_tensors_scheme(qc, where)
    if method is None:  # no method named: fp8 if the section says so
        method = _QUANT_SUPPORTED if "fp8" in json.dumps(qc).lower() else None
    if method is None or _QUANT_SUPPORTED not in str(method).lower():
        # anything else (int4 AWQ/GPTQ, NVFP4, ...) would be priced as bf16: refuse it
        raise ConfigError(f"model config {where}: quantization {method!r} is not supported; "
                          f"supported: {_QUANT_SUPPORTED} (e.g. quant_method 'fp8', quant_algo 'FP8', "
                          "compressed-tensors W8A8-FP8)")
    return _QUANT_SUPPORTED, qc


def _compressed_tensors_scheme(qc: dict[str, Any], where: str) -> str:
    """``"fp8"`` when every ``config_groups`` entry of a compressed-tensors section quantizes
    weights and input activations to 8-bit floats (W8A8-FP8: fp8 GEMMs, as vLLM runs them); else
    the scheme, e.g. ``'compressed-tensors w4a16 (int weights, bf16 activations)'``, for the caller
    to refuse."""
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ConfigError(f"model config {where}: compressed-tensors quantization_config has no config_groups")
    for key, group in groups.items():
        if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
            raise ConfigError(f"model config {where}: compressed-tensors config_groups[{key!r}] has no weights scheme")
        targets = group.get("targets") or []
        if "Linear" not in targets:  # other targets would leave some linear layers bf16 (or quantize others)
            raise ConfigError(f"model config {where}: compressed-tensors config_groups[{key!r}] targets {targets!r}; "
                              "supported: groups that target 'Linear' (every linear layer but the ignored ones)")
        w = group["weights"]
        a = group.get("input_activations") or {}
        if not (w.get("num_bits") == 8 and w.get("type") == "float" and a.get("num_bits") == 8
                and a.get("type") == "float"):
            acts = f"{a.get('type')} activations" if a else "bf16 activations"
            return f"compressed-tensors w{w.get('num_bits')}a{a.get('num_bits', 16)} ({w.get('type')} weights, {acts})"
    return _QUANT_SUPPORTED


def _spec(name: str, config: Any, where: str, quant_extra: dict[str, Any] | None = None,
          quant_where: str | None = None) -> ModelSpec:
    """``quant_extra``: the quantization section of a file beside the config (``quant_where``)."""
    family = _check(config, where)
    quantization, qc = _quant(config_dict(config), quant_extra, quant_where or where)
    return ModelSpec(name=name, config=config, family=family, quantization=quantization,
                     quant_config=qc, source=where)


def _from_file(path: Path, name: str | None = None) -> ModelSpec:
    d = _read_json(path)
    quant_file = path.with_name(path.stem + _QUANT_SUFFIX) if path.name != "config.json" \
        else path.with_name("hf_quant_config.json")
    extra = _read_json(quant_file) if quant_file.is_file() else None
    if name is None:  # a model folder is named by its absolute path, which `vllm serve` takes from any
        # directory (its config's _name_or_path is where it was saved from, often another machine's); a
        # bare file by its own. The folder resolved, not the file: a hub cache's config.json is a
        # link into its blobs
        path = path.parent.resolve() / path.name
        name = str(path.parent) if path.name == "config.json" else d.get("_name_or_path") or str(path)
    return _spec(str(name), d, str(path), extra, str(quant_file) if extra is not None else None)


def _looks_like_path(model: str) -> bool:
    """A local path rather than an HF id (``org/name``): a .json file, an existing folder, or a name no
    hub id has (starting with ``/``, ``.`` or ``~``, ending with ``/``, or of more than two parts)."""
    here = Path(model).expanduser()  # a file named like a bare id does not hide the bundled model
    return (model.endswith(".json") or here.is_dir() or model.startswith(("/", ".", "~"))
            or model.endswith("/") or model.count("/") > 1)


def load_config(model: Any) -> ModelSpec:
    """The ``ModelSpec`` of a model given as an HF id, a local path, a ``PretrainedConfig`` or a dict.

    HF ids match case-insensitively and without their org (``"qwen3-8b"``); ids of other checkpoints
    with a bundled architecture resolve to it and keep their own name (``_aliases``, ``_fp8_twin``). A path
    may name a model directory holding ``config.json`` or the JSON file itself. An unknown id
    raises ``UnknownNameError`` (with the closest bundled id); a malformed file or a missing
    field raises ``ConfigError`` naming the file and the field.

    >>> load_config("Qwen/Qwen3-30B-A3B-Instruct-2507").family
    'qwen3_moe'
    """
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return _spec(str(model.get("_name_or_path") or model.get("name") or "custom"), model, "<dict>")
    if isinstance(model, Path) or (isinstance(model, str) and _looks_like_path(model)):
        path = Path(model).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"model config {path} does not exist")
        if path.suffix != ".json":
            raise ConfigError(f"{path} is not a model config: give a config.json (or a .json file) or the "
                              "model directory that holds its config.json")
        return _from_file(path)
    if isinstance(model, str):
        alias = _aliases().get(model.lower())
        if alias is not None:
            return _from_file(_bundled()[alias[0]], alias[1])
        spec = _fp8_twin(model)
        if spec is None:
            raise UnknownNameError("model", model, list_models(), _fp8_publisher_hint(model))
        return spec
    if hasattr(model, "to_dict") and hasattr(model, "model_type"):  # transformers.PretrainedConfig
        name = getattr(model, "_name_or_path", "") or getattr(model, "name_or_path", "") or model.model_type
        return _spec(str(name), model, f"<{type(model).__name__}>")
    raise ConfigError(f"cannot load a model config from {type(model).__name__}; give an HF id "
                      f"(one of: {', '.join(list_models())}), a path, a PretrainedConfig or a dict")


def max_context(spec: Any) -> tuple[int, str] | None:
    """Longest sequence (prompt + output tokens) the model's config allows, and where it comes from,
    as vLLM derives its ``--max-model-len`` limit: ``max_position_embeddings``, times the factor of
    a ``yarn``, ``linear`` or ``dynamic`` rope scaling (``llama3`` scaling is already in it). None: not given."""
    if spec is None:
        return None
    limit, source = spec.get("max_position_embeddings"), "max_position_embeddings in its config"
    if limit is None:  # transformers (and so vLLM) fill in the config class's default
        limit = _config_default(spec.get("model_type"), "max_position_embeddings")
        source = f"not in the config: transformers' default max_position_embeddings for {spec.get('model_type')}"
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return None
    rope = spec.get("rope_scaling") or spec.get("rope_parameters")  # transformers 5 writes the latter
    if isinstance(rope, dict) and isinstance(rope.get("factor"), int | float):
        kind, factor = rope.get("rope_type") or rope.get("type"), rope["factor"]
        if kind == "yarn":
            original = rope.get("original_max_position_embeddings")
            base = int(original or limit)
            name = "original_max_position_embeddings" if original else "max_position_embeddings (no original_" \
                "max_position_embeddings given)"
            return int(base * factor), f"{name} {base} x yarn factor {factor} in its config"
        if kind in ("linear", "dynamic"):
            return int(limit * factor), f"max_position_embeddings {limit} x {kind} rope factor {factor} in its config"
    return limit, source


def _config_default(model_type: Any, key: str) -> Any:
    """``key`` of ``model_type``'s transformers config class by default (None: unknown)."""
    try:
        from transformers import AutoConfig

        return getattr(AutoConfig.for_model(str(model_type)), key, None)
    except Exception:  # an unknown model_type is reported elsewhere; here it only means no default known
        return None
