"""Energy = static x time + pJ/FLOP + pJ/byte, capped at TDP, never below the static floor."""

from __future__ import annotations

import numpy as np
import pytest

from energylens.costmodel.compute import OpWork, op_time_s
from energylens.costmodel.fit import write_profile
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.power import dynamic_energy_j, op_energy
from energylens.costmodel.profile import default_profile, load_profile

GPU = get_gpu("H100-SXM")


def work(tc_flops=0.0, hbm_bytes=0.0, rows=4096.0):
    return OpWork(tc_flops=tc_flops, vec_flops=0.0, hbm_bytes=hbm_bytes, rows=rows,
                  peak_flops_per_s=GPU.peak_flops_per_s("bf16"), kv=0.0, kernels=1.0)


@pytest.mark.parametrize("prof", [default_profile(GPU), load_profile("H100-SXM")])
@pytest.mark.parametrize("w", [work(tc_flops=1e15), work(hbm_bytes=1e10), work(tc_flops=1e12, hbm_bytes=1e9),
                               work(tc_flops=1e6, hbm_bytes=1e3)])
def test_power_never_exceeds_tdp_and_energy_covers_static_floor(prof, w):
    t0 = op_time_s(w, GPU, prof)
    t, static_j, flop_j, byte_j = op_energy(w, t0, GPU, prof)
    energy = static_j + flop_j + byte_j
    assert t >= t0
    assert energy / t <= GPU.tdp_w * (1 + 1e-9)
    assert energy >= prof.static_power_w * t * (1 - 1e-12)
    assert static_j == pytest.approx(prof.static_power_w * t)


def test_tdp_cap_stretches_time():
    prof = default_profile(GPU).with_params(flop_pj=5.0)  # a GEMM at peak would draw >> TDP
    w = work(tc_flops=1e15)
    t0 = op_time_s(w, GPU, prof)
    t, static_j, flop_j, byte_j = op_energy(w, t0, GPU, prof)
    assert t > t0
    assert (static_j + flop_j + byte_j) / t == pytest.approx(GPU.tdp_w)


def test_vectorised_matches_scalar():
    prof = load_profile("H100")
    ws = [work(tc_flops=1e12, hbm_bytes=1e8), work(hbm_bytes=1e10, rows=1)]
    arr = OpWork(**{f: np.array([getattr(w, f) for w in ws]) for f in OpWork.__dataclass_fields__})
    t = op_time_s(arr, GPU, prof)
    assert t == pytest.approx([op_time_s(w, GPU, prof) for w in ws])


def test_bundled_profiles_have_provenance():
    assert load_profile("H100-SXM").provenance.method == "fit"
    assert load_profile("B200").provenance.method == "fit"
    other = load_profile("L40S")
    assert other.provenance.method == "datasheet-prior" and "not calibrated" in other.provenance.notes


def test_gpus_without_measurements_take_the_measured_software_costs():
    """A GPU with no fitted profile prices vLLM's overheads as the H100 fit does: with none, an A100
    (61% of the H100's bandwidth) decoded Qwen3-235B at tp=8 faster than the H100."""
    import energylens as el
    from energylens.costmodel.profile import SOFTWARE_COSTS

    h100 = load_profile("H100-SXM")
    for gpu in ("A100-SXM-80GB", "L40S", "MI300X", "H100-PCIe"):
        prior = load_profile(gpu)
        assert all(getattr(prior, k) == getattr(h100, k) for k in SOFTWARE_COSTS), gpu
    wl = el.Workload(batch=1, prompt_len=128, output_len=128)
    itl = {g: el.estimate("Qwen/Qwen3-30B-A3B", el.Cluster(g, num_gpus=2), wl, el.Parallel(tp=2)).serving.median_itl_s
           for g in ("A100-SXM-80GB", "H100-SXM")}
    assert itl["A100-SXM-80GB"] > itl["H100-SXM"]


def test_h200_takes_the_h100_profile_of_the_same_directory(tmp_path):
    """H200 is the H100's GH100 die with HBM3e: it takes the H100-SXM coefficients (from the same
    profile folder, so a held-out refit carries over) and runs them at its own bandwidth."""
    h100, h200 = load_profile("H100-SXM"), load_profile("H200")
    assert h200.gpu == "H200" and h200.provenance.method == "derived"
    assert "H100-SXM" in h200.provenance.notes and "same GH100 die" in h200.provenance.notes
    assert h200.model_dump(exclude={"gpu", "provenance"}) == h100.model_dump(exclude={"gpu", "provenance"})
    write_profile(h100.with_params(static_power_w=123.0), tmp_path)
    assert load_profile("H200", tmp_path).static_power_w == 123.0
    w = work(hbm_bytes=1e10, rows=1)  # a weight stream: 43% more bandwidth, 1/1.43 of the time
    assert op_time_s(w, get_gpu("H100"), h100) / op_time_s(w, get_gpu("H200"), h200) == pytest.approx(4.8 / 3.35, rel=2e-3)


