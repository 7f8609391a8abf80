"""Energy meter: window arithmetic, counter wrap and reset, sampled fallback, NVML errors (fake NVML)."""

from __future__ import annotations

import json

import pytest

from energylens.errors import DeviceUnavailableError
from energylens.runtime.fake_nvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    FakeClock,
    FakeGpu,
    FakeNVML,
)
from energylens.runtime.meter import (
    NullMeter,
    NvmlMeter,
    counter_delta_mj,
    integrate_power_j,
    open_meter,
    throttle_reason_names,
)


def _meter(*gpus: FakeGpu, clock: FakeClock | None = None, **kw) -> tuple[NvmlMeter, FakeClock, FakeNVML]:
    clock = clock or FakeClock()
    nvml = FakeNVML(list(gpus), clock)
    meter = NvmlMeter(nvml=nvml, clock=clock, sync=lambda: None, sample_interval_s=0.001, **kw)
    return meter, clock, nvml


def test_counter_window_energy_per_gpu_and_total():
    meter, clock, _ = _meter(FakeGpu(power_w=300.0), FakeGpu(power_w=100.0, throttle_mask=0x4))
    with meter.window("decode") as w:
        clock.advance(2.0)
    rec = w.record
    assert rec.name == "decode" and rec.duration_s == pytest.approx(2.0)
    assert rec.source == "counter"
    assert rec.energy_j_per_gpu == pytest.approx((600.0, 200.0))
    assert rec.energy_j == pytest.approx(800.0)
    assert rec.avg_power_w == pytest.approx(400.0)
    g0, g1 = rec.gpus
    assert g0.sm_clock_mhz == 1980 and g0.mem_clock_mhz == 2619 and g0.temp_end_c == 45
    assert g0.throttle_reasons == () and g1.throttle_reasons == ("sw_power_cap",)
    assert g0.power_samples == 0  # counters work: no sampler thread
    assert meter.records == [rec]
    json.dumps(rec.to_dict())  # plain data
    meter.close()


def test_slow_nvml_reads_stay_outside_the_energy_window():
    """Each NVML call takes time (here 1 ms); on 8 GPUs the clock, temperature and throttle reads
    around the counters must not lengthen the energy window: the average power stays the GPUs' power
    (it was 4% high when every GPU's reads sat between the counters and the window's clock). Each
    GPU's counter window is as long as the timed one, which holds the start's counter pass."""
    clock = FakeClock()
    nvml = FakeNVML([FakeGpu(power_w=500.0) for _ in range(8)], clock, call_s=1e-3)
    meter = NvmlMeter(nvml=nvml, clock=clock, sync=lambda: None)
    with meter.window("step") as w:
        clock.advance(1.0)
    assert w.record.duration_s == pytest.approx(1.0 + 8e-3)  # the work and the start's 8 counter reads
    assert w.record.avg_power_w == pytest.approx(8 * 500.0)
    assert all(g.avg_power_w == pytest.approx(500.0) for g in w.record.gpus)
    meter.close()


def test_record_only_after_the_block_and_not_on_error():
    meter, clock, _ = _meter(FakeGpu())
    handle = meter.window("x")
    with pytest.raises(RuntimeError, match="has not ended"):
        _ = handle.record
    with pytest.raises(ZeroDivisionError), meter.window("fails"):
        _ = 1 / 0
    assert meter.records == []


def test_counter_wrap_modulo_2_64():
    assert counter_delta_mj(10, 25) == 15
    assert counter_delta_mj(2**64 - 5, 10) == 15
    meter, clock, _ = _meter(FakeGpu(power_w=200.0, energy_start_mj=2**64 - 50_000))
    with meter.window("w") as w:
        clock.advance(1.0)  # +200 J = 200_000 mJ crosses 2**64
    assert w.record.energy_j == pytest.approx(200.0)
    assert w.record.source == "counter"
    assert w.record.gpus[0].note == "energy counter wrapped"


def test_counter_reset_without_samples_is_unavailable_not_zero():
    meter, clock, _ = _meter(FakeGpu(power_w=200.0, energy_start_mj=10**9, reset_counter_at_s=1000.5))
    with meter.window("w") as w:
        clock.advance(1.0)
    assert w.record.energy_j is None
    assert "jumped" in w.record.unavailable_reason


