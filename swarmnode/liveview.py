"""One table of sites for `swarmnode run` and `swarmnode testnet` (rich), or plain lines.

A row is built from a node's status (the control endpoint's JSON) and its
metrics.json (the last merged round), so the same code shows one in-process
site or N sites in other processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

from rich.table import Table

COLUMNS: Final = ("site", "state", "round", "phase", "roles", "height", "members", "peers", "local", "merged")


@final
@dataclass(frozen=True, slots=True)
class SiteRow:
    site: str
    state: str
    round: str
    phase: str
    roles: str
    height: str
    members: str
    peers: str
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

    def count(key: str) -> str:
        value = status.get(key)
        return str(len(value)) if isinstance(value, list) else "-"

    return SiteRow(
        site=site,
        state=state,
        round=str(status.get("round", "-")),
        phase=str(status.get("phase", "-")),
        roles=",".join(status.get("roles") or ()) or "-",
        height=str(status.get("height", "-")),
        members=count("members"),
        peers=count("peers"),
        local=f"{metric} {_metric(last, 'local', metric)}",
        merged=_metric(last, "merged", metric),
    )


def render(rows: Sequence[SiteRow], title: str) -> Table:
    table = Table(title=title, expand=False)
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in ("round", "height", "members", "peers") else "left")
    for row in rows:
        table.add_row(*(getattr(row, name) for name in COLUMNS))
    return table
