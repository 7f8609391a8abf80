"""runtime stage of energylens: measuring plans on real GPUs.

- ``meter``: energy windows over NVML's total-energy counter (``NvmlMeter``), power sampling as
  the fallback, ``NullMeter`` for timing-only CPU runs, ``open_meter(device)``.
- ``timing``: repeated metered windows around a callable (``time_windows``).
- ``execute``: the HF model from its config with random weights, prefill and decode with a static
  KV cache, tensor parallel through torch.distributed (``Executor``, ``run_distributed``).
- ``microbench``: GEMM, memory, attention, power and SM-contention microbenchmarks.
- ``measure``: the measurement campaign writing raw JSON lines (``measure``).
- ``fake_nvml``: a test double of the NVML calls.

Importing this package (or its modules) imports neither torch nor transformers; they are
imported when a measurement runs.
"""
