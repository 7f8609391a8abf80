"""GPU datasheet specs: registry, aliases, validation, sources."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from energylens.costmodel.hardware import GPUSpec, get_gpu, list_gpus
from energylens.errors import EstimateError, UnknownNameError

EXPECTED = {"H100-SXM", "H100-PCIe", "H200", "A100-SXM-80GB", "A100-SXM4-40GB", "B200", "L40S", "MI300X"}


def test_all_gpus_present():
    assert set(list_gpus()) == EXPECTED


@pytest.mark.parametrize("alias,name", [("H100", "H100-SXM"), ("h100-sxm", "H100-SXM"), ("b200", "B200"),
                                        ("A100", "A100-SXM-80GB"), ("mi300x", "MI300X")])
def test_aliases_case_insensitive(alias, name):
    assert get_gpu(alias).name == name


def test_unknown_gpu_lists_choices():
    with pytest.raises(UnknownNameError) as exc:
        get_gpu("H1000")
    assert exc.value.kind == "GPU" and set(exc.value.choices) == EXPECTED
    assert "H100-SXM" in str(exc.value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spec_is_sane_and_sourced(name):
    g = get_gpu(name)
    assert g.idle_power_w < g.tdp_w
    assert g.hbm_capacity_bytes > 16e9 and g.hbm_bandwidth_bytes_per_s > 5e11
    if g.fp8_dense_tflops is not None:  # dense fp8 is twice dense bf16 on every listed GPU
        assert g.fp8_dense_tflops == pytest.approx(2 * g.bf16_dense_tflops, rel=0.02)
    for field in ("bf16_dense_tflops", "hbm_bandwidth_bytes_per_s", "tdp_w", "idle_power_w"):
        assert g.sources[field].strip()


def test_dense_not_sparse_numbers():
    assert get_gpu("H100-SXM").bf16_dense_tflops == pytest.approx(989.4)
    assert get_gpu("B200").bf16_dense_tflops == pytest.approx(2250)


def test_missing_source_is_rejected():
    data = get_gpu("H100").model_dump()
    del data["sources"]["tdp_w"]
    with pytest.raises(ValidationError, match="no source for tdp_w"):
        GPUSpec.model_validate(data)


def test_profile_from_needs_a_source():
    data = get_gpu("H200").model_dump()
    assert data["profile_from"] == "H100-SXM"
    del data["sources"]["profile_from"]
    with pytest.raises(ValidationError, match="no source for profile_from"):
        GPUSpec.model_validate(data)


def test_fp8_on_ampere_fails_loudly():
    with pytest.raises(EstimateError, match="fp8"):
        get_gpu("A100").peak_flops_per_s("fp8")


@pytest.mark.parametrize(("name", "gpu"), [
    ("NVIDIA H100 80GB HBM3", "H100-SXM"),  # nvidia-smi's names
    ("NVIDIA H200 141GB HBM3e", "H200"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
    ("H100 PCIe", "H100-PCIe"),
    ("h100_sxm", "H100-SXM"),
    ("AMD Instinct MI300X", "MI300X"),
])
def test_gpu_names_as_tools_print_them(name, gpu):
    assert get_gpu(name).name == gpu


@pytest.mark.parametrize("name", [
    "NVIDIA A100 80GB PCIe",  # no A100 PCIe spec: not the SXM one
    "A100 40GB HBM2",  # the memory the name gives is not the 80 GB A100's
    "NVIDIA H100 SXM5 64GB",
    "H100 94GB",
    "H100 96GB HBM3",
])
def test_a_gpu_outside_the_db_is_not_taken_for_a_neighbour(name):
    with pytest.raises(UnknownNameError):
        get_gpu(name)
