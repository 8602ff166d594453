"""Import rules between layers, checked on the source (no import is executed).

- Runtime code never imports the test kit (`swarmnode.testing`): it ships for tests only.
- `consensus/simnet.py`, the in-memory network the consensus simulator and
  `MemoryTransport` share, imports only the standard library.
- The network layer (`swarmnode/net/`) takes nothing from the ledger but that network.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("crypto", "consensus", "models", "swarmnode")
TEST_KIT = "swarmnode.testing"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _sources(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


def _is_test_kit(name: str) -> bool:
    return name == TEST_KIT or name.startswith(TEST_KIT + ".")


def test_runtime_code_does_not_import_the_test_kit() -> None:
    offenders = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in _sources(*PACKAGES)
        if not _is_test_kit(_module_name(path))
        for name in _imports(path)
        if _is_test_kit(name)
    }
    assert not offenders, sorted(offenders)


def test_the_shared_in_memory_network_imports_only_the_standard_library() -> None:
    names = _imports(REPO / "consensus" / "simnet.py")
    foreign = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert not foreign, sorted(foreign)


def test_the_network_layer_takes_only_the_in_memory_network_from_the_ledger() -> None:
    offenders = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in _sources("swarmnode/net")
        for name in _imports(path)
        if name.split(".")[0] == "consensus" and not name.startswith("consensus.simnet")
    }
    assert not offenders, sorted(offenders)
