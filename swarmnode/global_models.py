"""The model members train from after each merged round: the ledger's merged mean run
through the genesis server optimizer (``training.server_optimizer``, `models.optimizers`).

The ledger's ``MergedModel.params_hash`` is always the hash of the merged mean x̄_r (what the
secure merge decrypts and the decrypt set votes on); the optimizer runs afterwards, on every
node alike, and what a `MergeResult` hands the trainer is the global model x_r. Its state is
a pure function of the ledger's merged means in round order, so a node that restarted or
joined late replays them (its own disk first, then its peers, `BlobStore.merged_parameters`);
to keep that cheap the state after the latest merged round it computed is kept on disk,
keyed by that round and hash, and used as the replay's start when it matches the ledger.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final, final

import numpy as np
import trio

from consensus.contract import MERGED, Contract
from consensus.genesis import TrainingParams
from models.optimizers import optimizer_named
from models.optimizers.state import OptimizerState, first_state

from .blobstore import BlobStore
from .keystore import write_private
from .results import FloatVector, SwarmError

STATE_FILE: Final = "server_optimizer.npz"
_KEEP_STATES: Final = 2  # states kept in memory (the latest and the one before, for a slow caller)

MergedRound = tuple[int, bytes]  # (round number, merged mean hash): where a state stands


@final
class GlobalModels:
    """Global models by the ledger hash of their round's merged mean. Without a server
    optimizer `models` is the blob store's map of merged means itself."""

    def __init__(
        self,
        training: TrainingParams,
        contract: Contract,
        blobs: BlobStore,
        storage_dir: Path,
        log: logging.Logger,
    ) -> None:
        self._optimizer = optimizer_named(training.server_optimizer)
        self._settings = training.server_settings()
        self._contract = contract
        self._blobs = blobs
        self._state_file = storage_dir / STATE_FILE
        self._log = log
        self._states: dict[MergedRound, OptimizerState] = {}
        self._computed: dict[bytes, FloatVector] = {}
        self._replaying = trio.Lock()
        self.models: Final[Mapping[bytes, FloatVector]] = (
            blobs.models if self._optimizer.step is None else self._computed
        )

    async def ensure(self, params_hash: bytes) -> FloatVector:
        """The global model of the merged round whose mean has `params_hash` (read-only),
        computed (replaying the ledger's means as far back as needed) if not held."""
        if self._optimizer.step is None:
            return await self._blobs.merged_parameters(params_hash)
        async with self._replaying:
            held = self._computed.get(params_hash)
            if held is None:
                held = (await self._replay(params_hash)).global_model()
                held.setflags(write=False)
                self._computed[params_hash] = held
            return held

    def _merged_rounds(self, params_hash: bytes) -> list[MergedRound]:
        """The ledger's merged rounds up to the last one whose mean has `params_hash`."""
        merged = [
            (r.number, r.merged_hash)
            for r in self._contract.history()
            if r.outcome == MERGED and r.merged_hash is not None
        ]
        ends = [k for k, (_, digest) in enumerate(merged) if digest == params_hash]
        if not ends:
            raise SwarmError(f"merged model {params_hash.hex()[:12]} is not a merged round on the ledger")
        return merged[: ends[-1] + 1]

    async def _replay(self, params_hash: bytes) -> OptimizerState:
        rounds = self._merged_rounds(params_hash)
        if not self._states:  # just started: the state we kept on disk, if any
            self._states.update(self._load_state())
        start, state = 0, None
        for k in range(len(rounds) - 1, -1, -1):
            known = self._states.get(rounds[k])
            if known is not None:
                start, state = k + 1, known
                break
        if len(rounds) - start > 1:
            self._log.info("server optimizer: replaying %d merged rounds", len(rounds) - start)
        step = self._optimizer.load_step()
        for round_hash in rounds[start:]:
            mean = await self._blobs.merged_parameters(round_hash[1])
            state = first_state(mean) if state is None else step(state, mean, self._settings)
        assert state is not None  # `rounds` holds at least the round asked for
        self._states[rounds[-1]] = state
        for old in list(self._states)[:-_KEEP_STATES]:
            del self._states[old]
        self._save_state(rounds[-1], state)
        return state

    def _save_state(self, where: MergedRound, state: OptimizerState) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer, round=np.int64(where[0]), merged_hash=np.frombuffer(where[1], dtype=np.uint8),
            model=state.model, momentum=state.momentum, second_moment=state.second_moment,
        )  # fmt: skip
        write_private(self._state_file, buffer.getvalue())

    def _load_state(self) -> dict[MergedRound, OptimizerState]:
        """The persisted state by where it stands (empty if none or unreadable: replay)."""
        try:
            with np.load(self._state_file, allow_pickle=False) as saved:
                where = (int(saved["round"]), saved["merged_hash"].tobytes())
                arrays = [
                    np.asarray(saved[k], dtype=np.float64) for k in ("model", "momentum", "second_moment")
                ]
        except FileNotFoundError:
            return {}
        except (OSError, KeyError, ValueError) as exc:
            self._log.warning("server optimizer state %s unreadable (%s); replaying", self._state_file, exc)
            return {}
        if any(a.shape != (self._blobs.n_params,) for a in arrays):
            return {}
        return {where: OptimizerState(model=arrays[0], momentum=arrays[1], second_moment=arrays[2])}
