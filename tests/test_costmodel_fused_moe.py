"""vLLM 0.11's untuned fused-MoE tile: which shapes run on it, its padded rows, and how it is priced."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import poisson

import energylens as el
from energylens.costmodel.fit import (
    MOE_DEFAULT_TILE_EFFICIENCY,
    kernel_default_tile_efficiency,
    mlenergy_profile,
    read_mlenergy,
    with_default_tile,
)
from energylens.costmodel.fused_moe import default_tile_rows, padded_rows_per_expert, tuned_shapes
from energylens.costmodel.profile import load_profile

MOE = "Qwen/Qwen3-30B-A3B-Instruct-2507"
CHAT = dict(prompt_len=634, output_len=918)
DEV = Path(__file__).resolve().parents[1] / "data" / "public" / "mlenergy_dev.csv"
KERNELS = Path(__file__).resolve().parents[1] / "data" / "public" / "aiconfigurator_kernels"


def test_tuned_shapes_are_vllm_0_11_1s_config_files():
    assert (128, 192) in tuned_shapes("H100-SXM")       # E=128,N=192,device_name=NVIDIA_H100_80GB_HBM3.json
    assert (128, 768) not in tuned_shapes("H100-SXM")   # Qwen3-30B-A3B's experts: no H100 file
    assert (128, 768) in tuned_shapes("H200")
    assert tuned_shapes("MI300X") is None                # not a GPU the table covers: never the default tile


def test_default_tile_switches_where_tokens_pass_local_experts():
    assert default_tile_rows("H100-SXM", 64, 768, 64) == 0
    assert default_tile_rows("H100-SXM", 64, 768, 65) == 64
    assert default_tile_rows("H100-SXM", 128, 192, 4096) == 0   # tuned
    assert default_tile_rows("MI300X", 64, 768, 4096) == 0
    np.testing.assert_array_equal(default_tile_rows("H100-SXM", 64, 768, np.array([8.0, 64.0, 96.0])), [0, 0, 64])


@pytest.mark.parametrize("lam", [0.3, 6.0, 64.0, 700.0])
def test_padded_rows_match_a_direct_poisson_sum(lam):
    n = np.arange(int(lam + 20 * math.sqrt(lam) + 200))
    want = float(np.sum(poisson.pmf(n, lam) * np.ceil(n / 64) * 64))
    assert padded_rows_per_expert(lam, 64) == pytest.approx(want, rel=1e-9)
    assert padded_rows_per_expert(lam, 0) == 0.0
    assert padded_rows_per_expert(lam, 64) >= lam


def _itl(batch: int, gpu: str = "H100-SXM", model: str = MOE, **profile_params) -> float:
    prof = load_profile(gpu).with_params(**profile_params)
    est = el.estimate(model, el.Cluster(gpu, num_gpus=2), el.Workload(batch=batch, **CHAT),
                      el.Parallel(tp=2, ep=2), profile=prof)
    return est.serving.median_itl_s


def test_legacy_tiles_slow_only_steps_past_the_switch():
    # ep=2: 64 local experts of N=768, untuned on H100 in vLLM 0.11.1
    assert _itl(64, legacy_moe_tiles=True) == pytest.approx(_itl(64))
    assert _itl(96, legacy_moe_tiles=True) > 1.1 * _itl(96)
    assert _itl(96) == _itl(96, moe_default_tile_efficiency=None)  # the default prices vLLM >= 0.19


def test_legacy_tiles_need_an_untuned_bf16_shape_and_a_fitted_rate():
    assert _itl(96, "B200", legacy_moe_tiles=True) == _itl(96, "B200")  # no B200 coefficient
    fp8 = "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8"                        # block-fp8 MoE: another default tile
    assert _itl(96, model=fp8, legacy_moe_tiles=True) == pytest.approx(_itl(96, model=fp8))


def test_the_tile_rate_is_the_kernel_tables_and_prices_the_jump_of_the_2gpu_rows():
    import csv

    from energylens.costmodel.hardware import get_gpu

    with open(KERNELS / "moe_default_tile_h100_sxm.csv", newline="") as fh:
        measured = kernel_default_tile_efficiency(list(csv.DictReader(fh)), get_gpu("H100-SXM"))
    assert MOE_DEFAULT_TILE_EFFICIENCY["H100-SXM"] == pytest.approx(measured, abs=5e-4)
    rows = [r for r in read_mlenergy(DEV)
            if r.num_gpus == 2 and round(r.avg_batch_size) in (64, 96, 192)]
    base = load_profile("H100-SXM").with_params(moe_default_tile_efficiency=None)
    prof = with_default_tile(base, rows, MOE_DEFAULT_TILE_EFFICIENCY["H100-SXM"])
    assert prof.moe_default_tile_efficiency == MOE_DEFAULT_TILE_EFFICIENCY["H100-SXM"]
    res = prof.provenance.residuals
    assert res["mape_itl_s_pct_default_tile_rows"] < res["mape_itl_s_pct_default_tile_rows_before"] / 2
    assert not prof.legacy_moe_tiles  # stored off: estimate's default engine is vLLM >= 0.19
    assert mlenergy_profile("H100-SXM").legacy_moe_tiles


def test_the_twelve_coefficient_fit_prices_the_tile_as_the_benchmark_does():
    # fit._predict (what fit_profile minimises) must price a row as benchmarks/accuracy.py does:
    # el.estimate under the ML.ENERGY profile, untuned tile included (1-GPU E=128: steps with a
    # chunked prefill pass M > 128)
    from energylens.api import resolve_model
    from energylens.costmodel import fit
    from energylens.costmodel.hardware import get_gpu

    row = next(r for r in read_mlenergy(DEV) if r.model_id == MOE and r.num_gpus == 1
               and r.gpu_model.startswith("H100") and round(r.avg_batch_size) == 64)
    gpu, prof = get_gpu("H100-SXM"), mlenergy_profile("H100-SXM")
    params = {name: getattr(prof, name) for name, *_ in fit.FIT_PARAMS}
    feat = fit._features([row], resolve_model, gpu)
    pred = fit._predict(feat, gpu, params, prof.moe_default_tile_efficiency)
    untiled = fit._predict(feat, gpu, params)
    est = el.estimate(MOE, el.Cluster("H100-SXM"), row.workload(), profile=prof, check_memory=False).serving
    assert pred["step_s"][0] == pytest.approx(est.mean_step_s, rel=1e-6)
    assert pred["power_w"][0] == pytest.approx(est.avg_power_w, rel=1e-6)
    assert pred["step_s"][0] > untiled["step_s"][0]
