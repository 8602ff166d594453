"""The embedding API: a swarm node inside an ordinary, synchronous Python program.

swarmnode is async (trio) inside; this module is its one synchronous entry
point. `SwarmNode` runs `open_swarm_node` on a trio event loop in a
background thread and turns the node's coroutines into blocking calls::

    with SwarmNode.from_file("site.toml") as node:
        for epoch in range(1, 1000):
            train_one_epoch(model)
            if epoch % node.sync_every == 0:
                try:
                    node.merge(model, num_samples=len(dataset))   # blocks; loads the merged params
                except SwarmStopped:
                    break

How the thread is kept honest:
- Every call into the loop (`merge`, `status`, `wait_stopped`) runs inside a
  cancel scope the node's host task owns: if the node fails or is closed while
  a call waits, the call is cancelled and the caller gets a `SwarmError` naming
  the cause instead of hanging.
- Startup errors (a bad config, an unreadable genesis or key file, a transport
  that cannot listen) are raised from the constructor, as they were raised in
  the loop, and the loop thread is gone by then.
- `close()` (also on leaving ``with``) asks the node to shut down, waits at most
  `close_timeout` seconds before cancelling it, then joins the thread within
  the same bound; it raises `SwarmError` if the thread would not stop.

`local_swarm` hosts several nodes on one background loop over a
`MemoryNetwork` (a whole swarm in one process, for examples and tests), and
`create_local_swarm` writes the keys, genesis and configs such a swarm needs.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, final

import numpy as np
import numpy.typing as npt
import trio

from consensus.genesis import (
    FoundingMember,
    Genesis,
    JoinPolicy,
    MergeParam,
    StoppingRule,
    Timeouts,
    TrainingParams,
)
from crypto.identity import NodeId, NodeIdentity
from models.flatten import flatten, layout_of, unflatten
from models.preprocess import PreprocessConfig
from models.spec import ModelSpec
from models.structure import spec_structure
from models.training import TrainConfig

from .config import DataSection, LedgerSection, NodeConfig, NodeSection, SwarmSection
from .model_identity import check_module
from .net.base import Transport
from .net.memory import NO_FAULTS, LinkFaults, MemoryNetwork, open_memory_network
from .node import (
    MergeResult,
    Node,
    NodeClosed,
    NodeStatus,
    StopInfo,
    SwarmError,
    SwarmStopped,
    open_swarm_node,
)
from .sitedata import SiteData, plan_site_data

if TYPE_CHECKING:
    from torch import nn
    from trio_typing import TaskStatus

__all__ = ["NodeOpener", "SwarmNode", "create_local_swarm", "local_swarm"]

log = logging.getLogger("swarmnode.api")

T = TypeVar("T")
FloatVector = npt.NDArray[np.float32]

# open_swarm_node's shape; tests and tools may pass another opener with the same signature.
NodeOpener = Callable[..., AbstractAsyncContextManager[Node]]

DEFAULT_STARTUP_TIMEOUT: Final = 300.0
DEFAULT_CLOSE_TIMEOUT: Final = 30.0

# Nodes not closed by their owner are closed at interpreter exit (their loop threads are
# daemons so that a hung loop cannot block exit; this gives them a clean shutdown first).
_OPEN_NODES: set[SwarmNode] = set()  # strong: an unclosed node's thread runs on


@atexit.register
def _close_open_nodes() -> None:
    for node in list(_OPEN_NODES):
        try:
            node.close()
        except Exception as exc:  # at exit there is no caller left to raise to
            log.warning("closing %r at exit failed: %r", node, exc)


def _unwrap(exc: BaseException) -> BaseException:
    """A nursery's lone exception as itself (trio wraps everything leaving a nursery)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@final
