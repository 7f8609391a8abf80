"""Microbenchmarks: shapes derived from the model configs, CPU runs, skips with reasons."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from energylens.errors import UnknownNameError  # noqa: E402
from energylens.runtime.fake_nvml import FakeClock, FakeGpu, FakeNVML  # noqa: E402
from energylens.runtime.meter import NullMeter, NvmlMeter  # noqa: E402
from energylens.runtime.microbench import (  # noqa: E402
    Bench,
    attention_layouts,
    gemm_shapes,
    run_bench,
    suite_benches,
)
from energylens.runtime.timing import Timing, merge_windows, time_windows  # noqa: E402

FAST = dict(warmup=0, repeats=1, min_window_s=0.0)


def test_gemm_shapes_of_llama_8b():
    shapes = {(s["m"], s["n"], s["k"]): s["sources"] for s in gemm_shapes(["Llama-3.1-8B"], [4], [2048])}
    assert shapes[(4, 4096, 4096)] == ["Llama-3.1-8B:o_proj:decode", "Llama-3.1-8B:q_proj:decode"]
    assert (4, 1024, 4096) in shapes  # K and V: 8 KV heads x 128
    assert (2048, 14336, 4096) in shapes and (2048, 4096, 14336) in shapes  # MLP at prefill
    assert (4, 128256, 4096) in shapes and (2048, 128256, 4096) not in shapes  # LM head at decode only


def test_moe_expert_gemms_get_tokens_per_expert():
    shapes = gemm_shapes(["Qwen3-30B-A3B"], [256], [])
    experts = [s for s in shapes if any("expert" in src for src in s["sources"])]
    # 256 tokens x top-8 over 128 experts = 16 tokens per expert
    assert {(s["m"], s["n"], s["k"]) for s in experts} == {(16, 768, 2048), (16, 2048, 768)}
    assert any("router" in src for s in shapes for src in s["sources"])


def test_attention_layouts_dedupe():
    lays = attention_layouts(["Llama-3.1-8B", "Qwen3-8B", "Llama-3.2-1B"])
    assert {(x["heads"], x["kv_heads"], x["head_dim"]) for x in lays} == {(32, 8, 128), (32, 8, 64)}
    assert next(x for x in lays if x["head_dim"] == 128)["sources"] == ["Llama-3.1-8B", "Qwen3-8B"]


def test_full_gpu_suite_is_a_plan_not_a_run():
    parts = suite_benches("full", "cuda", ["Llama-3.2-1B", "Qwen3-30B-A3B"], "bfloat16")
    assert set(parts) == {"gemm", "memory", "attention", "power"}
    keys = [b.key for p in parts.values() for b in p]
    assert len(keys) == len(set(keys))
    assert {b.params["blocks"] for b in parts["power"] if b.kind == "sm_contention"} >= {0, 8, 32}
    with pytest.raises(UnknownNameError, match="suite"):
        suite_benches("medium", "cpu", ["Llama-3.2-1B"], "float32")


@pytest.mark.parametrize(
    "bench",
    [
        Bench("gemm", {"m": 4, "n": 8, "k": 16, "dtype": "float32"}),
        Bench("hbm_copy", {"bytes": 4096, "dtype": "float32"}),
        Bench("elementwise", {"op": "add", "tokens": 4, "hidden": 8, "dtype": "float32"}),
        Bench("elementwise", {"op": "silu_mul", "tokens": 4, "hidden": 8, "dtype": "float32"}),
        Bench("norm", {"op": "rms_norm_hf", "tokens": 4, "hidden": 8, "dtype": "float32"}),
        Bench("norm", {"op": "rms_norm_fused", "tokens": 4, "hidden": 8, "dtype": "float32"}),
        Bench("attention_prefill", {"heads": 4, "kv_heads": 2, "head_dim": 8, "batch": 1, "seq": 16,
                                    "dtype": "float32"}),
        Bench("attention_decode", {"heads": 4, "kv_heads": 2, "head_dim": 8, "batch": 2, "kv_len": 32,
                                   "dtype": "float32"}),
    ],
    ids=lambda b: b.key[:40],
)
def test_cpu_benches_run(bench):
    r = run_bench(bench, device="cpu", meter=NullMeter(), **FAST)
    assert r["status"] == "ok" and r["result"]["time_s"] > 0
    assert r["result"]["energy_j"] is None and "CPU" in r["result"]["energy_unavailable_reason"]
    assert r["derived"]["bytes"] > 0
    json.dumps(r)


def test_power_benches_skip_with_reasons_on_cpu():
    for kind, params, why in [
        ("idle", {"seconds": 0.1}, "energy meter"),
        ("static", {"seconds": 0.1}, "energy meter"),
        ("sm_contention", {"m": 8, "n": 8, "k": 8, "blocks": 4, "dtype": "float32"}, "needs a GPU"),
    ]:
        r = run_bench(Bench(kind, params), device="cpu", meter=NullMeter(), **FAST)
        assert r["status"] == "skipped" and why in r["reason"]


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="hbm_copy"):
        Bench("hbm_cpy")


def test_time_windows_with_a_fake_gpu_meter():
    clock = FakeClock()
    meter = NvmlMeter(nvml=FakeNVML([FakeGpu(power_w=400.0)], clock), clock=clock, sync=lambda: None)

    def work() -> None:
        clock.advance(0.01)  # each call "takes" 10 ms at 400 W

    t = time_windows(work, meter, "w", warmup=1, repeats=3, min_window_s=0.1, max_iters=50)
    assert isinstance(t, Timing) and t.iters == 10
    assert t.energy_j == pytest.approx(4.0)  # 400 W x 10 ms per call
    assert t.avg_power_w == pytest.approx(400.0) and t.energy_source == "counter"
    merged = merge_windows([t.windows[0], t.windows[1]])
    assert merged.energy_j == pytest.approx(80.0) and len(merged.gpus) == 2
    assert merge_windows([t.windows[0], NullMeter()._end("w", 0.0)]).energy_j is None


@pytest.mark.gpu
def test_gpu_sm_contention_slows_the_gemm():
    from energylens.runtime.meter import open_meter

    meter = open_meter("cuda:0")
    r = run_bench(Bench("sm_contention", {"m": 4096, "n": 4096, "k": 4096, "blocks": 32, "dtype": "bfloat16"}),
                  device="cuda", meter=meter)
    assert r["status"] == "ok" and r["result"]["slowdown"] > 1.0
