"""The BFT engine in consensus/ knows the swarm application only through `consensus.app`.

As CometBFT and its ABCI application: the engine (core, votes, store, sync, blocks, ...)
orders opaque transactions and calls the `Application` interface; the contract, its
transactions and the genesis rules are the application. The test parses every engine
module's imports (anywhere in the module, also inside functions and `TYPE_CHECKING`
blocks) and fails if one names an application module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import consensus

CONSENSUS = Path(__file__).resolve().parents[2] / "consensus"

ENGINE = ("blocks", "core", "mempool", "messages", "simnet", "simulator", "store", "verify", "votes")
# What both sides share: the interface the engine calls, and its error types.
INTERFACE = ("app", "errors")
# The swarm application lives outside consensus/ too.
APPLICATION_PACKAGES = ("swarmnode", "models")


def application_modules() -> set[str]:
    """Every module of consensus/ that is neither engine nor interface (the contract and its
    parts, transactions, genesis, decrypt_phase, and any module added to the application)."""
    names = {p.stem for p in CONSENSUS.glob("*.py")} - {"__init__"}
    return names - set(ENGINE) - set(INTERFACE)


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute dotted names of what `source` (the module ``consensus.<module>``) imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                package = f"consensus.{module}".split(".")[: -node.level]
                base = ".".join([*package, *([node.module] if node.module else [])])
            found.add(base)
            # `from . import contract` imports a module by its alias name; `from consensus
            # import Contract` the module the package's lazy names load it from.
            found.update(f"{base}.{alias.name}" for alias in node.names)
            if base == "consensus":
                found.update(
                    f"consensus.{consensus._MODULE_OF[a.name]}"
                    for a in node.names
                    if a.name in consensus._MODULE_OF
                )
    return found


def forbidden(imported: set[str]) -> set[str]:
    application = {f"consensus.{name}" for name in application_modules()}
    return {
        name
        for name in imported
        if any(name == a or name.startswith(f"{a}.") for a in (*application, *APPLICATION_PACKAGES))
    }


def test_the_engine_and_application_modules_are_the_ones_on_disk() -> None:
    on_disk = {p.stem for p in CONSENSUS.glob("*.py")}
    assert set(ENGINE) <= on_disk, f"engine modules missing from {CONSENSUS}"
    assert set(INTERFACE) <= on_disk
    assert {"contract", "transactions", "genesis", "decrypt_phase"} <= application_modules()


@pytest.mark.parametrize("module", ENGINE)
def test_engine_module_imports_no_application_module(module: str) -> None:
    source = (CONSENSUS / f"{module}.py").read_text()
    bad = forbidden(imported_modules(source, module))
    assert not bad, (
        f"consensus/{module}.py imports the application ({', '.join(sorted(bad))}): the engine "
        "reaches the swarm application only through consensus/app.py's Application; if the "
        "module is part of the engine, add it to ENGINE in this test"
    )


@pytest.mark.parametrize(
    "source",
    [
        "from .contract import Contract",
        "from . import genesis",
        "from consensus.transactions import Phase",
        "import consensus.decrypt_phase",
        "def f():\n    from .key_epochs import make_epoch",
        "if TYPE_CHECKING:\n    from .contract_state import Round",
        "from swarmnode.node import Node",
        "from consensus import Contract",
        "from . import Genesis",
    ],
)
def test_the_check_catches_each_form_of_import(source: str) -> None:
    assert forbidden(imported_modules(source, "core"))


def test_the_check_allows_the_interface_and_the_engine() -> None:
    source = "from .app import Application\nfrom .blocks import Block\nfrom crypto.identity import NodeId"
    assert not forbidden(imported_modules(source, "core"))
