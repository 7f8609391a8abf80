"""Pass registry and pipelines: ``"shard{tp=4,ep=2},fuse,overlap{comm_sms=16}"`` -> passes -> graph.

A pass is a frozen dataclass whose fields are its options, with a kebab-case ``name`` class
attribute and ``__call__(graph) -> Graph`` (pure: it never mutates its input). Passes register
by name in a strict registry: a second class under a taken name raises, an unknown name raises
``UnknownNameError`` with the valid names and the closest match. Registering the same definition
again is a no-op, so a pass module imported a second time under another name (as
``python -m doctest energylens/passes/shard.py`` does) still imports.

Pipeline syntax (whitespace is free)::

    pipeline := pass ("," pass)*
    pass     := NAME ["{" option ("," option)* "}"]
    option   := FIELD "=" value
    value    := INT | FLOAT | true | false | none | BARE_WORD | "quoted string" | "[" value, ... "]"

Option values are checked against the pass dataclass's field types (``int``, ``float``, ``bool``,
``str``, ``Literal[...]``, ``tuple[float, ...]``, ``X | None``); a wrong name or type is a
``ConfigError`` naming the pass, the option and the valid choices.

``PassManager`` runs passes in order and runs the verifier (``verify_graph``) after each one; a
graph that fails verification raises ``PassVerificationError`` naming the pass that broke it and
the passes that ran before it. ``print_after_all`` (a callback ``(pass_name, graph)`` or a text
stream) shows the graph after every pass.

>>> from energylens.ir.text import EXAMPLE, parse_graph
>>> [p.name for p in parse_pipeline("shard{tp=2}, fuse")]
['shard', 'fuse']
>>> g = run_pipeline(parse_graph(EXAMPLE), "fuse")
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

from energylens.errors import ConfigError, InvalidTypeError, UnknownNameError, VerificationError, closest
from energylens.ir.core import Graph

__all__ = [
    "Pass",
    "PassManager",
    "PassVerificationError",
    "register_pass",
    "get_pass",
    "list_passes",
    "make_pass",
    "parse_pipeline",
    "run_pipeline",
]


@runtime_checkable
class Pass(Protocol):
    """What a pass is: a named, callable ``Graph -> Graph`` (a frozen dataclass in practice)."""

    name: ClassVar[str]

    def __call__(self, graph: Graph) -> Graph: ...


P = TypeVar("P", bound=type)

if __name__ == "energylens.passes.manager":
    _REGISTRY: dict[str, type] = {}
else:  # this file loaded again under another name (`python -m doctest .../manager.py` imports it as
    # `manager`): share the one registry that the built-in passes register into.
    from energylens.passes.manager import _REGISTRY
_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
#: Modules of the built-in passes, imported on first lookup (each registers its pass on import).
_BUILTIN_MODULES = ("energylens.passes.shard", "energylens.passes.fuse", "energylens.passes.moe",
                    "energylens.passes.overlap")
_loaded = False
#: Passes that may run at most once in a pipeline: a second shard would split shards again.
_ONCE = ("shard", "fuse", "moe", "overlap")  # a second one would silently override the first


class PassVerificationError(VerificationError):
    """A graph that fails verification after a pass; names the pass and the ones before it."""

    def __init__(self, pass_name: str, before: Sequence[str], cause: VerificationError):
        self.pass_name, self.before, self.cause = pass_name, tuple(before), cause
        ran = ", ".join(self.before) if self.before else "none"
        super().__init__(f"pass {pass_name!r} produced an invalid graph: {cause} "
                         f"(passes that ran before it: {ran})")


def _same_definition(a: type, b: type) -> bool:
    """Whether ``a`` and ``b`` come from one module-level class statement (``b`` re-executed by a
    second import of its file, e.g. under another module name); local classes only match themselves."""
    if a is b:
        return True
    if a.__qualname__ != b.__qualname__ or "<locals>" in a.__qualname__:
        return False
    try:
        return os.path.realpath(inspect.getfile(a)) == os.path.realpath(inspect.getfile(b))
    except (TypeError, OSError):  # no source file (built in, or defined in an interactive session)
        return False


def register_pass(cls: P) -> P:
    """Class decorator: register a pass class under its ``name`` (kebab-case, unique).

    Registering the same class again is a no-op; the same class statement run again is accepted too:
    from a reloaded module (``importlib.reload``: the new class replaces the old one) or from a copy
    of the module under another name (``python -m doctest file.py``: the first registration stays).
    A different class under a taken name raises ``ConfigError``.

    >>> @register_pass
    ... @dataclasses.dataclass(frozen=True)
    ... class Nop:
    ...     name: ClassVar[str] = "doc-nop"
    ...     def __call__(self, graph): return graph
    >>> get_pass("doc-nop") is Nop
    True
    >>> register_pass(Nop) is Nop  # the same class again: accepted
    True
    >>> _ = _REGISTRY.pop("doc-nop")
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _KEBAB.match(name):
        raise ConfigError(f"pass class {cls.__name__} needs a kebab-case `name` class attribute, got {name!r}")
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise ConfigError(f"pass {name!r} ({cls.__name__}) must be a frozen dataclass (its fields are its options)")
    if name in _REGISTRY:
        if _same_definition(_REGISTRY[name], cls):
            if _REGISTRY[name].__module__ == cls.__module__:  # a reload: the new definition wins
                _REGISTRY[name] = cls
            return cls
        raise ConfigError(f"pass name {name!r} is already registered by {_REGISTRY[name].__module__}."
                          f"{_REGISTRY[name].__name__}; pick another name for {cls.__module__}.{cls.__name__}")
    _REGISTRY[name] = cls
    return cls


