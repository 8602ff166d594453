"""An optional Prometheus endpoint for one running site (off unless configured).

``[metrics] prometheus = "127.0.0.1:9464"`` in site.toml (or ``swarmnode run --prometheus
127.0.0.1:9464``) serves ``GET /metrics`` in the Prometheus text format; port 0 takes an
ephemeral port (the bound address is logged). Every value is read from the node when
scraped, in the node's own trio thread, so a scrape never sees half a state:

- ``swarmnode_round``, ``swarmnode_height``, ``swarmnode_key_epoch``, ``swarmnode_members``,
  ``swarmnode_peers`` (connected members), ``swarmnode_stopped`` (gauges);
- ``swarmnode_phase{phase=...}``: 1 for the phase the current round is in;
- ``swarmnode_merged_rounds`` (gauge): rounds this run saw merged;
- ``swarmnode_network_sent_bytes_total`` / ``..._received_bytes_total``: bytes on this
  process's libp2p TCP connections (after encryption and multiplexing: what the link carries);
- ``swarmnode_phase_duration_seconds{phase=...}`` (summary: count and sum) and
  ``swarmnode_last_phase_duration_seconds{phase=...}``: phase durations as this node saw them;
- ``swarmnode_local_training_seconds`` (summary).

Every series carries a ``site`` label. The endpoint serves only ``/metrics`` (404 otherwise),
reads at most 8 KiB of request within 5 s, and exposes nothing that is not in ``swarmnode
status``: no data, no keys. Bind it to a loopback or an internal address; it has no auth.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from .config import ConfigError, parse_listen_address

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("swarmnode.prometheus")

METRICS_PATH: Final = "/metrics"
MAX_REQUEST_HEAD: Final = 8192
CLIENT_TIMEOUT: Final = 5.0


@final
@dataclass
class WireTraffic:
    """Bytes read and written on this process's libp2p TCP connections (a running count)."""

    sent: int = 0
    received: int = 0


_TRAFFIC: Final = WireTraffic()
_counting = False


def count_libp2p_traffic() -> WireTraffic:
    """Count every byte py-libp2p's TCP streams read and write (once per process; then free).

    Wraps ``libp2p.io.trio.TrioTCPStream.read``/``write``: every libp2p connection, direct or
    the TCP leg of a relayed one, passes through them."""
    global _counting
    if not _counting:
        from libp2p.io.trio import TrioTCPStream

        read, write = TrioTCPStream.read, TrioTCPStream.write

        async def counted_read(self: TrioTCPStream, n: int | None = None) -> bytes:
            data = await read(self, n)
            _TRAFFIC.received += len(data)
            return data

        async def counted_write(self: TrioTCPStream, data: bytes) -> None:
            await write(self, data)
            _TRAFFIC.sent += len(data)

        TrioTCPStream.read = counted_read  # type: ignore[method-assign]
        TrioTCPStream.write = counted_write  # type: ignore[method-assign]
        _counting = True
    return _TRAFFIC


@final
@dataclass(frozen=True, eq=False)  # hashed by identity: the registry keys collectors
class SiteCollector:
    """A prometheus_client collector over a site's status (`swarmnode.control.to_jsonable` of
    `Node.status()`), its observed phases (``[{"round", "phase", "seconds"}]``) and the seconds
    of each local training."""

    site: str
    status: Callable[[], Mapping[str, Any]]
    phases: Callable[[], Sequence[Mapping[str, Any]]]
    training_seconds: Callable[[], Sequence[float]]
    traffic: WireTraffic | None = None

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        labels = ["site"]

        def gauge(name: str, doc: str, value: object) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric([self.site], float(value) if isinstance(value, int | float) else float("nan"))
            return family

        yield gauge("swarmnode_round", "Current round number", status.get("round"))
        yield gauge("swarmnode_height", "Ledger height", status.get("height"))
        yield gauge("swarmnode_key_epoch", "Current key epoch", status.get("key_epoch"))
        yield gauge("swarmnode_members", "Members on the ledger", len(status.get("members") or ()))
        yield gauge("swarmnode_peers", "Connected members", len(status.get("peers") or ()))
        yield gauge("swarmnode_stopped", "1 once the swarm stopped", int(bool(status.get("stopped"))))
        phase = GaugeMetricFamily(
            "swarmnode_phase", "1 for the current round's phase", labels=["site", "phase"]
        )
        phase.add_metric([self.site, str(status.get("phase", ""))], 1.0)
        yield phase
        history = status.get("history") or ()
        merged = sum(1 for r in history if isinstance(r, Mapping) and r.get("outcome") == "merged")
        yield gauge("swarmnode_merged_rounds", "Rounds merged on the ledger", merged)
        if self.traffic is not None:
            for direction, value in (("sent", self.traffic.sent), ("received", self.traffic.received)):
                counter = CounterMetricFamily(
                    f"swarmnode_network_{direction}_bytes", f"Bytes {direction} on libp2p TCP", labels=labels
                )
                counter.add_metric([self.site], float(value))
                yield counter
        yield from self._timings()

    def _timings(self) -> Iterator[Metric]:
        totals: dict[str, tuple[int, float]] = {}
        last: dict[str, float] = {}
        for p in self.phases():
            name, seconds = str(p.get("phase")), p.get("seconds")
            if isinstance(seconds, int | float):
                count, total = totals.get(name, (0, 0.0))
                totals[name] = (count + 1, total + float(seconds))
                last[name] = float(seconds)
        summary = SummaryMetricFamily(
            "swarmnode_phase_duration_seconds", "Phase durations this node observed", labels=["site", "phase"]
        )
        latest = GaugeMetricFamily(
            "swarmnode_last_phase_duration_seconds",
            "Duration of the last finished phase",
            labels=["site", "phase"],
        )
        for name, (count, total) in sorted(totals.items()):
            summary.add_metric([self.site, name], count_value=count, sum_value=total)
            latest.add_metric([self.site, name], last[name])
        yield summary
        yield latest
        trainings = list(self.training_seconds())
        training = SummaryMetricFamily(
            "swarmnode_local_training_seconds", "Seconds of each local training", labels=["site"]
        )
        training.add_metric([self.site], count_value=len(trainings), sum_value=sum(trainings))
        yield training


def _response(status: str, body: bytes, content_type: str, *, head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> bytes:
    data = b""
    with trio.move_on_after(CLIENT_TIMEOUT):
        while b"\r\n\r\n" not in data and len(data) <= MAX_REQUEST_HEAD:
            chunk = await stream.receive_some(MAX_REQUEST_HEAD)
            if not chunk:
                break
            data += chunk
    parts = data.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) != 3 or b"\r\n\r\n" not in data:
        return _response("400 Bad Request", b"bad request\n", "text/plain")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET only\n", "text/plain")
    if target != METRICS_PATH:
        return _response("404 Not Found", b"see /metrics\n", "text/plain", head=method == "HEAD")
    return _response("200 OK", generate_latest(registry), CONTENT_TYPE_LATEST, head=method == "HEAD")


async def serve_prometheus(
    collector: SiteCollector,
    address: str,
    *,
    task_status: TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `collector` at ``http://address/metrics`` until cancelled; reports (host, port)."""
    host, port = parse_listen_address(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(f"metrics.prometheus: cannot listen on {address}: {exc.strerror or exc}") from None
    bound = (host, int(listeners[0].socket.getsockname()[1]))

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(await _answer(stream, registry))

    log.info("prometheus endpoint at http://%s:%d%s", *bound, METRICS_PATH)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
