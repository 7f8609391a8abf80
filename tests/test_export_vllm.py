"""vLLM export: names checked against vLLM's own argument list, CLI round trip, errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

import energylens as el
from energylens.errors import InvalidWorkloadError, ShardingError
from energylens.export import PlanSpec, to_vllm, vllm_notes
from energylens.export.vllm import VLLM_VERSION, load_vllm_args
from energylens.export.vllm_args_extract import extract
from energylens.passes.shard import expert_parallel_sizes
from energylens.typing import Parallel

ARGS_FILE = Path(__file__).parents[1] / "energylens" / "export" / f"vllm_args_{VLLM_VERSION}.txt"


def plan(tp: int = 1, ep: int = 1, dp: int = 1, **kw) -> PlanSpec:
    base = dict(
        model="Qwen/Qwen3-30B-A3B",
        gpu="H100-SXM",
        num_gpus=tp * dp,
        parallel=Parallel(tp=tp, ep=ep, dp=dp),
        max_num_seqs=64,
        max_model_len=1280,
    )
    base.update(kw)
    return PlanSpec(**base)


PLANS = [
    plan(),
    plan(tp=4),
    plan(tp=8, fused=False, quantization="fp8", gpu_clock_mhz=1410),
    plan(tp=4, dp=2, ep=8, comm_sms=20, sequence_parallel=True),
    plan(tp=1, dp=8, ep=8),
    plan(tp=2, dp=2, comm_sms=16, fused=False),
]


def parser_from_vendored_list() -> argparse.ArgumentParser:
    """An argparse parser with vLLM's flags, kinds and dests, as its add_cli_args declares them."""
    p = argparse.ArgumentParser(prog="vllm serve", allow_abbrev=False)
    p.add_argument("model_tag")
    for arg in load_vllm_args().values():
        if arg.kind == "bool":
            p.add_argument(*arg.flags, dest=arg.dest, action=argparse.BooleanOptionalAction, default=None)
        elif arg.kind == "store_true":
            p.add_argument(*arg.flags, dest=arg.dest, action="store_true", default=None)
        else:
            p.add_argument(*arg.flags, dest=arg.dest, default=None)
    return p


def split_cli(text: str) -> tuple[list[str], list[str]]:
    """(argv after `vllm serve`, comment lines) of a to_vllm(cli=True) text."""
    comments = [line for line in text.splitlines() if line.startswith("#")]
    command = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    words = shlex.split(command.replace("\\\n", " "))  # a shell drops backslash-newline
    assert words[:2] == ["vllm", "serve"]
    return words[2:], comments


def test_vendored_list_has_provenance() -> None:
    head = ARGS_FILE.read_text().splitlines()[:6]
    text = "\n".join(head)
    assert VLLM_VERSION in text and "vllm/engine/arg_utils.py" in text and "Apache-2.0" in text


def test_vendored_list_is_vllm_argument_list() -> None:
    args = load_vllm_args()
    # spot checks against vLLM 0.33.0 add_cli_args (aliases included)
    assert args["tensor_parallel_size"].flags == ("--tensor-parallel-size", "-tp")
    assert args["data_parallel_size"].flags == ("--data-parallel-size", "-dp")
    assert args["enable_expert_parallel"].kind == "bool"
    assert args["enable_expert_parallel"].flags == ("--enable-expert-parallel", "-ep")
    assert args["quantization"].flag == "--quantization"
    for dest, arg in args.items():
        assert arg.flag == "--" + dest.replace("_", "-") or dest in {"kv_cache_dtype"}, dest


@pytest.mark.parametrize("p", PLANS, ids=lambda p: f"tp{p.parallel.tp}ep{p.parallel.ep}dp{p.parallel.dp}")
def test_every_key_is_a_vllm_engine_argument(p: PlanSpec) -> None:
    args = load_vllm_args()
    out = to_vllm(p)
    assert set(out) <= set(args), set(out) - set(args)
    for key, value in out.items():
        if args[key].kind in ("bool", "store_true"):
            assert isinstance(value, bool), key


