"""Full-size plans of the kinds ML.ENERGY publishes (dense TP, MoE TP+EP, FP8, 1-8 GPUs, three GPU
generations) stay physical: per-GPU power between idle and TDP, ITL up and energy per token down
with batch, and energy per token = power / output token rate. These are the rows the accuracy
script predicts on files other than the dev one; no measurement is involved."""

from __future__ import annotations

import pytest

import energylens as el
from energylens.costmodel.hardware import get_gpu

CONFIGS = [  # model, GPU, GPUs, parallel, task prompt/output lengths (ML.ENERGY v3.0 means)
    ("Qwen/Qwen3-14B", "H100-SXM", 1, el.Parallel(), (634, 600)),
    ("Qwen/Qwen3-32B", "B200", 2, el.Parallel(tp=2), (224, 8000)),
    ("Qwen/Qwen3-4B-Thinking-2507", "H200", 1, el.Parallel(), (224, 8000)),
    ("meta-llama/Llama-3.1-70B-Instruct", "H100-SXM", 4, el.Parallel(tp=4), (634, 400)),
    ("meta-llama/Llama-3.3-70B-Instruct", "B200", 8, el.Parallel(tp=8), (634, 400)),
    ("meta-llama/Llama-3.1-405B-Instruct-FP8", "H200", 8, el.Parallel(tp=8), (634, 400)),
    ("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8", "H100-SXM", 8, el.Parallel(tp=8, ep=8), (634, 900)),
    ("Qwen/Qwen3-235B-A22B-Thinking-2507", "B200", 8, el.Parallel(tp=8, ep=8), (224, 8000)),
    ("Qwen/Qwen3-30B-A3B-Thinking-2507", "H100-SXM", 2, el.Parallel(tp=2, ep=2), (224, 8000)),
]


@pytest.mark.parametrize("model,gpu,n,par,lens", CONFIGS, ids=[f"{c[0].split('/')[1]}-{c[1]}x{c[2]}" for c in CONFIGS])
def test_hidden_like_plans_are_physical(model, gpu, n, par, lens):
    spec = get_gpu(gpu)
    serving = {}
    for batch in (8, 256):
        wl = el.Workload(batch=batch, prompt_len=lens[0], output_len=lens[1])
        # large batches may not fit the memory estimate; ML.ENERGY runs held them (prefix caching)
        s = el.estimate(model, el.Cluster(gpu, num_gpus=n), wl, par, check_memory=False).serving
        per_gpu_w = s.avg_power_w / n
        assert spec.idle_power_w <= per_gpu_w <= spec.tdp_w * 1.001, (batch, per_gpu_w)
        assert s.energy_per_output_token_j == pytest.approx(s.avg_power_w / s.output_tokens_per_s, rel=1e-6)
        serving[batch] = s
    assert serving[256].median_itl_s > serving[8].median_itl_s
    assert serving[256].energy_per_output_token_j < serving[8].energy_per_output_token_j
