"""swarmnode's public surface: `__all__` is exactly the re-exported names, each
defined in the module it claims (trio's test_exports, STYLE T1)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import swarmnode


def test_all_lists_exactly_the_explicit_re_exports() -> None:
    tree = ast.parse(Path(inspect.getfile(swarmnode)).read_text(encoding="utf-8"))
    re_exported = {
        alias.asname
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name  # the `X as X` form marks a public re-export
    }
    assert set(swarmnode.__all__) == re_exported | {"__version__"}
    assert swarmnode.__all__ == sorted(swarmnode.__all__)
    assert len(set(swarmnode.__all__)) == len(swarmnode.__all__)


def test_every_public_name_resolves_to_its_defining_module() -> None:
    for name in swarmnode.__all__:
        value = getattr(swarmnode, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        module = value.__module__
        assert module.startswith("swarmnode."), (name, module)
        assert getattr(__import__(module, fromlist=[name]), name) is value


def test_errors_form_one_hierarchy() -> None:
    errors = (swarmnode.SwarmStopped, swarmnode.MergeTimeout, swarmnode.NodeClosed, swarmnode.SwarmSetupError)
    for error in errors:
        assert issubclass(error, swarmnode.SwarmError)
