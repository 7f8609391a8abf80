"""compile: vectorised prices equal el.estimate plan by plan; the chosen plan is the least-energy
feasible one of a brute-force scalar search; infeasible SLOs; exports; CLI; report and plot."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import energylens as el
from energylens.cli import app
from energylens.costmodel.clock import ClockModel
from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.profile import load_profile
from energylens.export.vllm import load_vllm_args
from energylens.search import InfeasibleSLOError
from energylens.search.evaluate import clock_profile

MODEL = "meta-llama/Llama-3.2-1B-Instruct"
CLUSTER = el.Cluster("H100-SXM", num_gpus=2, interconnect="nvlink4")
WL = el.Workload(batch=4, prompt_len=512, output_len=128, prefix_cache_hit=0.25)
SPACE = {"clocks_mhz": (1290, 1980), "comm_sms": (None, 16)}


@pytest.fixture(scope="module")
def plan():
    return el.compile(MODEL, CLUSTER, workload=WL, slo=el.SLO(itl_ms=3.0), **SPACE)


@pytest.fixture(scope="module")
def brute(plan):
    """Every plan of the space priced one by one with el.estimate (the scalar oracle)."""
    gpu = get_gpu("H100-SXM")
    prof = load_profile(gpu)
    c = plan.space.cols
    rows = []
    for i in range(len(plan.space)):
        p = plan.space.point(i)
        est = el.estimate(MODEL, el.Cluster("H100-SXM", num_gpus=2, interconnect="nvlink"),
                          dataclasses.replace(WL, batch=p.batch),
                          el.Parallel(tp=p.tp, ep=p.ep, dp=p.dp), fused=p.fused, comm_sms=p.comm_sms,
                          profile=clock_profile(prof, gpu, p.clock_mhz))
        rows.append((est.serving.median_itl_s, est.serving.energy_per_output_token_j, est.prefill.latency_s,
                     est.prefill.energy_per_token_j, est.serving.avg_power_w, est.memory.total_bytes))
    assert len(rows) == len(c["itl_s"])
    return np.array(rows)


def test_space_covers_all_knobs(plan):
    c = plan.space.cols
    assert set(c["tp"]) == {1, 2} and set(c["fused"]) == {False, True}
    assert set(c["clock_mhz"]) == {1290, 1980} and set(c["comm_sms"]) == {0, 16}
    assert set(c["comm_sms"][c["tp"] == 1]) == {0}  # no SM count without tensor-parallel collectives
    assert set(c["batch"][c["dp"] == 2]) == {2, 4} and set(c["batch"][c["dp"] == 1]) == {1, 2, 3, 4}
    # tp=2: batch x clock x sms x fused; tp=1 on one GPU: batch x clock x fused; dp=2
    assert plan.plans_evaluated == len(plan.space) == 4 * 2 * 2 * 2 + 4 * 2 * 2 + 2 * 2 * 2
    assert set(zip(c["tp"], c["dp"], strict=True)) == {(1, 1), (1, 2), (2, 1)}  # fewer GPUs than the cluster too


def test_vectorised_prices_equal_scalar_estimate(plan, brute):
    c = plan.space.cols
    for k, name in enumerate(("itl_s", "energy_per_token_j", "ttft_s", "prefill_energy_per_token_j", "power_w",
                              "memory_bytes")):
        np.testing.assert_allclose(c[name], brute[:, k], rtol=1e-9, err_msg=name)


def test_chosen_plan_is_least_energy_under_slo(plan, brute):
    feasible = brute[:, 0] * 1e3 <= 3.0
    assert feasible.any() and not feasible.all()
    best = np.flatnonzero(feasible)[np.argmin(brute[feasible, 1])]
    p = plan.space.point(int(best))
    assert (plan.parallel.tp, plan.parallel.dp, plan.batch, plan.fused, plan.comm_sms, plan.clock_mhz) == (
        p.tp, p.dp, p.batch, p.fused, p.comm_sms, p.clock_mhz)
    assert plan.estimate.serving.median_itl_s * 1e3 <= 3.0
    assert plan.estimate.serving.energy_per_output_token_j == pytest.approx(brute[feasible, 1].min(), rel=1e-9)


def test_latency_objective_and_frontier(plan, brute):
    fast = el.compile(MODEL, CLUSTER, workload=WL, objective="latency", **SPACE)
    assert fast.estimate.serving.median_itl_s == pytest.approx(brute[:, 0].min(), rel=1e-9)
    front = plan.pareto
    assert len(front) >= 2 and front.x == "itl_s"
    itl = [r.itl_s for r in front]
    e = [r.energy_per_token_j for r in front]
    assert itl == sorted(itl) and e == sorted(e, reverse=True)
    assert min(e) == pytest.approx(brute[:, 1].min(), rel=1e-9)
    assert len(plan.prefill_pareto) >= 1


def test_infeasible_slo_names_best_itl(brute):
    with pytest.raises(InfeasibleSLOError, match=r"best achievable ITL is \d+\.\d+ ms") as e:
        el.compile(MODEL, CLUSTER, workload=WL, slo=el.SLO(itl_ms=0.01), **SPACE)
    assert f"{brute[:, 0].min() * 1e3:.2f} ms" in str(e.value)
    with pytest.raises(el.EnergylensError, match="objective"):
        el.compile(MODEL, CLUSTER, workload=WL, objective="speed")  # type: ignore[arg-type]


def test_exports_accepted(plan):
    args = plan.to_vllm()
    assert set(args) <= set(load_vllm_args()) and args["tensor_parallel_size"] == plan.parallel.tp
    assert args["max_num_seqs"] == plan.batch // plan.parallel.dp
    # outputs vary (cv 1): vLLM accepts what the model takes (Llama-3.2's 131072 tokens, which the KV
    # cache holds); with a fixed output length, exactly prompt + output
    assert args["max_model_len"] == 131072 == plan.max_context
    fixed = dataclasses.replace(plan, workload=dataclasses.replace(plan.workload, output_len_cv=0.0))
    assert fixed.max_model_len == plan.workload.prompt_len + plan.workload.output_len
    cli = plan.to_vllm(cli=True)
    assert "vllm serve meta-llama/Llama-3.2-1B-Instruct" in cli
    if plan.gpu_clock_mhz is not None:
        assert f"-lgc {plan.clock_mhz},{plan.clock_mhz}" in cli
    assert plan.to_megatron()["tensor_model_parallel_size"] == plan.parallel.tp


def test_plan_records_report_and_plot(plan, tmp_path):
    d = plan.to_dict()
    json.dumps(d)
    assert d["parallel"]["tp"] == plan.parallel.tp and "space" not in d and "max_num_seqs" in d
    assert len(d["pareto"]["rows"]) == len(plan.pareto)
    assert "// pipeline: shard{" in str(plan.graph)
    text = plan.report(file=open(tmp_path / "r.txt", "w"))  # noqa: SIM115
    assert "Pareto frontier" in text and "top 10 ops" in text
    assert repr(plan.report()) == text.rstrip("\n")  # the prompt shows the table, not a quoted string
    png = plan.plot(tmp_path / "pareto.png")
    assert png.stat().st_size > 10_000


def test_unused_gpus_are_not_counted_and_the_report_says_so():
    """Batch 4 of a 1B model on 64 GPUs: every GPU past the first few would only add static power."""
    plan = el.compile(MODEL, el.Cluster("H100-SXM", num_gpus=64), workload=WL, clocks_mhz=(1980,))
    assert plan.num_gpus <= 2 and plan.cluster_gpus == 64
    assert plan.parallel.tp * plan.parallel.dp == plan.num_gpus == plan.estimate.num_gpus
    assert f"on {plan.num_gpus} of 64 x H100-SXM" in plan.report(file=io.StringIO())


def test_clock_model():
    c = ClockModel.of(get_gpu("H100-SXM"))
    f = np.array(c.grid())
    assert f[-1] == 1980 and np.all(np.diff(f) == 15)
    assert np.all(np.diff(c.flop_energy_scale(f)) > 0) and c.compute_scale(1980) == 1.0
    with pytest.raises(el.EnergylensError):
        c.compute_scale(2500)


def test_cli_compile_export_vllm():
    r = CliRunner().invoke(app, ["compile", MODEL, "--gpus", "2", "--batch", "4", "--prompt-len", "512",
                                 "--output-len", "128", "--slo-itl-ms", "40", "--export", "vllm"])
    assert r.exit_code == 0, r.output
    assert "vllm serve meta-llama/Llama-3.2-1B-Instruct" in r.output and "--tensor-parallel-size" in r.output


def test_cli_compile_errors_are_one_line():
    r = CliRunner().invoke(app, ["compile", MODEL, "--gpus", "2", "--batch", "4", "--slo-itl-ms", "0.001"])
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no plan meets the SLO")


def test_gpu_without_published_max_clock_searches_only_its_default_clock():
    """The B200's maximum clock is not published: no MHz can be locked, so only the default is searched."""
    assert get_gpu("B200").boost_clock_mhz is None
    b200 = el.compile(MODEL, el.Cluster("B200", num_gpus=1), workload=WL)
    assert set(b200.space.cols["clock_mhz"]) == {int(ClockModel.of(get_gpu("B200")).f_max_mhz)}
    assert b200.gpu_clock_mhz is None and "nvidia-smi" not in b200.to_vllm(cli=True)
    assert "default" in b200.report(file=io.StringIO())
    with pytest.raises(el.EnergylensError, match="B200 has no published maximum clock"):
        el.compile(MODEL, el.Cluster("B200", num_gpus=1), workload=WL, clocks_mhz=(990,))


