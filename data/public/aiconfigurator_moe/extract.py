"""Extract the fused-MoE kernel latencies of the Qwen3-MoE shapes from aiconfigurator-core 0.12.0 (Apache-2.0).

Run: pip download --no-deps aiconfigurator-core==0.12.0 -d /tmp/aic && unzip the wheel into /tmp/aic/x,
then ``python data/public/aiconfigurator_moe/extract.py /tmp/aic/x`` (needs pandas and pyarrow).
Writes ``moe_<gpu>.csv`` here; ``benchmarks/kernel_moe.py`` compares the cost model with them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

GPUS = ("h100_sxm", "h200_sxm")  # Triton fused MoE (as vLLM 0.11 runs bf16 MoE on Hopper)
VLLM = "0.24.0"
SHAPES = ((2048, 768), (4096, 1536))  # (hidden, moe_intermediate): Qwen3-30B-A3B, Qwen3-235B-A22B
HERE = Path(__file__).resolve().parent


def main(root: str) -> None:
    for gpu in GPUS:
        df = pd.read_parquet(Path(root) / f"aiconfigurator_core/systems/data/{gpu}/moe/vllm/{VLLM}/moe_perf.parquet")
        keep = (
            (df.num_experts == 128) & (df.topk == 8) & (df.moe_dtype == "bfloat16")
            & (df.kernel_source == "vllm_unquantizedfusedmoe_triton_tritonexperts")
            & (df.distribution == "balanced") & (df.moe_tp_size == 1) & (df.moe_ep_size <= 8)
            & pd.Series([(h, n) in SHAPES for h, n in zip(df.hidden_size, df.inter_size, strict=True)], index=df.index)
        )
        out = df[keep].assign(latency_us=df.latency * 1e3)  # the package stores milliseconds
        out = out[["device", "hidden_size", "inter_size", "num_experts", "topk", "moe_ep_size", "num_tokens",
                   "latency_us"]].sort_values(["hidden_size", "moe_ep_size", "num_tokens"])
        out.to_csv(HERE / f"moe_{gpu}.csv", index=False, float_format="%.3f")
        print(gpu, len(out), "rows")


if __name__ == "__main__":
    main(sys.argv[1])
