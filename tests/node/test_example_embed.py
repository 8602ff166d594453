"""examples/embed_torch.py really runs (a 3-site secure swarm in-process) and stays
under 40 lines of user code."""

from __future__ import annotations

import ast
import importlib.util
import threading
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embed_torch.py"

pytestmark = pytest.mark.timeout(120)


def user_code_lines(source: str) -> int:
    docstring_end = ast.parse(source).body[0].end_lineno
    assert docstring_end is not None
    lines = source.splitlines()[docstring_end:]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def test_example_is_under_40_lines_and_says_how_many() -> None:
    source = EXAMPLE.read_text(encoding="utf-8")
    count = user_code_lines(source)
    assert count < 40
    assert f"User code: {count} lines" in source


def test_example_trains_a_swarm_model() -> None:
    spec = importlib.util.spec_from_file_location("swarmnode_example_embed_torch", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    before = {t for t in threading.enumerate() if t.name.startswith("swarmnode-")}
    auc = example.main(rounds=2)
    assert auc > 0.9  # every site ends with the swarm model; site 0's data alone is 90 % positive
    assert {t for t in threading.enumerate() if t.name.startswith("swarmnode-")} == before