def test_cli_compile_export_megatron_says_how_many_ranks_to_launch():
    r = CliRunner().invoke(app, ["compile", MODEL, "--gpus", "8", "--batch", "4", "--prompt-len", "512",
                                 "--output-len", "128", "--export", "megatron"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert "tensor_model_parallel_size" in cfg and not any("expert" in k for k in cfg)  # dense: no expert fields
    assert "# launch " in r.stderr and "data_parallel_size = " in r.stderr
    assert "# InferenceWrapperConfig: {\"inference_max_requests\": " in r.stderr  # the batch and length limits
    plan = el.compile(MODEL, el.Cluster("H100-SXM", num_gpus=8), workload=el.Workload(batch=4, prompt_len=512,
                                                                                       output_len=128))
    assert plan.gpu_clock_mhz is not None  # the same search locks a clock: it is printed, not dropped
    assert f"# GPU clock {plan.gpu_clock_mhz} MHz is not a Megatron setting" in r.stderr
    assert "-lgc" in r.stderr and "undo with `nvidia-smi" in r.stderr  # the same wording as vLLM's note


def test_chosen_plan_off_the_itl_frontier_is_still_shown():
    """A TTFT target can rule out every plan of the energy/ITL frontier that would be cheaper."""
    plan = el.compile("meta-llama/Llama-3.1-8B-Instruct", el.Cluster("H100-SXM", num_gpus=6),
                      workload=el.Workload(batch=64, prompt_len=1024, output_len=256), slo=el.SLO(ttft_ms=500))
    text = plan.report(file=io.StringIO())
    assert " * " in text.replace("│", " ")
    chosen = (plan.parallel.tp, plan.parallel.dp, plan.batch, plan.clock_mhz)
    if chosen not in {(r.tp, r.dp, r.batch, r.clock_mhz) for r in plan.pareto}:
        assert "off this frontier" in text


def test_ties_in_energy_go_to_the_larger_batch():
    """dp replicas price alike: 2 replicas of batch 104 cost what one does, and serve twice the sequences."""
    from energylens.search.compile import SearchSpace, _choose

    cols = {k: np.zeros(3) for k in ("tp", "ep", "comm_sms", "clock_mhz", "ttft_s", "prefill_energy_per_token_j",
                                     "power_w", "memory_bytes", "fused")}
    cols.update(dp=np.array([1, 2, 1]), batch=np.array([104, 208, 96]), running=np.array([104, 208, 96]),
                itl_s=np.array([0.024, 0.024, 0.023]),
                energy_per_token_j=np.array([1.0, 1.0 + 1e-12, 1.01]))
    space = SearchSpace(cols, 3, 2, 0.0)
    assert _choose(space, el.SLO(itl_ms=25), "energy") == 1
    assert _choose(space, el.SLO(itl_ms=25), "latency") == 2


def test_batches_prefill_cannot_fill_tie_to_the_smallest():
    """Above the running batch (prefill-bound) a larger max_num_seqs serves the same: the smallest wins."""
    plan = el.compile("Qwen/Qwen3-0.6B", el.Cluster("H100-SXM", num_gpus=1),
                      workload=el.Workload(batch=12000, prompt_len=64, output_len=64), slo=el.SLO(itl_ms=1000))
    assert plan.estimate.serving.batch == plan.batch == 8192 * 64 // (64 + 64)


def test_batches_the_kv_cache_cannot_hold_are_not_chosen_nor_priced_as_running():
    """Beyond what the KV cache holds at the mean context vLLM preempts: a larger max_num_seqs runs
    no more sequences, so the search prices what runs and picks no more than that."""
    wl = el.Workload(batch=224, prompt_len=1024, output_len=2048)
    plan = el.compile("meta-llama/Llama-3.1-8B-Instruct", el.Cluster("H100-SXM", num_gpus=1), workload=wl)
    asked = el.estimate("meta-llama/Llama-3.1-8B-Instruct", el.Cluster("H100-SXM"), wl).serving
    assert asked.kv_limited and asked.batch < 224
    # the smallest searched max_num_seqs that runs as many as fit (the batch grid is not every integer)
    assert plan.estimate.serving.batch == asked.batch <= plan.batch < 224
    c = plan.space.cols
    assert (c["running"] <= c["batch"]).all() and (c["running"] < c["batch"]).any()
    from energylens.search.report import serving_label

    assert "the KV cache holds no more" in serving_label(wl, asked)


def test_vectorised_prices_equal_scalar_estimate_when_the_median_step_prefills():
    """Short outputs (two arrivals per step) with prefix-cache hits: the median step carries prefill,
    and the search prices it, and the mixture, exactly as el.estimate does."""
    wl = el.Workload(batch=8, prompt_len=256, output_len=4, prefix_cache_hit=0.5)
    cluster = el.Cluster("H100-SXM", num_gpus=1)
    plan = el.compile(MODEL, cluster, workload=wl, clocks_mhz=(1980,), comm_sms=(None,))
    c = plan.space.cols
    gpu = get_gpu("H100-SXM")
    prof = load_profile(gpu)
    prefilling_medians = 0
    for i in range(len(plan.space)):
        p = plan.space.point(i)
        s = el.estimate(MODEL, cluster, dataclasses.replace(wl, batch=p.batch), el.Parallel(tp=p.tp, dp=p.dp),
                        fused=p.fused, profile=clock_profile(prof, gpu, p.clock_mhz)).serving
        prefilling_medians += s.median_prefill_tokens_per_step > 0
        np.testing.assert_allclose([c["itl_s"][i], c["energy_per_token_j"][i], c["power_w"][i]],
                                   [s.median_itl_s, s.energy_per_output_token_j, s.avg_power_w], rtol=1e-9)
    assert prefilling_medians >= len(plan.space) // 2


@pytest.mark.parametrize(("model", "wl"), [
    (MODEL, el.Workload(batch=64, prompt_len=2048, output_len=8, output_len_cv=0)),        # prefill-bound
    (MODEL, el.Workload(batch=2, prompt_len=12000, output_len=1, output_len_cv=0)),        # prompt > budget
    ("Qwen/Qwen3-30B-A3B", el.Workload(batch=64, prompt_len=2048, output_len=8, output_len_cv=0)),  # MoE lockstep
])
def test_vectorised_prices_equal_scalar_estimate_when_prefill_bounds_the_batch(model, wl):
    """Where prefill cannot keep the batch running (running_batch, served_share, carried-over prompts),
    the search prices every plan, dp replicas and MoE lockstep included, exactly as el.estimate does."""
    cluster = el.Cluster("H100-SXM", num_gpus=2)
    plan = el.compile(model, cluster, workload=wl, clocks_mhz=(1980,), comm_sms=(None,))
    c = plan.space.cols
    bounded = 0
    for i in range(len(plan.space)):
        p = plan.space.point(i)
        s = el.estimate(model, cluster, dataclasses.replace(wl, batch=p.batch),
                        el.Parallel(tp=p.tp, ep=p.ep, dp=p.dp), fused=p.fused).serving
        bounded += s.batch < p.batch or s.served_share < 1
        np.testing.assert_allclose([c["itl_s"][i], c["energy_per_token_j"][i], c["power_w"][i]],
                                   [s.median_itl_s, s.energy_per_output_token_j, s.avg_power_w], rtol=1e-9)
    assert bounded > 0 and any(p.dp > 1 for p in map(plan.space.point, range(len(plan.space))))


def test_max_model_len_is_capped_by_what_the_kv_cache_holds():
    # 70B fp8 on one H100: 3.7 GiB of KV room, 160 KiB per token (fp8 KV) -> about 24k tokens, below
    # the model's 131072, which vLLM would refuse to start with
    p = el.compile("nvidia/Llama-3.1-70B-Instruct-FP8", el.Cluster("H100-SXM", 1),
                   el.Workload(batch=4, prompt_len=1024, output_len=256), clocks_mhz=(1980,), comm_sms=(None,))
    m = p.estimate.memory
    per_token = m.kv_cache_bytes / (p.max_num_seqs * p.workload.decode_context_len)
    assert p.kv_cache_tokens == int((m.capacity_bytes - m.weights_bytes - m.activation_bytes) / per_token)
    assert p.max_model_len == 16 * int(0.9 * p.kv_cache_tokens // 16)  # headroom, whole KV blocks
    assert 1280 < p.max_model_len < p.max_context == 131072
    assert p.to_vllm()["max_model_len"] == p.max_model_len


def test_no_fit_error_says_what_the_smallest_plan_needs():
    with pytest.raises(el.EnergylensError, match=r"no plan of .*405B.* fits on 2 x H100-SXM \(90% of 80 GiB each\).*"
                                                 r"the smallest needs 378.0 GiB per GPU") as e:
        el.compile("meta-llama/Llama-3.1-405B-Instruct", el.Cluster("H100-SXM", 2), el.Workload(batch=8), **SPACE)
    assert e.value.required_bytes > e.value.capacity_bytes == 0.9 * 80 * 2**30


def test_a_model_given_as_a_config_keeps_its_fp8_and_gets_a_note():
    from energylens.export.vllm import vllm_notes

    cfg = json.loads((Path(el.__file__).parent / "models" / "Qwen--Qwen3-32B-FP8.json").read_text())
    p = el.compile(cfg, el.Cluster("H100-SXM", 1), el.Workload(batch=4, prompt_len=1024, output_len=256),
                   clocks_mhz=(1980,), comm_sms=(None,))
    assert p.quantization == "fp8" and p.to_megatron()["fp8"] == "e4m3"
    assert any("not a hub id or a checkpoint directory" in n for n in vllm_notes(p.to_spec()))


def test_each_data_parallel_replica_prefills_its_own_chunk():
    one = el.estimate(MODEL, el.Cluster("H100-SXM", 2), el.Workload(batch=32), el.Parallel(dp=1))
    two = el.estimate(MODEL, el.Cluster("H100-SXM", 2), el.Workload(batch=64), el.Parallel(dp=2))
    assert two.memory.activation_bytes == one.memory.activation_bytes > 0


def test_megatron_static_cache_holds_every_request_at_its_length(plan):
    from energylens.export import megatron_extras

    length = megatron_extras(plan.to_spec()).inference_wrapper["inference_max_seq_length"]
    assert length == min(plan.max_model_len, plan.kv_cache_tokens // plan.max_num_seqs)
    assert length * plan.max_num_seqs <= plan.kv_cache_tokens
    # 70B on 2 GPUs, 4096-token requests: 12 of them do not fit at full length -> fewer requests, said
    tight = el.compile("meta-llama/Llama-3.1-70B-Instruct", el.Cluster("H100-SXM", 2),
                       el.Workload(batch=256, prompt_len=2048, output_len=2048, output_len_cv=0), **SPACE)
    ex = megatron_extras(tight.to_spec())
    requests, length = ex.inference_wrapper["inference_max_requests"], ex.inference_wrapper["inference_max_seq_length"]
    assert length == 4096 and requests * length <= tight.kv_cache_tokens
    assert requests < tight.max_num_seqs and any("not the plan's" in n for n in ex.notes)


def test_compile_refuses_a_plan_that_cannot_hold_one_request():
    # batch 1 fits at the mean context (110k tokens) but not one whole 160k-token request
    wl = el.Workload(batch=1, prompt_len=60000, output_len=100000)
    with pytest.raises(el.EnergylensError, match=r"no plan .* fits on 1 x L40S .* the smallest needs [\d.]+ GiB per "
                                                 r"GPU \(with room for one whole request's KV cache\)"):
        el.compile("Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", el.Cluster("L40S", 1), wl, comm_sms=(None,))
    with pytest.raises(el.EnergylensError, match=r"one whole request's KV cache needs [\d.]+ GiB per GPU"):
        el.estimate("Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", el.Cluster("L40S", 1), wl)


def test_estimate_at_the_compiled_clock_reproduces_the_plan():
    wl = el.Workload(batch=16, prompt_len=512, output_len=128)
    plan = el.compile(MODEL, el.Cluster("H100-SXM", num_gpus=2), workload=wl)
    assert plan.gpu_clock_mhz is not None  # the energy objective locks a clock here
    est = el.estimate(MODEL, el.Cluster("H100-SXM", num_gpus=2), wl, plan.parallel, fused=plan.fused,
                      comm_sms=plan.comm_sms, clock_mhz=plan.clock_mhz)
    assert est.clock_mhz == plan.clock_mhz and est.to_dict()["clock_mhz"] == plan.clock_mhz
    assert est.serving.median_itl_s == pytest.approx(plan.estimate.serving.median_itl_s, rel=1e-9)
    assert est.serving.energy_per_output_token_j == pytest.approx(plan.estimate.serving.energy_per_output_token_j,
                                                                   rel=1e-9)
    for bad in (100, 5000):  # the maximum is the default clock; above it nothing is priced
        with pytest.raises(el.EnergylensError, match="clock_mhz must be in 990..1980 MHz on H100-SXM"):
            el.estimate(MODEL, el.Cluster("H100-SXM"), wl, clock_mhz=bad)
    with pytest.raises(el.EnergylensError, match="clock_mhz must be a number of MHz, got str '990'"):
        el.estimate(MODEL, el.Cluster("H100-SXM"), wl, clock_mhz="990")
    with pytest.raises(el.EnergylensError, match="whole number of MHz"):
        el.estimate(MODEL, el.Cluster("H100-SXM"), wl, clock_mhz=997.3)
    assert el.estimate(MODEL, el.Cluster("H100-SXM"), wl, clock_mhz=np.int64(990)).to_dict()["clock_mhz"] == 990
    with pytest.raises(el.EnergylensError, match="B200 has no published maximum clock"):
        el.estimate(MODEL, el.Cluster("B200"), wl, clock_mhz=1500)
    b200 = el.compile(MODEL, el.Cluster("B200"), workload=wl)  # its plans report the default clock's MHz
    assert el.estimate(MODEL, el.Cluster("B200"), wl, clock_mhz=b200.clock_mhz).clock_mhz is None


def test_report_says_when_the_plan_serves_fewer_sequences_than_asked():
    wl = el.Workload(batch=4096, prompt_len=512, output_len=128)
    plan = el.compile(MODEL, el.Cluster("H100-SXM", num_gpus=1), workload=wl, slo=el.SLO(itl_ms=10),
                      clocks_mhz=(1980,), comm_sms=(None,))
    assert plan.batch < 4096
    text = plan.report(file=io.StringIO())
    assert f"serves {plan.batch} of the 4096 concurrent sequences asked for" in text.replace("\n", " ")


def test_a_b200_plan_clock_is_accepted_back_by_compile_as_by_estimate() -> None:
    """B200 has no published maximum clock: its plans report the placeholder, which both
    estimate(clock_mhz=) and compile(clocks_mhz=) take as the default clock."""
    wl = el.Workload(batch=4, prompt_len=256, output_len=32)
    plan = el.compile(MODEL, el.Cluster("B200", num_gpus=1), workload=wl, comm_sms=(None,))
    again = el.compile(MODEL, el.Cluster("B200", num_gpus=1), workload=wl, comm_sms=(None,), clocks_mhz=[plan.clock_mhz])
    assert again.gpu_clock_mhz is None and again.clock_mhz == plan.clock_mhz
