"""Plan executor on CPU: tiny configs of the supported architectures, static cache, TP over gloo."""

from __future__ import annotations

import json
import os
import socket

import pytest

torch = pytest.importorskip("torch")

from energylens.errors import DeviceUnavailableError, InvalidWorkloadError  # noqa: E402
from energylens.runtime.execute import (  # noqa: E402
    Executor,
    build_model,
    hf_config,
    init_distributed,
    kv_cache_bytes,
    main,
    tiny_config,
)
from energylens.runtime.meter import NullMeter  # noqa: E402
from energylens.typing import Workload  # noqa: E402

FAST = dict(warmup=0, repeats=2, min_window_s=0.0)


@pytest.mark.parametrize(
    "name,family,cls",
    [
        ("Llama-3.2-1B", "llama", "LlamaForCausalLM"),
        ("Qwen3-8B", "qwen3", "Qwen3ForCausalLM"),
        ("Qwen3-30B-A3B", "qwen3_moe", "Qwen3MoeForCausalLM"),
    ],
)
def test_tiny_models_run_prefill_and_decode(name, family, cls):
    cfg = tiny_config(name)
    assert cfg["model_type"] == family and cfg["num_hidden_layers"] == 2
    ex = Executor(cfg, meter=NullMeter(), decode_steps=2, **FAST)
    assert type(ex.model).__name__ == cls
    assert next(ex.model.parameters()).dtype == torch.float32  # f32 on CPU
    m = ex.run(Workload(batch=2, prompt_len=8, output_len=4), decode_context_lens=[8, 24])
    assert m.prefill.phase == "prefill" and m.prefill.tokens == 16 and m.prefill.time_s > 0
    assert [d.context_len for d in m.decode] == [8, 24]
    assert [d.attended_kv_len for d in m.decode] == [10, 26]
    assert all(d.tokens == 2 and d.time_s > 0 and d.energy_j is None for d in m.decode)
    assert m.decode[0].timing.repeats == 2 and m.decode[0].timing.unavailable_reason.startswith("no energy meter")
    assert m.decode[0].energy_per_token_j is None and m.itl_s > 0 and m.ttft_s > 0
    json.dumps(m.to_dict(), default=str)


def test_tiny_config_keeps_architecture_options():
    d = tiny_config("Llama-3.2-1B")
    assert d["rope_scaling"]["rope_type"] == "llama3" and d["tie_word_embeddings"] is True
    assert d["_name_or_path"] == "tiny:meta-llama/Llama-3.2-1B"  # the checkpoint asked for (base model)
    assert tiny_config("Qwen3-8B", num_hidden_layers=3)["num_hidden_layers"] == 3


def test_hf_config_of_the_real_models():
    c = hf_config("Llama-3.1-8B")
    assert (c.hidden_size, c.num_hidden_layers, c.num_key_value_heads) == (4096, 32, 8)
    assert hf_config("Qwen3-30B-A3B").num_experts == 128
    assert hf_config(c) is not c
    # 32 layers x 8 KV heads x 128 dims x (K and V) x 2 bytes = 128 KiB per token
    assert kv_cache_bytes("Llama-3.1-8B", batch=1, max_len=1) == 128 * 1024
    assert kv_cache_bytes("Llama-3.1-8B", batch=2, max_len=10, tp=2) == 10 * 128 * 1024


def test_decode_round_leaves_the_cache_at_context_plus_steps():
    ex = Executor(tiny_config("Llama-3.2-1B"), meter=NullMeter(), decode_steps=3, **FAST)
    cache = ex._cache(20)
    ids = ex._tokens(1, 1)
    with torch.no_grad():
        ex._forward(ids, cache)
        ex._set_len(cache, 10)
        for _ in range(3):
            ex._forward(ids, cache)
    assert int(cache.get_seq_length()) == 13


def test_a_model_that_ignores_the_cache_is_an_error_not_a_wrong_measurement():
    """transformers 5.17 (the lent GPU machine's) names the cache past_key_values and drops an unknown
    cache=: decode then attends to one token. The keyword follows the signature, and a cache that
    did not advance stops the measurement."""
    from energylens.errors import EnergylensError

    ex = Executor(tiny_config("Llama-3.2-1B"), meter=NullMeter(), decode_steps=2, **FAST)
    assert ex._cache_arg in ("cache", "past_key_values")
    ex.__dict__["_cache_arg"] = "unused_cache"  # as an older or newer transformers would take it
    with pytest.raises(EnergylensError, match=r"KV cache holds 0 tokens after a forward that should leave 4"):
        ex.prefill(batch=1, prompt_len=4)