def test_names_against_vllm_engineargs_when_importable() -> None:
    arg_utils = pytest.importorskip(
        "vllm.engine.arg_utils", reason="vLLM needs a CUDA torch; not installed here"
    )
    fields = {f.name for f in dataclasses.fields(arg_utils.EngineArgs)}
    for p in PLANS:
        assert set(to_vllm(p)) <= fields


@pytest.mark.parametrize("p", PLANS, ids=lambda p: f"tp{p.parallel.tp}ep{p.parallel.ep}dp{p.parallel.dp}")
def test_cli_parses_back(p: PlanSpec) -> None:
    text = to_vllm(p, cli=True)
    argv, _ = split_cli(text)
    for word in argv:
        if word.startswith("-"):
            assert re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*", word), word
    ns = vars(parser_from_vendored_list().parse_args(argv))
    expected = to_vllm(p)
    assert ns.pop("model_tag") == expected.pop("model")
    for key, value in expected.items():
        got = ns[key]
        if isinstance(value, dict):
            assert json.loads(got) == value
        elif isinstance(value, bool):
            assert got is value
        else:
            assert got == str(value), key
    assert {k for k, v in ns.items() if v is not None} == set(expected)


def test_dense_tp_plan() -> None:
    out = to_vllm(plan(tp=4))
    assert out == {
        "model": "Qwen/Qwen3-30B-A3B",
        "tensor_parallel_size": 4,
        "data_parallel_size": 1,
        "max_num_seqs": 64,
        "max_model_len": 1280,
        "max_num_batched_tokens": 8192,  # the priced chunked-prefill budget, whatever vLLM's GPU default
        "gpu_memory_utilization": 0.9,
    }
    assert to_vllm(plan(tp=4, max_num_seqs=9000))["max_num_batched_tokens"] == 9000  # vLLM: >= max_num_seqs


def test_expert_parallel_is_tp_times_dp() -> None:
    assert expert_parallel_sizes(4, 2) == (1, 8)
    assert expert_parallel_sizes(1, 1) == (1,)
    assert to_vllm(plan(tp=4, dp=2, ep=8))["enable_expert_parallel"] is True
    assert "enable_expert_parallel" not in to_vllm(plan(tp=4, dp=2, ep=1))


def test_ep_not_expressible() -> None:
    with pytest.raises(ShardingError, match=r"ep=2 with tp x dp = 4 x 2 = 8 GPUs.*valid ep: 1, 8$"):
        to_vllm(plan(tp=4, dp=2, ep=2))
    with pytest.raises(ShardingError, match="ep=4"):
        to_vllm(plan(tp=4, dp=2, ep=4), cli=True)


def test_tp_times_dp_must_be_num_gpus() -> None:
    with pytest.raises(ShardingError, match="tp x dp must equal num_gpus"):
        to_vllm(plan(tp=4, dp=2, num_gpus=4))


def test_fp8_checkpoint_method_is_left_to_vllm() -> None:
    """vLLM reads the quantization method from the checkpoint; a --quantization fp8 that differs from
    it (fbgemm_fp8, modelopt, compressed-tensors) would make vLLM refuse to start."""
    for model in ("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8", "RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8"):
        p = plan(tp=8, model=model, quantization="fp8")
        assert "quantization" not in to_vllm(p) and "--quantization" not in to_vllm(p, cli=True)


def test_fp8_plan_of_a_bf16_checkpoint_quantizes_online() -> None:
    """A plan priced with fp8 weights on a bf16 checkpoint must not be served in bf16: vLLM's
    --quantization fp8 quantizes the weights as it loads them."""
    p = plan(tp=8, model="meta-llama/Llama-3.1-70B-Instruct", quantization="fp8")
    assert to_vllm(p)["quantization"] == "fp8"
    argv, _ = split_cli(to_vllm(p, cli=True))
    assert parser_from_vendored_list().parse_args(argv).quantization == "fp8"
    assert "quantization" not in to_vllm(dataclasses.replace(p, quantization=None))


def test_fp8_plan_of_an_unreadable_model_says_what_to_add() -> None:
    p = plan(tp=2, model="my-llama", quantization="fp8")
    assert "quantization" not in to_vllm(p)
    assert any("--quantization fp8" in n for n in vllm_notes(p))