def test_counter_reset_falls_back_to_samples_when_tracing():
    meter, clock, _ = _meter(FakeGpu(power_w=200.0, energy_start_mj=10**9, reset_counter_at_s=1000.5), trace=True)
    with meter.window("w") as w:
        clock.advance(1.0)
    assert w.record.source == "sampled"
    assert w.record.energy_j == pytest.approx(200.0)
    assert w.record.trace and all(s.power_w == 200.0 for s in w.record.trace)


@pytest.mark.parametrize("code", [NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION, NVML_ERROR_FUNCTION_NOT_FOUND])
def test_no_counter_falls_back_to_sampled_power(code):
    meter, clock, nvml = _meter(FakeGpu(power_w=250.0, counter=code), FakeGpu(power_w=50.0))
    with meter.window("prefill") as w:
        clock.advance(4.0)
    rec = w.record
    assert rec.source == "sampled"  # any sampled GPU makes the window sampled
    assert rec.gpus[0].source == "sampled" and rec.gpus[1].source == "counter"
    assert rec.energy_j_per_gpu == pytest.approx((1000.0, 200.0))
    assert rec.gpus[0].power_samples >= 2 and "power sampled instead" in rec.gpus[0].note
    assert nvml.calls["nvmlDeviceGetPowerUsage"] >= 2


def test_the_power_sampler_stops_before_the_reads_after_the_window():
    """The sampler stops right after the end's counters: an end read that fails after them (the
    temperature, here interrupted) leaves no sampler thread running."""
    import threading

    def interrupted(*_args):
        raise KeyboardInterrupt

    meter, clock, nvml = _meter(FakeGpu(power_w=250.0, counter=NVML_ERROR_NOT_SUPPORTED), trace=True)
    with pytest.raises(KeyboardInterrupt), meter.window("w"):
        clock.advance(0.5)
        nvml.nvmlDeviceGetTemperature = interrupted
    assert not any(t.name == "energylens-power-sampler" and t.is_alive() for t in threading.enumerate())


def test_sampled_energy_follows_a_changing_power():
    assert integrate_power_j([0.0, 1.0, 2.0], [100.0, 300.0, 300.0], 0.0, 2.0) == pytest.approx(500.0)
    assert integrate_power_j([0.0, 1.0, 2.0], [100.0, 300.0, 300.0], 0.5, 1.5) == pytest.approx(275.0)
    assert integrate_power_j([1.0], [100.0], 0.0, 3.0) == pytest.approx(300.0)
    with pytest.raises(ValueError):
        integrate_power_j([], [], 0.0, 1.0)


def test_no_counter_and_no_power_permission_raises_clearly():
    with pytest.raises(DeviceUnavailableError, match="neither the energy counter nor the power"):
        _meter(FakeGpu(counter=NVML_ERROR_NO_PERMISSION, power=NVML_ERROR_NO_PERMISSION))


def test_counter_read_failing_mid_run_is_reported():
    gpu = FakeGpu(power_w=100.0)
    meter, clock, _ = _meter(gpu)
    with meter.window("w") as w:
        clock.advance(1.0)
        gpu.counter = NVML_ERROR_NO_PERMISSION
    assert w.record.energy_j is None
    assert "Insufficient Permissions" in w.record.unavailable_reason


