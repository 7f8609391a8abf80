"""Regenerate docs/compile.md, its Pareto plots and the README's compile example from a real run
of ``energylens.compile``.

    .venv/bin/python docs/make_compile_example.py

Every figure in docs/compile.md and between the README's ``compile-example`` markers is printed by
this script; rerun it after a cost-model change.
"""

from __future__ import annotations

from pathlib import Path

import energylens as el

DOCS = Path(__file__).parent
README = DOCS.parent / "README.md"
BEGIN, END = "<!-- compile-example:begin (docs/make_compile_example.py) -->", "<!-- compile-example:end -->"
EXAMPLES = (
    ("meta-llama/Llama-3.1-70B-Instruct", "Llama-3.1-70B-Instruct", "compile_llama70b_pareto.png"),
    ("Qwen/Qwen3-235B-A22B-Instruct-2507", "Qwen3-235B-A22B-Instruct-2507", "compile_qwen235b_pareto.png"),
)

HEAD = """# Compiling a plan: `energylens.compile`

`compile` searches every plan of a model on a cluster and returns the one with the least energy per
output token that meets a latency target (SLO), with the Pareto frontier of all the plans it priced.

```python
import energylens as el
cluster = el.Cluster("H100-SXM", num_gpus=8, interconnect="nvlink4")
wl = el.Workload(batch=64, prompt_len=1024, output_len=256)
plan = el.compile("meta-llama/Llama-3.1-70B-Instruct", cluster, workload=wl,
                  objective="energy", slo=el.SLO(itl_ms=40))
plan.parallel, plan.report(), plan.pareto, plan.graph    # print(plan.graph): the rewritten IR
plan.to_vllm()            # engine arguments; plan.to_vllm(cli=True) -> "vllm serve ..."
plan.to_megatron()        # Megatron-Core TransformerConfig fields
plan.plot("pareto.png")   # needs matplotlib
```

Command line: `energylens compile MODEL --gpu H100-SXM --gpus 8 --batch 64 --prompt-len 1024
--output-len 256 --slo-itl-ms 40 [--slo-ttft-ms T] [--objective energy|latency] [--clock-mhz F ...]
[--plot pareto.png] [--export vllm|megatron] [--json]`.

## What is searched

| knob | values | how it is priced |
|---|---|---|
| `tp` x `dp` | `tp` dividing the heads (`energylens.passes.shard.valid_tp_values`), `tp x dp` up to the cluster's GPUs (`dp` any size up to 8, then powers of two and all the rest; unused GPUs are not counted) | one rewritten graph per variant (`shard`) |
| `ep` (MoE) | 1 or `tp x dp` (the expert-parallel sizes vLLM runs) | `shard`, expert straggler from `moe` |
| fusion | on / off (`fuse` pass; off exports as vLLM `compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}`) | one graph per variant |
| batch (`max_num_seqs = batch / dp`) | multiples of `dp` up to the workload's batch: every size to 16 per replica, then 8 per octave | numpy arrays over the graphs' `B`, `S`, `K` |
| GPU clock | every 15 MHz from half the max boost clock to the max (`costmodel/clock.py`) | trailing array axis |
| overlap SMs (`comm_sms`) | none, 8, 16, 32 (only with tensor-parallel collectives) | array axis; each collective's window simulated on arrays |

Every plan is priced exactly as `energylens.estimate(model, cluster, workload, parallel, fused=...,
comm_sms=..., profile=clock_profile(profile, gpu, clock))` prices it (`clock_profile`:
`energylens.search.evaluate`; the tests check this plan by plan): ITL is the median step of steady-state continuous batching, energy per token includes
prefill, TTFT is the prefill of the whole batch. Plans needing more than 90% of a GPU's memory are
dropped.

**Clock model** (`energylens/costmodel/clock.py`): compute time ~ `f_max / f`; memory time and
launch overhead unchanged; dynamic energy per FLOP ~ `V(f)^2` with `V(f)/V(f_max) = 1 - 0.6 (1 - f/f_max)`
(0.7 at half clock: a documented first-order DVFS assumption, not a calibration); energy per HBM
byte and static power unchanged. No committed measurement checks it (our GPU runs lock no clock: the lent
machines' settings are not ours to change), so the search's usual choice for memory-bound decode,
the lowest clock, is a prediction. It agrees in direction with Ma et al., *The Illusion of Power
Capping in LLM Decode* (arXiv:2605.11999, 2026), who report on an H200 that decode stays far below
the power limit and that locking the SM clock saves decode energy at little throughput loss.

**Vectorisation** (`energylens/search/evaluate.py`): per structural variant `(tp, ep, dp, fused)`,
`costmodel.plan.plan_work` walks each graph component once with `B`, `S`, `K` bound to numpy arrays
over all evaluation points; roofline, TDP cap and energy are then computed on `(ops, points, clocks)`
arrays, the overlap windows per SM count on arrays, and the serving mixture is reduced with one
matrix product (`benchmarks/search_speed.py` prints the plans per second).

Below: the output of `docs/make_compile_example.py` (search times depend on the machine's load).
"""

