"""Communication model: table interpolation, monotonicity, alpha-beta fallback, errors."""

from __future__ import annotations

import pytest

from energylens.costmodel.comm import (
    COLLECTIVES,
    collective_cost,
    collective_time_s,
    comm_power_w,
    comm_profile,
    wait_energy_j,
)
from energylens.errors import EstimateError, UnknownNameError

GPU = "A100-SXM4-40GB"


def test_table_points_are_reproduced() -> None:
    e = comm_profile("a100_sxm")["tables"]["all_gather"]["2"]
    for b, t in zip(e["bytes"], e["latency_s"], strict=True):
        got, how = collective_time_s("all_gather", b, 2, GPU)
        assert how == "table" and got == pytest.approx(t, rel=1e-9)


@pytest.mark.parametrize("gpu", ["A100-SXM4-40GB", "H100-SXM", "H200", "B200"])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_all_reduce_takes_vllm_kernel_for_small_messages(gpu: str, n: int) -> None:
    """Below 8 MiB an all-reduce costs the faster of vLLM's own kernel and NCCL (both measured);
    decode-sized messages are priced from vLLM's table, large ones from NCCL's."""
    key = {"A100-SXM4-40GB": "a100_sxm", "H100-SXM": "h100_sxm", "H200": "h200_sxm", "B200": "b200_sxm"}[gpu]
    prof = comm_profile(key)
    vllm, nccl = prof["vllm_all_reduce"][str(n)], prof["tables"]["all_reduce"][str(n)]
    t, how = collective_time_s("all_reduce", 16 * 2**10, n, gpu)  # 16 KiB: one decode token row of a 8k model
    assert how == "table_vllm" and t < collective_time_s("all_gather", 16 * 2**10, n, gpu)[0] * 3
    for b in [2**k for k in range(9, 23)]:  # 512 B .. 4 MiB
        got, how = collective_time_s("all_reduce", b, n, gpu)
        t_nccl = min(nccl["latency_s"][i] for i, x in enumerate(nccl["bytes"]) if x >= b)
        assert got <= t_nccl * (1 + 1e-9), (b, got, t_nccl)
        if b in vllm["bytes"]:
            assert got <= vllm["latency_s"][vllm["bytes"].index(b)] * (1 + 1e-9)
    assert collective_time_s("all_reduce", 64 * 2**20, n, gpu)[1] == "table"  # large: NCCL


def test_loglog_interpolation_between_points() -> None:
    e = comm_profile("a100_sxm")["tables"]["all_gather"]["4"]
    b0, b1, t0, t1 = e["bytes"][15], e["bytes"][16], e["latency_s"][15], e["latency_s"][16]
    mid, _ = collective_time_s("all_gather", (b0 * b1) ** 0.5, 4, GPU)
    assert mid == pytest.approx((t0 * t1) ** 0.5, rel=1e-9)


@pytest.mark.parametrize("fn", ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_large_messages_monotone(fn: str, n: int) -> None:
    sizes = [2**k for k in range(20, 33)]  # 1 MiB .. 4 GiB (beyond the table: alpha-beta)
    times = [collective_time_s(fn, s, n, "H100-SXM")[0] for s in sizes]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))


@pytest.mark.parametrize("gpu", ["A100-SXM4-40GB", "H100-SXM", "H200", "B200"])
def test_more_bytes_never_take_less_time(gpu: str) -> None:
    """Every collective on 2-8 GPUs, 256 B to 4 GiB: the tables dip where a kernel switches algorithms
    (vLLM's all-reduce on 8 x B200: 26.0 us at 256 KiB, 16.7 us at 1 MiB), which priced a longer
    prompt's prefill faster; they are read as their lower envelope over larger messages."""
    sizes = [2 ** (k / 4) for k in range(32, 129)]
    for fn in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        for n in range(2, 9):
            times = [collective_time_s(fn, b, n, gpu)[0] for b in sizes]
            worse = [(sizes[i], times[i], times[i + 1]) for i in range(len(sizes) - 1) if times[i + 1] < times[i] * (1 - 1e-9)]
            assert not worse, (fn, n, worse[:3])


