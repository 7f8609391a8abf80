"""Export a chosen plan to the engines that run it: vLLM (serving) and Megatron-Core.

The search fills a :class:`PlanSpec` (or any object with the same attributes, see
:class:`PlanLike`); :func:`to_vllm` and :func:`to_megatron` turn it into the engines' own argument
names, checked against the engines' sources (see ``vllm.py`` and ``megatron.py`` for the pinned
versions and files).

>>> from energylens.typing import Parallel
>>> plan = PlanSpec(model="Qwen/Qwen3-30B-A3B", gpu="H100-SXM", num_gpus=8,
...                 parallel=Parallel(tp=4, ep=8, dp=2), max_num_seqs=64, max_model_len=1280)
>>> to_vllm(plan)["enable_expert_parallel"]
True
>>> to_megatron(plan)["expert_model_parallel_size"]
8
"""

from __future__ import annotations

from energylens.export.megatron import MegatronExtras, megatron_extras, to_megatron
from energylens.export.plan import QUANTIZATIONS, PlanLike, PlanSpec, check_plan
from energylens.export.vllm import to_vllm, vllm_notes

__all__ = [
    "PlanLike",
    "PlanSpec",
    "QUANTIZATIONS",
    "check_plan",
    "to_vllm",
    "vllm_notes",
    "to_megatron",
    "megatron_extras",
    "MegatronExtras",
]