def test_memory_stall_draws_less_power_than_full_bandwidth():
    """The same bytes moved at half the achieved bandwidth: same dynamic energy over twice the time,
    so the op draws closer to static power (a stalled kernel is not a full-power kernel)."""
    prof = default_profile(GPU)
    w = work(hbm_bytes=1e10, rows=1.0)
    fast = op_energy(w, op_time_s(w, GPU, prof), GPU, prof)
    slow_prof = prof.with_params(mem_efficiency=prof.mem_efficiency / 2)
    slow = op_energy(w, op_time_s(w, GPU, slow_prof), GPU, slow_prof)
    p_fast, p_slow = (sum(x[1:]) / x[0] for x in (fast, slow))
    assert slow[0] > 1.9 * fast[0]
    assert prof.static_power_w < p_slow < p_fast
    assert p_slow - prof.static_power_w == pytest.approx((p_fast - prof.static_power_w) / 2, rel=0.05)


def test_overhead_bound_step_draws_idle_power():
    """Host overheads (scheduling, sampling) run no kernel: a step made mostly of them draws
    ``idle_power_w``, and a profile without it falls back to the busy static power."""
    from energylens.costmodel.serving import step_cost

    prof = default_profile(GPU).with_params(idle_power_w=90.0, step_overhead_s=1.0, seq_overhead_s=0.0)
    sc = step_cost([], batch=8, profile=prof)
    assert sc.time_s == pytest.approx(1.0)
    assert sc.energy_j / sc.time_s == pytest.approx(90.0)
    assert default_profile(GPU).overhead_power_w == default_profile(GPU).static_power_w


def test_decode_attention_pays_for_its_padded_mma_tile():
    """A GQA group of 4 query rows on a 64-row MMA tile: 16x the useful FLOPs in energy, same time;
    prefill attention (many rows) and a weight GEMV with 4 tokens are not padded."""
    prof = default_profile(GPU)

    def flop_j(rows, kv):
        w = OpWork(tc_flops=1e9, vec_flops=0.0, hbm_bytes=1e8, rows=rows, peak_flops_per_s=GPU.peak_flops_per_s("bf16"),
                   kv=kv, kernels=1.0)
        return dynamic_energy_j(w, prof)[0]

    useful = 1e9 * prof.flop_pj * 1e-12
    assert flop_j(4.0, 1.0) == pytest.approx(16 * useful)
    assert flop_j(2048.0, 1.0) == pytest.approx(useful)
    assert flop_j(4.0, 0.0) == pytest.approx(useful)


def test_power_limit_lowers_the_clock_before_it_stretches_time():
    """Over TDP, the limiter lowers the SM clock: a compute-bound GEMM slows by less than its excess
    power (FLOP energy falls as V^2), and a bandwidth-bound op sheds FLOP energy at no cost in time."""
    prof = default_profile(GPU).with_params(flop_pj=1.2)
    gemm = work(tc_flops=1e15)
    t0 = op_time_s(gemm, GPU, prof)
    t, static_j, flop_j, byte_j = op_energy(gemm, t0, GPU, prof)
    stretched = (1e15 * prof.flop_pj * 1e-12) / (GPU.tdp_w - prof.static_power_w)  # energy kept, time stretched
    assert t0 < t < stretched
    assert (static_j + flop_j + byte_j) / t == pytest.approx(GPU.tdp_w)
    prof = default_profile(GPU).with_params(static_power_w=175.0, flop_pj=0.8, byte_pj=113.0, attn_mem_efficiency=0.95)
    stream = OpWork(tc_flops=6e10, vec_flops=0.0, hbm_bytes=1e10, rows=4.0, peak_flops_per_s=GPU.peak_flops_per_s("bf16"),
                    kv=1.0, kernels=1.0)  # decode attention of a GQA group of 4: 64-row MMA tiles on a KV stream
    t0 = op_time_s(stream, GPU, prof)
    assert prof.static_power_w + sum(dynamic_energy_j(stream, prof)) / t0 > GPU.tdp_w  # over TDP at full clock
    t, static_j, flop_j, byte_j = op_energy(stream, t0, GPU, prof)
    assert t == pytest.approx(t0) and flop_j < dynamic_energy_j(stream, prof)[0]
    assert (static_j + flop_j + byte_j) / t == pytest.approx(GPU.tdp_w)


