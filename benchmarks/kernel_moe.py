"""Fused-MoE layer time: the cost model against vLLM's measured Triton fused-MoE kernels.

Reads ``data/public/aiconfigurator_moe/moe_<gpu>.csv`` (NVIDIA AIConfigurator's measurements of
vLLM 0.24.0's ``fused_experts`` on one GPU, bf16, balanced routing, for the Qwen3-30B-A3B and
Qwen3-235B-A22B expert shapes at expert parallelism 1-8; provenance in that folder's README) and
prices the same MoE layer with ``energylens.estimate`` (the decode step's ``model.layers.mlp.experts``
ops of one layer, on one of ``ep`` GPUs with ``Parallel(tp=ep, ep=ep)``). Prints measured and
predicted time per (shape, ep, tokens) and the MAPE per ep. The kernels are independent
measurements: nothing here is fitted on them.

    python benchmarks/kernel_moe.py [--gpu H100-SXM|H200]
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
from energylens.models import load_config  # noqa: E402

DATA = ROOT / "data" / "public" / "aiconfigurator_moe"
FILES = {"H100-SXM": "moe_h100_sxm.csv", "H200": "moe_h200_sxm.csv"}
MODELS = {(2048, 768): "Qwen/Qwen3-30B-A3B-Instruct-2507", (4096, 1536): "Qwen/Qwen3-235B-A22B-Instruct-2507"}
TOKENS = (8, 32, 96, 256, 1024, 4096)  # decode batches up to a chunked-prefill step


def predicted_us(model: str, gpu: str, ep: int, tokens: int) -> float:
    par = el.Parallel(tp=ep, ep=ep) if ep > 1 else el.Parallel()
    est = el.estimate(model, el.Cluster(gpu, num_gpus=ep), el.Workload(batch=tokens, prompt_len=16, output_len=64),
                      par, check_memory=False)
    moe = [o for o in est.ops if o.phase == "decode" and o.source.endswith("mlp.experts") and o.kind != "collective"]
    return sum(o.time_s for o in moe) / load_config(model).get("num_hidden_layers") * 1e6  # op times span all layers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", choices=sorted(FILES), default="H100-SXM")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    with open(DATA / FILES[args.gpu], newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["num_tokens"]) in TOKENS]
    errs: dict[int, list[float]] = defaultdict(list)
    print(f"fused MoE layer on {args.gpu} (measured: {rows[0]['device']}, vLLM 0.24.0 Triton fused_experts)")
    print(f"{'model':36s} {'ep':>3s} {'tokens':>7s} {'meas us':>9s} {'pred us':>9s} {'err%':>7s}")
    for r in rows:
        model = MODELS[(int(r["hidden_size"]), int(r["inter_size"]))]
        ep, tokens, meas = int(r["moe_ep_size"]), int(r["num_tokens"]), float(r["latency_us"])
        pred = predicted_us(model, args.gpu, ep, tokens)
        err = (pred / meas - 1) * 100
        errs[ep].append(abs(err))
        print(f"{model:36s} {ep:3d} {tokens:7d} {meas:9.1f} {pred:9.1f} {err:+7.1f}")
    print("MAPE by ep: " + "  ".join(f"ep={ep}: {sum(e) / len(e):.1f}% ({len(e)} rows)" for ep, e in sorted(errs.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
