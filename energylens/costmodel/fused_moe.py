"""Which MoE expert GEMMs run on vLLM's untuned default tile, and how many rows that tile computes.

vLLM runs a bf16 MoE layer with its Triton fused-MoE kernel, tiled by a config it looks up per
(local experts E, intermediate size per GPU N, GPU model) in the files it ships
(``vllm_fused_moe_configs.json``: those of vLLM 0.11.1, the engine the profiles are fitted on).
Where none ships, vLLM 0.11.1's ``get_default_config`` picks the tile from the step's token count
M alone: 16 token rows per expert while ``M <= E``, 64 rows (with 64 x 32 weight tiles) above.
The kernel pads each expert's token rows to a multiple of that tile height
(``moe_align_block_size``) and runs the MMAs of the padded rows too, so a decode step that gives
each expert a few tokens computes a full 64-row tile per expert hit. The cost model prices those
padded FLOPs at the rate ``Profile.moe_default_tile_efficiency`` (``costmodel.compute``).

Tuned configs (and vLLM >= 0.19, whose default tile grows with M) are priced by the roofline alone.

>>> default_tile_rows("H100-SXM", local_experts=64, n_per_gpu=768, tokens=96)   # no tuned config
64
>>> default_tile_rows("H100-SXM", local_experts=64, n_per_gpu=768, tokens=64)   # M <= E: 16-row tile
0
>>> default_tile_rows("H200", local_experts=128, n_per_gpu=768, tokens=512)     # tuned on H200
0
>>> round(padded_rows_per_expert(6.0, 64), 2)                                   # a 64-row tile per expert hit
63.84
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_TILE_ROWS", "default_tile_rows", "padded_rows_per_expert", "tuned_shapes"]

#: Token rows of vLLM 0.11.1's default fused-MoE tile when the step has more tokens than local experts.
DEFAULT_TILE_ROWS = 64

_CONFIGS = Path(__file__).with_name("vllm_fused_moe_configs.json")


@functools.cache
def tuned_shapes(gpu_name: str) -> frozenset[tuple[int, int]] | None:
    """(E, N) shapes with a shipped bf16 config on ``gpu_name``; None: not a GPU vLLM's Triton MoE tiles."""
    data = json.loads(_CONFIGS.read_text())
    shapes = data["tuned_bf16"].get(gpu_name)
    return None if shapes is None else frozenset((int(e), int(n)) for e, n in shapes)


def default_tile_rows(gpu_name: str, local_experts: float, n_per_gpu: float, tokens: Any) -> Any:
    """Tile height (rows) of the untuned default tile the expert GEMMs of a bf16 MoE layer run on
    with ``tokens`` tokens in the step, else 0 (a tuned config, the 16-row tile of ``M <= E``, or a
    GPU outside the table). Elementwise over an array of ``tokens``."""
    shapes = tuned_shapes(gpu_name)
    untuned = shapes is not None and (round(local_experts), round(n_per_gpu)) not in shapes
    over = untuned & (np.asarray(tokens) > local_experts + 0.5)  # token counts are integers; ours carry rounding error
    rows = np.where(over, DEFAULT_TILE_ROWS, 0)
    return rows if isinstance(tokens, np.ndarray) else int(rows)


def padded_rows_per_expert(mean_rows: Any, tile: Any) -> Any:
    """Expected rows an expert's GEMMs compute when its token count is Poisson with mean
    ``mean_rows`` and each expert hit is padded to a multiple of ``tile`` rows:
    ``tile * sum_j P(n > j * tile)``. Elementwise over arrays; 0 where ``tile`` is 0."""
    if isinstance(mean_rows, np.ndarray) or isinstance(tile, np.ndarray):
        lam, t = np.broadcast_arrays(np.asarray(mean_rows, float), np.asarray(tile, float))
        out = np.array([_padded(float(a), float(b)) for a, b in zip(lam.ravel(), t.ravel(), strict=True)])
        return out.reshape(lam.shape)
    return _padded(float(mean_rows), float(tile))


@functools.lru_cache(maxsize=65536)
def _padded(lam: float, tile: float) -> float:
    if tile <= 0 or lam <= 0:
        return 0.0
    n_max = int(lam + 12.0 * math.sqrt(lam) + tile + 20)
    n = np.arange(n_max + 1, dtype=float)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(n[1:]))))
    pmf = np.exp(n * math.log(lam) - lam - log_fact)
    tiles = np.ceil(n / tile)  # tiles an expert with n rows computes (0 for an expert not hit)
    return float(tile * np.dot(pmf, tiles))