@pytest.mark.parametrize("gpu,seqs,size", [("H100-SXM", 512, None), ("H100-SXM", 513, 528), ("H100-SXM", 768, 768),
                                            ("B200", 768, None), ("B200", 1030, 1040)])
def test_large_batches_keep_cuda_graphs(gpu: str, seqs: int, size: int | None) -> None:
    """Above vLLM's default capture ceiling (512; 1024 on B200) decode would run without CUDA graphs,
    which the cost model does not price: the export widens the capture to the batch."""
    args = to_vllm(plan(gpu=gpu, max_num_seqs=seqs))
    assert args.get("max_cudagraph_capture_size") == size
    if size:
        argv, _ = split_cli(to_vllm(plan(gpu=gpu, max_num_seqs=seqs), cli=True))
        assert parser_from_vendored_list().parse_args(argv).max_cudagraph_capture_size == str(size)


def test_bad_values() -> None:
    with pytest.raises(InvalidWorkloadError, match="quantization"):
        to_vllm(plan(quantization="int3"))
    with pytest.raises(InvalidWorkloadError, match="gpu_memory_utilization"):
        to_vllm(plan(), gpu_memory_utilization=1.5)


def test_gpu_clock_is_a_note_not_an_argument() -> None:
    p = plan(tp=8, gpu_clock_mhz=1410)
    assert not any("clock" in k for k in to_vllm(p))
    (note,) = vllm_notes(p)  # the dict form's users see it too
    assert "`nvidia-smi -i 0,1,2,3,4,5,6,7 -lgc 1410,1410`" in note and "-rgc" in note
    argv, comments = split_cli(to_vllm(p, cli=True))
    assert f"# note: {note}" in comments
    assert not any("clock" in w or "lgc" in w for w in argv)


