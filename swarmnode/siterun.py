"""`run_site`: one site until the swarm stops, as ``swarmnode run`` runs it (async).

`run_site` loads the site's data, builds its `SwarmTrainer` and starts its node; around
them it serves the local control endpoint (`swarmnode status`) and, if ``[metrics]
prometheus`` is set, a Prometheus endpoint (`swarmnode.prometheus`), polls the node's
status every `STATUS_POLL` s (per-phase timings, log lines) and times local training and
merges (`SiteTimings`). Monitoring plugs in as `SiteObserver`s: the log lines
(`SiteLog`), the metrics file (`swarmnode.metricsfile.MetricsRecorder`) and whatever
the caller passes (the live view's `swarmnode.liveview.SiteView`, a test's own).

Files in ``<storage_dir>`` (read by `swarmnode report`):

- ``metrics.json`` (kept across restarts, see `swarmnode.metricsfile`): the trainer's
  format (``site``, ``chain_id``, ``metric``, ``rounds``: one `RoundRecord.to_dict()` per
  merged round, ``kind`` ``"statistics"`` for the
  swarm-standardisation rounds that open the ledger and ``"training"`` after
  them; at the end also ``stop_reason``, ``final_hash``, ``test``), plus
  ``timings``: ``{"rounds": [{"round", "kind", "train_s", "merge_s"}], "phases":
  [{"round", "phase", "seconds"}]}``. Phase durations are as this node observed
  them (status polled every 0.25 s).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast, final

import trio

from consensus.genesis import Genesis

from .config import NodeConfig
from .control import serve_control, to_jsonable
from .logsetup import set_log_node
from .metricsfile import METRICS_FILE, MetricsFile, MetricsRecorder
from .net.base import Transport
from .node import MergeResult, Node, open_swarm_node
from .prometheus import SiteCollector, count_libp2p_traffic, serve_prometheus
from .startup import check_node_membership
from .trainer import (
    TRAINING,
    RoundRecord,
    SwarmCallback,
    SwarmTrainer,
    TrainingSummary,
    build_local_trainer,
    default_metric,
)

if TYPE_CHECKING:
    from crypto.identity import NodeIdentity

__all__ = [
    "STATUS_POLL",
    "SiteLog",
    "SiteObserver",
    "SiteReport",
    "SiteTimings",
    "run_site",
    "stop_on_signal",
]

log = logging.getLogger("swarmnode.run")
T = TypeVar("T")
STATUS_POLL: Final = 0.25


class SiteObserver(Protocol):
    """Monitoring of a running site. `run_site` calls `on_status` in the node's trio thread,
    `on_round` and `on_stopped` in the thread that trains (a worker thread unless
    `inline_compute`), where the trainer calls its `SwarmCallback`s."""

    def on_status(self, status: Mapping[str, Any]) -> None:
        """The node's status (`to_jsonable` of `Node.status()`), every `STATUS_POLL` seconds
        and once more after training ended."""

    def on_round(self, record: RoundRecord) -> None:
        """A merged round, once the merged model is loaded and evaluated."""

    def on_stopped(self, summary: TrainingSummary) -> None:
        """Once, when the swarm stopped (the final model loaded and tested)."""


@final
@dataclass(frozen=True, eq=False, kw_only=True)
class SiteReport:
    """How one site's run ended: its node, the trainer's summary and where metrics.json is."""

    site: str
    node_id: str
    summary: TrainingSummary
    metrics_path: Path


def phase_key(status: Mapping[str, Any]) -> tuple[int, str]:
    """The (round, phase) a status shows: what a phase change changes."""
    return int(status.get("round", 0)), str(status.get("phase", ""))


@final
class SiteTimings(SwarmCallback):
    """metrics.json's ``timings`` of this run: each local training and merge (timed by the
    trainer's hooks) and each phase as this node's polled status showed it.

    The trainer's hooks run in the thread that trains, the status poll and a Prometheus
    scrape in the node's trio thread: a lock keeps each reading whole."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._merged: list[tuple[int, str]] = []  # (round, kind) of every round merged in this run
        self._train_seconds: list[float] = []  # one per local training, in order
        self._merge_seconds: dict[int, float] = {}  # by round: from the end of training to the merge
        self._phases: list[dict[str, Any]] = []
        self._phase: tuple[int, str] | None = None
        self._phase_since = 0.0
        self._train_start = self._trained_at = time.monotonic()

    def on_round_start(self, round_index: int, trainer: SwarmTrainer) -> None:
        self._train_start = time.monotonic()

    def on_trained(self, round_index: int, train_loss: float) -> None:
        self._trained_at = time.monotonic()
        with self._lock:
            self._train_seconds.append(self._trained_at - self._train_start)

    def on_merged(self, result: MergeResult, record: RoundRecord) -> None:
        with self._lock:
            self._merge_seconds[record.round] = time.monotonic() - self._trained_at
            self._merged.append((record.round, record.kind))

    def observe(self, status: Mapping[str, Any], now: float) -> None:
        """Take a status seen at `now` (trio time); a new (round, phase) ends the previous one."""
        key = phase_key(status)
        with self._lock:
            if key == self._phase:
                return
            if self._phase is not None:
                number, phase = self._phase
                self._phases.append({"round": number, "phase": phase, "seconds": now - self._phase_since})
            self._phase, self._phase_since = key, now

    def phases(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._phases)

    def training_seconds(self) -> list[float]:
        with self._lock:
            return list(self._train_seconds)

    def as_dict(self) -> dict[str, Any]:
        """``{"rounds": [{"round", "kind", "train_s", "merge_s"}], "phases": [...]}``."""
        with self._lock:
            # Statistics rounds (swarm standardisation) train nothing: train_s is None for them.
            training = [number for number, kind in self._merged if kind == TRAINING]
            train_s = dict(zip(training, self._train_seconds, strict=False))
            rounds = [
                {
                    "round": number,
                    "kind": kind,
                    "train_s": train_s.get(number),
                    "merge_s": self._merge_seconds.get(number),
                }
                for number, kind in self._merged
            ]
            return {"rounds": rounds, "phases": list(self._phases)}


