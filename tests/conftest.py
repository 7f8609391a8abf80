"""Shared pytest fixtures: ``golden`` compares text with ``tests/golden/<name>.eir``.

Set ``ENERGYLENS_UPDATE_GOLDEN=1`` to (re)write the golden files from the test's output, then
review the diff (``git diff tests/golden``) before committing it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def check_golden(name: str, text: str, *, update: bool | None = None) -> None:
    """Assert that ``text`` equals ``tests/golden/<name>.eir`` (or rewrite it when updating)."""
    if update is None:
        update = os.environ.get("ENERGYLENS_UPDATE_GOLDEN") == "1"
    path = GOLDEN_DIR / f"{name}.eir"
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; run with ENERGYLENS_UPDATE_GOLDEN=1 to create it")
    expected = path.read_text(encoding="utf-8")
    if expected != text:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), text.splitlines(keepends=True),
                                            fromfile=str(path), tofile="actual"))
        pytest.fail(f"output differs from golden file {path.name} "
                    f"(ENERGYLENS_UPDATE_GOLDEN=1 rewrites it):\n{diff}")


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    """``golden(name, text)``: compare ``text`` with ``tests/golden/<name>.eir``."""
    return check_golden


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` unless torch sees a CUDA GPU (CI has none)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