def test_unfused_keeps_decode_cuda_graphs() -> None:
    # mode 0 alone would make vLLM drop its default FULL_AND_PIECEWISE graphs to NONE (eager decode)
    assert to_vllm(plan(fused=False))["compilation_config"] == {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    assert "compilation_config" not in to_vllm(plan(fused=True))


def test_sequence_parallel_is_vllms_compile_pass() -> None:
    sp = plan(tp=4, sequence_parallel=True)
    assert to_vllm(sp)["compilation_config"] == {"pass_config": {"enable_sp": True}}
    assert vllm_notes(sp) == []
    unfused = plan(tp=4, sequence_parallel=True, fused=False)
    assert to_vllm(unfused)["compilation_config"]["mode"] == 0
    (note,) = vllm_notes(unfused)
    assert "sequence_parallel not applied" in note
    single = plan(tp=1, sequence_parallel=True)  # vLLM turns enable_sp off at tp=1 (Megatron refuses it)
    assert "compilation_config" not in to_vllm(single) and "needs tensor parallelism" in vllm_notes(single)[0]


def test_comm_sms_is_a_note() -> None:
    # vLLM's only SM count (VLLM_DBO_COMM_SMS) is for DeepEP all-to-all, a dispatch not priced
    for p in (plan(tp=4, dp=2, ep=8, comm_sms=20), plan(tp=8, comm_sms=16)):
        out = to_vllm(p)
        assert "enable_dbo" not in out and "all2all_backend" not in out
        notes = vllm_notes(p)
        assert len(notes) == 1 and "comm_sms=" in notes[0] and "not applied" in notes[0]
        assert "VLLM_DBO_COMM_SMS" not in to_vllm(p, cli=True).split("\n# note")[0]
    dense = plan(tp=8, comm_sms=16)
    notes = vllm_notes(dense)
    assert all(f"# note: {n}" in to_vllm(dense, cli=True) for n in notes)


def test_extractor_on_a_small_source() -> None:
    source = """
@dataclass
class EngineArgs:
    tensor_parallel_size: int = 1
    enable_expert_parallel: bool = False
    enable_prefix_caching: bool | None = None

    @staticmethod
    def add_cli_args(parser):
        g = parser.add_argument_group("x")
        g.add_argument("--tensor-parallel-size", "-tp", **kw["tensor_parallel_size"])
        g.add_argument("--enable-expert-parallel", "-ep", **kw["enable_expert_parallel"])
        g.add_argument("--enable-prefix-caching", **kw["enable_prefix_caching"])
        g.add_argument("--flag", action="store_true")
        return parser
"""
    assert extract(source) == [
        ("enable_expert_parallel", "bool", ["--enable-expert-parallel", "-ep"]),
        ("enable_prefix_caching", "bool", ["--enable-prefix-caching"]),
        ("flag", "store_true", ["--flag"]),
        ("tensor_parallel_size", "value", ["--tensor-parallel-size", "-tp"]),
    ]


def test_bare_config_file_gets_a_note_on_what_vllm_serves(tmp_path):
    cfg = tmp_path / "my-model.json"
    cfg.write_text((Path(el.__file__).parent / "models" / "meta-llama--Llama-3.2-1B-Instruct.json").read_text())
    plan = el.compile(str(cfg), el.Cluster("H100-SXM", num_gpus=1), workload=el.Workload(batch=2, prompt_len=128,
                      output_len=32), clocks_mhz=(1980,), comm_sms=(None,))
    assert plan.model == str(cfg)
    assert "bare config file" in plan.to_vllm(cli=True) and "serve that directory" in vllm_notes(plan.to_spec())[0]


def test_a_plan_over_several_nodes_says_how_to_launch_it_and_locks_each_node() -> None:
    """tp=8 x dp=2 is 16 GPUs on two 8-GPU nodes: one vllm serve line cannot start it, and no node
    has GPUs 0..15; the notes name vLLM's multi-node arguments, which exist in the pinned version."""
    notes = vllm_notes(plan(tp=8, dp=2, model="meta-llama/Llama-3.1-70B-Instruct", gpu_clock_mhz=990))
    multi = next(n for n in notes if "span 2 nodes of 8" in n)
    args = load_vllm_args()
    for flag in re.findall(r"--[a-z-]+", multi):  # --headless is vllm serve's own option, not an EngineArgs one
        assert flag == "--headless" or any(flag in a.flags for a in args.values()), flag
    assert any("nvidia-smi -i 0,1,2,3,4,5,6,7 -lgc 990,990` on each of the 2 nodes" in n for n in notes)
    assert not any("span" in n for n in vllm_notes(plan(tp=8, model="meta-llama/Llama-3.1-70B-Instruct")))
    odd = vllm_notes(plan(tp=4, dp=3, model="meta-llama/Llama-3.1-70B-Instruct", gpu_clock_mhz=990))
    assert any("span 2 nodes of 8 (8 + 4 GPUs" in n for n in odd)
    assert any("on each of the 2 nodes (GPUs 0-3 only on the last)" in n for n in odd)
    assert any("whole tensor-parallel groups per node" in n for n in odd)
    wide = vllm_notes(plan(tp=16, model="meta-llama/Llama-3.1-405B-Instruct"))
    assert any("span 2 nodes of 8 (8 + 8 GPUs, each tensor-parallel group of 16 over 2 nodes)" in n for n in wide)


@pytest.mark.parametrize("kw,match", [
    (dict(model="meta-llama/Llama-3.1-70B-Instruct", tp=3), r"tp=3 does not divide the model's 64 attention heads "
                                                            r"and 8 KV heads"),
    (dict(tp=1, dp=6, ep=6), r"ep=6 does not divide the 128 experts"),
    (dict(model="meta-llama/Llama-3.1-8B-Instruct", tp=8, ep=8), r"ep=8 but .* has no experts"),
    (dict(tp=1, dp=5, gpu="H200"), r"5 GPUs per expert does not divide the expert intermediate size m=768"),
    (dict(model="Qwen/Qwen3-4B-FP8", tp=8, quantization="fp8"), r"tp=8 splits this fp8 checkpoint's weight blocks"),
])
def test_exports_check_the_plan_against_the_model(kw, match: str) -> None:
    """A hand-written plan the model cannot run is refused as estimate refuses it, by both exporters."""
    from energylens.export import to_megatron

    spec = plan(**kw)
    for export in (el.export.to_vllm, to_megatron):
        with pytest.raises(ShardingError, match=match):
            export(spec)


def test_exports_refuse_a_malformed_plan_with_a_typed_error() -> None:
    from energylens.errors import InvalidTypeError

    with pytest.raises(InvalidTypeError, match=r"plan.parallel must be an energylens Parallel, got \(1, 1, 1\)"):
        el.export.to_vllm(dataclasses.replace(plan(), parallel=(1, 1, 1)))
    with pytest.raises(InvalidTypeError, match=r"plan.model must be a model id or config path, got None"):
        el.export.to_vllm(dataclasses.replace(plan(), model=None))


@pytest.mark.parametrize("bad", [True, 0, 1.5, "0.9"])
def test_gpu_memory_utilization_must_be_a_share(bad) -> None:
    with pytest.raises(InvalidWorkloadError, match=r"gpu_memory_utilization must be in \(0, 1\]"):
        el.export.to_vllm(plan(), cli=True, gpu_memory_utilization=bad)


@pytest.mark.parametrize("kw,match", [
    (dict(comm_sms=500), r"comm_sms must be an SM count in 1\.\.131 on H100-SXM"),
    (dict(gpu_clock_mhz=5000), r"5000"),
    (dict(max_model_len=10**6), r"max_model_len 1000000 exceeds Qwen/Qwen3-30B-A3B's 40960 tokens"),
    (dict(max_model_len=131072, kv_cache_tokens=50000), r"max_model_len 131072 exceeds the 50000 tokens its KV cache holds"),
    (dict(max_model_len=512, request_len=1280), r"request_len 1280 exceeds max_model_len 512"),
])
def test_exports_check_settings_the_engine_would_refuse(kw, match: str) -> None:
    with pytest.raises(el.EnergylensError, match=match):
        el.export.to_vllm(plan(tp=2, **kw))


def test_exports_check_moe_fp8_and_field_types() -> None:
    """What estimate refuses or reads from the config, the exporters refuse too (both of them)."""
    from energylens.errors import EstimateError, InvalidTypeError
    from energylens.export import to_megatron

    bad = [(plan(tp=8, ep=8, moe=False), InvalidWorkloadError, "plan.moe=False but Qwen/Qwen3-30B-A3B has routed"),
           (plan(tp=2, model="meta-llama/Llama-3.1-8B-Instruct", moe=True), InvalidWorkloadError, "has no routed"),
           (plan(tp=4, model="nvidia/Llama-3.1-70B-Instruct-FP8", gpu="A100-SXM-80GB", quantization="fp8"),
            EstimateError, "A100-SXM-80GB has no fp8 tensor cores"),
           (plan(fused="no"), InvalidTypeError, "plan.fused must be True or False, got 'no'"),
           (plan(sequence_parallel="yes"), InvalidTypeError, "plan.sequence_parallel must be True or False")]
    for spec, error, match in bad:
        for export in (to_vllm, to_megatron):
            with pytest.raises(error, match=match):
                export(spec)
    import numpy as np

    assert to_vllm(plan(max_num_seqs=np.int64(64)))["max_num_seqs"] == 64
    # an FP8 checkpoint with quantization unset runs in fp8 on both engines
    fp8 = plan(tp=4, model="Qwen/Qwen3-32B-FP8")
    assert "quantization" not in to_vllm(fp8) and to_megatron(fp8)["fp8"] == "e4m3"



def test_a_model_energylens_cannot_read_is_exported_with_a_note() -> None:
    from energylens.export import megatron_extras

    p = plan(tp=2, model="meta-llama/Llama-3.1-70B-Instruc")
    want = "Did you mean 'meta-llama/Llama-3.1-70B-Instruct'?), so the plan was not checked against the model"
    assert any(want in n for n in vllm_notes(p)) and any(want in n for n in megatron_extras(p).notes)
    assert any("qwen3-8bb's config cannot be read" in n for n in vllm_notes(plan(tp=3, model="qwen3-8bb")))


def test_exports_check_the_config_that_was_priced_not_the_one_its_name_reads(tmp_path, monkeypatch) -> None:
    """A config saved from a hub model keeps its ``_name_or_path``: a compiled plan of a changed copy
    is checked against the changed config (no context error the plan did not have) and its exports
    say that the name's checkpoint is not the priced model; a model folder is named by its absolute
    path, which vLLM takes from any directory."""
    from energylens.export import megatron_extras
    from energylens.models import config_dict, load_config

    small = config_dict(load_config("Qwen/Qwen3-0.6B").config)
    longer = dict(small, _name_or_path="Qwen/Qwen3-0.6B", max_position_embeddings=131072, num_hidden_layers=4)
    path = tmp_path / "longer.json"
    path.write_text(json.dumps(longer))
    cluster = el.Cluster("H100-SXM", num_gpus=1)
    p = el.compile(str(path), cluster, el.Workload(batch=2, prompt_len=60000, output_len=128, output_len_cv=0))
    assert p.model == "Qwen/Qwen3-0.6B" and p.to_vllm()["max_model_len"] == 60128  # 40,960 in the named config
    want = ("Qwen/Qwen3-0.6B is not the model the plan was priced on", "num_hidden_layers 28 there, 4 priced",
            "max_position_embeddings 40960 there, 131072 priced")
    for notes in (vllm_notes(p.to_spec()), megatron_extras(p.to_spec()).notes):
        assert any(all(w in n for w in want) for n in notes), notes
    assert "traced" not in p.to_dict()
    saved = PlanSpec.from_dict(json.loads(json.dumps(p.to_dict()["spec"])))  # the priced config is kept
    assert to_vllm(saved)["max_model_len"] == 60128
    assert any(all(w in n for w in want) for n in vllm_notes(saved))
    same = el.compile("Qwen/Qwen3-0.6B", cluster, el.Workload(batch=2, prompt_len=512, output_len=64))
    assert not any("priced on" in n for n in vllm_notes(same.to_spec()))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(small))
    monkeypatch.chdir(tmp_path)
    assert load_config("ckpt").name == str(folder.resolve())
    # a hub cache's snapshot: config.json links into blobs/, and the folder keeps its own name
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "deadbeef").write_text(json.dumps(dict(small, _name_or_path="/elsewhere/ckpt")))
    snap = tmp_path / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(tmp_path / "blobs" / "deadbeef")
    assert load_config(str(snap)).name == str(snap.resolve())
    # the priced config, not the name's, is what the checks name; a name that cannot be read is said
    with pytest.raises(InvalidWorkloadError, match=r"exceeds the config the plan was priced on \(<dict>\)'s 4096"):
        to_vllm(PlanSpec("Qwen/Qwen3-0.6B", "H100-SXM", 1, Parallel(), 8, 8192,
                         config=dict(small, max_position_embeddings=4096)))
    gone = dict(p.to_spec().to_dict(), parallel=p.parallel, model="/nowhere/ft-7", config=None)
    notes = vllm_notes(PlanSpec(**dict(gone, config=p.traced)))
    assert any("/nowhere/ft-7's config cannot be read" in n and "checked against the config it was priced on" in n
               for n in notes), notes
    with pytest.raises(el.EnergylensError, match="plan.config must be the model the plan was priced on"):
        to_vllm(dataclasses.replace(p.to_spec(), config=123))


