"""The ``golden`` fixture: compare with tests/golden/<name>.eir, rewrite with ENERGYLENS_UPDATE_GOLDEN=1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from energylens.ir.text import parse_graph, print_graph


def test_golden_matches_hand_written_file(golden: Callable[[str, str], None]) -> None:
    text = (Path(__file__).parent / "golden" / "tiny_llama_decode.eir").read_text(encoding="utf-8")
    golden("tiny_llama_decode", print_graph(parse_graph(text)))


def test_golden_helper_update_compare_and_missing(golden: Callable[[str, str], None], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import conftest

    monkeypatch.setattr(conftest, "GOLDEN_DIR", tmp_path)
    monkeypatch.setenv("ENERGYLENS_UPDATE_GOLDEN", "1")
    golden("demo", "graph @a {\n}\n")
    assert (tmp_path / "demo.eir").read_text(encoding="utf-8") == "graph @a {\n}\n"
    monkeypatch.delenv("ENERGYLENS_UPDATE_GOLDEN")
    golden("demo", "graph @a {\n}\n")
    with pytest.raises(pytest.fail.Exception, match="differs from golden file demo.eir"):
        golden("demo", "graph @b {\n}\n")
    with pytest.raises(pytest.fail.Exception, match="is missing"):
        golden("other", "x\n")