class _Hosted(Generic[T]):
    """One async context (a node, a memory network) held open by a task on the loop."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.value: T | None = None
        self.release = trio.Event()  # set: leave the context
        self.done = trio.Event()  # set: the context was left (for whatever reason)
        self.failure: BaseException | None = None  # why the context ended on its own
        self.ended = False
        self.host_scope = trio.CancelScope()
        self.calls: set[trio.CancelScope] = set()

    def get(self) -> T:
        if self.value is None or self.ended:
            raise self.ended_error()
        return self.value

    def ended_error(self) -> NodeClosed:
        if self.failure is not None:
            error = NodeClosed(f"{self.what} failed: {type(self.failure).__name__}: {self.failure}")
            error.__cause__ = self.failure
            return error
        return NodeClosed(f"{self.what} is closed")


@final
class _LoopThread:
    """A trio event loop in a background thread that hosts async contexts.

    Each hosted context lives in its own task (trio requires a nursery to be left
    by the task that entered it), started with `nursery.start` so that errors
    raised while entering reach the thread that asked.
    """

    def __init__(self, name: str, *, startup_timeout: float) -> None:
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._crash: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(startup_timeout) or self._token is None:
            raise SwarmError(f"the swarmnode event loop did not start: {self._crash!r}")

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by close(); a thread has no one else to raise to
            self._crash = _unwrap(exc)
            log.error("swarmnode event loop crashed: %r", self._crash)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- calls from other threads ------------------------------------------------------

    def _run(self, afn: Callable[[], Awaitable[T]]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("SwarmNode's blocking methods cannot be called from its own event loop")
        try:
            return trio.from_thread.run(afn, trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled):
            raise NodeClosed("the swarmnode event loop has stopped") from self._crash

    def host(
        self, what: str, open_context: Callable[[], AbstractAsyncContextManager[T]], *, timeout: float
    ) -> _Hosted[T]:
        """Enter `open_context()` on the loop; raise what entering raised (or a SwarmError
        if it took longer than `timeout` seconds)."""
        hosted: _Hosted[T] = _Hosted(what)

        async def start() -> None:
            assert self._nursery is not None
            with trio.move_on_after(timeout):
                await self._nursery.start(self._hold, hosted, open_context)
                return
            raise SwarmError(f"{what} did not start within {timeout:g} s")

        try:
            self._run(start)
        except BaseException as exc:
            raise _unwrap(exc) from None
        return hosted

    async def _hold(
        self,
        hosted: _Hosted[T],
        open_context: Callable[[], AbstractAsyncContextManager[T]],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        try:
            with hosted.host_scope:
                async with open_context() as value:
                    hosted.value = value
                    started = True
                    task_status.started()
                    await hosted.release.wait()
        except Exception as exc:
            if not started:
                raise _unwrap(exc) from None
            # The context ended by itself (the node crashed): record it for the callers and
            # keep the loop alive for anything else it hosts.
            hosted.failure = _unwrap(exc)
            log.error("%s failed: %r", hosted.what, hosted.failure)
        finally:
            hosted.ended = True
            for scope in list(hosted.calls):
                scope.cancel()
            hosted.done.set()

    def call(self, hosted: _Hosted[Any], afn: Callable[[], Awaitable[T]]) -> T:
        """Run `afn` on the loop; cancelled with a SwarmError once `hosted` ends."""

        async def guarded() -> T:
            if hosted.ended:
                raise hosted.ended_error()
            with trio.CancelScope() as scope:
                hosted.calls.add(scope)
                try:
                    return await afn()
                finally:
                    hosted.calls.discard(scope)
            raise hosted.ended_error()

        return self._run(guarded)

    def call_sync(self, hosted: _Hosted[Any], fn: Callable[[], T]) -> T:
        async def run() -> T:
            if hosted.ended:
                raise hosted.ended_error()
            return fn()

        return self._run(run)

    def release(self, hosted: _Hosted[Any], timeout: float) -> None:
        """Leave the hosted context: gracefully within `timeout`, then by cancelling it."""

        async def leave() -> None:
            hosted.release.set()
            with trio.move_on_after(timeout):
                await hosted.done.wait()
                return
            log.warning("%s did not close within %g s; cancelling it", hosted.what, timeout)
            hosted.host_scope.cancel()
            await hosted.done.wait()

        if self.alive:
            with suppress(SwarmError):  # the loop already stopped: nothing left to leave
                self._run(leave)

    def close(self, timeout: float) -> None:
        """Stop the loop (cancelling whatever it still hosts) and join the thread."""
        if self.alive and self._stop is not None:
            stop = self._stop
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise SwarmError(f"the swarmnode event loop thread did not stop within {timeout:g} s")


@final
class SwarmNode:
    """A swarm node running in a background thread; blocking, thread-safe methods.

    ``SwarmNode(config)`` starts the node (identity from ``config.node.key_file``,
    the network from ``config.network``) and returns once it runs; errors while
    starting are raised here. Use it as a context manager or call `close()`.

    transport:      a function returning a `Transport` for this node; it is called
                    on the node's event loop (a transport belongs to one loop).
                    Default: libp2p as configured.
    identity:       the node key; default: loaded from ``config.node.key_file``.
    inline_compute: run the node's crypto on its event loop instead of worker threads.
    opener:         the async context manager factory that runs the node;
                    `open_swarm_node` unless a test passes another.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        transport: Callable[[], Transport] | None = None,
        identity: NodeIdentity | None = None,
        inline_compute: bool = False,
        opener: NodeOpener = open_swarm_node,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        _loop: _LoopThread | None = None,
    ) -> None:
        self.config: Final = config
        self.genesis: Final = Genesis.load(config.ledger.genesis)  # fail early, with the file's name
        from .trainer import check_local_epochs

        check_local_epochs(self.genesis, config.training.epochs, str(config.source or config.node.name))
        self.close_timeout: Final = close_timeout
        self._merge_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._owns_loop = _loop is None
        self._loop = (
            _loop
            if _loop is not None
            else _LoopThread(f"swarmnode-{config.node.name}", startup_timeout=startup_timeout)
        )

        @asynccontextmanager
        async def open_node() -> AsyncIterator[Node]:
            chosen = transport() if transport is not None else None
            async with opener(
                config,
                transport=chosen,
                identity=identity,
                inline_compute=inline_compute,
                genesis=self.genesis,
            ) as node:
                yield node

        try:
            self._hosted: _Hosted[Node] = self._loop.host(
                f"swarm node {config.node.name!r}", open_node, timeout=startup_timeout
            )
        except BaseException:
            if self._owns_loop:
                self._loop.close(close_timeout)
            raise
        self.node_id: Final = self._hosted.get().node_id
        _OPEN_NODES.add(self)

    @classmethod
    def from_file(cls, path: str | Path, overrides: Sequence[str] = ()) -> SwarmNode:
        """Start the node configured by a ``site.toml`` (dotted `overrides` as in the CLI)."""
        return cls(NodeConfig.load(path, overrides))

    @property
    def sync_every(self) -> int:
        """Local epochs (or steps, per ``genesis.training.sync_unit``) between merges."""
        return self.genesis.training.sync_every

    # -- the blocking API ----------------------------------------------------------------

    def merge(
        self,
        model_or_params: nn.Module | FloatVector,
        num_samples: int,
        *,
        val_metric: float | None = None,
        timeout: float | None = None,
    ) -> MergeResult:
        """A sync point: offer this site's parameters and block until the round's merge.

        `model_or_params` is a torch module (flattened with `models.layout_of`; the
        merged parameters are loaded back into it in place) or a 1-D float32 vector. A
        module whose structure is not the genesis's (`swarmnode.model_identity`) raises
        `models.StructureMismatch` naming the differences; a vector is checked for its length.
        The merge weight is ``num_samples * config.swarm.weightage``; `val_metric` is
        this site's validation metric for the stopping rule.

        Raises `SwarmStopped` once the swarm has stopped training (its ``final``
        merged model, if any, is loaded into a module first), `MergeTimeout` after
        `timeout` (default ``config.swarm.merge_timeout``) seconds, `SwarmError` if
        the node failed or was closed.
        """
        if isinstance(model_or_params, np.ndarray):
            if model_or_params.dtype != np.float32 or model_or_params.ndim != 1:
                raise TypeError(
                    "parameters must be a 1-D float32 vector, got "
                    f"{model_or_params.dtype} of shape {model_or_params.shape}"
                )
            vector: FloatVector = model_or_params
            module = None
        else:
            module = model_or_params
            check_module(self.genesis, module, f"{self.config.node.name}: the model offered to merge()")
            layout = layout_of(module)
            vector = flatten(module, layout)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not self._merge_lock.acquire(blocking=False):
            raise RuntimeError("another thread is already in merge() on this node")
        try:
            node = self._hosted.get() if not self._closed else None
            if node is None:
                raise self._hosted.ended_error()

            async def merge() -> MergeResult:
                return await node.merge(vector, num_samples, val_metric=val_metric, timeout=timeout)

            try:
                result = self._loop.call(self._hosted, merge)
            except SwarmStopped as stop:
                if module is not None and stop.final is not None:
                    unflatten(module, stop.final.parameters, layout)
                raise
        finally:
            self._merge_lock.release()
        if module is not None:
            unflatten(module, result.parameters, layout)
        return result

    def status(self) -> NodeStatus:
        """The node's current state (membership, round, phase, history)."""
        self._check_open()
        return self._loop.call_sync(self._hosted, lambda: self._hosted.get().status())

    def wait_stopped(self, timeout: float | None = None) -> StopInfo:
        """Block until the swarm has stopped training; `trio.TooSlowError` after `timeout`."""
        self._check_open()

        async def wait() -> StopInfo:
            node = self._hosted.get()
            if timeout is None:
                return await node.wait_stopped()
            with trio.fail_after(timeout):
                return await node.wait_stopped()

        return self._loop.call(self._hosted, wait)

    def latest_model(self, timeout: float = 60.0) -> MergeResult | None:
        """The latest merged model on the ledger (fetched by its hash if this node lacks
        it, e.g. after joining), or None before the first merge. Nothing is loaded."""
        self._check_open()

        async def latest() -> MergeResult | None:
            return await self._hosted.get().latest_model(timeout=timeout)

        return self._loop.call(self._hosted, latest)

    def _check_open(self) -> None:
        if self._closed:
            raise self._hosted.ended_error()

    # -- lifetime ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """False once closed or failed."""
        return not self._closed and not self._hosted.ended

    def close(self) -> None:
        """Shut the node down and, if it has its own loop, stop and join the thread (bounded)."""
        with self._close_lock:  # e.g. the owner and the atexit hook at once
            if self._closed:
                return
            self._closed = True
            _OPEN_NODES.discard(self)
            self._loop.release(self._hosted, self.close_timeout)
            if self._owns_loop:
                self._loop.close(self.close_timeout)

    def __enter__(self) -> SwarmNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed"
        return f"<SwarmNode {self.config.node.name!r} {self.node_id.short} {state}>"