@final
class SiteLog:
    """The `SiteObserver` writing a running site's log lines: each phase change, each merged
    round with its local and merged validation `metric`, the stop."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._phase: tuple[int, str] | None = None

    def on_status(self, status: Mapping[str, Any]) -> None:
        key = phase_key(status)
        if key == self._phase:
            return
        self._phase = key
        log.info(
            "round=%d phase=%s height=%s members=%d peers=%d",
            key[0],
            key[1],
            status.get("height"),
            len(status.get("members", ())),
            len(status.get("peers", ())),
        )

    def on_round(self, record: RoundRecord) -> None:
        log.info(
            "merged round=%d participants=%d weight=%d local_%s=%s merged_%s=%s hash=%s",
            record.round,
            record.participants,
            record.weight,
            self.metric,
            _fmt(record.local, self.metric),
            self.metric,
            _fmt(record.merged, self.metric),
            record.params_hash[:16],
        )

    def on_stopped(self, summary: TrainingSummary) -> None:
        log.info("stopped: %s; final model %s", summary.stop_reason, (summary.final_hash or b"").hex()[:16])


def _fmt(metrics: object, name: str) -> str:
    value = getattr(metrics, name, None)
    return "-" if value is None else f"{value:.4f}"


@final
class _ToObservers(SwarmCallback):
    """Hands the trainer's merged rounds and its stop on to the site's observers."""

    def __init__(self, observers: Sequence[SiteObserver]) -> None:
        self.observers = tuple(observers)

    def on_merged(self, result: MergeResult, record: RoundRecord) -> None:
        for observer in self.observers:
            observer.on_round(record)

    def on_stop(self, summary: TrainingSummary) -> None:
        for observer in self.observers:
            observer.on_stopped(summary)


def _take_status(node: Node, timings: SiteTimings, observers: Sequence[SiteObserver]) -> None:
    status = cast(dict[str, Any], to_jsonable(node.status()))
    timings.observe(status, trio.current_time())
    for observer in observers:
        observer.on_status(status)


async def _poll_status(node: Node, timings: SiteTimings, observers: Sequence[SiteObserver]) -> None:
    while True:
        _take_status(node, timings, observers)
        await trio.sleep(STATUS_POLL)


async def stop_on_signal(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`; on SIGINT (Ctrl-C) or SIGTERM cancel it (a structured, clean shutdown: the
    node closes its store and transport in its own `finally`) and raise KeyboardInterrupt.

    Cancelling, rather than letting trio inject KeyboardInterrupt wherever the code happens to
    be, keeps the interrupt out of the middle of a store write or a protocol step."""
    outcome: list[T] = []
    signalled: list[int] = []
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for number in signals:
                    signalled.append(number)
                    log.warning("signal %d: stopping (run again to resume)", number)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        outcome.append(await work())
        nursery.cancel_scope.cancel()
    if signalled or not outcome:
        raise KeyboardInterrupt
    return outcome[0]


