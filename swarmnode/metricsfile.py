"""``<storage_dir>/metrics.json``: one site's per-round metrics, kept across restarts.

A restarted node resumes its swarm from the ledger, but its trainer only knows the
rounds merged since the restart. `MetricsFile` loads what an earlier run recorded
and appends to it, so the file always holds every round this site saw merged: a
round recorded again (a crash between the merge and the write) replaces the earlier
entry, and earlier timings stay in front of the new ones.

Every write is atomic (a unique temporary file in the same directory, fsynced,
then renamed over the old one): the report, a live view or a crash never see half
a file. A file from another chain (the storage dir was reused) or one that does not
parse is set aside as ``metrics.json.<reason>`` with a warning, never silently merged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from .control import to_jsonable

if TYPE_CHECKING:
    from .trainer import RoundRecord, TrainingSummary

log = logging.getLogger("swarmnode.metrics")

METRICS_FILE: Final = "metrics.json"


def load_metrics(path: Path) -> dict[str, Any] | None:
    """The metrics.json at `path`, or None if there is none; raises ValueError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable metrics ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rounds", []), list):
        raise ValueError(f"{path}: not a metrics file (expected an object with a list of rounds)")
    return data


def write_json_atomically(path: Path, value: object) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(to_jsonable(value), indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@final
class MetricsFile:
    """The metrics.json of one site: earlier runs' rounds and timings plus this run's.

    `chain_id` (hex) is stored in the file; a file recorded for another chain is set aside.
    """

    def __init__(self, path: Path, *, site: str, metric: str, chain_id: str) -> None:
        self.path = path
        self.site = site
        self.metric = metric
        self.chain_id = chain_id
        self._rounds: dict[int, dict[str, Any]] = {}
        self._earlier_timings: dict[str, list[Any]] = {"rounds": [], "phases": []}
        earlier = self._load_earlier()
        if earlier is not None:
            for record in earlier.get("rounds") or []:
                if isinstance(record, Mapping) and isinstance(record.get("round"), int):
                    self._rounds[record["round"]] = dict(record)
            timings = earlier.get("timings")
            if isinstance(timings, Mapping):
                for key in self._earlier_timings:
                    if isinstance(timings.get(key), list):
                        self._earlier_timings[key] = list(timings[key])

    def _load_earlier(self) -> dict[str, Any] | None:
        try:
            earlier = load_metrics(self.path)
        except ValueError as exc:
            self._set_aside("unreadable", str(exc))
            return None
        if earlier is None:
            return None
        if earlier.get("chain_id") not in (None, self.chain_id):  # files before chain ids: this chain's
            self._set_aside(
                f"chain-{str(earlier['chain_id'])[:16]}",
                f"{self.path}: recorded for chain {str(earlier['chain_id'])[:16]}, not {self.chain_id[:16]}",
            )
            return None
        return earlier

    def _set_aside(self, reason: str, why: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.{reason}")
        os.replace(self.path, aside)
        log.warning("%s; moved it to %s and start a new one", why, aside)

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """Every recorded round, in round order."""
        return [self._rounds[n] for n in sorted(self._rounds)]

    def timings(self, current: Mapping[str, Any] | None) -> dict[str, list[Any]]:
        """Earlier runs' timings followed by `current` ({"rounds": [...], "phases": [...]})."""
        now = current or {}
        rounds = {
            int(r["round"]): r
            for r in [*self._earlier_timings["rounds"], *(now.get("rounds") or [])]
            if isinstance(r, Mapping) and isinstance(r.get("round"), int)
        }
        return {
            "rounds": [rounds[n] for n in sorted(rounds)],
            "phases": [*self._earlier_timings["phases"], *(now.get("phases") or [])],
        }

    def record_round(self, record: Mapping[str, Any], *, timings: Mapping[str, Any] | None = None) -> None:
        """Add (or replace) one merged round and rewrite the file."""
        self._rounds[int(record["round"])] = dict(record)
        self._write({"final": None}, timings)

    def finish(
        self, summary: Mapping[str, Any], *, timings: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the end of training (`TrainingSummary.to_dict()`: its rounds are merged in)."""
        for record in summary.get("rounds") or []:
            self._rounds[int(record["round"])] = dict(record)
        rest = {k: v for k, v in summary.items() if k != "rounds"}
        return self._write(rest, timings)

    def _write(self, extra: Mapping[str, Any], timings: Mapping[str, Any] | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "site": self.site,
            "chain_id": self.chain_id,
            "metric": self.metric,
            **extra,
            "rounds": self.rounds,
        }
        if timings is not None or any(self._earlier_timings.values()):
            data["timings"] = self.timings(timings)
        write_json_atomically(self.path, data)
        return data


@final
class MetricsRecorder:
    """A `swarmnode.siterun.SiteObserver` that writes metrics.json: after every merged round and
    at the end, each time with the run's `timings` so far."""

    def __init__(self, file: MetricsFile, timings: Callable[[], Mapping[str, Any]]) -> None:
        self.file = file
        self.timings = timings

    def on_status(self, status: Mapping[str, Any]) -> None:
        """The file records rounds and their timings, not every status."""

    def on_round(self, record: RoundRecord) -> None:
        self.file.record_round(record.to_dict(), timings=self.timings())

    def on_stopped(self, summary: TrainingSummary) -> None:
        self.file.finish(summary.to_dict(), timings=self.timings())
