"""One table of sites for `swarmnode run` and `swarmnode testnet` (rich), or plain lines.

A row is built from a node's status (the control endpoint's JSON) and its
metrics.json (the last merged round), so the same code shows one in-process
site (its `SiteView`, fed by `swarmnode.siterun.run_site`) or N sites in other processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

from rich import box
from rich.table import Table

if TYPE_CHECKING:
    from .trainer import RoundRecord, TrainingSummary

COLUMNS: Final = ("site", "state", "round", "phase", "roles", "height", "peers", "local", "merged")
ROLE_LETTERS: Final = {"participant": "P", "leader": "L", "verifier": "V", "decryptor": "D"}


@final
@dataclass(frozen=True, slots=True)
class SiteRow:
    site: str
    state: str
    round: str
    phase: str
    roles: str
    height: str
    peers: str  # connected / other members
    local: str
    merged: str

    def plain(self) -> str:
        return " ".join(f"{name}={getattr(self, name)}" for name in COLUMNS)


def _metric(record: Mapping[str, Any] | None, part: str, metric: str) -> str:
    if record is None or not isinstance(record.get(part), Mapping):
        return "-"
    value = record[part].get(metric)
    return "-" if value is None else f"{value:.3f}"


def site_row(
    site: str, state: str, status: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None
) -> SiteRow:
    status = status or {}
    metric = str((metrics or {}).get("metric", "roc_auc"))
    rounds = (metrics or {}).get("rounds") or []
    last = rounds[-1] if rounds and isinstance(rounds[-1], Mapping) else None

    peers, members = status.get("peers"), status.get("members")
    connected = "-"
    if isinstance(peers, list) and isinstance(members, list):
        connected = f"{len(peers)}/{max(0, len(members) - 1)}"

    return SiteRow(
        site=site,
        state=state,
        round=str(status.get("round", "-")),
        phase=str(status.get("phase", "-")),
        roles="".join(ROLE_LETTERS.get(r, r[:1].upper()) for r in status.get("roles") or ()) or "-",
        height=str(status.get("height", "-")),
        peers=connected,
        local=_metric(last, "local", metric),
        merged=_metric(last, "merged", metric),
    )


@final
class SiteView:
    """A `swarmnode.siterun.SiteObserver` keeping what a view shows of one running site: its
    last status, its merged rounds (as in metrics.json) and whether it stopped."""

    def __init__(self, site: str, metric: str) -> None:
        self.site = site
        self.metric = metric
        self.status: Mapping[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []
        self.stopped = False

    def on_status(self, status: Mapping[str, Any]) -> None:
        self.status = status

    def on_round(self, record: RoundRecord) -> None:
        self.rounds.append(record.to_dict())

    def on_stopped(self, summary: TrainingSummary) -> None:
        self.stopped = True

    def row(self, state: str) -> SiteRow:
        return site_row(self.site, state, self.status, {"metric": self.metric, "rounds": self.rounds})


def render(rows: Sequence[SiteRow], title: str, metric: str = "roc_auc") -> Table:
    """Roles: P participant, L leader, V verifier, D decryptor; local/merged: last round's
    validation `metric` of the local model before the merge and of the merged model."""
    table = Table(title=title, caption=f"roles P/L/V/D: participant/leader/verifier/decryptor; "
                  f"local, merged: validation {metric}", box=box.SIMPLE_HEAD, expand=False)  # fmt: skip
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in ("round", "height", "peers") else "left")
    for row in rows:
        table.add_row(*(getattr(row, name) for name in COLUMNS))
    return table