def _private_storage(config: NodeConfig) -> Path:
    storage = Path(config.node.storage_dir)
    storage.mkdir(parents=True, exist_ok=True)
    os.chmod(storage, 0o700)  # key-epoch secrets and the control token live here
    return storage


async def _serve_endpoints(
    nursery: trio.Nursery,
    node: Node,
    config: NodeConfig,
    timings: SiteTimings,
    *,
    control: bool,
    libp2p: bool,
) -> None:
    """The control endpoint (if `control`) and the Prometheus one (if configured)."""
    if control:
        await nursery.start(serve_control, node, config.node.storage_dir)
    if config.metrics.prometheus is not None:
        collector = SiteCollector(
            site=config.node.name,
            status=lambda: cast(dict[str, Any], to_jsonable(node.status())),
            phases=timings.phases,
            training_seconds=timings.training_seconds,
            traffic=count_libp2p_traffic() if libp2p else None,
        )
        await nursery.start(serve_prometheus, collector, config.metrics.prometheus)


async def run_site(
    config: NodeConfig,
    *,
    genesis: Genesis | None = None,
    transport: Transport | None = None,
    identity: NodeIdentity | None = None,
    observers: Sequence[SiteObserver] = (),
    callbacks: Sequence[SwarmCallback] = (),
    control: bool = True,
    inline_compute: bool = False,
    timeout: float | None = None,
) -> SiteReport:
    """Run one site until the swarm stops (async: call it inside ``trio.run``).

    Loads the site's data per ``config.data`` (preprocessing fitted locally), checks that
    ``config.model`` is the genesis model (`genesis`: the caller's copy of
    ``config.ledger.genesis`` if it already loaded it), starts the node (libp2p per
    ``config.network`` unless `transport` is given), checks that it is a member (or has
    asked to join), trains with a merge every ``sync_every`` epochs and writes
    ``<storage_dir>/metrics.json`` after every round and at the end, after the rounds an
    earlier run of this site recorded. `control`: serve the local control endpoint.
    `observers` hear the node's status, each merged round and the stop (`SiteObserver`);
    `callbacks` are the trainer's (`SwarmCallback`).
    """
    genesis = Genesis.load(config.ledger.genesis) if genesis is None else genesis
    local, test = build_local_trainer(config, genesis)
    storage = _private_storage(config)
    metric = default_metric(genesis)
    metrics = MetricsFile(
        storage / METRICS_FILE, site=config.node.name, metric=metric, chain_id=genesis.chain_id.hex()
    )
    timings = SiteTimings()
    watchers: tuple[SiteObserver, ...] = (
        SiteLog(metric),
        MetricsRecorder(metrics, timings.as_dict),
        *observers,
    )
    trainer = SwarmTrainer.from_local_trainer(
        local, genesis, test_data=test, callbacks=(timings, *callbacks, _ToObservers(watchers))
    )
    async with (
        open_swarm_node(
            config, transport=transport, identity=identity, inline_compute=inline_compute, genesis=genesis
        ) as node,
        trio.open_nursery() as nursery,
    ):
        check_node_membership(node, config)
        set_log_node(node.node_id.peer_id)
        await _serve_endpoints(nursery, node, config, timings, control=control, libp2p=transport is None)
        nursery.start_soon(_poll_status, node, timings, watchers)
        summary = await trainer.arun(node, inline_compute=inline_compute, timeout=timeout)
        _take_status(node, timings, watchers)
        nursery.cancel_scope.cancel()
        node_id = node.node_id.peer_id
    return SiteReport(site=config.node.name, node_id=node_id, summary=summary, metrics_path=metrics.path)
