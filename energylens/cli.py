"""The `energylens` command line: estimate, ir, models, gpus.

Every error a user can cause prints one line (``error: ...``) and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from energylens.errors import EnergylensError

__all__ = ["app", "main"]

app = typer.Typer(
    name="energylens",
    help="Energy-aware compiler for LLM inference: estimate latency, energy and power of real HF models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
if not console.is_terminal:  # pipes and CI: wide enough that tables do not wrap
    console = Console(width=160)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an EnergylensError into one line on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EnergylensError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def _si(x: float, unit: str) -> str:
    """Human-readable number with an SI prefix: 1.5e9 B -> '1.50 GB'."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    for factor, prefix in ((1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


@app.command()
@_user_errors
def estimate(
    model: Annotated[str, typer.Argument(help="HF model id (see `energylens models`), a config.json or a model directory")],
    gpu: Annotated[str, typer.Option(help="GPU name (see `energylens gpus`)")] = "H100-SXM",
    gpus: Annotated[int, typer.Option(help="number of GPUs")] = 1,
    batch: Annotated[int, typer.Option(help="sequences in the batch")] = 32,
    prompt_len: Annotated[int, typer.Option(help="prompt tokens per sequence")] = 1024,
    output_len: Annotated[int, typer.Option(help="output tokens per sequence")] = 256,
    top: Annotated[int, typer.Option(help="how many ops to list, by energy")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print the estimate as JSON")] = False,
) -> None:
    """Predict prefill and decode latency, energy and power of MODEL on one GPU."""
    import energylens as el

    est = el.estimate(model, el.Cluster(gpu, num_gpus=gpus),
                      el.Workload(batch=batch, prompt_len=prompt_len, output_len=output_len))
    if as_json:
        print(json.dumps(est.to_dict(), indent=2))
        return
    wl = est.workload
    title = (f"{est.model} on {est.num_gpus} x {est.gpu}: batch {wl.batch}, prompt {wl.prompt_len}, "
             f"output {wl.output_len}")
    summary = Table(title=title)
    for col in ("phase", "latency", "energy", "avg power", "energy / token", "FLOPs", "HBM bytes"):
        summary.add_column(col, justify="right" if col != "phase" else "left")
    p, d = est.prefill, est.decode
    summary.add_row("prefill (whole batch)", _si(p.latency_s, "s"), _si(p.energy_j, "J"), _si(p.avg_power_w, "W"),
                    _si(p.energy_per_token_j, "J"), _si(p.flops, "FLOP"), _si(p.hbm_bytes, "B"))
    summary.add_row(f"decode step (context {wl.decode_context_len})", _si(d.itl_s, "s"), _si(d.energy_j, "J"),
                    _si(d.avg_power_w, "W"), _si(d.energy_per_token_j, "J"), _si(d.flops, "FLOP"),
                    _si(d.hbm_bytes, "B"))
    console.print(summary)
    m = est.memory
    gib = 2**30
    console.print(f"memory per GPU: {m.total_bytes / gib:.1f} GiB of {m.capacity_bytes / gib:.1f} GiB "
                  f"(weights {m.weights_bytes / gib:.1f} GiB, KV cache {m.kv_cache_bytes / gib:.2f} GiB, "
                  f"activations {m.activation_bytes / gib:.2f} GiB)")
    ops = Table(title=f"top {top} ops by energy (all layers)")
    for col in ("phase", "op", "kind", "source", "x", "FLOPs", "bytes", "time", "energy"):
        ops.add_column(col, justify="right" if col in ("x", "FLOPs", "bytes", "time", "energy") else "left")
    for o in sorted(est.ops, key=lambda o: o.energy_j, reverse=True)[:top]:
        ops.add_row(o.phase, o.name, o.kind, o.source, str(o.count), _si(o.flops, "FLOP"), _si(o.hbm_bytes, "B"),
                    _si(o.time_s, "s"), _si(o.energy_j, "J"))
    console.print(ops)


@app.command("ir")
@_user_errors
def ir_cmd(
    model: Annotated[str, typer.Argument(help="HF model id, a config.json or a model directory")],
    phase: Annotated[str, typer.Option(help="prefill or decode")] = "decode",
) -> None:
    """Print the einsum IR of MODEL (one decoder layer, repeated num_hidden_layers times)."""
    from energylens.errors import UnknownNameError
    from energylens.frontends.hf import trace_model
    from energylens.ir.text import print_graph

    if phase not in ("prefill", "decode"):
        raise UnknownNameError("phase", phase, ["prefill", "decode"])
    ir = trace_model(model)
    print(print_graph(ir.prefill if phase == "prefill" else ir.decode), end="")


@app.command()
@_user_errors
def models() -> None:
    """List the bundled models."""
    from energylens.models import list_models, load_config

    table = Table(title="bundled models (energylens/models/)")
    for col in ("model", "family", "layers", "hidden", "heads / KV heads", "experts (top-k)", "quantization"):
        table.add_column(col)
    for name in list_models():
        spec = load_config(name)
        experts = f"{spec.get('num_experts')} ({spec.get('num_experts_per_tok')})" if spec.is_moe else "-"
        table.add_row(name, spec.family, str(spec.get("num_hidden_layers")), str(spec.get("hidden_size")),
                      f"{spec.get('num_attention_heads')} / {spec.get('num_key_value_heads')}", experts,
                      spec.quantization or "-")
    console.print(table)


@app.command()
@_user_errors
def gpus() -> None:
    """List the GPUs of the hardware database with their datasheet figures."""
    from energylens.costmodel.hardware import get_gpu, list_gpus

    table = Table(title="GPUs (energylens/costmodel/hardware/)")
    for col in ("gpu", "SMs / CUs", "bf16 TFLOP/s", "fp8 TFLOP/s", "HBM GiB", "HBM TB/s", "TDP W", "idle W"):
        table.add_column(col, justify="left" if col == "gpu" else "right")
    for name in list_gpus():
        g = get_gpu(name)
        fp8 = f"{g.fp8_dense_tflops:g}" if g.fp8_dense_tflops else "-"
        table.add_row(g.name, str(g.compute_units), f"{g.bf16_dense_tflops:g}", fp8,
                      f"{g.hbm_capacity_bytes / 2**30:.0f}", f"{g.hbm_bandwidth_bytes_per_s / 1e12:.2f}",
                      f"{g.tdp_w:g}", f"{g.idle_power_w:g}")
    console.print(table)


def main() -> None:
    app()
