"""Pass manager: strict registry, pipeline strings, verification after each pass, print-after-all."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import importlib.util
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from test_pass_graphs import llama_decode

from energylens.errors import ConfigError, UnknownNameError, VerificationError
from energylens.ir.core import Graph
from energylens.passes import Fuse, Moe, Shard
from energylens.passes import manager as mgr
from energylens.passes.manager import (
    PassManager,
    PassVerificationError,
    get_pass,
    list_passes,
    parse_pipeline,
    register_pass,
    run_pipeline,
)


@pytest.fixture
def scratch_registry():
    mgr._load_builtins()  # saved with every built-in pass: restoring must not drop one first loaded inside
    saved = dict(mgr._REGISTRY)
    yield
    mgr._REGISTRY.clear()
    mgr._REGISTRY.update(saved)


def test_builtins_registered() -> None:
    names = list_passes()
    assert {"shard", "fuse", "moe"} <= set(names)
    assert get_pass("shard") is Shard


def test_overlap_registered_when_present() -> None:
    try:
        from energylens.passes.overlap import Overlap
    except ImportError:
        pytest.skip("overlap pass not written yet")
    assert get_pass("overlap") is Overlap


def test_unknown_pass_lists_names_and_closest() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown pass 'fusee'. Did you mean 'fuse'\?.*shard") as e:
        parse_pipeline("shard{tp=2},fusee")
    assert e.value.suggestion == "fuse"


def test_duplicate_name_raises(scratch_registry) -> None:
    @dataclass(frozen=True)
    class Other:
        name: ClassVar[str] = "shard"

        def __call__(self, graph: Graph) -> Graph:
            return graph

    with pytest.raises(ConfigError, match="already registered"):
        register_pass(Other)


def test_reregistering_the_same_pass_is_a_no_op(scratch_registry) -> None:
    assert register_pass(Shard) is Shard
    assert get_pass("shard") is Shard


def test_reloaded_pass_module_replaces_its_class(tmp_path, monkeypatch, scratch_registry) -> None:
    (tmp_path / "reload_me_pass.py").write_text(
        "import dataclasses\nfrom typing import ClassVar\nfrom energylens.passes.manager import register_pass\n\n"
        "@register_pass\n@dataclasses.dataclass(frozen=True)\nclass ReloadMe:\n"
        "    name: ClassVar[str] = 'reload-me'\n    def __call__(self, graph): return graph\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("reload_me_pass")
    first = get_pass("reload-me")
    importlib.reload(mod)
    assert get_pass("reload-me") is mod.ReloadMe and mod.ReloadMe is not first
    monkeypatch.delitem(sys.modules, "reload_me_pass")


def test_local_classes_of_one_statement_are_different_passes(scratch_registry) -> None:
    """Same qualname and file, but two executions of a local class statement: still a clash."""

    def make() -> type:
        @dataclass(frozen=True)
        class Local:
            name: ClassVar[str] = "doc-local"

            def __call__(self, graph: Graph) -> Graph:
                return graph

        return Local

    first = register_pass(make())
    with pytest.raises(ConfigError, match="'doc-local' is already registered"):
        register_pass(make())
    assert get_pass("doc-local") is first


_PASS_MODULES = ("energylens.passes", "energylens.passes.manager", "energylens.passes.shard",
                 "energylens.passes.fuse", "energylens.passes.moe", "energylens.passes.overlap")


@pytest.mark.parametrize("module", _PASS_MODULES[1:])
def test_pass_module_doctests_from_the_file(module: str, monkeypatch, scratch_registry) -> None:
    """As ``python -m doctest energylens/passes/<m>.py``: the file imported again under a bare name."""
    alias = "doctest_" + module.rsplit(".", 1)[1]
    spec = importlib.util.spec_from_file_location(alias, importlib.import_module(module).__file__)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, alias, mod)
    spec.loader.exec_module(mod)            # registers its pass class again: accepted
    result = doctest.testmod(mod, verbose=False)
    assert result.attempted > 0 and result.failed == 0
    assert get_pass("shard") is Shard and get_pass("fuse") is Fuse   # the first registration stays


def test_doctest_command_line_on_shard() -> None:
    proc = subprocess.run([sys.executable, "-m", "doctest", "energylens/passes/shard.py"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_register_requires_frozen_dataclass_and_kebab_name(scratch_registry) -> None:
    class NotDataclass:
        name: ClassVar[str] = "not-dc"

    with pytest.raises(ConfigError, match="frozen dataclass"):
        register_pass(NotDataclass)

    @dataclass(frozen=True)
    class BadName:
        name: ClassVar[str] = "Bad_Name"

    with pytest.raises(ConfigError, match="kebab-case"):
        register_pass(BadName)


def test_pipeline_parsing() -> None:
    assert parse_pipeline("shard{tp=4,ep=2},fuse,moe{routing=zipf,skew=1.2}") == (
        Shard(tp=4, ep=2), Fuse(), Moe(routing="zipf", skew=1.2))
    assert parse_pipeline(" shard { tp = 2 } , fuse{attention=false} ") == (Shard(tp=2), Fuse(attention=False))
    assert parse_pipeline('moe{routing="histogram", histogram=[1, 2, 3.5]}') == (
        Moe(routing="histogram", histogram=(1.0, 2.0, 3.5)),)
    assert parse_pipeline("moe{routing=zipf,skew=2}")[0].skew == 2.0        # int accepted for a float option
    assert parse_pipeline("") == ()


@pytest.mark.parametrize("text, message", [
    ("shard{tp=2.5}", r"option tp=2.5 has the wrong type; expected int"),
    ("shard{tp=true}", r"option tp=True has the wrong type; expected int"),
    ("shard{tpp=2}", r"pass 'shard' has no option 'tpp'. Did you mean 'tp'\? Valid options: tp, ep, dp"),
    ("moe{routing=foo}", r"expected 'uniform' \| 'zipf' \| 'histogram'"),
    ("shard{tp=}", r"expected a value .* at column 10"),
    ("shard{tp=2", r"expected ',' or '}' at column 11, found end of input"),
    ("fuse,", r"expected a pass name at column 6"),
    ("shard{tp=2,tp=4}", r"option 'tp' of pass 'shard' is given twice"),
    ("shard{tp=0}", r"pass 'shard': Parallel.tp must be a positive integer"),
    ("shard;fuse", r"unexpected character ';'"),
])
def test_pipeline_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(text)


def test_pipeline_runs_and_verifies() -> None:
    out = run_pipeline(llama_decode(), "shard{tp=2},fuse")
    assert out == Fuse()(Shard(tp=2)(llama_decode()))


@dataclass(frozen=True)
class _Breaks:
    name: ClassVar[str] = "breaks"

    def __call__(self, graph: Graph) -> Graph:
        return dataclasses.replace(graph, outputs=("nowhere",))


def test_verifier_names_the_breaking_pass() -> None:
    pm = PassManager((Shard(tp=2), Fuse(), _Breaks()))
    with pytest.raises(PassVerificationError, match=r"pass 'breaks' produced an invalid graph: .*nowhere.*"
                                                   r"\(passes that ran before it: shard, fuse\)") as e:
        pm(llama_decode())
    assert isinstance(e.value, VerificationError) and e.value.before == ("shard", "fuse")
    assert PassManager((_Breaks(),), verify=False)(llama_decode()).outputs == ("nowhere",)


def test_print_after_all() -> None:
    seen: list[str] = []
    run_pipeline(llama_decode(), "shard{tp=2},fuse", print_after_all=lambda name, g: seen.append(name))
    assert seen == ["shard", "fuse"]
    out = io.StringIO()
    run_pipeline(llama_decode(), "fuse", print_after_all=out)
    text = out.getvalue()
    assert text.startswith("// after fuse\ngraph @tiny_llama")


@pytest.mark.parametrize("pipeline", ["shard{tp=2}", "shard{tp=2,dp=2},fuse", "fuse,shard{tp=4}", "moe,fuse"])
def test_random_graphs_stay_valid(pipeline: str) -> None:
    """On seeded random graphs a pipeline either refuses with ShardingError or yields a valid graph."""
    import copy

    from energylens.errors import ShardingError
    from energylens.testing import random_graph

    for seed in range(150):
        g = random_graph(seed)
        before = copy.deepcopy(g)
        try:
            run_pipeline(g, pipeline)       # verifies after every pass
        except ShardingError:
            pass
        assert g == before


def test_cli_names_a_pass_option_as_the_pipeline_spells_it():
    """The CLI turns Python option names into flags (comm_sms -> --comm-sms), but not those of a pass."""
    from typer.testing import CliRunner

    from energylens.cli import app

    r = CliRunner().invoke(app, ["ir", "Qwen/Qwen3-0.6B", "--pipeline", "overlap{sms=8}"])
    assert r.exit_code == 2 and "Did you mean 'comm_sms'?" in r.output and "--comm-sms" not in r.output
    r = CliRunner().invoke(app, ["ir", "Qwen/Qwen3-0.6B", "--pipeline", "moe{routing=histogram}"])
    assert r.exit_code == 2 and "routing='histogram' needs histogram=" in r.output and "--routing" not in r.output


def test_each_pass_runs_once_and_moe_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="runs pass 'fuse' 2 times"):
        PassManager.from_pipeline("fuse{gemm=false},fuse")
    with pytest.raises(ConfigError, match="skew=5 is only used with routing='zipf', not 'uniform'"):
        Moe(routing="uniform", skew=5)
    with pytest.raises(ConfigError, match="routing seed must be an integer >= 0, got -1"):
        Moe(routing="zipf", seed=-1)


@pytest.mark.parametrize(("pipeline", "message"), [
    (["shard{tp=2}", "fuse"], "got the string 'shard{tp=2}': write the whole pipeline as one string"),
    ([Shard, Fuse], "got the class Shard: give Shard(...)"),
    ([3], "pass instances (Graph -> Graph), got int 3"),
    (Shard(tp=2), "put a single pass in a list: [Shard(...)]"),
])
def test_pipeline_sequences_hold_pass_instances(pipeline: object, message: str) -> None:
    from energylens.errors import InvalidTypeError

    with pytest.raises(InvalidTypeError) as info:
        run_pipeline(llama_decode(), pipeline)  # type: ignore[arg-type]
    assert message in str(info.value)