def test_alpha_beta_outside_the_table() -> None:
    e = comm_profile("h100_sxm")["tables"]["all_reduce"]["8"]
    big = e["bytes"][-1] * 4
    t, how = collective_time_s("all_reduce", big, 8, "H100-SXM")
    assert how == "alpha_beta_large"
    assert t == pytest.approx(e["alpha_s"] + e["beta_s_per_byte"] * big)
    g = comm_profile("h100_sxm")["tables"]["all_gather"]["8"]
    t_small, how_small = collective_time_s("all_gather", 10, 8, "H100-SXM")
    assert how_small == "alpha_beta_small" and 0 < t_small <= g["latency_s"][0]
    t6, how6 = collective_time_s("all_gather", 2**26, 6, "H100-SXM")
    assert how6 == "alpha_beta_gpus" and t6 > 0
    t16, how16 = collective_time_s("all_gather", 2**26, 16, "H100-SXM")  # two nodes: over IB
    assert how16 == "alpha_beta_link" and t16 > collective_time_s("all_gather", 2**26, 8, "H100-SXM")[0]


def test_links_and_trivial_cases() -> None:
    nv, _ = collective_time_s("all_reduce", 2**28, 4, GPU)
    pcie, how = collective_time_s("all_reduce", 2**28, 4, GPU, "pcie")
    assert how == "alpha_beta_link" and pcie > nv
    assert collective_time_s("send_recv", 2**20, 2, GPU)[1] == "alpha_beta_link"
    assert collective_time_s("all_reduce", 2**20, 1, GPU) == (0.0, "trivial")


def test_beyond_a_node_any_link_is_infiniband_behind_the_gpus_pcie() -> None:
    """More GPUs than a node holds (8) cross InfiniBand whatever the node's own link, and a GPU
    reaches its HCA over its PCIe link: an A100 or L40S (PCIe Gen4, 32 GB/s) moves no faster."""
    big = 2**30
    assert collective_time_s("all_reduce", big, 16, "L40S", "pcie") == collective_time_s("all_reduce", big, 16, "L40S", "ib")
    with pytest.raises(EstimateError, match="L40S has no NVLink"):  # refused at any size, not only within a node
        collective_time_s("all_reduce", big, 16, "L40S", "nvlink")
    slope = {g: (collective_time_s("all_gather", 2 * big, 16, g, "ib")[0] - collective_time_s("all_gather", big, 16, g, "ib")[0])
             for g in ("A100-SXM-80GB", "H100-SXM")}
    assert slope["A100-SXM-80GB"] == pytest.approx(15 / 16 * big / 32e9)  # its PCIe link, not the 50 GB/s HCA
    assert slope["H100-SXM"] == pytest.approx(15 / 16 * big / 50e9)  # Gen5 (64 GB/s): the HCA limits


def test_energy_parts() -> None:
    c = collective_cost("all_reduce", 32 * 2**20, 2, GPU)
    assert c.energy_j == pytest.approx(c.power_w * c.time_s * 2)
    assert c.power_w > wait_energy_j(GPU, 1.0)  # a GPU in the collective draws more than a waiting one
    assert comm_power_w(GPU) < 400


def test_errors() -> None:
    with pytest.raises(UnknownNameError, match="all_reduce"):
        collective_time_s("allreduce", 1024, 2, GPU)
    with pytest.raises(EstimateError, match=">= 0"):
        collective_time_s("all_reduce", -1, 2, GPU)
    with pytest.raises(EstimateError, match="no NVLink"):
        collective_time_s("all_reduce", 1024, 2, "L40S")
    with pytest.raises(UnknownNameError):
        collective_time_s("all_reduce", 1024, 2, GPU, "ethernet")
    with pytest.raises(UnknownNameError):
        collective_time_s("all_reduce", 1024, 2, "no-such-gpu")
    # a peer link without measurements is an error that says what can be done, not a borrowed number
    with pytest.raises(EstimateError, match=r"no measured collective tables for MI300X.*H100-SXM.*one GPU.*pcie"):
        collective_time_s("all_reduce", 1024, 2, "MI300X")
    assert collective_time_s("all_reduce", 1024, 2, "MI300X", "pcie")[1] == "alpha_beta_link"
    with pytest.raises(EstimateError):
        wait_energy_j(GPU, -1.0)
    assert "send_recv" in COLLECTIVES