# -- a whole swarm in one process ------------------------------------------------------


def create_local_swarm(
    directory: str | Path,
    n_sites: int,
    *,
    model: ModelSpec,
    data: SiteData | Sequence[SiteData] | None = None,
    label_column: str | None = None,
    positive_class: str | None = None,
    min_peers: int = 2,
    max_rounds: int = 3,
    sync_every: int = 1,
    merge_method: str = "mean",
    merge_params: Mapping[str, float] | None = None,
    server_optimizer: str = "none",
    server_params: Mapping[str, float] | None = None,
    secure: bool = True,
    timeouts: Timeouts | None = None,
    training: TrainConfig | None = None,
    preprocess: PreprocessConfig | None = None,
    weightages: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[NodeConfig, ...]:
    """Write keys, one genesis and `n_sites` configs for a local swarm under `directory`.

    Site i is named ``site-<i>``, keeps its key at ``site-<i>/node.key`` and its
    state in ``site-<i>/state``; the genesis (``genesis.cbor``) lists every site as
    a founding member and fixes `model`'s spec hash and the training rules (`merge_method`
    and `merge_params` from `models.rules`, e.g. ``"fedprox", {"mu": 0.1}``; `server_optimizer`
    and `server_params` from `models.optimizers`, e.g. ``"fedadam", {"tau": 0.01}``). Meant
    for `local_swarm` and examples: the sites have no network addresses.

    `data`: each site's data for `swarmnode.trainer.build_local_trainer`, one for all sites or
    one per site; the genesis then records their table and statistics rounds (`preprocess`);
    None: the sites bring their own data and training loop (`swarmnode.sitedata.plan_site_data`).
    """
    if n_sites < 1:
        raise ValueError("n_sites must be >= 1")
    if weightages is not None and len(weightages) != n_sites:
        raise ValueError(f"weightages must list {n_sites} values, got {len(weightages)}")
    root = Path(directory).resolve()
    sites = [root / f"site-{i}" for i in range(n_sites)]
    identities = [_new_site_key(site) for site in sites]
    preprocess = preprocess if preprocess is not None else PreprocessConfig()
    where = {"label_column": label_column, "positive_class": positive_class}
    sources, schema, statistics_rounds = plan_site_data(data, sites, model, preprocess, **where)
    genesis = Genesis(
        name="local-swarm",
        members=tuple(FoundingMember(name=f"site-{i}", node_id=n.node_id) for i, n in enumerate(identities)),
        training=TrainingParams(
            model_spec_hash=model.spec_hash(),
            model_structure=spec_structure(model),
            merge_method=merge_method,
            merge_params=tuple(MergeParam(name=k, value=v) for k, v in (merge_params or {}).items()),
            server_optimizer=server_optimizer,
            server_params=tuple(MergeParam(name=k, value=v) for k, v in (server_params or {}).items()),
            secure=secure,
            min_peers=min_peers,
            sync_every=sync_every,
            timeouts=timeouts if timeouts is not None else Timeouts(),
            stopping=StoppingRule(max_rounds=max_rounds, statistics_rounds=statistics_rounds),
        ),
        join_policy=JoinPolicy(),
        data=schema,
    )
    genesis.save(root / "genesis.cbor")
    return tuple(
        NodeConfig(
            node=NodeSection(name=site.name, key_file=site / "node.key", storage_dir=site / "state"),
            data=DataSection(
                source=source, preprocess=preprocess, label_column=label_column, positive_class=positive_class
            ),
            model=model,
            training=training if training is not None else TrainConfig(),
            swarm=SwarmSection(weightage=1 if weightages is None else weightages[i], seed=seed + i),
            ledger=LedgerSection(genesis=root / "genesis.cbor"),
        )
        for i, (site, source) in enumerate(zip(sites, sources, strict=True))
    )


def _new_site_key(site: Path) -> NodeIdentity:
    site.mkdir(parents=True, exist_ok=True)
    identity = NodeIdentity.generate()
    identity.save(site / "node.key")
    return identity


@contextmanager
def local_swarm(
    configs: Sequence[NodeConfig],
    *,
    seed: int = 0,
    faults: LinkFaults = NO_FAULTS,
    inline_compute: bool = False,
    opener: NodeOpener = open_swarm_node,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> Iterator[tuple[SwarmNode, ...]]:
    """Run one `SwarmNode` per config in this process, all on one background event
    loop and talking over a seeded `MemoryNetwork` (with `faults`), in real time.

    Each node's identity is read from its ``config.node.key_file``. Give each
    node to its own thread to train; leaving the block closes every node and
    joins the loop thread.
    """
    loop = _LoopThread("swarmnode-local-swarm", startup_timeout=startup_timeout)
    nodes: list[SwarmNode] = []
    try:
        network: _Hosted[MemoryNetwork] = loop.host(
            "memory network", lambda: open_memory_network(seed, faults), timeout=startup_timeout
        )
        for config in configs:
            identity = NodeIdentity.load(config.node.key_file)

            def transport(node_id: NodeId = identity.node_id) -> Transport:
                return network.get().transport(node_id)

            nodes.append(
                SwarmNode(
                    config,
                    transport=transport,
                    identity=identity,
                    inline_compute=inline_compute,
                    opener=opener,
                    startup_timeout=startup_timeout,
                    close_timeout=close_timeout,
                    _loop=loop,
                )
            )
        yield tuple(nodes)
    finally:
        try:
            for node in nodes:
                node.close()
        finally:
            loop.close(close_timeout)
