"""What a node gives its caller: merged rounds, the stop, errors; and the sink that hands
them out (the waiting `Node.merge` call, per-round times, the final model on disk)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import numpy as np
import numpy.typing as npt
import trio

from consensus.contract import Contract, RoundSummary
from crypto.identity import NodeId

from .round import Delivery

FloatVector = npt.NDArray[np.float32]


class SwarmError(Exception):
    """The swarm could not give what was asked (base of the runtime's errors)."""


class SwarmStopped(SwarmError):
    """Training is over (stopping rule or member vote); `final` is the final model if known."""

    def __init__(self, message: str, final: MergeResult | None = None) -> None:
        super().__init__(message)
        self.final: Final = final


class MergeTimeout(SwarmError):
    """No merged model arrived before the merge timeout."""


class NodeClosed(SwarmError):
    """The node shut down (or crashed) while the call was waiting."""


@final
@dataclass(frozen=True, slots=True, eq=False)
class MergeResult:
    """One merged round as this node received it; `parameters` is bit-identical on every node.

    parameters:  the model to train from: the genesis server optimizer's global model
                 (`swarmnode.global_models`), the merged mean itself without one.
    params_hash: the ledger's hash of the round's merged mean (``MergedModel.params_hash``)."""

    round: int
    parameters: FloatVector
    params_hash: bytes
    participants: tuple[NodeId, ...]
    weight: int  # total weight of the contributions in the merge
    stopped: bool  # training stopped with this round (it is the final model)


@final
@dataclass(frozen=True, slots=True)
class StopInfo:
    reason: str
    merged_rounds: int
    final_model_hash: bytes | None
    final: MergeResult | None
    saved_to: Path | None


@final
@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: NodeId
    name: str
    height: int
    members: tuple[NodeId, ...]
    round: int
    phase: str
    step: int
    roles: tuple[str, ...]  # "participant", "leader", "verifier", "decryptor"
    key_epoch: int
    key_epoch_complete: bool
    key_epoch_waiting_for: tuple[NodeId, ...]  # members holding the running key epoch up
    last_merged_hash: bytes | None
    stopped: bool
    peers: tuple[NodeId, ...]
    history: tuple[RoundSummary, ...]


def params_hash(parameters: npt.ArrayLike) -> bytes:
    """SHA-256 of the little-endian float32 bytes: the hash the ledger records for a model."""
    return hashlib.sha256(np.asarray(parameters, dtype="<f4").tobytes()).digest()


@final
class Waiter:
    """One `Node.merge` call waiting for its round's result (or an error)."""

    __slots__ = ("_error", "_event", "_result")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._result: MergeResult | None = None
        self._error: SwarmError | None = None

    def resolve(self, result: MergeResult) -> None:
        self._result = result
        self._event.set()

    def fail(self, error: SwarmError) -> None:
        self._error = error
        self._event.set()

    async def wait(self) -> MergeResult:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


@final
class ResultSink:
    """Merged rounds and the stop as the caller sees them. `models` maps a merged mean's
    ledger hash to the global model held for it (`GlobalModels.models`; read-only vectors,
    a result hands out a copy)."""

    def __init__(
        self, contract: Contract, models: Mapping[bytes, FloatVector], storage_dir: Path, log: logging.Logger
    ) -> None:
        self._contract = contract
        self._models = models
        self._storage_dir = storage_dir
        self._log = log
        self.round_times: dict[int, float] = {}  # round -> time from its start to its merge here
        self._round_started: dict[int, float] = {}
        self.waiter: Waiter | None = None
        self.stop_info: StopInfo | None = None
        self.stopped = trio.Event()  # set once training stopped (and the final model saved) or on close

    def round_started(self, round_number: int, now: float) -> None:
        self._round_started.setdefault(round_number, now)

    def result(
        self, round_number: int, digest: bytes, participants: tuple[NodeId, ...], weight: int, stopped: bool
    ) -> MergeResult:
        return MergeResult(
            round=round_number,
            parameters=self._models[digest].copy(),
            params_hash=digest,
            participants=participants,
            weight=weight,
            stopped=stopped,
        )

    def deliver(self, delivery: Delivery, now: float) -> None:
        contract = self._contract
        stopped = contract.stopped is not None and contract.final_model_hash == delivery.params_hash
        result = self.result(
            delivery.round, delivery.params_hash, delivery.participants, delivery.weight, stopped
        )
        started = self._round_started.get(delivery.round)
        if started is not None:
            self.round_times.setdefault(delivery.round, now - started)
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.resolve(result)

    def final_result(self) -> MergeResult | None:
        stop = self._contract.stopped
        if stop is None or stop.final_model_hash is None or stop.final_model_hash not in self._models:
            return None
        last = next(r for r in reversed(self._contract.history()) if r.merged_hash == stop.final_model_hash)
        return self.result(
            last.number, stop.final_model_hash, last.participants, last.contributor_weight, True
        )

    def on_stopped(self, delivered: bool) -> None:
        """Training stopped on the ledger (`delivered`: this very plan delivered a round)."""
        stop = self._contract.stopped
        assert stop is not None
        final = self.final_result()
        if stop.final_model_hash is not None and final is None:
            return  # wait for LoadMerged to bring the final model
        if self.waiter is not None and not delivered:
            self.fail_waiter(SwarmStopped(f"training stopped: {stop.reason}", final))
        if self.stop_info is None:
            saved: Path | None = None
            if final is not None:
                saved = self._storage_dir / "final_model.npy"
                np.save(saved, final.parameters)
                (self._storage_dir / "final_model.sha256").write_text(final.params_hash.hex() + "\n")
            self.stop_info = StopInfo(stop.reason, stop.merged_rounds, stop.final_model_hash, final, saved)
            self._log.info("training stopped: %s (%d merged rounds)", stop.reason, stop.merged_rounds)
            self.stopped.set()

    def fail_waiter(self, error: SwarmError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.fail(error)