def test_replicas_over_nodes_get_one_serve_line_per_node() -> None:
    """vLLM's multi-node data parallel: each node runs its share of the dp ranks; node 0 the API server,
    the others --headless with their first rank; all name node 0's address."""
    import os

    text = to_vllm(plan(tp=4, dp=3, model="meta-llama/Llama-3.1-70B-Instruct"), cli=True)
    commands = [c for c in text.split("# node ")[1:]]
    assert len(commands) == 2
    parser = parser_from_vendored_list()
    for k, (local, start) in enumerate(((2, None), (1, 2))):
        body = commands[k].split("\n", 1)[1]
        words = shlex.split(os.path.expandvars(body.replace("$HEAD_IP", "10.0.0.1")).replace("\\\n", " "))
        assert words[:2] == ["vllm", "serve"] and ("--headless" in words) == (k > 0)
        args = parser.parse_args([w for w in words[2:] if w != "--headless"])  # vllm serve's own flag
        assert (args.data_parallel_size, args.data_parallel_size_local) == ("3", str(local))
        assert args.data_parallel_start_rank == (None if start is None else str(start))
        assert args.data_parallel_address == "10.0.0.1" and args.tensor_parallel_size == "4"
    assert "# node" not in to_vllm(plan(tp=16, model="meta-llama/Llama-3.1-405B-Instruct"), cli=True)