def _load_builtins() -> None:
    """Import the built-in pass modules once; register ``Overlap`` if its module did not."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod_name in _BUILTIN_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:  # a pass module not written yet (overlap lands separately)
                continue
            raise
        # overlap.py (another stage's file) may not register itself: register its Overlap here.
        cls = getattr(mod, "Overlap", None)
        if cls is not None and getattr(cls, "name", None) not in _REGISTRY:
            register_pass(cls)


def list_passes() -> list[str]:
    """Names of the registered passes, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_pass(name: str) -> type:
    """The pass class registered as ``name``; ``UnknownNameError`` lists the valid names."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("pass", name, _REGISTRY) from None


# ---------------------------------------------------------------------------------------------
# Options: type checking against the dataclass fields


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list of " + _type_name(typing.get_args(tp)[0])
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` (parsed from the pipeline text) as field type ``tp``; raise ValueError if it is not one."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except ValueError:
                continue
        raise ValueError
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_coerce(v, item) for v in value)
    if tp is type(None):
        if value is None:
            return None
        raise ValueError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    raise ValueError


def make_pass(name: str, **options: Any) -> Any:
    """An instance of pass ``name`` with ``options`` checked against its fields.

    >>> make_pass("shard", tp=2)
    Shard(tp=2, ep=1, dp=1)
    """
    cls = get_pass(name)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in fields:
            hint = closest(key, fields)
            raise ConfigError(f"pass {name!r} has no option {key!r}."
                              + (f" Did you mean {hint!r}?" if hint else "")
                              + f" Valid options: {', '.join(fields) or 'none (it takes no options)'}")
        try:
            kwargs[key] = _coerce(value, hints[key])
        except ValueError:
            raise ConfigError(f"pass {name!r}: option {key}={value!r} has the wrong type; "
                              f"expected {_type_name(hints[key])}") from None
    required = [f.name for f in fields.values()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in kwargs]
    if missing:  # said here: Python's own TypeError names the parameter in the CLI's --flag form
        raise ConfigError(f"pass {name!r} has required option(s) without a default; give them as "
                          f"{name}{{{','.join(f'{k}=...' for k in missing)}}}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError | UnknownNameError):
            raise
        raise ConfigError(f"pass {name!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Pipeline text

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
  | (?P<punct>[{},=\[\]])
""", re.VERBOSE)


def _lex(text: str) -> list[tuple[str, str, int]]:
    toks: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConfigError(f"pipeline {text!r}: unexpected character {text[pos]!r} at column {pos + 1}")
        if m.lastgroup != "ws":
            toks.append((m.lastgroup or "", m.group(), pos + 1))
        pos = m.end()
    toks.append(("eof", "", len(text) + 1))
    return toks


