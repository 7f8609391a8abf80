"""The `energylens` command line: estimate, ir, models, gpus.

Every error a user can cause prints one line (``error: ...``) and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
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
            print(f"error: {_cli_names(str(e))}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


#: Workload options of both `estimate` and `compile`.
_OutputLenCV = Annotated[float, typer.Option(
    help="spread of the output lengths (std / mean): 1 for chat-like, 0 for fixed-length benchmarks")]
_PrefixCacheHit = Annotated[float, typer.Option(
    help="share of each prompt found in the prefix cache in steady-state serving, in [0, 1) (multi-turn chat: "
         "the earlier turns)")]

_INTERCONNECT_HELP = ("nvlink, pcie or ib (default: nvlink on A100-SXM-80GB, A100-SXM4-40GB, H100-SXM, H200 and B200, "
                      "whose NVLink collectives were measured; pcie on the others)")

#: Python names in error messages -> the CLI options a user typed (whole names only: ``_cli_names``).
_OPTION_OF = {"Workload.batch": "--batch", "Workload.prompt_len": "--prompt-len", "Workload.output_len": "--output-len",
              "Workload.prefix_cache_hit": "--prefix-cache-hit", "Workload.output_len_cv": "--output-len-cv",
              "SLO.itl_ms": "--slo-itl-ms", "SLO.ttft_ms": "--slo-ttft-ms", "comm_sms": "--comm-sms",
              "clock_mhz": "--clock-mhz", "clocks_mhz": "--clock-mhz", "output_len": "--output-len", "prompt_len": "--prompt-len",
              "routing=": "--routing ", "leave routing at": "leave --routing at",
              "itl_ms=": "--slo-itl-ms ", "ttft_ms=": "--slo-ttft-ms ",
              " (or None: no target)": "", " (or None: no overlap)": "",
              " or None for the bundled ones": " (or leave --profiles out for the bundled ones)", " (interconnect='pcie' in Python)": "",
              " (interconnect='pcie' in Python; ": " (", ", interconnect='pcie' in Python;": ";"}


def _cli_names(message: str) -> str:
    """``message`` with the Python names of options replaced by their CLI spelling (not in an error
    about a pass's options, whose names are the pipeline's: ``overlap{comm_sms=8}``)."""
    import re

    if re.match(r"pass '\w+' has no option", message):
        return message
    for py, cli in _OPTION_OF.items():  # not inside a longer name (Workload.output_len_cv)
        before = r"(?<![\w.{,-])" if py[0].isalnum() else ""  # not an option of a pass: overlap{comm_sms=8}
        after = r"(?!\w)" if py[-1].isalnum() else ""
        message = re.sub(before + re.escape(py) + after, cli.replace("\\", r"\\"), message)
    return message


def _any_case(value: str | None, valid: tuple[str, ...]) -> str | None:
    """``value`` as the valid name it spells in any case (as GPU names are taken); else as typed,
    for the error that names it."""
    return value.lower() if value is not None and value.lower() in valid else value


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _routing(routing: str, histogram: str | None) -> Any:
    """``--routing`` as ``el.estimate`` takes it: a name, or the ``Moe`` pass of a measured histogram."""
    from energylens.errors import ConfigError
    from energylens.passes.moe import Moe

    routing = _any_case(routing, ("uniform", "zipf", "histogram"))
    if routing != "histogram":
        if histogram is not None:
            raise ConfigError(f"--routing-histogram is used with --routing histogram, not --routing {routing}")
        return routing
    if histogram is None:
        raise ConfigError("--routing histogram needs --routing-histogram C1,C2,... (tokens or shares per expert)")
    entries = histogram.split(",")
    bad = [(i, c) for i, c in enumerate(entries, 1) if not _is_float(c)]
    if bad:
        i, c = bad[0]
        raise ConfigError(f"--routing-histogram must be numbers separated by commas; entry {i} of {len(entries)} "
                          f"is {c!r}" + (f" ({len(bad) - 1} more)" if len(bad) > 1 else ""))
    counts = tuple(map(float, entries))
    return Moe("histogram", histogram=counts)


def _check_min(option: str, value: int | None, low: int) -> None:
    """An integer option below ``low`` is an error naming the option (None: not given)."""
    from energylens.errors import InvalidWorkloadError

    if value is not None and value < low:
        raise InvalidWorkloadError(f"--{option} must be an integer >= {low}, got {value}")


def _si(x: float, unit: str) -> str:
    """Human-readable number with an SI prefix: 1.5e9 B -> '1.50 GB'."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    for factor, prefix in ((1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


