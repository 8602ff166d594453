"""swarmnode's public surface: `__all__` is exactly the re-exported names, each
defined in the module it claims (as trio's test_exports checks), imported lazily."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import swarmnode


def test_all_lists_exactly_the_explicit_re_exports() -> None:
    tree = ast.parse(Path(inspect.getfile(swarmnode)).read_text(encoding="utf-8"))
    re_exported = {
        alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
        if alias.asname == alias.name  # the `X as X` form marks a public re-export
    }
    assert re_exported == swarmnode._EXPORTS
    assert swarmnode.__all__ == sorted([*re_exported, "__version__"])


def test_every_public_name_resolves_to_its_defining_module() -> None:
    for name in swarmnode.__all__:
        value = getattr(swarmnode, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        module = f"swarmnode.{swarmnode._EXPORTS[name]}"
        assert value.__module__ == module, (name, value.__module__)
        assert getattr(sys.modules[module], name) is value
    assert set(swarmnode.__all__) <= set(dir(swarmnode))
    with pytest.raises(AttributeError, match="NoSuchName"):
        swarmnode.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


def test_importing_the_package_does_not_import_torch() -> None:
    check = "import sys, swarmnode; assert 'torch' not in sys.modules; print(swarmnode.__version__)"
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == swarmnode.__version__


def test_errors_form_one_hierarchy() -> None:
    errors = (swarmnode.SwarmStopped, swarmnode.MergeTimeout, swarmnode.NodeClosed, swarmnode.SwarmSetupError)
    for error in errors:
        assert issubclass(error, swarmnode.SwarmError)
