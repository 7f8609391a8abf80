"""Extract compact NCCL latency tables from aiconfigurator-core 0.12.0 (Apache-2.0).

Run: pip download --no-deps aiconfigurator-core==0.12.0 -d /tmp/aic && unzip the wheel into /tmp/aic/x,
then ``python data/public/aiconfigurator_nccl/extract.py /tmp/aic/x``. Writes one CSV per GPU here and
the packaged profile ``energylens/costmodel/profiles/comm_<gpu>.json`` (tables + alpha-beta fits).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SOURCES = {  # gpu key -> NCCL version directory (the newest shipped)
    "a100_sxm": "2.27.3",
    "h100_sxm": "2.29.2",
    "h200_sxm": "2.29.2",
    "b200_sxm": "2.29.2",
}
OPS = {"all_reduce": "all_reduce", "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
       "alltoall": "all_to_all"}
#: gpu key -> vLLM version directory of its custom all-reduce table (the oldest shipped: nearest to
#: the vLLM 0.11 of the ML.ENERGY runs).
VLLM_AR_SOURCES = {"a100_sxm": "0.14.0", "h100_sxm": "0.14.0", "h200_sxm": "0.14.0", "b200_sxm": "0.19.0"}
HERE = Path(__file__).resolve().parent
PROFILES = HERE.parents[2] / "energylens" / "costmodel" / "profiles"


def main(root: str) -> None:
    for gpu, version in SOURCES.items():
        rel = f"aiconfigurator_core/systems/data/{gpu}/comm/nccl/{version}/nccl_perf.parquet"
        df = pd.read_parquet(Path(root) / rel)
        df = df[df.nccl_dtype == "half"].copy()
        # message_size counts fp16 elements of the collective's buffer (int8 rows with twice the
        # elements have the same latency), so bytes = 2 * message_size.
        df["message_bytes"] = df.message_size * 2
        df["latency_us"] = df.latency * 1e3  # the package stores milliseconds
        df["collective"] = df.op_name.map(OPS)
        out = df[["collective", "num_gpus", "message_bytes", "latency_us"]].sort_values(
            ["collective", "num_gpus", "message_bytes"])
        out.to_csv(HERE / f"nccl_{gpu}.csv", index=False, float_format="%.3f")
        tables: dict = {}
        for (coll, n), g in out.groupby(["collective", "num_gpus"]):
            b = g.message_bytes.to_numpy(float)
            t = g.latency_us.to_numpy(float) * 1e-6
            big = b >= 16 * 2**20  # bandwidth term from the large messages, latency from the small
            beta, _ = np.polyfit(b[big], t[big], 1)
            alpha = float(np.median(t[b <= 4096]))
            resid = np.abs((alpha + beta * b[big]) / t[big] - 1)
            tables.setdefault(coll, {})[str(int(n))] = {
                "bytes": [int(x) for x in b], "latency_s": [float(f"{x:.4g}") for x in t],
                "alpha_s": float(f"{alpha:.4g}"), "beta_s_per_byte": float(f"{beta:.4g}"),
                "alpha_beta_max_rel_err_large": float(f"{resid.max():.3g}"),
            }
        vllm_rel = (f"aiconfigurator_core/systems/data/{gpu}/comm/vllm/{VLLM_AR_SOURCES[gpu]}/"
                    "custom_allreduce_perf.parquet")
        vllm_ar = _vllm_all_reduce(Path(root) / vllm_rel, gpu)
        profile = {
            "gpu": gpu, "device": str(df.device.iloc[0]), "interconnect": "nvlink",
            "provenance": {
                "package": "aiconfigurator-core", "version": "0.12.0", "license": "Apache-2.0",
                "path": rel, "nccl_version": version, "dtype": "fp16 (nccl_dtype=half)",
                "extracted_by": "data/public/aiconfigurator_nccl/extract.py",
                "alpha_beta": "alpha = median latency of messages <= 4 KiB; beta = least-squares slope "
                              "over messages >= 16 MiB",
            },
            "tables": tables,
            # vLLM's own all-reduce (custom P2P kernel, CUDA-graph mode), bf16; comm.py takes the
            # faster of it and NCCL at each size, as vLLM's size thresholds do.
            "vllm_all_reduce": vllm_ar,
            "vllm_all_reduce_provenance": {
                "path": vllm_rel, "vllm_version": VLLM_AR_SOURCES[gpu], "backend": "vllm_graph",
                "dtype": "bf16 (message_size counts elements: bytes = 2 x message_size)",
            },
        }
        (PROFILES / f"comm_{gpu}.json").write_text(json.dumps(profile, indent=1) + "\n")
        print(gpu, len(out), "rows")


def _vllm_all_reduce(path: Path, gpu: str) -> dict:
    """{num_gpus: {bytes, latency_s}} of vLLM's custom all-reduce in CUDA-graph mode; also its CSV."""
    df = pd.read_parquet(path)
    df = df[(df.backend == "vllm_graph") & (df.allreduce_dtype == "bfloat16")].copy()
    df["message_bytes"] = df.message_size * 2  # bf16 elements -> bytes
    df["latency_us"] = df.latency * 1e3
    out = df[["num_gpus", "message_bytes", "latency_us"]].sort_values(["num_gpus", "message_bytes"])
    out.to_csv(HERE / f"vllm_allreduce_{gpu}.csv", index=False, float_format="%.3f")
    return {str(int(n)): {"bytes": [int(x) for x in g.message_bytes],
                          "latency_s": [float(f"{x * 1e-6:.4g}") for x in g.latency_us]}
            for n, g in out.groupby("num_gpus")}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/aic/x")
