"""Multi-GPU plans: clear errors for impossible shardings, memory per GPU, bad options."""

from __future__ import annotations

import pytest

import energylens as el
from energylens.errors import ConfigError, DoesNotFitError, ShardingError, UnknownNameError

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
MOE = "Qwen/Qwen3-30B-A3B-Instruct-2507"
WL = el.Workload(batch=8, prompt_len=512, output_len=128)


def test_tp_not_dividing_heads_names_value_and_choices() -> None:
    with pytest.raises(ShardingError, match=r"tp=3 does not divide .*32 attention heads and 8 KV heads.*"
                                            r"valid tp on 8 GPUs: 1, 2, 4, 8$"):
        el.estimate(LLAMA, el.Cluster("H100", num_gpus=8), WL, el.Parallel(tp=3))
    with pytest.raises(ShardingError, match=r"valid tp on 4 GPUs: 1, 2, 4$"):  # only what the cluster can run
        el.estimate(LLAMA, el.Cluster("H100", num_gpus=4), WL, el.Parallel(tp=3))


def test_fp8_block_checkpoints_need_whole_blocks_per_gpu() -> None:
    """Qwen's fp8 checkpoints scale 128x128 weight blocks; vLLM 0.33 refuses a plan whose row-parallel
    slices cut a block, and refines the experts' blocks (to >= 32) where it can."""
    from energylens.api import resolve_model
    from energylens.passes.shard import _fp8_block_problem
    from energylens.search.compile import variants

    with pytest.raises(ShardingError, match=r"tp=8 splits .*down_proj input per GPU would be 1216, not a multiple of the "
                                            r"128x128 fp8 weight block; valid tp on 8 GPUs: 1, 2, 4$"):
        el.estimate("Qwen/Qwen3-4B-FP8", el.Cluster("H100", num_gpus=8), WL, el.Parallel(tp=8))
    moe = "Qwen/Qwen3-30B-A3B-FP8"  # experts 768 wide: 192 per GPU at tp=4 without ep, refined to 64x64 blocks
    el.estimate(moe, el.Cluster("H100", num_gpus=4), WL, el.Parallel(tp=4))
    assert (4, 1) in {(v.parallel.tp, v.parallel.ep) for v in variants(resolve_model(moe), 4)}
    assert _fp8_block_problem(resolve_model(moe).decode, 1, 16) == (
        "its expert intermediate size per GPU would be 48, not a multiple of the 128x128 fp8 weight block "
        "nor of a finer block of >= 32")


@pytest.mark.parametrize("method", ["fp8", "compressed-tensors"])
def test_fp8_moe_block_refinement_depends_on_the_method(method: str) -> None:
    """Experts 32 wide in 64x64 blocks: vLLM refines an HF fp8 checkpoint's scales to 32x32 blocks;
    its compressed-tensors MoE method checks strictly, so no plan loads."""
    from energylens.testing import tiny_qwen3_moe_config

    f8 = {"num_bits": 8, "type": "float"}
    qc = ({"quant_method": "fp8", "weight_block_size": [64, 64]} if method == "fp8" else
          {"quant_method": "compressed-tensors", "ignore": ["lm_head"], "config_groups": {"g": {
              "targets": ["Linear"], "weights": f8 | {"strategy": "block", "block_structure": [64, 64]},
              "input_activations": f8}}})
    model = tiny_qwen3_moe_config() | {"quantization_config": qc}
    wl = el.Workload(batch=4, prompt_len=64, output_len=16)
    if method == "fp8":
        el.estimate(model, el.Cluster("H100", num_gpus=1), wl)
    else:
        with pytest.raises(ShardingError, match=r"expert intermediate size per GPU would be 32, not a multiple of the "
                                                r"64x64 fp8 weight block; no ep loads it on 1 GPUs"):
            el.estimate(model, el.Cluster("H100", num_gpus=1), wl)


