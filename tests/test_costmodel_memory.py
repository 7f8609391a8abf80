"""Memory footprint: weights + KV cache + activations vs capacity; a readable error when it does not fit."""

from __future__ import annotations

import pytest

from energylens.costmodel.hardware import get_gpu
from energylens.costmodel.memory import check_fits, kv_cache_bytes, memory_estimate, weights_bytes
from energylens.errors import DoesNotFitError
from energylens.ir.core import Decl, Einsum, Gather, Graph, Repeat, TensorType, Value
from energylens.typing import Workload


def V(name, dims, dtype="bf16"):
    return Value(name, TensorType(tuple(dims), dtype))


def model(h=8192, layers=80, g=8, d=128):
    dims = (("B", None), ("S", None), ("K", None), ("h", h), ("g", g), ("d", d))
    x, w = V("x", ("B", "S", "h")), V("w", ("h", "h"))
    kc = V("kc", ("B", "g", "K", "d"))
    new = V("kn", ("B", "S", "g", "d"))
    region = Repeat(name="layers", count=layers, decls=(Decl(w, "param"), Decl(kc, "cache")),
                    ops=(Einsum(result=V("y", ("B", "S", "h")), operands=(x, w), spec="bsh,hk->bsk"),
                         Gather(result=V("kc2", ("B", "g", "K", "d")), operands=(kc, new), dim="K", fn="scatter")),
                    init="x", carry="y")
    return Graph(name="decode", dims=dims, decls=(Decl(x, "input"), Decl(new, "input")), body=(region,),
                 outputs=("y",), attrs=(("model", "big-test-model"),))


def test_weights_and_kv_bytes():
    g = model()
    assert weights_bytes(g) == 80 * 8192 * 8192 * 2
    assert kv_cache_bytes(g, 4, 1000) == 80 * 4 * 8 * 1000 * 128 * 2


def test_does_not_fit_says_by_how_much_and_what_to_try():
    g = model(layers=700)  # 94 GB of weights
    gpu = get_gpu("H100-SXM")
    mem = memory_estimate(g, g, Workload(batch=8, prompt_len=1024, output_len=256), gpu)
    assert mem.total_bytes > gpu.hbm_capacity_bytes
    with pytest.raises(DoesNotFitError) as exc:
        check_fits(mem, "big-test-model", gpu)
    msg = str(exc.value)
    assert "big-test-model needs" in msg and "H100-SXM has 72.0 GiB for it (90% of 80.0 GiB" in msg and "over" in msg
    assert "weights" in msg and "KV cache" in msg and "Try more GPUs (tp)" in msg
    assert exc.value.required_bytes == pytest.approx(mem.total_bytes)


def test_fits_on_bigger_gpu():
    g = model(layers=700)
    mem = memory_estimate(g, g, Workload(batch=8, prompt_len=1024, output_len=256), get_gpu("B200"))
    check_fits(mem, "big-test-model", get_gpu("B200"))
