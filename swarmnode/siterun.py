"""`swarmnode run`: one site until the swarm stops, with a control endpoint and a view.

`run_site_monitored` is the trainer's `run_site` plus what the command line
needs around it: the local control endpoint (`swarmnode status`), a
`SiteMonitor` that polls the node's status (for the live view, plain log
lines and per-phase timings), timing of local training and, if ``[metrics]
prometheus`` is set, a Prometheus endpoint (`swarmnode.prometheus`).

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import trio

from consensus.genesis import Genesis
from models.training import LocalObjective

from .config import NodeConfig
from .control import serve_control, to_jsonable
from .logsetup import set_log_node
from .metricsfile import METRICS_FILE, MetricsFile
from .net.base import Transport
from .node import MergeResult, Node, open_swarm_node
from .prometheus import SiteCollector, count_libp2p_traffic, serve_prometheus
from .startup import check_node_membership
from .trainer import (
    LocalLearner,
    RoundRecord,
    SwarmCallback,
    SwarmTrainer,
    TrainingSummary,
    build_local_trainer,
    default_metric,
)

log = logging.getLogger("swarmnode.run")
T = TypeVar("T")
STATUS_POLL: Final = 0.25


@dataclass
class SiteMonitor:
    """What a view shows about one running site; updated from the node and the trainer."""

    site: str
    metric: str
    status: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: dict[int, float] = field(default_factory=dict)  # by sync-point index
    merge_seconds: dict[int, float] = field(default_factory=dict)  # by round
    phases: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    _phase_key: tuple[int, str] | None = None
    _phase_since: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, status: dict[str, Any], now: float) -> tuple[int, str] | None:
        """Record a status; returns the new (round, phase) if it changed."""
        key = (int(status.get("round", 0)), str(status.get("phase", "")))
        with self._lock:
            self.status = status
            if key == self._phase_key:
                return None
            if self._phase_key is not None:
                self.phases.append(
                    {
                        "round": self._phase_key[0],
                        "phase": self._phase_key[1],
                        "seconds": now - self._phase_since,
                    }
                )
            self._phase_key, self._phase_since = key, now
        return key

    def timings(self) -> dict[str, Any]:
        with self._lock:
            # Statistics rounds (swarm standardisation) train nothing: train_s is None for them.
            training = [rec["round"] for rec in self.records if rec.get("kind", "training") == "training"]
            index = {r: i for i, r in enumerate(training, start=1)}
            rounds = [
                {
                    "round": rec["round"],
                    "kind": rec.get("kind", "training"),
                    "train_s": self.train_seconds.get(index[rec["round"]]) if rec["round"] in index else None,
                    "merge_s": self.merge_seconds.get(rec["round"]),
                }
                for rec in self.records
            ]
            return {"rounds": rounds, "phases": list(self.phases)}


class _TimedLearner:
    """A `LocalLearner` that measures how long each local training takes."""

    def __init__(self, inner: LocalLearner, monitor: SiteMonitor) -> None:
        self._inner = inner
        self._monitor = monitor
        self._count = 0
        self.trained_at = time.monotonic()

    @property
    def num_samples(self) -> int:
        return self._inner.num_samples

    def train(self, amount: int, unit: str, objective: LocalObjective | None = None) -> float:
        start = time.monotonic()
        loss = self._inner.train(amount, unit, objective)
        self.trained_at = time.monotonic()
        self._count += 1
        self._monitor.train_seconds[self._count] = self.trained_at - start
        return loss

    def parameters(self) -> Any:
        return self._inner.parameters()

    def load(self, parameters: Any) -> None:
        self._inner.load(parameters)

    def validate(self) -> Any:
        return self._inner.validate()

    def test(self) -> Any:
        return self._inner.test()

    def swarm_moments(self) -> Any:
        # Swarm standardisation is optional for a learner (see SwarmTrainer): pass it through.
        moments_of = getattr(self._inner, "swarm_moments", None)
        return moments_of() if callable(moments_of) else None

    def use_pooled_moments(self, pooled: Any) -> None:
        self._inner.use_pooled_moments(pooled)  # type: ignore[attr-defined]


class _Recorder(SwarmCallback):
    """Writes metrics.json (the trainer's format plus timings) after every round and at the end."""

    def __init__(self, file: MetricsFile, monitor: SiteMonitor, learner: _TimedLearner) -> None:
        self.file = file
        self.monitor = monitor
        self.learner = learner

    def on_merged(self, result: MergeResult, record: RoundRecord) -> None:
        self.monitor.merge_seconds[record.round] = time.monotonic() - self.learner.trained_at
        self.monitor.records.append(record.to_dict())
        log.info(
            "merged round=%d participants=%d weight=%d local_%s=%s merged_%s=%s hash=%s",
            record.round,
            record.participants,
            record.weight,
            self.monitor.metric,
            _fmt(record.local, self.monitor.metric),
            self.monitor.metric,
            _fmt(record.merged, self.monitor.metric),
            record.params_hash[:16],
        )
        self.file.record_round(record.to_dict(), timings=self.monitor.timings())

    def on_stop(self, summary: TrainingSummary) -> None:
        self.monitor.final = self.file.finish(summary.to_dict(), timings=self.monitor.timings())
        log.info("stopped: %s; final model %s", summary.stop_reason, (summary.final_hash or b"").hex()[:16])


def _fmt(metrics: object, name: str) -> str:
    value = getattr(metrics, name, None)
    return "-" if value is None else f"{value:.4f}"


async def _watch(node: Node, monitor: SiteMonitor) -> None:
    while True:
        status = to_jsonable(node.status())
        changed = monitor.observe(status, trio.current_time())
        if changed is not None:
            log.info(
                "round=%d phase=%s height=%s members=%d peers=%d",
                changed[0],
                changed[1],
                status.get("height"),
                len(status.get("members", ())),
                len(status.get("peers", ())),
            )
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


def _collector(node: Node, monitor: SiteMonitor, *, libp2p: bool) -> SiteCollector:
    return SiteCollector(
        site=monitor.site,
        status=lambda: to_jsonable(node.status()),
        phases=lambda: list(monitor.phases),
        training_seconds=lambda: list(monitor.train_seconds.values()),
        traffic=count_libp2p_traffic() if libp2p else None,
    )


async def run_site_monitored(
    config: NodeConfig,
    *,
    monitor: SiteMonitor | None = None,
    transport: Transport | None = None,
    identity: Any = None,
    inline_compute: bool = False,
    control: bool = True,
    timeout: float | None = None,
    started: Callable[[Node], None] | None = None,
) -> dict[str, Any]:
    """Run one site until the swarm stops; returns the final metrics.json content."""
    genesis = Genesis.load(config.ledger.genesis)
    local, test = build_local_trainer(config, genesis)
    storage = Path(config.node.storage_dir)
    storage.mkdir(parents=True, exist_ok=True)
    os.chmod(storage, 0o700)  # key-epoch secrets and the control token live here
    if monitor is None:
        monitor = SiteMonitor(site=config.node.name, metric=default_metric(genesis))
    base = SwarmTrainer.from_local_trainer(local, genesis, test_data=test)
    learner = _TimedLearner(base.learner, monitor)
    metrics = MetricsFile(
        storage / METRICS_FILE, site=config.node.name, metric=monitor.metric, chain_id=genesis.chain_id.hex()
    )
    recorder = _Recorder(metrics, monitor, learner)
    trainer = SwarmTrainer(learner, genesis, callbacks=(recorder,))
    async with (
        open_swarm_node(
            config, transport=transport, identity=identity, inline_compute=inline_compute, genesis=genesis
        ) as node,
        trio.open_nursery() as nursery,
    ):
        check_node_membership(node, config)
        set_log_node(node.node_id.peer_id)
        if control:
            await nursery.start(serve_control, node, storage)
        if config.metrics.prometheus is not None:
            await nursery.start(serve_prometheus, _collector(node, monitor, libp2p=transport is None),
                                config.metrics.prometheus)  # fmt: skip
        nursery.start_soon(_watch, node, monitor)
        if started is not None:
            started(node)
        await trainer.arun(node, inline_compute=inline_compute, timeout=timeout)
        monitor.observe(to_jsonable(node.status()), trio.current_time())
        nursery.cancel_scope.cancel()
    assert monitor.final is not None
    return monitor.final