def test_ep_not_dividing_experts_names_value_and_choices() -> None:
    with pytest.raises(ShardingError, match=r"ep=3 .*valid ep"):
        el.estimate(MOE, el.Cluster("H100", num_gpus=8), WL, el.Parallel(tp=2, dp=3, ep=3))
    with pytest.raises(ShardingError, match=r"ep=8 with tp x dp = 4 x 1 = 4 GPUs.*valid ep: 1, 4$"):
        el.estimate(MOE, el.Cluster("H100", num_gpus=8), WL, el.Parallel(tp=4, ep=8))
    with pytest.raises(ShardingError, match=r"ep=2 with tp x dp = 4 x 1 = 4 GPUs.*valid ep: 1, 4$"):
        el.estimate(MOE, el.Cluster("H100", num_gpus=8), WL, el.Parallel(tp=4, ep=2))  # vLLM has no ep < tp x dp
    with pytest.raises(ShardingError, match=r"ep=2 but graph .* has no experts"):
        el.estimate(LLAMA, el.Cluster("H100", num_gpus=8), WL, el.Parallel(tp=2, ep=2))


def test_more_gpus_than_the_cluster() -> None:
    with pytest.raises(ShardingError, match=r"tp x dp = 4 x 2 = 8 GPUs, but the cluster has 4; use tp x dp <= 4"):
        el.estimate(LLAMA, el.Cluster("H100", num_gpus=4), WL, el.Parallel(tp=4, dp=2))


def test_memory_is_checked_per_gpu() -> None:
    big = "meta-llama/Llama-3.1-70B-Instruct"
    with pytest.raises(DoesNotFitError, match="per GPU"):
        el.estimate(big, el.Cluster("H100", num_gpus=8), WL, el.Parallel(tp=1))
    est = el.estimate(big, el.Cluster("H100", num_gpus=8), WL, el.Parallel(tp=4))
    assert est.memory.weights_bytes == pytest.approx(141e9 / 4, rel=0.03)
    assert est.memory.total_bytes < est.memory.capacity_bytes


def test_bad_overlap_and_interconnect_options() -> None:
    with pytest.raises(ConfigError, match=r"comm_sms must be an SM count in 1..131"):
        el.estimate(LLAMA, el.Cluster("H100", num_gpus=2), WL, el.Parallel(tp=2), comm_sms=132)
    with pytest.raises(UnknownNameError):
        el.estimate(LLAMA, el.Cluster("H100", num_gpus=2, interconnect="carrier-pigeon"), WL, el.Parallel(tp=2))


def test_pcie_is_slower_than_nvlink() -> None:
    nv = el.estimate(LLAMA, el.Cluster("H100", num_gpus=2), WL, el.Parallel(tp=2))
    pcie = el.estimate(LLAMA, el.Cluster("H100", num_gpus=2, interconnect="pcie"), WL, el.Parallel(tp=2))
    assert pcie.decode.itl_s > nv.decode.itl_s


def test_a_comm_sms_of_the_wrong_type_says_so_and_a_histogram_list_is_taken() -> None:
    from energylens.errors import InvalidTypeError
    from energylens.passes.moe import Moe

    for bad in (16.0, True, "16"):
        with pytest.raises(InvalidTypeError, match=r"comm_sms must be an SM count \(an int\) or None, got"):
            el.estimate(LLAMA, el.Cluster("H100", num_gpus=2), WL, el.Parallel(tp=2), comm_sms=bad)
    # a histogram given as a list (as the error that asks for one spells it) works as a tuple does
    moe = "Qwen/Qwen3-30B-A3B-Instruct-2507"
    listed = el.estimate(moe, el.Cluster("H100"), WL, routing=Moe(routing="histogram", histogram=[1.0] * 128))
    tupled = el.estimate(moe, el.Cluster("H100"), WL, routing=Moe(routing="histogram", histogram=(1.0,) * 128))
    assert listed.decode == tupled.decode


def test_routing_names_any_case_and_numpy_inputs() -> None:
    import numpy as np

    from energylens.passes.moe import Moe

    dense = el.estimate("Qwen/Qwen3-0.6B", el.Cluster("H100"), WL, routing="Uniform")  # uniform on a dense model
    assert dense.decode == el.estimate("Qwen/Qwen3-0.6B", el.Cluster("H100"), WL, routing=Moe()).decode
    assert Moe("zipf", seed=np.int64(3)) == Moe("zipf", seed=3)
    assert Moe("histogram", histogram=np.array([1.0, 2.0, 3.0])).histogram == (1.0, 2.0, 3.0)