class _PipelineParser:
    def __init__(self, text: str):
        self.text, self.toks, self.i = text, _lex(text), 0

    def fail(self, expected: str) -> ConfigError:
        kind, tok, col = self.toks[self.i]
        found = "end of input" if kind == "eof" else repr(tok)
        return ConfigError(f"pipeline {self.text!r}: expected {expected} at column {col}, found {found} "
                           "(syntax: 'name{option=value,...},name,...', e.g. 'shard{tp=4,ep=2},fuse')")

    def peek(self, text: str) -> bool:
        return self.toks[self.i][1] == text and self.toks[self.i][0] == "punct"

    def take(self, kind: str, expected: str) -> str:
        if self.toks[self.i][0] != kind:
            raise self.fail(expected)
        tok = self.toks[self.i][1]
        self.i += 1
        return tok

    def expect(self, text: str, expected: str) -> None:
        if not self.peek(text):
            raise self.fail(expected)
        self.i += 1

    def value(self) -> Any:
        kind, tok, _ = self.toks[self.i]
        if self.peek("["):
            self.i += 1
            items: list[Any] = []
            while not self.peek("]"):
                if items:
                    self.expect(",", "',' or ']'")
                items.append(self.value())
            self.i += 1
            return items
        self.i += 1
        if kind == "number":
            return float(tok) if any(c in tok for c in ".eE") else int(tok)
        if kind == "string":
            import json

            return json.loads(tok)
        if kind == "word":
            return {"true": True, "false": False, "none": None}.get(tok.lower(), tok)
        self.i -= 1
        raise self.fail("a value (number, true/false, word, \"string\" or [list])")

    def pipeline(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if self.toks[self.i][0] == "eof":
            return out
        while True:
            name = self.take("word", "a pass name")
            opts: dict[str, Any] = {}
            if self.peek("{"):
                self.i += 1
                while not self.peek("}"):
                    if opts:
                        self.expect(",", "',' or '}'")
                    key = self.take("word", "an option name")
                    if key in opts:
                        raise ConfigError(f"pipeline {self.text!r}: option {key!r} of pass {name!r} is given twice")
                    self.expect("=", f"'=' after option {key!r}")
                    opts[key] = self.value()
                self.i += 1
            out.append((name, opts))
            if self.toks[self.i][0] == "eof":
                return out
            self.expect(",", "',' between passes or end of input")


def parse_pipeline(text: str) -> tuple[Any, ...]:
    """Pass instances from a pipeline string (see the module docstring for the syntax).

    >>> parse_pipeline("shard{tp=4, ep=2}, moe{routing=zipf, skew=1.2}")
    (Shard(tp=4, ep=2, dp=1), Moe(routing='zipf', skew=1.2, histogram=None, seed=0))
    """
    return tuple(make_pass(name, **opts) for name, opts in _PipelineParser(text).pipeline())


# ---------------------------------------------------------------------------------------------
# Running passes

PrintAfter = Callable[[str, Graph], None] | IO[str]


@dataclasses.dataclass(frozen=True)
class PassManager:
    """Runs ``passes`` in order, verifying the graph after each one.

    ``verify``: run ``verify_graph`` on the input and after every pass (on by default).
    ``print_after_all``: a callback ``(pass_name, graph)`` or a text stream that receives the
    graph's text after every pass (``// after <pass>`` then the graph).

    >>> import io
    >>> from energylens.ir.text import EXAMPLE, parse_graph
    >>> out = io.StringIO()
    >>> _ = PassManager.from_pipeline("fuse", print_after_all=out)(parse_graph(EXAMPLE))
    >>> out.getvalue().splitlines()[0]
    '// after fuse'
    """

    passes: tuple[Any, ...]
    verify: bool = True
    print_after_all: PrintAfter | None = None

    def __post_init__(self) -> None:
        names = [getattr(p, "name", type(p).__name__) for p in self.passes]
        for once in _ONCE:
            if names.count(once) > 1:
                raise ConfigError(f"the pipeline runs pass {once!r} {names.count(once)} times (its passes in order: "
                                  f"{', '.join(names)}); "
                                  f"it may run once (give all its options to one {once}{{...}})")

    @classmethod
    def from_pipeline(cls, pipeline: str | Iterable[Any], **kwargs: Any) -> PassManager:
        if isinstance(pipeline, str):
            return cls(parse_pipeline(pipeline), **kwargs)
        if not isinstance(pipeline, Iterable):
            raise InvalidTypeError(f"a pipeline is a string ('shard{{tp=2}},fuse') or a sequence of passes, got "
                                   f"{type(pipeline).__name__}; put a single pass in a list: [{type(pipeline).__name__}(...)]")
        passes = tuple(pipeline)
        for p in passes:
            if isinstance(p, str):
                raise InvalidTypeError(f"a pipeline sequence holds pass instances, got the string {p!r}: write the "
                                       "whole pipeline as one string instead ('shard{tp=2},fuse')")
            if isinstance(p, type):
                raise InvalidTypeError(f"a pipeline sequence holds pass instances, got the class {p.__name__}: "
                                       f"give {p.__name__}(...)")
            if not callable(p):
                raise InvalidTypeError(f"a pipeline sequence holds pass instances (Graph -> Graph), got "
                                       f"{type(p).__name__} {p!r}")
        return cls(passes, **kwargs)

    def _emit(self, name: str, graph: Graph) -> None:
        sink = self.print_after_all
        if sink is None:
            return
        if hasattr(sink, "write"):
            from energylens.ir.text import print_graph

            sink.write(f"// after {name}\n{print_graph(graph)}")  # type: ignore[union-attr]
        else:
            sink(name, graph)  # type: ignore[operator]

    def __call__(self, graph: Graph) -> Graph:
        from energylens.ir.verify import verify_graph

        if self.verify:
            verify_graph(graph)
        ran: list[str] = []
        for p in self.passes:
            name = getattr(p, "name", type(p).__name__)
            out = p(graph)
            if not isinstance(out, Graph):
                raise ConfigError(f"pass {name!r} returned {type(out).__name__}, not a Graph")
            if self.verify:
                try:
                    verify_graph(out)
                except VerificationError as e:
                    raise PassVerificationError(name, ran, e) from e
            self._emit(name, out)
            ran.append(name)
            graph = out
        return graph


def run_pipeline(graph: Graph, pipeline: str | Iterable[Any], *, verify: bool = True,
                 print_after_all: PrintAfter | None = None) -> Graph:
    """Run a pipeline (string or pass instances) on ``graph``; verify after every pass."""
    return PassManager.from_pipeline(pipeline, verify=verify, print_after_all=print_after_all)(graph)
