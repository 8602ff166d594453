"""Read-only views of a ledger: a running node's (`LiveLedger`) and a stored one.

`LiveLedger` is what code beside a running node (the trainer) may read of its
ledger: a few facts, no access to the contract's state or its transitions.

`swarmnode ledger verify` / `ledger show` read the SQLite store in the site's
storage dir (never a running node's memory), so they work whether the node runs
or not: SQLite's WAL lets a reader see every committed block while the node appends.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast, final

from consensus.contract import MERGED, Contract, MemberRecord, RoundSummary, StopRecord
from consensus.errors import StoreError
from consensus.genesis import Genesis
from consensus.store import LedgerStore, recover
from consensus.verify import ChainProblem, ChainReport, verify_chain

from .config import NodeConfig
from .control import to_jsonable
from .scaffold import SetupError, load_genesis

if TYPE_CHECKING:
    from .node import Node

LEDGER_FILE: Final = "ledger.sqlite"


@final
class LiveLedger:
    """The facts of a running node's ledger a trainer needs, read when asked (in the
    node's trio thread), never written."""

    __slots__ = ("_contract",)

    def __init__(self, contract: Contract) -> None:
        self._contract = contract

    @property
    def stopped(self) -> bool:
        """True once the swarm's stopping rule (or its last round) ended training."""
        return self._contract.stopped is not None

    @property
    def merged_rounds(self) -> int:
        """Rounds merged on the ledger so far."""
        return self._contract.state.merged_rounds

    def merged_hashes(self) -> tuple[bytes, ...]:
        """The merged model's hash of every merged round, in round order."""
        history = self._contract.history()
        return tuple(r.merged_hash for r in history if r.outcome == MERGED and r.merged_hash is not None)


def live_ledger(node: Node) -> LiveLedger:
    """`node`'s ledger, read-only."""
    return LiveLedger(node.contract)


def ledger_path(config: NodeConfig) -> Path:
    return config.node.storage_dir / LEDGER_FILE


def _open_store(config: NodeConfig, *, read_only: bool = False) -> tuple[LedgerStore, Genesis]:
    genesis = load_genesis(config.ledger.genesis)
    path = ledger_path(config)
    if not path.exists():
        raise SetupError(f"{path}: no ledger yet; has this site run (swarmnode run --config ...)?")
    try:
        store = LedgerStore.open_existing(path, read_only=read_only)
    except (StoreError, OSError, sqlite3.Error) as exc:
        raise SetupError(f"{path}: cannot open ledger ({exc})") from None
    return store, genesis


def verify_site_ledger(config: NodeConfig) -> ChainReport:
    """`verify_chain` over the site's store, plus: the store belongs to the site's genesis."""
    store, genesis = _open_store(config)
    with store:
        if store.chain_id != genesis.chain_id:
            return ChainReport(
                store.chain_id,
                0,
                0,
                None,
                (
                    ChainProblem(
                        0,
                        "chain_id",
                        f"store is chain {store.chain_id.hex()[:16]} but {config.ledger.genesis} is "
                        f"chain {genesis.chain_id.hex()[:16]}",
                    ),
                ),
            )
        return verify_chain(store, lambda: Contract(genesis))


@final
@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """The transparency record of a chain as replayed from a store."""

    chain_id: bytes
    swarm: str
    height: int
    members: tuple[MemberRecord, ...]
    rounds: tuple[RoundSummary, ...]
    stopped: StopRecord | None
    last_merged_hash: bytes | None


def read_ledger(config: NodeConfig, *, read_only: bool = False) -> LedgerRecord:
    """Replay the site's store; `read_only`: never write to it (`LedgerStore.open_existing`)."""
    store, genesis = _open_store(config, read_only=read_only)
    with store:
        if store.chain_id != genesis.chain_id:
            raise SetupError(f"{store.path}: store belongs to another chain than {config.ledger.genesis}")
        try:
            app, _ = recover(store, lambda: Contract(genesis))
        except (StoreError, ValueError) as exc:
            raise SetupError(
                f"{store.path}: cannot replay the ledger ({exc}); run `swarmnode ledger verify`"
            ) from None
        contract = cast(Contract, app)
        return LedgerRecord(
            chain_id=genesis.chain_id,
            swarm=genesis.name,
            height=contract.height,
            members=contract.members(),
            rounds=contract.transparency(),
            stopped=contract.stopped,
            last_merged_hash=contract.last_merged_hash,
        )


def ledger_json(record: LedgerRecord) -> dict[str, Any]:
    names = {m.node_id: m.name for m in record.members}
    data = cast(dict[str, Any], to_jsonable(record))
    for summary in data["rounds"]:  # names next to peer ids: what a human auditor reads
        for c in summary["contributors"]:
            c["name"] = _name_of(names, c["node_id"])
    return data


def _name_of(names: dict[Any, str], peer_id: str | None) -> str:
    if peer_id is None:
        return "-"
    for node, name in names.items():
        if node.peer_id == peer_id:
            return str(name)
    return peer_id[-8:]


def format_ledger(record: LedgerRecord) -> str:
    names = {m.node_id: m.name for m in record.members}

    def who(node: Any) -> str:
        return "-" if node is None else names.get(node, node.short)

    lines = [
        f"swarm {record.swarm!r}  chain {record.chain_id.hex()[:16]}  height {record.height}",
        "members: " + ", ".join(f"{m.name} ({m.node_id.short}, since {m.since})" for m in record.members),
    ]
    if not record.rounds:
        lines.append("no closed rounds yet")
    for r in record.rounds:
        total = sum(c.weight for c in r.contributors) or 1
        contributors = ", ".join(
            f"{who(c.node_id)} {c.weight} ({100 * c.weight / total:.0f}%)" for c in r.contributors
        )
        metric = "-" if r.median_metric is None else f"{r.median_metric:.4f}"
        merged = "-" if r.merged_hash is None else r.merged_hash.hex()[:16]
        lines.append(
            f"round {r.number}: {r.outcome}  leader {who(r.leader)}  verifier {who(r.verifier)}  "
            f"decrypt {'/'.join(who(n) for n in r.decrypt_set) or '-'}  median metric {metric}  "
            f"merged {merged}  heights {r.start_height}-{r.close_height}"
        )
        lines.append(f"  contributors: {contributors or '-'}" + (f"  note: {r.note}" if r.note else ""))
    if record.stopped is not None:
        final = record.stopped.final_model_hash
        lines.append(
            f"stopped at height {record.stopped.height}: {record.stopped.reason}; "
            f"{record.stopped.merged_rounds} merged rounds; final model "
            f"{'-' if final is None else final.hex()}"
        )
    return "\n".join(lines)


def stored_status(config: NodeConfig) -> dict[str, Any]:
    """What `swarmnode status` shows of a site whose node is not running: its stored ledger,
    read without writing to it (the node may start meanwhile, or run as another user)."""
    record = read_ledger(config, read_only=True)
    last = record.rounds[-1] if record.rounds else None
    return {
        "running": False,
        "name": config.node.name,
        "swarm": record.swarm,
        "chain_id": record.chain_id.hex(),
        "height": record.height,
        "members": [m.node_id.peer_id for m in record.members],
        "names": {m.node_id.peer_id: m.name for m in record.members},
        "closed_rounds": len(record.rounds),
        "merged_rounds": sum(1 for r in record.rounds if r.outcome == "merged"),
        "last_round": None if last is None else f"{last.number} {last.outcome}",
        "last_merged_hash": None if record.last_merged_hash is None else record.last_merged_hash.hex(),
        "stopped": None if record.stopped is None else record.stopped.reason,
        "ledger": str(ledger_path(config)),
    }
