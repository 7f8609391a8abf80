"""Kernel-level check: the cost model's op times against vLLM's measured kernels (not fitted on).

Reads ``data/public/aiconfigurator_kernels/<op>_<gpu>.csv``: NVIDIA AIConfigurator's measurements of
vLLM 0.24.0's kernels on one GPU (provenance in that folder's README), and prices the same work:

* ``gemm``: bf16 ``F.linear`` of m x k by k x n (m tokens), with ``costmodel.compute.op_time_s``;
* ``attention``: one decode step's attention of ``batch`` sequences over a KV cache of ``step``
  tokens (FlashAttention-3 on H100/H200, FlashInfer's TRT-LLM decode on B200), the attention ops
  of one layer of a model with those heads, priced by ``costmodel.analysis.price_graph``, without
  the KV-cache write (the table times the attention kernel alone);
* ``moe``: one fused-MoE layer (Triton ``fused_experts``, balanced routing) of the Qwen3-30B-A3B
  and Qwen3-235B-A22B expert shapes on one of ``ep`` GPUs, the ``mlp.experts`` ops of a decode step
  of ``energylens.estimate`` with ``Parallel(tp=ep, ep=ep)``.

Prints measured and predicted time per row and the MAPE per group (GEMM rows per m, attention per
batch, MoE per ep).

    python benchmarks/kernel_check.py --op moe|gemm|attention [--gpu H100-SXM|H200|B200]
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: use its energylens

import energylens as el  # noqa: E402
from energylens.api import resolve_model  # noqa: E402
from energylens.costmodel.analysis import is_attention_op, price_graph  # noqa: E402
from energylens.costmodel.compute import OpWork, op_time_s  # noqa: E402
from energylens.costmodel.fit import ATTENTION_MODELS, kernel_attention_coefficients  # noqa: E402
from energylens.costmodel.hardware import get_gpu  # noqa: E402
from energylens.costmodel.profile import load_profile  # noqa: E402
from energylens.ir.core import Gather  # noqa: E402
from energylens.models import load_config  # noqa: E402

DATA = ROOT / "data" / "public" / "aiconfigurator_kernels"
GPU_FILES = {"H100-SXM": "h100_sxm", "H200": "h200_sxm", "B200": "b200_sxm"}
MOE_MODELS = {(2048, 768): "Qwen/Qwen3-30B-A3B-Instruct-2507", (4096, 1536): "Qwen/Qwen3-235B-A22B-Instruct-2507"}
MOE_TOKENS = (8, 32, 96, 256, 1024, 4096)  # decode batches up to a chunked-prefill step
ATTENTION_BATCH, ATTENTION_STEPS = (1, 8, 32, 128, 512), (127, 1023, 4095, 16383)


def gemm_us(gpu: str, m: int, n: int, k: int) -> float:
    spec = get_gpu(gpu)
    w = OpWork(tc_flops=2.0 * m * n * k, vec_flops=0.0, hbm_bytes=2.0 * (m * k + k * n + m * n), rows=float(m),
               peak_flops_per_s=spec.peak_flops_per_s("bf16"), kv=0.0, kernels=1.0)
    return float(op_time_s(w, spec, load_profile(spec))) * 1e6


def attention_us(gpu: str, heads: tuple[int, int], batch: int, step: int) -> float:
    model = ATTENTION_MODELS[heads]
    spec = get_gpu(gpu)
    # the attention kernel itself: the table times it without the KV-cache write (a scatter op here)
    ops = price_graph(resolve_model(model).decode, {"B": batch, "S": 1, "K": step}, spec, load_profile(spec),
                      select=lambda op: is_attention_op(op) and not (isinstance(op, Gather) and op.fn == "scatter"))
    layers = load_config(model).get("num_hidden_layers")
    return sum(p.count * p.cost.time_s for p in ops) / layers * 1e6


def moe_us(gpu: str, shape: tuple[int, int], ep: int, tokens: int) -> float:
    model = MOE_MODELS[shape]
    par = el.Parallel(tp=ep, ep=ep) if ep > 1 else el.Parallel()
    est = el.estimate(model, el.Cluster(gpu, num_gpus=ep), el.Workload(batch=tokens, prompt_len=16, output_len=64),
                      par, check_memory=False)
    moe = [o for o in est.ops if o.phase == "decode" and o.source.endswith("mlp.experts") and o.kind != "collective"]
    return sum(o.time_s for o in moe) / load_config(model).get("num_hidden_layers") * 1e6  # op times span all layers


def rows_of(op: str, gpu: str) -> list[tuple[str, str, float, float]]:
    """(group, label, measured us, predicted us) of every kept row of ``op`` on ``gpu``."""
    path = DATA / f"{op}_{GPU_FILES[gpu]}.csv"
    if not path.exists():
        print(f"error: no {op} table for {gpu} (have: {', '.join(sorted(p.name for p in DATA.glob('*.csv')))})",
              file=sys.stderr)
        raise SystemExit(2)  # a usage error, as argparse's
    out = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            meas = float(r["latency_us"])
            if op == "gemm":
                m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
                out.append((f"m={m}", f"m={m} n={n} k={k}", meas, gemm_us(gpu, m, n, k)))
            elif op == "attention":
                b, step, heads = int(r["batch_size"]), int(r["step"]), (int(r["num_heads"]), int(r["num_key_value_heads"]))
                if b in ATTENTION_BATCH and step in ATTENTION_STEPS:
                    out.append((f"batch={b}", f"heads={heads[0]}/{heads[1]} batch={b} kv={step}", meas,
                                attention_us(gpu, heads, b, step)))
            else:
                shape, ep, t = (int(r["hidden_size"]), int(r["inter_size"])), int(r["moe_ep_size"]), int(r["num_tokens"])
                if t in MOE_TOKENS:
                    out.append((f"ep={ep}", f"{MOE_MODELS[shape].split('/')[1]} ep={ep} tokens={t}", meas,
                                moe_us(gpu, shape, ep, t)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=("moe", "gemm", "attention"), required=True)
    ap.add_argument("--gpu", choices=sorted(GPU_FILES), default="H100-SXM")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = rows_of(args.op, args.gpu)
    errs: dict[str, list[float]] = defaultdict(list)
    print(f"{args.op} kernels on {args.gpu}: measured (vLLM 0.24.0, AIConfigurator) vs predicted")
    print(f"{'row':52s} {'meas us':>9s} {'pred us':>9s} {'err%':>7s}")
    for group, label, meas, pred in rows:
        err = (pred / meas - 1) * 100
        errs[group].append(abs(err))
        print(f"{label:52s} {meas:9.1f} {pred:9.1f} {err:+7.1f}")
    summary = "  ".join(f"{g}: {sum(e) / len(e):.1f}% ({len(e)})" for g, e in errs.items())
    all_errs = [x for e in errs.values() for x in e]
    print(f"MAPE by group: {summary}")
    if args.op == "attention":  # the two attention coefficients the kernels themselves imply
        with open(DATA / f"attention_{GPU_FILES[args.gpu]}.csv", newline="") as fh:
            got = kernel_attention_coefficients(list(csv.DictReader(fh)), get_gpu(args.gpu), resolve_model)
        prof = load_profile(get_gpu(args.gpu))
        print(f"# the kernels imply attn_mem_efficiency={got['attn_mem_efficiency']:.3f} kv_seq_overhead_s="
              f"{got['kv_seq_overhead_s']:.3g} (profile: {prof.attn_mem_efficiency:.3f}, {prof.kv_seq_overhead_s:.3g})")
    print(f"MAPE {args.op} {args.gpu}: {sum(all_errs) / len(all_errs):.1f}% rows={len(all_errs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
