"""The code stays in pieces that fit in a head: no module of the four packages over
`MAX_MODULE_LINES` lines, no function over `MAX_FUNCTION_LINES`, and no runtime module
importing the test kits (`swarmnode.testing`, `crypto.testing`, `swarmnode.faults`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crypto", "consensus", "models", "swarmnode")
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80
TEST_KITS = ("swarmnode.testing", "crypto.testing", "swarmnode.faults")


def modules() -> list[Path]:
    found = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert len(found) > 50, f"only {len(found)} modules found under {ROOT}"
    return found


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _in_kit(module: str) -> bool:
    return any(module == kit or module.startswith(kit + ".") for kit in TEST_KITS)


def _imported(tree: ast.AST, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parent = module.split(".")[: -node.level] if module.count(".") >= node.level - 1 else []
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_no_module_is_longer_than_the_limit() -> None:
    long = {_name(p): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_longer_than_the_limit() -> None:
    long: dict[str, int] = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long[f"{_name(path)}:{node.lineno} {node.name}"] = n
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_runtime_code_never_imports_the_test_kits() -> None:
    offenders = {}
    for path in modules():
        module = _name(path)
        if _in_kit(module):
            continue
        kits = {k for k in _imported(ast.parse(path.read_text()), module) if _in_kit(k)}
        if kits:
            offenders[module] = sorted(kits)
    assert offenders == {}, f"runtime modules importing a test kit: {offenders}"


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from .testing import x", "swarmnode.node", "swarmnode.testing"),
        ("from ..testing import x", "swarmnode.net.nodeproc", "swarmnode.testing"),
        ("import crypto.testing", "swarmnode.node", "crypto.testing"),
        ("from swarmnode.testing.nodeproc import x", "swarmnode.api", "swarmnode.testing.nodeproc"),
    ],
)
def test_the_import_scan_resolves_relative_imports(source: str, module: str, expected: str) -> None:
    imported = _imported(ast.parse(source), module)
    assert expected in imported
    assert any(_in_kit(name) for name in imported)