def _brute_force(c, m, e, f, b, top, budget_w):
    """The highest clock on a fine grid whose power fits the budget (else half clock, stretched)."""
    xs = np.linspace(0.5, top, 4001)
    v = 1 - 0.6 * (1 - xs)
    t = np.maximum(c / xs, m) + e
    ok = f * v * v + b <= budget_w * t
    k = np.nonzero(ok)[0].max() if ok.any() else 0
    return max(t[k], (f * v[k] ** 2 + b) / budget_w)


def test_power_capped_matches_a_brute_force_clock_search():
    from energylens.costmodel.power import power_capped

    rng = np.random.default_rng(7)
    n = 300
    c, m = rng.uniform(0, 2e-3, n) * (rng.random(n) > 0.1), rng.uniform(0, 2e-3, n) * (rng.random(n) > 0.1)
    e, f, b = rng.uniform(0, 2e-4, n), rng.uniform(0, 2.0, n) * (rng.random(n) > 0.1), rng.uniform(0, 1.2, n)
    top = rng.uniform(0.5, 1.0, n)
    c = np.where((c == 0) & (m == 0), 1e-4, c)
    t, fj = power_capped(c, m, e, f, b, 150.0, 700.0, top)
    assert np.all((fj + b) / t <= 550.0 * (1 + 1e-9))
    grid = np.array([_brute_force(*args, 550.0) for args in zip(c, m, e, f, b, top, strict=True)])
    assert t == pytest.approx(grid, rel=2e-4)  # the grid's resolution
    scalar = [power_capped(*args, 150.0, 700.0, x) for *args, x in zip(c[:20], m[:20], e[:20], f[:20], b[:20], top[:20],
                                                                       strict=True)]
    assert [s[0] for s in scalar] == pytest.approx(t[:20], rel=1e-12)


def test_op_energy_on_arrays_equals_op_energy_per_op():
    prof = load_profile("H100-SXM")
    ws = [work(tc_flops=1e15), work(hbm_bytes=1e10, rows=1), work(tc_flops=1e12, hbm_bytes=1e9),
          OpWork(tc_flops=6e10, vec_flops=0.0, hbm_bytes=1e10, rows=4.0, peak_flops_per_s=GPU.peak_flops_per_s("bf16"),
                 kv=1.0, kernels=1.0)]
    arr = OpWork(**{f: np.array([getattr(w, f) for w in ws]) for f in OpWork.__dataclass_fields__})
    many = op_energy(arr, op_time_s(arr, GPU, prof), GPU, prof)
    for i, w in enumerate(ws):
        one = op_energy(w, op_time_s(w, GPU, prof), GPU, prof)
        assert [float(x[i]) for x in many] == pytest.approx(list(one), rel=1e-12)


def test_a_locked_clock_is_the_same_whichever_way_it_is_given():
    """``price_ops`` clocks are fractions of the maximum clock: a profile locked at 0.8 and the plain
    profile priced at clock 0.8 agree, and an explicit clock overrides the profile's."""
    import energylens as el
    from energylens.api import resolve_model
    from energylens.costmodel.plan import plan_work, price_ops

    prof = load_profile("H100-SXM")
    recs = plan_work(resolve_model("meta-llama/Llama-3.1-8B-Instruct").prefill, el.Parallel(),
                     {"B": 4.0, "S": 1024.0, "K": 1024.0}, gpu=GPU)
    locked = prof.with_params(sm_clock_fraction=0.8)
    a = price_ops(recs, 1, GPU, locked)
    b = price_ops(recs, 1, GPU, prof, clocks=np.array([0.8]))
    c = price_ops(recs, 1, GPU, locked, clocks=np.array([0.8, 1.0]))
    d = price_ops(recs, 1, GPU, prof)
    assert a.time_s == pytest.approx(b.time_s, rel=1e-12) and a.energy_j == pytest.approx(b.energy_j, rel=1e-12)
    assert c.time_s[..., :1] == pytest.approx(b.time_s, rel=1e-12)
    assert c.time_s[..., 1:] == pytest.approx(d.time_s, rel=1e-12)
    assert np.sum(a.time_s) > np.sum(d.time_s)  # a prefill is compute-bound: slower at a lower clock
