"""Compile-speed benchmark: energylens.estimate vs a bare torch.export of the whole model.

Each measurement runs in a new Python process, imports included, and reports its wall time and
peak RSS:
- bare export: build the whole model (all layers) on the meta device and torch.export it (prefill);
- estimate cold: ``el.estimate`` with an empty trace cache (traces one decoder layer, repeats it);
- estimate warm: ``el.estimate`` again, the trace now cached on disk.

Targets (issue 3): cold <= 0.6x bare export, warm <= 0.1x, peak RSS < 1.5 GB.

    python benchmarks/compile_speed.py [--model meta-llama/Llama-3.1-70B-Instruct] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BARE_EXPORT = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from energylens.models import config_dict, load_config
d = dict(config_dict(load_config(sys.argv[1]).config))
d.pop("quantization_config", None)
config = AutoConfig.for_model(d.pop("model_type"), **d)
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
ids = torch.zeros((2, 16), dtype=torch.long, device="meta")
torch.export.export(model, (ids,), {"use_cache": False}, strict=False)
print(json.dumps({"s": time.perf_counter() - t0,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

ESTIMATE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import energylens as el
# B200 (180 GB) holds a 70B model in bf16 on one GPU; the GPU does not change the trace.
el.estimate(sys.argv[1], el.Cluster("B200"), el.Workload(batch=8, prompt_len=1024, output_len=256))
print(json.dumps({"s": time.perf_counter() - t0,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, model: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="meta-llama/Llama-3.1-70B-Instruct")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each measurement (the best is kept)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ENERGYLENS_CACHE": cache}
        t = time.perf_counter()
        bare = min((run(BARE_EXPORT, args.model, env) for _ in range(args.repeats)), key=lambda r: r["s"])
        colds, warms = [], []
        for _ in range(args.repeats):
            shutil.rmtree(cache)
            os.mkdir(cache)
            colds.append(run(ESTIMATE, args.model, env))
            warms.append(run(ESTIMATE, args.model, env))
        cold = min(colds, key=lambda r: r["s"])
        warm = min(warms, key=lambda r: r["s"])
        total = time.perf_counter() - t

    rss = max(bare["rss_mb"], cold["rss_mb"], warm["rss_mb"])
    print(f"model: {args.model}  (best of {args.repeats}; each a new process, imports included)")
    print(f"bare torch.export, whole model on meta: {bare['s']:7.2f} s   peak RSS {bare['rss_mb']:7.0f} MB")
    print(f"el.estimate cold (empty trace cache):   {cold['s']:7.2f} s   peak RSS {cold['rss_mb']:7.0f} MB"
          f"   = {cold['s'] / bare['s']:.3f}x bare (target <= 0.6x)")
    print(f"el.estimate warm (trace cached):        {warm['s']:7.2f} s   peak RSS {warm['rss_mb']:7.0f} MB"
          f"   = {warm['s'] / bare['s']:.3f}x bare (target <= 0.1x)")
    print(f"peak RSS of estimate: {max(cold['rss_mb'], warm['rss_mb']):.0f} MB (target < 1536 MB); "
          f"largest of all: {rss:.0f} MB; benchmark wall time {total:.1f} s")


if __name__ == "__main__":
    main()
