"""Bundled HF ``config.json`` files of the supported models, and ``load_config``.

Each ``<org>--<name>.json`` file here is the Hugging Face ``config.json`` of one checkpoint
(file name = repo id with ``/`` replaced by ``--``), copied unchanged from public sources (see
``/work/shared/models/README.md``) or written from the model card; no hub is contacted at run
time. ``<id>.hf_quant_config.json`` holds NVIDIA ModelOpt's separate quantization file.
Written from model cards (not in the shared set): Qwen3-14B, Qwen3-4B and Qwen3-4B-Instruct-2507
(the 2507 checkpoint differs only in ``rope_theta`` 5e6 and 262,144 positions), Llama-3.2-1B/3B.

Importing this module imports neither torch nor transformers.

>>> spec = load_config("llama-3.1-8b")
>>> spec.name, spec.family, spec.config["hidden_size"]
('meta-llama/Llama-3.1-8B-Instruct', 'llama', 4096)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energylens.errors import ConfigError, UnknownNameError

__all__ = ["ModelSpec", "list_models", "load_config", "REQUIRED_FIELDS", "config_dict"]

_DIR = Path(__file__).resolve().parent
_QUANT_SUFFIX = ".hf_quant_config.json"

#: Fields every supported config must have (MoE configs additionally need the MoE fields).
REQUIRED_FIELDS: tuple[str, ...] = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "vocab_size",
)
_MOE_FIELDS: tuple[str, ...] = ("num_experts", "num_experts_per_tok", "moe_intermediate_size")
_FAMILIES: dict[str, str] = {"llama": "llama", "qwen3": "qwen3", "qwen3_moe": "qwen3_moe"}


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
        """A config field, for dict and ``PretrainedConfig`` configs alike."""
        if isinstance(self.config, dict):
            return self.config.get(key, default)
        return getattr(self.config, key, default)

    @property
    def is_moe(self) -> bool:
        return bool(self.get("num_experts"))


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


def _aliases() -> dict[str, str]:
    """Lower-cased id, bare name, and names without ``-Instruct`` / ``Meta-`` -> canonical id.

    Qwen's ``-Thinking-2507`` checkpoints name their ``-Instruct-2507`` twins: the same
    architecture with other weights (``/work/shared/models/README.md``), so the same config.
    """
    # a bundled id and its bare name are that checkpoint's own, never another one's alias
    out: dict[str, str] = {}
    for name in _bundled():
        out[name.lower()] = out[name.split("/", 1)[1].lower()] = name
    for name in _bundled():
        bare = name.split("/", 1)[1]
        forms = {name, bare}
        for f in list(forms):
            forms.add(f.replace("-Instruct-2507", ""))
            forms.add(f.replace("-Instruct-2507", "-Thinking-2507"))
            forms.add(f.replace("-Instruct", ""))
            forms.add(f.replace("Meta-Llama", "Llama"))
        if name.startswith("meta-llama/"):
            meta = {f"meta-llama/Meta-{bare}", f"Meta-{bare}"}
            forms |= meta | {f.replace("-Instruct", "") for f in meta}
        for f in forms:
            out.setdefault(f.lower(), name)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model config {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"model config {path} must hold a JSON object, got {type(data).__name__}")
    return data


def config_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form of a config (dict or ``PretrainedConfig``)."""
    if isinstance(config, dict):
        return config
    to_dict = getattr(config, "to_dict", None)
    if to_dict is None:
        raise ConfigError(f"cannot read a model config from {type(config).__name__}")
    return to_dict()


def _check(config: Any, where: str) -> str:
    d = config_dict(config)
    for key in REQUIRED_FIELDS:
        if d.get(key) is None:
            raise ConfigError(f"model config {where} lacks the required field {key!r}")
    mt = d["model_type"]
    if mt not in _FAMILIES:
        raise ConfigError(f"model config {where}: model_type {mt!r} is not supported; "
                          f"supported: {', '.join(_FAMILIES)}")
    if mt == "qwen3_moe":
        for key in _MOE_FIELDS:
            if d.get(key) is None:
                raise ConfigError(f"model config {where} lacks the required field {key!r}")
    for key in REQUIRED_FIELDS[1:]:
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"model config {where}: field {key!r} must be a positive integer, got {v!r}")
    return _FAMILIES[mt]


def _quant(d: dict[str, Any], extra: dict[str, Any] | None) -> tuple[str | None, Any]:
    qc = d.get("quantization_config")
    if extra is not None:
        qc = extra
    if not qc:
        return None, None
    if not isinstance(qc, dict):
        qc = config_dict(qc)
    text = json.dumps(qc).lower()
    if "fp8" in text:
        return "fp8", qc
    return None, qc


def _spec(name: str, config: Any, where: str, quant_extra: dict[str, Any] | None = None) -> ModelSpec:
    family = _check(config, where)
    quantization, qc = _quant(config_dict(config), quant_extra)
    return ModelSpec(name=name, config=config, family=family, quantization=quantization,
                     quant_config=qc, source=where)


def _from_file(path: Path, name: str | None = None) -> ModelSpec:
    d = _read_json(path)
    quant_file = path.with_name(path.stem + _QUANT_SUFFIX) if path.name != "config.json" \
        else path.with_name("hf_quant_config.json")
    extra = _read_json(quant_file) if quant_file.is_file() else None
    if name is None:
        name = d.get("_name_or_path") or (path.parent.name if path.name == "config.json" else path.stem)
    return _spec(str(name), d, str(path), extra)


def load_config(model: Any) -> ModelSpec:
    """The ``ModelSpec`` of a model given as an HF id, a local path, a ``PretrainedConfig`` or a dict.

    HF ids match case-insensitively; ``-Instruct`` may be left out (``"llama-3.1-70b"``). A path
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
    if isinstance(model, Path) or (isinstance(model, str) and (model.endswith(".json") or Path(model).is_dir())):
        path = Path(model)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"model config {path} does not exist")
        return _from_file(path)
    if isinstance(model, str):
        canonical = _aliases().get(model.lower())
        if canonical is None:
            raise UnknownNameError("model", model, list_models())
        return _from_file(_bundled()[canonical], canonical)
    if hasattr(model, "to_dict") and hasattr(model, "model_type"):  # transformers.PretrainedConfig
        name = getattr(model, "_name_or_path", "") or getattr(model, "name_or_path", "") or model.model_type
        return _spec(str(name), model, f"<{type(model).__name__}>")
    raise ConfigError(f"cannot load a model config from {type(model).__name__}; give an HF id "
                      f"(one of: {', '.join(list_models())}), a path, a PretrainedConfig or a dict")
