"""Every docstring example in the package runs as written (``python -m doctest`` style)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import energylens

MODULES = sorted(m.name for m in pkgutil.walk_packages(energylens.__path__, "energylens.") if m.name != "energylens.__main__")


@pytest.mark.parametrize("module", MODULES)
def test_module_doctests(module: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # an optional extra (the GPU meter's nvidia-ml-py) that is not installed
        pytest.skip(f"{module}: {exc}")
    assert doctest.testmod(mod, verbose=False, optionflags=doctest.ELLIPSIS).failed == 0
