"""Kill a validator's PROCESS (SIGKILL) between persisting its vote and sending it.

The child process is this file run as a script: a real `LedgerStore` on disk
and a `TendermintCore` for validator v0, driven over stdin/stdout (a minimal
shell: persist, then print what it sends). The parent plays the other three
validators. After the kill, a restarted process, fed a *conflicting* proposal
first, must re-send exactly the persisted vote and never sign another one; it
then commits the height with the others (it rejoins).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

CHAIN = bytes(range(100, 132))


def _child(db: str, die_after_persist: bool) -> None:
    from consensus.blocks import EnvelopeOpener
    from consensus.core import (
        Broadcast,
        Commit,
        MessageReceived,
        PersistSigned,
        ScheduleTimeout,
        TendermintCore,
    )
    from consensus.messages import CONSENSUS_MESSAGES
    from consensus.simulator import KVApp, sim_identity
    from consensus.store import LedgerStore, recover
    from crypto.envelope import EnvelopeCodec

    validators = tuple(sim_identity(i).node_id for i in range(4))
    opener = EnvelopeOpener(EnvelopeCodec(CHAIN, CONSENSUS_MESSAGES))
    store = LedgerStore(db, CHAIN)
    app, resume = recover(store, lambda: KVApp(validators))
    core = TendermintCore(identity=sim_identity(0), opener=opener, app=app, resume=resume)

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def perform(actions: list[object]) -> None:
        for action in actions:
            if isinstance(action, PersistSigned):
                store.persist_signed(
                    action.height, action.round, action.step, action.wire, action.locked_block
                )
                if die_after_persist:
                    out("PERSISTED")
                    time.sleep(600)  # the parent kills us here: persisted, never sent
            elif isinstance(action, Broadcast):
                out("SEND " + action.envelope.wire.hex())
            elif isinstance(action, Commit):
                store.append_block(action.block, action.certificate)
                out(f"COMMIT {action.block.height} {action.block.hash.hex()}")
            elif isinstance(action, ScheduleTimeout):
                pass  # this scripted test never lets a timer fire

    perform(list(core.start()))
    out("READY")
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "MSG":
            perform(list(core.handle(MessageReceived(opener.open(bytes.fromhex(arg))))))
            out("DONE")
        elif command == "QUIT":
            break
    store.close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2] == "die")
    sys.exit(0)


# -- the test (parent) ---------------------------------------------------------------------

from consensus.blocks import GENESIS_PREV_HASH, Block, EnvelopeOpener  # noqa: E402
from consensus.messages import CONSENSUS_MESSAGES, Precommit, Prevote, Proposal  # noqa: E402
from consensus.simulator import KVApp, kv_set, sim_identity  # noqa: E402
from consensus.store import LedgerStore  # noqa: E402
from crypto.envelope import EnvelopeCodec  # noqa: E402

IDS = [sim_identity(i) for i in range(4)]
VALIDATORS = tuple(i.node_id for i in IDS)
OPENER = EnvelopeOpener(EnvelopeCodec(CHAIN, CONSENSUS_MESSAGES))
DEADLINE = 60.0


class Child:
    def __init__(self, db: Path, mode: str) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(db), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        assert self.proc.stdout is not None
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._buffer = b""
        self.lines: list[str] = []

    def read_until(self, marker: str) -> list[str]:
        """Lines up to and including the first starting with `marker` (bounded in time)."""
        assert self.proc.stdout is not None
        got: list[str] = []
        end = time.monotonic() + DEADLINE
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode()
                got.append(line)
                self.lines.append(line)
                if line.startswith(marker):
                    return got
            remaining = end - time.monotonic()
            assert remaining > 0, f"child silent for {DEADLINE}s waiting for {marker}: {got}"
            if self._selector.select(timeout=remaining):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"child exited (rc={self.proc.poll()}) before {marker}: {got}"
                self._buffer += chunk

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def send(self, wire: bytes) -> list[str]:
        self.command(f"MSG {wire.hex()}")
        return self.read_until("DONE")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        self._selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def sent(lines: list[str]) -> list[object]:
    return [OPENER.open(bytes.fromhex(line[5:])).body for line in lines if line.startswith("SEND ")]


def block(txs: tuple[bytes, ...]) -> Block:
    return Block(
        height=1,
        prev_hash=GENESIS_PREV_HASH,
        proposer=VALIDATORS[1],
        txs=txs,
        app_hash=KVApp(VALIDATORS).app_hash(),
        last_commit=None,
    )


def test_sigkill_between_persist_and_send_then_restart_never_equivocates(tmp_path: Path) -> None:
    db = tmp_path / "v0.sqlite"
    b, c = block((kv_set("b", 1),)), block((kv_set("c", 2),))
    proposal_b = OPENER.codec.seal(IDS[1], Proposal(height=1, round=0, block=b, pol_round=-1))
    # v1 (the round-0 proposer) equivocates: B to v0 before the crash, C after the restart.
    proposal_c = OPENER.codec.seal(IDS[1], Proposal(height=1, round=0, block=c, pol_round=-1))

    first = Child(db, "die")
    try:
        first.read_until("READY")
        first.command(f"MSG {proposal_b.hex()}")
        first.read_until("PERSISTED")  # prevote for B is on disk, not yet sent
        os.kill(first.proc.pid, signal.SIGKILL)
        assert first.proc.wait(timeout=DEADLINE) == -signal.SIGKILL
        assert not [line for line in first.lines if line.startswith("SEND")]  # it never left the process
    finally:
        first.close()

    with LedgerStore(db, CHAIN) as store:
        persisted = store.signed_at(1)
    assert list(persisted) == [(0, "prevote")]
    persisted_vote = OPENER.open(persisted[(0, "prevote")]).body
    assert persisted_vote == Prevote(height=1, round=0, block_hash=b.hash)

    second = Child(db, "live")
    try:
        second.read_until("READY")
        out = sent(second.send(proposal_c))  # sees only C: an amnesiac node would prevote C
        assert out == [persisted_vote]  # re-sends the persisted prevote for B, signs nothing new
        second.send(proposal_b)  # now it learns block B too
        for who in (1, 2):
            out = sent(
                second.send(OPENER.codec.seal(IDS[who], Prevote(height=1, round=0, block_hash=b.hash)))
            )
        assert out == [Precommit(height=1, round=0, block_hash=b.hash)]  # polka B: lock and precommit
        for who in (1, 2):
            lines = second.send(OPENER.codec.seal(IDS[who], Precommit(height=1, round=0, block_hash=b.hash)))
        assert f"COMMIT 1 {b.hash.hex()}" in lines  # rejoined: it commits height 1 with the others
        votes = [body for body in sent(second.lines) if isinstance(body, Prevote | Precommit)]
        assert {(type(v), v.round, v.block_hash) for v in votes if v.height == 1} == {
            (Prevote, 0, b.hash),
            (Precommit, 0, b.hash),
        }  # one prevote and one precommit at height 1, round 0: no equivocation
    finally:
        second.close()
    with LedgerStore(db, CHAIN) as store:
        assert store.tip_height() == 1
        stored = store.block(1)
        assert stored is not None
        assert stored.hash == b.hash
