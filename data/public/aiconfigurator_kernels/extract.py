"""Extract kernel latencies of the supported model shapes from aiconfigurator-core 0.12.0 (Apache-2.0).

Run: pip download --no-deps aiconfigurator-core==0.12.0 -d /tmp/aic && unzip the wheel into /tmp/aic/x,
then ``python data/public/aiconfigurator_kernels/extract.py /tmp/aic/x`` (needs pandas and pyarrow).
Writes ``<op>_<gpu>.csv`` here (op: moe, gemm, attention); ``benchmarks/kernel_check.py`` compares the
cost model with them. Provenance and what is kept: README.md beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

VLLM = "0.24.0"
HERE = Path(__file__).resolve().parent
#: op -> the GPUs whose tables are kept (the B200 MoE table is of FlashInfer's TRT-LLM kernels, which
#: vLLM 0.11 did not run for bf16 MoE; its GEMM and decode-attention tables are kept)
GPUS = {"moe": ("h100_sxm", "h200_sxm"), "gemm": ("h100_sxm", "h200_sxm", "b200_sxm"),
        "attention": ("h100_sxm", "h200_sxm", "b200_sxm")}
MOE_SHAPES = ((2048, 768), (4096, 1536))  # (hidden, moe_intermediate): Qwen3-30B-A3B, Qwen3-235B-A22B
GEMM_DIMS = (2048, 4096, 5120, 8192, 16384)  # n and k: the hidden sizes of the supported models
GEMM_M = (1, 8, 32, 64, 128, 256, 512, 1024, 4096, 8192)
ATTENTION_HEADS = ((32, 8), (40, 8), (64, 8), (32, 4), (64, 4))  # (query, KV) heads of the supported models
ATTENTION_KERNEL = {"h100_sxm": "vllm_flash_attn_fa3", "h200_sxm": "vllm_flash_attn_fa3",
                    "b200_sxm": "vllm_flashinfer_trtllmdecode"}


#: SGLang's bf16 fused-MoE Triton kernel on an untuned shape: the tile vLLM 0.11.1 also runs by
#: default (both ``get_default_config``s: 16-row tiles while M <= E, 64-row tiles above). Qwen3-30B-A3B's
#: experts (hidden 2048, intermediate 768) at ep 2, 4 and 8 (local E = 64, 32, 16: SGLang 0.5.10 ships a
#: tuned H100 config for E=128,N=768 only); ``moe_default_tile_<gpu>.csv``, read by
#: ``energylens.costmodel.fit.kernel_default_tile_efficiency``.
SGLANG = "0.5.10"


def _table(root: str, gpu: str, op: str, name: str, framework: str = "vllm", version: str = VLLM) -> pd.DataFrame:
    return pd.read_parquet(Path(root) / f"aiconfigurator_core/systems/data/{gpu}/{op}/{framework}/{version}/{name}.parquet")


def main(root: str) -> None:
    for gpu in GPUS["moe"]:
        df = _table(root, gpu, "moe", "moe_perf")
        shape = pd.Series([(h, n) in MOE_SHAPES for h, n in zip(df.hidden_size, df.inter_size, strict=True)],
                          index=df.index)
        keep = (shape & (df.num_experts == 128) & (df.topk == 8) & (df.moe_dtype == "bfloat16")
                & (df.kernel_source == "vllm_unquantizedfusedmoe_triton_tritonexperts")
                & (df.distribution == "balanced") & (df.moe_tp_size == 1) & (df.moe_ep_size <= 8))
        _write(df[keep], "moe", gpu, ["device", "hidden_size", "inter_size", "num_experts", "topk", "moe_ep_size",
                                      "num_tokens"])
    df = _table(root, "h100_sxm", "moe", "moe_perf", "sglang", SGLANG)
    keep = ((df.kernel_source == "sglang_fused_moe_triton") & (df.moe_dtype == "bfloat16") & (df.hidden_size == 2048)
            & (df.inter_size == 768) & (df.num_experts == 128) & (df.topk == 8) & (df.moe_tp_size == 1)
            & df.moe_ep_size.isin((2, 4, 8)) & (df.distribution == "balanced"))
    _write(df[keep], "moe_default_tile", "h100_sxm",
           ["device", "kernel_source", "hidden_size", "inter_size", "num_experts", "topk", "moe_ep_size", "num_tokens"])
    for gpu in GPUS["gemm"]:
        df = _table(root, gpu, "gemm", "gemm_perf")
        keep = ((df.gemm_dtype == "bfloat16") & df.n.isin(GEMM_DIMS) & df.k.isin(GEMM_DIMS) & df.m.isin(GEMM_M))
        _write(df[keep], "gemm", gpu, ["device", "kernel_source", "m", "n", "k"])
    for gpu in GPUS["attention"]:
        df = _table(root, gpu, "attention", "generation_attention_perf")
        heads = pd.Series([(h, kv) in ATTENTION_HEADS for h, kv in zip(df.num_heads, df.num_key_value_heads,
                                                                        strict=True)], index=df.index)
        keep = (heads & (df.head_dim == 128) & (df.kv_cache_dtype == "bfloat16") & (df.window_size == 0)
                & (df.kernel_source == ATTENTION_KERNEL[gpu]) & (df.step >= 127))
        _write(df[keep], "attention", gpu,
               ["device", "kernel_source", "batch_size", "num_heads", "num_key_value_heads", "head_dim", "step"])


def _write(df: pd.DataFrame, op: str, gpu: str, cols: list[str]) -> None:
    out = df.assign(latency_us=df.latency * 1e3)[[*cols, "latency_us"]]  # the package stores milliseconds
    out = out.sort_values(cols[1:]).drop_duplicates(cols)
    out.to_csv(HERE / f"{op}_{gpu}.csv", index=False, float_format="%.3f")
    print(op, gpu, len(out), "rows")


if __name__ == "__main__":
    main(sys.argv[1])