_Profiles = Annotated[str | None, typer.Option(
    help="folder of profile JSONs (<gpu>.json, as `calibrate --out` writes) to use instead of the bundled ones")]


@app.command()
@_user_errors
def estimate(
    model: Annotated[str, typer.Argument(help="HF model id (see `energylens models`), a config.json or a model directory")],
    gpu: Annotated[str, typer.Option(help="GPU name (see `energylens gpus`)")] = "H100-SXM",
    gpus: Annotated[int | None, typer.Option(help="GPUs of the cluster (default: 8, or tp x dp if more); "
                                             "the plan runs on tp x dp of them")] = None,
    batch: Annotated[int, typer.Option(help="sequences in the batch")] = 32,
    prompt_len: Annotated[int, typer.Option(help="prompt tokens per sequence")] = 1024,
    output_len: Annotated[int, typer.Option(help="output tokens per sequence")] = 256,
    output_len_cv: _OutputLenCV = 1.0,
    prefix_cache_hit: _PrefixCacheHit = 0.0,
    tp: Annotated[int, typer.Option(help="tensor-parallel size")] = 1,
    ep: Annotated[int, typer.Option(help="expert-parallel size (MoE): 1, or tp x dp as vLLM --enable-expert-parallel")] = 1,
    dp: Annotated[int, typer.Option(help="data-parallel replicas")] = 1,
    fuse: Annotated[bool, typer.Option(help="fuse pointwise ops and attention into neighbouring kernels")] = True,
    comm_sms: Annotated[int | None, typer.Option(help="overlap TP collectives with compute on this many SMs")] = None,
    routing: Annotated[str, typer.Option(help="MoE routing: uniform, zipf, or histogram (with --routing-histogram)")] = "uniform",
    routing_histogram: Annotated[str | None, typer.Option(
        help="measured tokens (or shares) per expert, comma-separated, one per expert: with --routing histogram")] = None,
    interconnect: Annotated[str | None, typer.Option(help=_INTERCONNECT_HELP)] = None,
    clock_mhz: Annotated[int | None, typer.Option(help="SM clock the GPUs are locked to, MHz (as compile "
                                                  "chooses it; default: the default clock)")] = None,
    top: Annotated[int, typer.Option(help="how many ops to list, by energy")] = 10,
    profiles: _Profiles = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the estimate as JSON")] = False,
) -> None:
    """Predict prefill and decode latency, energy and power of MODEL on GPUS GPUs with a given plan."""
    import energylens as el
    from energylens.costmodel.memory import memory_line

    for option, value, low in (("tp", tp, 1), ("ep", ep, 1), ("dp", dp, 1), ("gpus", gpus, 1), ("top", top, 0)):
        _check_min(option, value, low)
    # --gpus 0 is an error above, not the default; --interconnect "" reaches Cluster, which rejects it.
    # Without --gpus the cluster is a node of 8, so an impossible tp lists the valid ones of a node.
    cluster_gpus = max(8, tp * dp) if gpus is None else gpus
    est = el.estimate(model, el.Cluster(gpu, num_gpus=cluster_gpus, interconnect=interconnect),
                      el.Workload(batch=batch, prompt_len=prompt_len, output_len=output_len,
                                  output_len_cv=output_len_cv, prefix_cache_hit=prefix_cache_hit),
                      el.Parallel(tp=tp, ep=ep, dp=dp), fused=fuse, comm_sms=comm_sms,
                      routing=_routing(routing, routing_histogram), clock_mhz=clock_mhz, profiles=profiles)
    if as_json:
        print(json.dumps(est.to_dict(), indent=2))
        return
    wl = est.workload
    of = f" of {gpus}" if gpus not in (None, est.num_gpus) else ""  # --gpus 8 --tp 2 runs on 2 of them
    clock = f", {est.clock_mhz} MHz" if est.clock_mhz else ""  # None: the default clock
    title = (f"{est.model} on {est.num_gpus}{of} x {est.gpu} (tp={tp}, ep={ep}, dp={dp}{clock}): batch {wl.batch}, prompt {wl.prompt_len}, "
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
    from energylens.search.report import serving_label

    sv = est.serving  # steady state: decode steps carrying chunked prefill of arriving requests
    itl = _si(sv.median_itl_s, "s") if wl.output_len > 1 else "-"  # one output token: no inter-token gap
    summary.add_row(serving_label(wl, sv), itl,
                    _si(sv.energy_per_output_token_j * sv.batch, "J"), _si(sv.avg_power_w, "W"),
                    _si(sv.energy_per_output_token_j, "J"), "", "")
    console.print(summary)
    console.print(memory_line(est.memory))
    console.print(f"cost model: {est.profile}")
    ops = Table(title=f"top {top} ops by energy (all layers)")
    for col in ("phase", "op", "kind", "source", "x", "FLOPs", "bytes", "time", "energy"):
        ops.add_column(col, justify="right" if col in ("x", "FLOPs", "bytes", "time", "energy") else "left")
    for o in sorted(est.ops, key=lambda o: o.energy_j, reverse=True)[:top]:
        ops.add_row(o.phase, o.name, o.kind, o.source, str(o.count), _si(o.flops, "FLOP"), _si(o.hbm_bytes, "B"),
                    _si(o.time_s, "s"), _si(o.energy_j, "J"))
    console.print(ops)


@contextmanager
def _pipeline_errors() -> Iterator[None]:
    """An error of ``--pipeline``, as one line that keeps the pipeline's option names
    (``moe{routing=histogram,...}``), not those of the other commands' CLI options."""
    try:
        yield
    except EnergylensError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


@app.command("ir")
@_user_errors
def ir_cmd(
    model: Annotated[str, typer.Argument(help="HF model id, a config.json or a model directory")],
    phase: Annotated[str, typer.Option(help="prefill or decode")] = "decode",
    pipeline: Annotated[str | None, typer.Option(help='passes to run first, e.g. "shard{tp=2},fuse"')] = None,
    print_after_all: Annotated[bool, typer.Option(help="print the IR after every pass of --pipeline")] = False,
) -> None:
    """Print the einsum IR of MODEL (one decoder layer, repeated num_hidden_layers times)."""
    from energylens.errors import UnknownNameError
    from energylens.frontends.hf import trace_model
    from energylens.ir.text import print_graph
    from energylens.passes import PassManager

    if phase not in ("prefill", "decode"):
        raise UnknownNameError("phase", phase, ["prefill", "decode"])
    # the pipeline is read (and a bad one refused) before the model is traced
    with _pipeline_errors():
        passes = PassManager.from_pipeline(pipeline or (), print_after_all=sys.stdout if print_after_all else None)
    ir = trace_model(model)
    graph = ir.prefill if phase == "prefill" else ir.decode
    if print_after_all:
        print(f"// after trace\n{print_graph(graph)}", end="")
    with _pipeline_errors():
        graph = passes(graph)
    if not print_after_all:
        print(print_graph(graph), end="")


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
    console.print("Also accepted: case variants and names without the org (qwen3-8b); other checkpoints of these "
                  "architectures (Qwen/Qwen3-30B-A3B-Thinking-2507, Qwen/Qwen3-Coder-30B-A3B-Instruct, "
                  "meta-llama/Llama-3.1-8B); <Qwen3 id>-FP8 (Qwen/Qwen3-8B-FP8); a local config.json or model folder.",
                  soft_wrap=True)


@app.command()
@_user_errors
def gpus() -> None:
    """List the GPUs of the hardware database with their datasheet figures and cost-model profile."""
    from energylens.costmodel.hardware import get_gpu, list_gpus
    from energylens.costmodel.profile import load_profile

    table = Table(title="GPUs (energylens/costmodel/hardware/)")
    for col in ("gpu", "SMs / CUs", "bf16 TFLOP/s", "fp8 TFLOP/s", "HBM GiB", "HBM TB/s", "TDP W", "idle W",
                "cost-model profile"):
        table.add_column(col, justify="right" if col not in ("gpu", "cost-model profile") else "left")
    kinds = {"fit": "fitted on measurements", "datasheet-prior": "datasheet prior (not calibrated)",
             "datasheet-default": "datasheet only (not calibrated)"}
    for name in list_gpus():
        g, prov = get_gpu(name), load_profile(name).provenance
        fp8 = f"{g.fp8_dense_tflops:g}" if g.fp8_dense_tflops else "-"
        profile = f"{g.profile_from}'s (same die)" if prov.method == "derived" else kinds.get(prov.method, prov.method)
        table.add_row(g.name, str(g.compute_units), f"{g.bf16_dense_tflops:g}", fp8,
                      f"{g.hbm_capacity_bytes / 2**30:.0f}", f"{g.hbm_bandwidth_bytes_per_s / 1e12:.2f}",
                      f"{g.tdp_w:g}", f"{g.idle_power_w:g}", profile)
    console.print(table)


#: click's exception bases, reached through typer's public BadParameter (typer >= 0.25 vendors its own click).
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _given_value(error: Exception, argv: list[str]) -> str | None:
    """What the user typed for the option a BadParameter ``error`` is about (``--batch abc``,
    ``--batch=abc``; the last one given, which is the one click reads)."""
    opts = getattr(getattr(error, "param", None), "opts", [])
    for i in range(len(argv) - 1, -1, -1):
        for opt in opts:
            if argv[i] == opt and i + 1 < len(argv):
                return argv[i + 1]
            if argv[i].startswith(opt + "="):
                return argv[i][len(opt) + 1:]
    return None


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. A malformed command line (``--batch abc``, an unknown option) is one ``error:``
    line and exit code 2, as every other user error is, not click's boxed usage panel."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=argv, prog_name="energylens", standalone_mode=False)
    except _USAGE_ERROR as e:
        message = e.format_message()
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `energylens`: the help (typer's rich help
            if message.strip():                      # has printed itself and left the message empty)
                print(message, file=sys.stderr)
            sys.exit(2)
        value = _given_value(e, argv) if isinstance(e, typer.BadParameter) else None
        got = f" (got {value!r})" if value is not None and repr(value) not in message else ""
        print(f"error: {_cli_names(message)}{got}", file=sys.stderr)
        code = 2
    except _CLICK_EXCEPTION as e:
        e.show()
        code = e.exit_code
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


# ---- runtime: measure, validate, calibrate (energylens.runtime) -------------------------------------
@app.command("measure")
@_user_errors
def measure_cmd(
    suite: Annotated[str, typer.Option(help="quick (minutes) or full")] = "quick",
    out: Annotated[str, typer.Option(help="JSONL file the records are appended to")] = "",
    device: Annotated[str | None, typer.Option(help="cuda, cuda:N or cpu (default: cuda when a GPU is seen)")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="start the file anew")] = False,
    part: Annotated[list[str] | None, typer.Option(help="only this part (repeatable), e.g. micro:gemm")] = None,
    budget_s: Annotated[float, typer.Option(help="time limit of each part; a rerun continues it")] = 480.0,
) -> None:
    """Measure microbenchmarks and end-to-end runs into raw JSON lines (data/measurements/README.md)."""
    from energylens.errors import InvalidWorkloadError
    from energylens.runtime.measure import interrupted, measure

    if not out:
        raise InvalidWorkloadError("--out FILE is required, e.g. --out data/measurements/<gpu>-<yyyymmdd>-quick.jsonl")
    try:
        s = measure(suite, out, device, not no_resume, parts=part, budget_s=budget_s)
    except KeyboardInterrupt:  # every record written so far is whole and kept
        print(interrupted(out), file=sys.stderr)
        raise typer.Exit(130) from None
    if s.errors:
        raise typer.Exit(1)


def _measurements_folder() -> Path:
    """``data/measurements`` here, else the checkout's (when run from outside it)."""
    here = Path("data/measurements")
    if here.is_dir():
        return here
    import energylens

    return Path(energylens.__file__).resolve().parents[1] / "data" / "measurements"


@app.command("validate")
@_user_errors
def validate_cmd(
    paths: Annotated[list[str] | None, typer.Argument(help="measurement files or folders (default: data/measurements)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    plot: Annotated[str | None, typer.Option(help="write a predicted-vs-measured parity plot (PNG) here")] = None,
    profiles: Annotated[str | None, typer.Option(help="folder of profile JSONs to use instead of the bundled ones")] = None,
    runs: Annotated[int, typer.Option(help="runs to list (0: all)")] = 30,
) -> None:
    """Predicted vs measured time, energy and power per run and per op class, with MAPEs."""
    from energylens.runtime.validate import validate
    from energylens.search.report import plot_path

    _check_min("runs", runs, 0)
    if plot is not None:
        plot_path(plot)  # a bad extension (or "") fails before the work
    report = validate(paths or [_measurements_folder()], profiles_dir=profiles)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        report.print(console, max_runs=runs)
    if plot:
        path = report.parity_plot(plot)
        print(f"parity plot: {path}", file=sys.stderr if as_json else sys.stdout)


@app.command("calibrate")
@_user_errors
def calibrate_cmd(
    paths: Annotated[list[str], typer.Argument(help="measurement files or folders")],
    gpu: Annotated[str | None, typer.Option(help="fit only this GPU's profile")] = None,
    out: Annotated[str | None, typer.Option(help="profile file (.json) or folder to write (needed unless --dry-run; "
                                                 "energylens/costmodel/profiles replaces the bundled profiles)")] = None,
    base: Annotated[str, typer.Option(help="starting profile: bundled or datasheet")] = "bundled",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="fit and print; write nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Fit the cost model's profile coefficients of each GPU in the measurement files."""
    from energylens.errors import InvalidWorkloadError
    from energylens.runtime.calibrate import calibrate

    if out is None and not dry_run:  # never over the bundled profiles by default
        raise InvalidWorkloadError("give --out FOLDER or FILE.json for the fitted profiles (--out "
                                   "energylens/costmodel/profiles replaces the bundled ones), or --dry-run to only fit")
    if gpu is not None and not gpu.strip():
        raise InvalidWorkloadError("--gpu is empty: give a GPU name (see `energylens gpus`) or leave it out for every GPU")
    results = calibrate(paths, gpu=gpu, out=out, base=base, write=not dry_run)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return
    for r in results:
        table = Table(title=f"{r.gpu}: calibrated on {r.samples} records ({r.energy_samples} with power readings)"
                      + (f" -> {r.path}" if r.path else " (dry run, not written)"))
        for col in ("coefficient", "value", "status"):
            table.add_column(col)
        for name in (*r.fitted, *r.kept):
            table.add_row(name, f"{getattr(r.profile, name):.4g}", "fitted" if name in r.fitted else f"kept: {r.kept[name]}")
        console.print(table)
        console.print("in-sample residuals: " + ", ".join(f"{k} {v:g}" for k, v in r.residuals.items()))
        for note in r.notes:
            console.print(f"note: {note}")


def _print_export(spec: Any, export: str) -> None:
    """Print a plan for ``export``: vLLM's command line (notes as its comments), or Megatron-Core's
    config fields as JSON on stdout with the launch, wrapper settings and notes on stderr."""
    from energylens.export import megatron_extras, to_megatron, to_vllm
    from energylens.export.plan import clock_note

    if export == "vllm":
        print(to_vllm(spec, cli=True), end="")
        return
    print(json.dumps(to_megatron(spec), indent=2), flush=True)  # before the stderr lines
    ex = megatron_extras(spec)  # dp is not a field: Megatron derives it from the ranks launched
    lines = [f"launch {ex.world_size} rank{'s' if ex.world_size > 1 else ''} ({ex.launch}): Megatron-Core "
             f"derives data_parallel_size = {ex.data_parallel_size}",
             f"InferenceWrapperConfig: {json.dumps(ex.inference_wrapper)}"]
    if ex.tp_comm_overlap_cfg:
        lines.append(f"tp_comm_overlap_cfg (YAML for --tp-comm-overlap-cfg): {json.dumps(ex.tp_comm_overlap_cfg)}")
    clock = clock_note(spec, "a Megatron setting")
    if clock is not None:
        lines.append(clock)
    lines += [f"note: {note}" for note in ex.notes]
    print("\n".join(f"# {line}" for line in lines), file=sys.stderr)


# ---- compile: plan search (energylens.search) -------------------------------------------------------
@app.command("compile")
@_user_errors
def compile_cmd(
    model: Annotated[str, typer.Argument(help="HF model id (see `energylens models`), a config.json or a model directory")],
    gpu: Annotated[str, typer.Option(help="GPU name (see `energylens gpus`)")] = "H100-SXM",
    gpus: Annotated[int, typer.Option(help="number of GPUs of the cluster")] = 8,
    interconnect: Annotated[str | None, typer.Option(help=_INTERCONNECT_HELP)] = None,
    batch: Annotated[int, typer.Option(help="concurrent sequences (the search tries up to this many)")] = 64,
    prompt_len: Annotated[int, typer.Option(help="prompt tokens per sequence")] = 1024,
    output_len: Annotated[int, typer.Option(help="output tokens per sequence")] = 256,
    output_len_cv: _OutputLenCV = 1.0,
    prefix_cache_hit: _PrefixCacheHit = 0.0,
    slo_itl_ms: Annotated[float | None, typer.Option(help="inter-token latency target (median), ms")] = None,
    slo_ttft_ms: Annotated[float | None, typer.Option(help="time-to-first-token target (prefill of the batch), ms")] = None,
    objective: Annotated[str, typer.Option(help="energy or latency")] = "energy",
    clock_mhz: Annotated[list[int] | None, typer.Option(
        help="GPU clock to search, MHz; repeat for several (default: every 15 MHz step from half the maximum "
             "clock up; the maximum alone: the default clock, no lock)")] = None,
    plot: Annotated[str | None, typer.Option(help="write the Pareto plot here (PNG)")] = None,
    profiles: _Profiles = None,
    export: Annotated[str | None, typer.Option(help="print the plan for vllm (a `vllm serve` command) or megatron")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Search tp x ep x dp x fusion x overlap SMs x batch x GPU clock for the least-energy plan meeting the SLO."""
    import energylens as el
    from energylens.errors import InvalidWorkloadError, UnknownNameError
    from energylens.search.report import plot_path

    objective, export = _any_case(objective, ("energy", "latency")), _any_case(export, ("vllm", "megatron"))
    if export is not None and export not in ("vllm", "megatron"):
        raise UnknownNameError("export target", export, ["vllm", "megatron"])
    if as_json and export is not None:  # two documents on stdout would be neither JSON nor a command
        raise InvalidWorkloadError(f"--json and --export {export} both print the plan; give one "
                                   "(the JSON has every field of the plan)")
    if plot is not None:
        plot_path(plot)  # a bad extension (or "") fails before the search
    _check_min("gpus", gpus, 1)
    # an exported plan must run as priced: neither vLLM nor Megatron-Core's inference can give SMs to
    # the overlapped collectives the search prices (export notes), so an export searches without them
    sms: dict[str, Any] = {"comm_sms": (None,)} if export else {}
    if clock_mhz:
        sms["clocks_mhz"] = list(clock_mhz)
    if profiles is not None:
        from energylens.costmodel.profile import load_profile

        sms["profile"] = load_profile(gpu, profiles)
    plan = el.compile(model, el.Cluster(gpu, num_gpus=gpus, interconnect=interconnect),
                      workload=el.Workload(batch=batch, prompt_len=prompt_len, output_len=output_len,
                                           output_len_cv=output_len_cv, prefix_cache_hit=prefix_cache_hit),
                      objective=objective, slo=el.SLO(itl_ms=slo_itl_ms, ttft_ms=slo_ttft_ms), **sms)  # type: ignore[arg-type]
    if export:  # the figures the exported command is expected to give
        s = plan.estimate.serving
        serves = f", serving {s.batch} of the {batch} concurrent sequences asked for" if s.batch < batch else ""
        itl = f"median ITL {s.median_itl_s * 1e3:.1f} ms, " if output_len > 1 else ""  # one token: no gap
        print(f"# predicted: {itl}{s.energy_per_output_token_j:.3g} J per output "
              f"token, {s.avg_power_w / 1e3:.3g} kW on {plan.num_gpus} x {plan.gpu}, TTFT of the batch "
              f"{plan.estimate.prefill.latency_s:.3g} s{serves} (energylens {plan.objective} plan)",
              file=sys.stderr if export == "megatron" else sys.stdout)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2))
    elif export is None:
        print(plan.report(), end="")
    if export is not None:
        _print_export(plan.to_spec(), export)
    if plot:  # after the plan is printed, so a failed write does not lose it; .png added to a bare name
        print(f"Pareto plot: {plan.plot(plot)}", file=sys.stderr if as_json or export else sys.stdout)


@app.command("export")
@_user_errors
def export_cmd(
    plan_file: Annotated[str, typer.Argument(help="a plan saved as JSON (- reads stdin): `compile --json` output, "
                                                  "or PlanSpec fields")],
    to: Annotated[str, typer.Option(help="vllm (a `vllm serve` command) or megatron")] = "vllm",
) -> None:
    """Print a saved plan for vLLM or Megatron-Core (the exporters' checks and notes, as compile --export)."""
    from energylens.errors import ConfigError, UnknownNameError
    from energylens.export import PlanSpec

    target = _any_case(to, ("vllm", "megatron"))
    if target not in ("vllm", "megatron"):
        raise UnknownNameError("export target", to, ["vllm", "megatron"])
    try:
        data = json.loads(sys.stdin.read() if plan_file == "-" else Path(plan_file).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the plan {plan_file}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{plan_file} is not JSON: {exc}") from None
    if isinstance(data, dict) and "spec" in data:  # compile --json: the plan and its exporters' fields
        spec = data["spec"]
        edited = sorted(k for k in data if k != "spec" and isinstance(spec, dict) and k in spec and data[k] != spec[k])
        if edited:  # the top-level copy was edited, or the spec: export reads the spec
            raise ConfigError(f"{plan_file}: {', '.join(f'plan.{k}' for k in edited)} differ between the plan and its "
                              "\"spec\" (what export reads); edit the spec, or both alike")
        data = spec
    _print_export(PlanSpec.from_dict(data), target)
