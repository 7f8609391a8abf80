"""Bad input to el.estimate / el.compile / the records: one clear typed error, never a traceback
from deep inside or a silently wrong number."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import energylens as el
from energylens.api import check_context
from energylens.cli import app
from energylens.costmodel.comm import normalize_interconnect
from energylens.errors import (
    EnergylensError,
    EstimateError,
    InvalidTypeError,
    InvalidWorkloadError,
    ShardingError,
    UnknownNameError,
)
from energylens.models import max_context

MODEL = "Qwen/Qwen3-0.6B"
LLAMA = "meta-llama/Llama-3.2-1B-Instruct"
H100 = el.Cluster("H100-SXM")
WL = el.Workload(batch=4, prompt_len=128, output_len=16)
SPACE = {"clocks_mhz": (1980,), "comm_sms": (None,)}  # a small compile search


# ---- 1. interconnect names: one normalisation for Cluster, estimate and compile ----------------------------

@pytest.mark.parametrize("name, canon", [("nvlink", "nvlink"), ("nvlink4", "nvlink"), ("NVLink", "nvlink"),
                                         ("pcie", "pcie"), ("PCIe5", "pcie"), ("pcie-gen5", "pcie"),
                                         ("ib", "ib"), ("InfiniBand", "ib")])
def test_interconnect_spellings(name: str, canon: str) -> None:
    assert normalize_interconnect(name) == canon
    assert el.Cluster("H100-SXM", num_gpus=2, interconnect=name).interconnect == canon


@pytest.mark.parametrize("name", ["", "carrier-pigeon", "ibm", "nvlinkx"])
def test_unknown_interconnect_lists_the_names(name: str) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown interconnect .*Valid interconnect names: ib, .*nvlink4"):
        el.Cluster("H100-SXM", interconnect=name)  # '' is not the default (None is)


def test_interconnect_of_wrong_type() -> None:
    with pytest.raises(InvalidTypeError, match=r"interconnect must be a string .* got int 5$"):
        el.Cluster("H100-SXM", interconnect=5)  # type: ignore[arg-type]


def test_estimate_and_compile_accept_the_same_names() -> None:
    par = el.Parallel(tp=2)
    ref = el.estimate(MODEL, el.Cluster("H100-SXM", num_gpus=2, interconnect="nvlink"), WL, par)
    est = el.estimate(MODEL, el.Cluster("H100-SXM", num_gpus=8, interconnect="nvlink4"), WL, par)  # the README's
    assert est.decode.itl_s == ref.decode.itl_s
    ib = el.estimate(MODEL, el.Cluster("H100-SXM", num_gpus=2, interconnect="infiniband"), WL, par)
    assert ib.decode.itl_s > ref.decode.itl_s
    plan = el.compile(MODEL, el.Cluster("H100-SXM", num_gpus=2, interconnect="NVLINK4"), WL, **SPACE)
    assert plan.estimate.decode.itl_s > 0


# ---- 2. wrong types at the entry points ----------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    (("H100-SXM", WL), r"cluster must be an el.Cluster, got str 'H100-SXM'; use el.Cluster\('H100-SXM'\)$"),
    ((None, WL), r"cluster must be an el.Cluster, got NoneType None$"),
    ((H100, {"batch": 4}), r"workload must be an el.Workload .*got dict \{'batch': 4\}; use el.Workload\(batch=4\)$"),
    ((H100, WL, {"tp": 1}), r"parallel must be an el.Parallel .*got dict \{'tp': 1\}; use el.Parallel\(tp=1\)$"),
])
def test_estimate_wrong_types(args: tuple, match: str) -> None:
    with pytest.raises(InvalidTypeError, match=match):
        el.estimate(MODEL, *args)


@pytest.mark.parametrize("flag", ["fused", "check_memory"])
def test_estimate_flags_must_be_bool(flag: str) -> None:
    with pytest.raises(InvalidTypeError, match=rf"{flag} must be True or False, got str 'no'$"):
        el.estimate(MODEL, H100, WL, **{flag: "no"})


def test_workload_none_is_the_default_in_estimate_and_compile() -> None:
    assert el.estimate(MODEL, H100).workload == el.Workload()
    assert el.estimate(MODEL, H100, None).decode.itl_s == el.estimate(MODEL, H100, el.Workload()).decode.itl_s
    assert el.compile(MODEL, H100, None, **SPACE).workload == el.Workload()


@pytest.mark.parametrize("kwargs, match", [
    ({"slo": {"itl_ms": 40}}, r"slo must be an el.SLO .*got dict \{'itl_ms': 40\}; use el.SLO\(itl_ms=40\)$"),
    ({"workload": {"batch": 4}}, r"workload must be an el.Workload"),
    ({"cluster": "H100-SXM"}, r"cluster must be an el.Cluster, got str 'H100-SXM'"),
])
def test_compile_wrong_types(kwargs: dict, match: str) -> None:
    kwargs = {"cluster": H100, "workload": WL, **kwargs}
    with pytest.raises(InvalidTypeError, match=match):
        el.compile(MODEL, **kwargs, **SPACE)


# ---- 3. profiles folder ----------------------------------------------------------------------------------------

def test_missing_profiles_folder_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "missing"
    with pytest.raises(EstimateError, match=r"profile directory .*missing.* does not exist"):
        el.estimate(MODEL, H100, WL, profiles=missing)
    with pytest.raises(EstimateError, match=r"profile directory '' does not exist"):
        el.estimate(MODEL, H100, WL, profiles="")  # not "the bundled ones" (None is)
    (tmp_path / "a_file").write_text("{}")
    with pytest.raises(EstimateError, match=r"is not a folder"):
        el.estimate(MODEL, H100, WL, profiles=tmp_path / "a_file")


def test_existing_profiles_folder_without_the_gpu_falls_back_visibly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    est = el.estimate(MODEL, H100, WL, profiles=tmp_path)  # documented: load_profile's fallback, named in est.profile
    assert est.profile.startswith("H100-SXM profile is datasheet-default") and "not calibrated" in est.profile


# ---- 4. comm_sms of compile ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sms", [[], [0], (None, 200), "16", [True], 16, [16.0]])
def test_compile_bad_comm_sms(sms: object) -> None:
    # the sequence itself, or an element (checked as el.estimate checks its one comm_sms)
    with pytest.raises(el.EnergylensError, match=r"comm_sms must be (a non-empty sequence of None|an SM count in "
                                                 r"1..131 on H100-SXM|an SM count \(an int\) or None, got)"):
        el.compile(MODEL, el.Cluster("H100-SXM", num_gpus=2), WL, comm_sms=sms, clocks_mhz=(1980,))  # type: ignore[arg-type]


def test_compile_good_comm_sms() -> None:
    plan = el.compile(MODEL, el.Cluster("H100-SXM", num_gpus=2), WL, comm_sms=[None, 16], clocks_mhz=(1980,))
    assert plan.comm_sms in (None, 16)


# ---- 5. SLO values ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -1.0, "40", True])
def test_slo_must_be_positive_finite(value: object) -> None:
    with pytest.raises(InvalidWorkloadError, match=r"SLO.itl_ms must be a positive finite number of milliseconds"):
        el.SLO(itl_ms=value)  # type: ignore[arg-type]
    with pytest.raises(InvalidWorkloadError, match=r"SLO.ttft_ms must be"):
        el.SLO(ttft_ms=value)  # type: ignore[arg-type]
    assert el.SLO(itl_ms=40, ttft_ms=1500.5).itl_ms == 40


def test_cli_slo_nan_is_one_line_and_exit_2() -> None:
    r = CliRunner().invoke(app, ["compile", MODEL, "--gpus", "1", "--batch", "4", "--slo-itl-ms", "nan"])
    assert r.exit_code == 2
    assert "--slo-itl-ms must be a positive finite number" in r.output and "Traceback" not in r.output


# ---- 6. contexts beyond the model's maximum ---------------------------------------------------------------------

def test_context_beyond_max_position_embeddings() -> None:
    with pytest.raises(InvalidWorkloadError, match=r"500000 \+ 10 = 500010 tokens exceeds .*maximum context of "
                                                   r"131072 tokens \(max_position_embeddings"):
        el.estimate(LLAMA, el.Cluster("H100-SXM", num_gpus=8), el.Workload(batch=1, prompt_len=500000, output_len=10),
                    el.Parallel(tp=8))
    with pytest.raises(InvalidWorkloadError, match=r"40961 tokens exceeds Qwen/Qwen3-0.6B's maximum context of 40960"):
        el.compile(MODEL, H100, el.Workload(batch=1, prompt_len=40000, output_len=961), **SPACE)


def test_context_at_the_maximum_is_fine() -> None:
    from energylens.api import resolve_model

    check_context(resolve_model(MODEL), el.Workload(batch=1, prompt_len=40000, output_len=960), MODEL)


def test_max_context_follows_rope_scaling() -> None:
    def spec(**cfg: object) -> SimpleNamespace:
        return SimpleNamespace(get=cfg.get)

    assert max_context(spec()) is None
    # not in the config: transformers' (and so vLLM's) default for the model type
    assert max_context(spec(model_type="llama")) == (
        2048, "not in the config: transformers' default max_position_embeddings for llama")
    assert max_context(spec(max_position_embeddings=40960))[0] == 40960  # type: ignore[index]
    llama3 = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}
    assert max_context(spec(max_position_embeddings=131072, rope_scaling=llama3))[0] == 131072  # type: ignore[index]
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}  # Qwen3's long context
    assert max_context(spec(max_position_embeddings=40960, rope_scaling=yarn))[0] == 131072  # type: ignore[index]
    bare = {"rope_type": "yarn", "factor": 2.0}  # no original length: the message says which one was used
    assert max_context(spec(max_position_embeddings=4096, rope_scaling=bare)) == (
        8192, "max_position_embeddings (no original_max_position_embeddings given) 4096 x yarn factor 2.0 in its config")


# ---- 7. batch smaller than dp ---------------------------------------------------------------------------------

def test_estimate_rejects_batch_below_dp() -> None:
    cluster = el.Cluster("H100-SXM", num_gpus=8)
    with pytest.raises(ShardingError, match=r"batch=4 is smaller than dp=8: each data-parallel replica needs at "
                                            r"least one sequence; use batch >= 8 or dp <= 4$"):
        el.estimate(LLAMA, cluster, WL, el.Parallel(tp=1, dp=8))
    assert el.estimate(LLAMA, cluster, el.Workload(batch=8, prompt_len=128, output_len=16),
                       el.Parallel(tp=1, dp=8)).num_gpus == 8


def test_all_are_energylens_errors() -> None:
    for cls in (InvalidTypeError, InvalidWorkloadError, ShardingError, UnknownNameError, EstimateError):
        assert issubclass(cls, EnergylensError)
    assert issubclass(InvalidTypeError, TypeError)


def test_context_limit_reads_transformers5_rope_parameters() -> None:
    """transformers 5 writes YaRN scaling as rope_parameters: the limit is the scaled one."""
    from energylens.models import config_dict, load_config

    base = config_dict(load_config("Qwen/Qwen3-0.6B").config)
    yarn = {**base, "rope_scaling": None, "rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                                              "original_max_position_embeddings": 32768}}
    est = el.estimate(yarn, el.Cluster("H100-SXM"), el.Workload(batch=1, prompt_len=60000, output_len=10))
    assert est.decode.itl_s > 0


# ---- 8. review fixes: whole replicas, argument types, clocks, routing, overlap without a collective ---------

def test_estimate_rejects_batch_not_a_multiple_of_dp() -> None:
    with pytest.raises(ShardingError, match=r"batch=5 is not a multiple of dp=2: .* use batch=4 or 6$"):
        el.estimate(LLAMA, el.Cluster("H100-SXM", num_gpus=2), el.Workload(batch=5, prompt_len=128, output_len=16),
                    el.Parallel(dp=2))


def test_profile_must_be_a_profile() -> None:
    match = r"profile must be an energylens.costmodel.profile.Profile .*got str 'h100'"
    with pytest.raises(InvalidTypeError, match=match):
        el.estimate(MODEL, H100, WL, profile="h100")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=match):
        el.compile(MODEL, H100, WL, profile="h100", **SPACE)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"profiles must be a folder path \(str or Path\) or None, got int 123"):
        el.estimate(MODEL, H100, WL, profiles=123)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"comm_sms must be an SM count \(an int\) or None, got str '16'"):
        el.estimate(MODEL, el.Cluster("H100-SXM", num_gpus=2), WL, el.Parallel(tp=2), comm_sms="16")  # type: ignore[arg-type]


def test_an_edited_profile_is_checked_and_says_it_was_edited() -> None:
    """``with_params`` checks names and bounds as a profile file is checked (negative energies priced
    negative power; a misspelt field was taken), and the report says the profile was edited."""
    from energylens.costmodel.profile import load_profile
    from energylens.errors import ConfigError

    base = load_profile("H100-SXM")
    for params, match in (({"flop_pj": -1.0}, "flop_pj=-1.0: Input should be greater than or equal to 0"),
                          ({"mem_efficiency": 0.0}, "mem_efficiency=0.0"), ({"static_pwr": 1}, "no field 'static_pwr'")):
        with pytest.raises(ConfigError, match=match):
            base.with_params(**params)
    est = el.estimate(MODEL, H100, WL, profile=base.with_params(static_power_w=2 * base.static_power_w))
    assert est.profile.endswith("then edited by hand (static_power_w)")
    assert base.with_params(sm_clock_fraction=0.5).provenance == base.provenance  # a locked clock is no edit


@pytest.mark.parametrize("kwargs, match", [
    ({"num_clocks": 2.5}, r"num_clocks must be a whole number >= 1 .*got 2.5$"),
    ({"num_clocks": 0}, r"num_clocks must be a whole number >= 1"),
    ({"clocks_mhz": 1500}, r"clocks_mhz must be a non-empty list of whole MHz, e.g. \[990, 1410\], got 1500$"),
    ({"clocks_mhz": [1500.5]}, r"whole MHz.*got \[1500.5\]$"),  # nvidia-smi -lgc takes integers
    ({"clocks_mhz": []}, r"non-empty list"),
    ({"clocks_mhz": "1500"}, r"got '1500'$"),
    ({"clocks_mhz": [10]}, r"990..1980 MHz .*got \[10\]$"),  # the clock model does not hold that low
    ({"clocks_mhz": [2500]}, r"got \[2500\]$"),
    ({"num_clocks": 3, "clocks_mhz": [1500]}, r"num_clocks .* or clocks_mhz .*not both"),  # was num_clocks ignored
])
def test_compile_bad_clocks(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidWorkloadError, match=match):
        el.compile(MODEL, H100, WL, comm_sms=(None,), **kwargs)


def test_counts_from_numpy_are_ints() -> None:
    import numpy as np

    wl = el.Workload(batch=np.int64(8), prompt_len=np.int32(128), output_len=16)
    assert type(wl.batch) is int and type(wl.prompt_len) is int and wl.batch == 8
    assert type(el.Parallel(tp=np.int64(2)).tp) is int and type(el.Cluster("H100-SXM", np.int64(4)).num_gpus) is int
    with pytest.raises(InvalidWorkloadError, match=r"Workload.batch must be a positive integer, got 8.0"):
        el.Workload(batch=8.0)  # type: ignore[arg-type]


def test_routing_needs_experts_and_comm_sms_a_collective() -> None:
    with pytest.raises(el.EnergylensError, match=r"routing='zipf' applies to MoE models, .* has no experts"):
        el.estimate(LLAMA, H100, WL, routing="zipf")
    with pytest.raises(el.EnergylensError, match=r"comm_sms=16 but the plan .*tp=1.* has no tensor-parallel collective to overlap"):
        el.estimate(LLAMA, H100, WL, comm_sms=16)
    assert el.estimate(LLAMA, el.Cluster("H100-SXM", 2), WL, el.Parallel(tp=2), comm_sms=16).decode.itl_s > 0


def test_report_top_must_be_a_count() -> None:
    plan = el.compile(MODEL, H100, WL, **SPACE)
    with pytest.raises(InvalidWorkloadError, match=r"top must be a whole number of ops >= 0, got '5'"):
        plan.report(file=io.StringIO(), top="5")  # type: ignore[arg-type]


def test_itl_target_needs_two_output_tokens() -> None:
    with pytest.raises(InvalidWorkloadError, match=r"needs output_len >= 2"):
        el.compile(MODEL, H100, el.Workload(batch=4, prompt_len=128, output_len=1), slo=el.SLO(itl_ms=50), **SPACE)


def test_estimate_checks_memory_against_what_vllm_may_use() -> None:
    # the limit compile searches under and the vLLM export sets (--gpu-memory-utilization 0.9)
    assert el.estimate(MODEL, H100, WL).memory.capacity_bytes == 0.9 * 80 * 2**30


def test_suggestions_prefer_the_stem_and_the_family() -> None:
    from energylens.errors import closest

    assert closest("Qwen/Qwen3-8B-Instruct", ["Qwen/Qwen3-8B", "Qwen/Qwen3-4B-Instruct-2507"]) == "Qwen/Qwen3-8B"
    assert closest("H100 94GB", ["A100-SXM4-40GB", "H100-SXM", "H100-PCIe"]) == "H100-SXM"
    assert closest("llama-3.1-9b", ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-8B"]) == \
        "meta-llama/Llama-3.1-8B-Instruct"


def test_a_profile_of_another_gpu_is_named_as_such() -> None:
    from energylens.costmodel.profile import load_profile

    est = el.estimate(MODEL, el.Cluster("L40S"), WL, profile=load_profile("H100-SXM"))
    assert est.profile.startswith("H100-SXM profile fitted on") and est.profile.endswith(", applied to L40S")


def test_a_clock_given_twice_is_priced_once() -> None:
    plan = el.compile(MODEL, H100, WL, comm_sms=(None,), clocks_mhz=[1500, 1500])
    assert plan.plans_evaluated == el.compile(MODEL, H100, WL, comm_sms=(None,), clocks_mhz=[1500]).plans_evaluated


def test_a_local_config_edited_in_the_same_process_is_traced_again(tmp_path) -> None:
    """Model ids are traced once per process; a local config is keyed by its contents, so a sweep
    that rewrites config.json gets the new model, not the cached one."""
    import json

    from energylens.testing import tiny_llama_config

    cfg = tiny_llama_config()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    wl = el.Workload(batch=1, prompt_len=8, output_len=4)
    two = el.estimate(str(tmp_path), el.Cluster("H100-SXM"), wl).memory.weights_bytes
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 4}))
    four = el.estimate(str(tmp_path), el.Cluster("H100-SXM"), wl).memory.weights_bytes
    assert four > two


def test_the_config_stamp_follows_the_files_load_config_reads(tmp_path, monkeypatch) -> None:
    """A ~ path and a ModelOpt file beside a bare config are part of the trace cache's key."""
    from energylens.api import _file_stamp

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.json").write_text("{}")
    assert _file_stamp("~/m.json") == (("m.json", b"{}"),)
    (tmp_path / "m.hf_quant_config.json").write_text('{"q": 1}')
    assert _file_stamp(str(tmp_path / "m.json"))[1] == ("m.hf_quant_config.json", b'{"q": 1}')


def test_workload_shares_take_numpy_numbers() -> None:
    import numpy as np

    wl = el.Workload(8, 512, 64, output_len_cv=np.float32(0.5), prefix_cache_hit=np.int64(0))
    assert type(wl.output_len_cv) is float and wl.output_len_cv == 0.5 and type(wl.prefix_cache_hit) is float
    with pytest.raises(InvalidTypeError, match="Workload.output_len_cv must be a number, got str '1'"):
        el.Workload(8, 512, 64, output_len_cv="1")