def test_a_cache_whose_length_cannot_be_reset_is_an_error():
    """A transformers whose StaticLayer keeps its length elsewhere would leave _set_len without
    effect: the rounds would run past the cache's end (a device assert on a GPU)."""
    from energylens.errors import EnergylensError

    ex = Executor(tiny_config("Llama-3.2-1B"), meter=NullMeter(), decode_steps=2, **FAST)
    ex._set_len = lambda cache, n: None  # type: ignore[method-assign]
    with pytest.raises(EnergylensError, match=r"holds 3 tokens after a forward that should leave 10.*cannot be reset"):
        ex.decode(batch=1, context_len=8)


def test_bad_requests_raise():
    ex = Executor(tiny_config("Qwen3-8B"), meter=NullMeter(), **FAST)
    with pytest.raises(InvalidWorkloadError, match="batch"):
        ex.prefill(batch=0, prompt_len=8)
    with pytest.raises(InvalidWorkloadError, match="decode_steps"):
        Executor(ex.model, decode_steps=0)
    with pytest.raises(InvalidWorkloadError, match="dtype"):
        Executor(tiny_config("Qwen3-8B"), dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="no CUDA"):
            Executor(tiny_config("Qwen3-8B"), device="cuda")
    with pytest.raises(DeviceUnavailableError, match="torchrun"):
        build_model(tiny_config("Qwen3-8B"), tp=2)


def test_init_distributed_outside_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(DeviceUnavailableError, match="torchrun"):
        init_distributed()


def test_main_cli_tiny(tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    assert main(["--model", "Qwen3-8B", "--tiny", "--batch", "1", "--prompt-len", "8", "--output-len", "4",
                 "--repeats", "1", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prefill"]["tokens"] == 8 and summary["decode"][0]["context_len"] == 10
    assert json.loads(out.read_text())["workload"]["batch"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from energylens.runtime.execute import Executor, build_model, init_distributed, tiny_config

    torch.set_num_threads(1)
    try:
        _, world_size, device = init_distributed("gloo")
        results = {}
        for name in ("Llama-3.2-1B", "Qwen3-30B-A3B"):
            cfg = tiny_config(name, tie_word_embeddings=False)  # TP unties; the reference must match
            ex = Executor(cfg, device=device, tp=world_size, decode_steps=2, warmup=0, repeats=2, min_window_s=0.0)
            ref = build_model(cfg)  # same seed, not sharded
            ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(3))
            with torch.no_grad():
                err = (ex.forward_logits(ids) - ref(input_ids=ids).logits).abs().max().item()
            m = ex.run(Workload(batch=2, prompt_len=8, output_len=4))
            heads = ex._cache(4)
            with torch.no_grad():
                ex._forward(ids[:, :1], heads)
            results[name] = {
                "err": err,
                "tp": m.tp,
                "prefill_windows": len(m.prefill.timing.windows),
                "decode_time": m.decode[0].time_s,
                "energy": m.decode[0].energy_j,
                "kv_heads_local": int(heads.layers[0].keys.shape[1]),
            }
        tied = Executor(tiny_config("Llama-3.2-1B"), device=device, tp=world_size)  # tied head: untied for TP
        results["tied_logits_shape"] = list(tied.forward_logits(ids).shape)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.barrier()  # neither rank tears gloo down while the other is still in a collective
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_tensor_parallel_two_ranks_gloo(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_tp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in ranks:
        assert res.pop("tied_logits_shape") == [2, 8, 256]
        for name, r in res.items():
            assert r["err"] < 1e-4, name  # the sharded model computes what the full one does
            assert r["tp"] == 2 and r["prefill_windows"] == 2 and r["decode_time"] > 0
            assert r["energy"] is None
            assert r["kv_heads_local"] == 1  # 2 KV heads split over 2 ranks
    assert ranks[0]["Llama-3.2-1B"]["decode_time"] == ranks[1]["Llama-3.2-1B"]["decode_time"]  # merged windows


@pytest.mark.gpu
def test_gpu_executor_bf16_with_energy():
    ex = Executor(tiny_config("Llama-3.2-1B", hidden_size=512, intermediate_size=1024), device="cuda",
                  repeats=2, cuda_graphs=True)
    assert next(ex.model.parameters()).dtype == torch.bfloat16
    m = ex.run(Workload(batch=4, prompt_len=128, output_len=32))
    assert m.prefill.energy_j is not None and m.prefill.energy_j > 0
    assert m.decode[0].energy_j is not None and m.decode[0].timing.energy_source in ("counter", "sampled")


@pytest.mark.parametrize("args,match", [(["--batch", "0"], "Workload.batch must be a positive integer"),
                                        (["--dtype", "float8"], "unknown dtype 'float8'")])
def test_main_cli_bad_input_is_one_line(capsys, args, match):
    assert main(["--model", "Qwen3-8B", "--tiny", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err


def test_main_cli_out_directory_is_refused_before_the_run(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "Qwen3-8B", "--tiny", "--out", str(tmp_path)])
    assert exc.value.code == 2