def test_nvml_missing_driver_raises_device_unavailable():
    nvml = FakeNVML([FakeGpu()], init_error=NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(DeviceUnavailableError, match="Driver Not Loaded.*NullMeter"):
        NvmlMeter(nvml=nvml)


def test_bad_gpu_index_and_shutdown():
    nvml = FakeNVML([FakeGpu()])
    with pytest.raises(DeviceUnavailableError, match="NVML sees 1 GPU"):
        NvmlMeter(gpus=[3], nvml=nvml)
    assert nvml.initialized == 0  # shut down after the failure
    meter = NvmlMeter(gpus=[0], nvml=nvml, sync=lambda: None)
    meter.close()
    meter.close()
    assert nvml.initialized == 0
    with pytest.raises(DeviceUnavailableError, match="closed"), meter.window("w"):
        pass


def test_visible_devices_select_gpus(monkeypatch):
    gpus = [FakeGpu(uuid=f"GPU-{i}") for i in range(4)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-3")
    meter = NvmlMeter(nvml=FakeNVML(gpus), sync=lambda: None)
    assert meter.gpu_indices == (2, 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-abc")
    with pytest.raises(DeviceUnavailableError, match="MIG"):
        NvmlMeter(nvml=FakeNVML(gpus))


def test_open_meter_cuda_n_picks_the_visible_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    nvml = FakeNVML([FakeGpu() for _ in range(4)])
    meter = open_meter("cuda:1", nvml=nvml, sync=lambda: None)
    assert meter.gpu_indices == (3,)
    with pytest.raises(DeviceUnavailableError, match="CUDA sees 2"):
        open_meter("cuda:2", nvml=nvml)
    with pytest.raises(DeviceUnavailableError, match="valid"):
        open_meter("tpu")


def test_environment_is_plain_data():
    meter, _, _ = _meter(FakeGpu(), FakeGpu(counter=NVML_ERROR_NOT_SUPPORTED))
    env = meter.environment()
    json.dumps(env)
    assert env["driver_version"] == "560.35.03" and env["cuda_driver_version"] == "12.6"
    assert env["gpus"][0]["power_limit_w"] == 700.0
    assert [g["energy_source"] for g in env["gpus"]] == ["counter", "sampled"]
    assert "GPU-" not in json.dumps(env)  # UUIDs are hashed


def test_null_meter_times_and_says_why():
    ticks = iter([10.0, 10.25])
    meter = NullMeter(clock=lambda: next(ticks), sync=lambda: None)
    with meter.window("decode") as w:
        pass
    assert w.record.duration_s == pytest.approx(0.25)
    assert w.record.energy_j is None and w.record.source is None
    assert "CPU" in w.record.unavailable_reason
    assert open_meter("cpu").environment()["energy_available"] is False


def test_throttle_names():
    assert throttle_reason_names(None) == ()
    assert throttle_reason_names(0x40 | 0x8) == ("hw_slowdown", "hw_thermal_slowdown")
    assert throttle_reason_names(0x10000) == ("0x10000",)


def test_real_pynvml_without_driver_raises_device_unavailable():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        with pytest.raises(DeviceUnavailableError, match="NVML could not start"):
            NvmlMeter()
    else:  # a machine with a driver: the gpu tests cover it
        pynvml.nvmlShutdown()
        pytest.skip("NVML is available here")


@pytest.mark.gpu
def test_real_counter_on_gpu():
    import torch

    meter = open_meter("cuda:0")
    x = torch.randn(4096, 4096, device="cuda")
    with meter.window("matmul") as w:
        for _ in range(200):
            x = x @ x
            x = x / x.norm()
    rec = w.record
    assert rec.energy_j is not None and rec.energy_j > 0
    assert 10 < rec.avg_power_w < 2000
    assert rec.gpus[0].sm_clock_mhz and rec.gpus[0].sm_clock_mhz > 100
    with meter.window("idle") as idle:
        torch.cuda._sleep(int(1e8))
    assert idle.record.energy_j is not None
    meter.close()


def test_a_failed_instant_power_field_is_no_sample_not_zero_watts():
    """nvmlDeviceGetFieldValues reports a failed read in the field's own nvmlReturn (it does not
    raise): such a reading is skipped, not integrated as 0 W."""
    from types import SimpleNamespace as NS

    class FlakyField(FakeNVML):
        reads = 0

        def nvmlDeviceGetFieldValues(self, handle, ids):  # the open-time probe succeeds, later reads fail
            FlakyField.reads += 1
            ok = FlakyField.reads == 1
            mw = int(self._gpu(handle).power_now_w(self.clock()) * 1000) if ok else 0
            return [NS(nvmlReturn=0 if ok else 15, valueType=1,
                       value=NS(uiVal=mw, dVal=0, ulVal=0, ullVal=0, sllVal=0, siVal=0))]

    clock = FakeClock()
    meter = NvmlMeter(gpus=[0], nvml=FlakyField([FakeGpu(power_w=300, counter=NVML_ERROR_NOT_SUPPORTED)], clock),
                      clock=clock, sync=lambda: None)
    with meter.window("w") as w:
        clock.advance(1.0)
    gpu = w.record.gpus[0]
    assert w.record.energy_j is None and gpu.energy_j is None and gpu.power_samples == 0
    assert gpu.note.endswith("no power reading either")
