"""How `swarmnode` starts: `--help` and usage errors without the heavy imports, and the
refusals a site gets at once (with the field or file at fault) instead of a silent wait."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

HEAVY_MODULES = ("torch", "tenseal", "libp2p", "numpy", "trio", "sklearn")

_IMPORTED_BY = """
import sys
from swarmnode.cli import main
code = main(sys.argv[1:])
print("CODE", code)
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _imports_of(*argv: str) -> tuple[int, list[str], str]:
    """Exit code and heavy modules loaded when a fresh interpreter runs ``swarmnode ARGV``."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTED_BY.format(heavy=HEAVY_MODULES), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    marked = (line.partition(" ") for line in done.stdout.splitlines())
    lines = {key: value for key, _, value in marked if key in ("CODE", "HEAVY")}
    return int(lines["CODE"]), ast.literal_eval(lines["HEAVY"]), done.stdout + done.stderr


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (("--help",), 0),
        (("--version",), 0),
        (("run", "--help"), 0),
        (("genesis", "--help"), 0),
        (("init",), 2),  # --name missing: a usage error
        (("run", "--no-such-option"), 2),
        (("no-such-command",), 2),
    ],
)
def test_help_and_usage_errors_import_nothing_heavy(argv: tuple[str, ...], code: int) -> None:
    exit_code, heavy, output = _imports_of(*argv)
    assert exit_code == code, output
    assert heavy == [], f"swarmnode {' '.join(argv)} imported {heavy}"
