"""Regenerate ``vllm_args_<version>.txt``: vLLM's engine arguments read from its source with ``ast``.

vLLM cannot be imported here (it needs a CUDA build of torch), so the argument list it accepts is
read from ``vllm/engine/arg_utils.py`` of a pinned release without running it:

- ``EngineArgs`` dataclass fields (the keys ``EngineArgs(**kwargs)`` accepts), with their annotation;
- every ``add_argument("--flag", ...)`` inside ``EngineArgs.add_cli_args``: the flag, its aliases,
  and its argparse ``dest`` (the first long flag with ``-`` -> ``_``, as argparse does).

Usage (from a vLLM wheel unpacked in /tmp, never installed into the project's venv)::

    python -m energylens.export.vllm_args_extract /tmp/vllm/engine/arg_utils.py 0.33.0 \\
        > energylens/export/vllm_args_0.33.0.txt

Output, one argument a line: ``dest kind --flag [alias ...]`` where kind is ``bool`` (argparse
``BooleanOptionalAction``: ``--flag`` / ``--no-flag``), ``store_true`` or ``value``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

__all__ = ["extract", "main"]


def _is_bool(annotation: str) -> bool:
    return "bool" in [part.strip() for part in annotation.split("|")]


def extract(source: str) -> list[tuple[str, str, list[str]]]:
    """(dest, kind, flags) for each CLI argument of ``EngineArgs.add_cli_args`` in ``source``."""
    tree = ast.parse(source)
    engine = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EngineArgs")
    fields = {
        s.target.id: ast.unparse(s.annotation)
        for s in engine.body
        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
    }
    add_cli = next(n for n in engine.body if isinstance(n, ast.FunctionDef) and n.name == "add_cli_args")
    rows: list[tuple[str, str, list[str]]] = []
    for node in ast.walk(add_cli):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "add_argument":
            continue
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        longs = [f for f in flags if f.startswith("--")]
        if not longs:
            continue
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        dest = (
            kw["dest"].value if isinstance(kw.get("dest"), ast.Constant) else longs[0][2:].replace("-", "_")
        )
        action = kw.get("action")
        if isinstance(action, ast.Constant) and action.value == "store_true":
            kind = "store_true"
        elif action is not None and "BooleanOptionalAction" in ast.unparse(action):
            kind = "bool"
        elif action is None and any(k.arg is None for k in node.keywords) and _is_bool(fields.get(dest, "")):
            kind = "bool"  # **get_kwargs(Config)[name] of a bool field -> BooleanOptionalAction
        else:
            kind = "value"
        rows.append((dest, kind, flags))
    rows.sort(key=lambda r: r[0])
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    path, version = Path(argv[0]), argv[1]
    print(f"# vLLM {version} engine arguments (EngineArgs.add_cli_args), read with ast from")
    print(f"# vllm/engine/arg_utils.py of the vllm=={version} wheel on PyPI")
    print("# (vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl). vLLM is licensed Apache-2.0;")
    print("# only argument names are kept here. Regenerate: python -m energylens.export.vllm_args_extract")
    print("# format: dest kind --flag [alias ...]; kind: bool (--flag/--no-flag), store_true, value")
    for dest, kind, flags in extract(path.read_text()):
        print(dest, kind, *flags)


if __name__ == "__main__":
    main()