TAIL = """
Figures are the cost model's predictions (profile `h100-sxm.json`, fitted on the public ML.ENERGY
dev data; see the README's accuracy section for its errors), not measurements of these plans.
"""


def main() -> None:
    cluster = el.Cluster("H100-SXM", num_gpus=8, interconnect="nvlink4")
    wl = el.Workload(batch=64, prompt_len=1024, output_len=256)
    parts = [HEAD]
    summary = []
    for model, short, png in EXAMPLES:
        plan = el.compile(model, cluster, workload=wl, objective="energy", slo=el.SLO(itl_ms=40))
        report = plan.report()
        plan.plot(DOCS / png)
        p = plan.parallel
        parts.append(f"\n## {short} on up to 8 x H100\n\n```text\n"
                     ">>> plan.parallel, plan.batch, plan.fused, plan.comm_sms, plan.clock_mhz\n"
                     f"{(p, plan.batch, plan.fused, plan.comm_sms, plan.clock_mhz)}\n"
                     f">>> plan.report()\n{report.rstrip()}\n"
                     f">>> print(plan.to_vllm(cli=True))\n{plan.to_vllm(cli=True)}\n```\n\n"
                     f"![{short} Pareto plot]({png})\n")
        print(f"{short}: tp={p.tp} ep={p.ep} dp={p.dp} batch={plan.batch} clock={plan.clock_mhz}")
        summary.append(_readme_summary(short, plan, png))
    parts.append(TAIL)
    (DOCS / "compile.md").write_text("".join(parts))
    print(f"wrote {DOCS / 'compile.md'}")
    _write_readme_block("\n".join(summary))
    print(f"updated the compile example in {README}")


def _readme_summary(short: str, plan: el.Plan, png: str) -> str:
    """The chosen plan in a few lines, its vLLM command and its Pareto plot, for the README."""
    p, est = plan.parallel, plan.estimate
    from energylens.search.report import gpus_used

    return (f"**{short} on {gpus_used(plan)}** ({plan.plans_evaluated:,} plans searched): tp={p.tp}, ep={p.ep}, "
            f"dp={p.dp}, batch {plan.batch}, fusion {'on' if plan.fused else 'off'}, comm SMs "
            f"{plan.comm_sms or '-'}, GPU clock {plan.clock_mhz} MHz: predicted median ITL "
            f"{est.serving.median_itl_s * 1e3:.1f} ms, {est.serving.energy_per_output_token_j:.2f} J per output "
            f"token, {est.serving.avg_power_w / 1e3:.2f} kW, TTFT {est.prefill.latency_s:.2f} s.\n\n"
            f"```\n{plan.to_vllm(cli=True).rstrip()}\n```\n\n"
            f"![{short}: energy per token vs ITL of every plan searched](docs/{png})\n")


def _write_readme_block(text: str) -> None:
    readme = README.read_text()
    head, sep, rest = readme.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{README} has no {BEGIN} ... {END} block")
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
