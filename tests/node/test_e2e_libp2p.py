"""End to end: 3 node processes over real libp2p on 127.0.0.1 run >= 3 secure rounds.

Each process loads its own ``site.toml`` (key file, genesis file, listen port,
bootstrap addresses of the others) and trains its part of breast cancer with
`train_with_swarm`. Bounded: every process has a deadline and is killed in
``finally``; logs are kept in the work directory and shown on failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consensus.genesis import FoundingMember, Genesis, StoppingRule, Timeouts, TrainingParams
from crypto.identity import NodeIdentity
from models import logistic_regression

SITES = 3
ROUNDS = 3
SCRIPT = Path(__file__).with_name("e2e_site_main.py")
DEADLINE_S = 420.0
pytestmark = pytest.mark.timeout(600)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_sites(root: Path) -> list[Path]:
    identities = [NodeIdentity.generate() for _ in range(SITES)]
    ports = free_ports(SITES)
    spec = logistic_regression(30, 2)
    genesis = Genesis(
        name="e2e",
        members=tuple(
            FoundingMember(
                name=f"site{i}", node_id=ident.node_id, addresses=(f"/ip4/127.0.0.1/tcp/{ports[i]}",)
            )
            for i, ident in enumerate(identities)
        ),
        training=TrainingParams(
            model_spec_hash=spec.spec_hash(),
            min_peers=2,
            timeouts=Timeouts(ready_wait=60, contribute=60, aggregate=60, verify=60, decrypt=60),
            stopping=StoppingRule(max_rounds=ROUNDS),
        ),
    )
    genesis.save(root / "genesis.cbor")
    configs = []
    for i, ident in enumerate(identities):
        site = root / f"site{i}"
        site.mkdir()
        ident.save(site / "node.key")
        bootstrap = [
            f'"/ip4/127.0.0.1/tcp/{ports[j]}/p2p/{identities[j].node_id.peer_id}"'
            for j in range(SITES)
            if j != i
        ]
        text = f"""
[node]
name = "site{i}"
key_file = "node.key"
storage_dir = "state"

[network]
listen = "127.0.0.1"
port = {ports[i]}
bootstrap = [{", ".join(bootstrap)}]

[ledger]
genesis = "../genesis.cbor"
propose_timeout = 2.0
block_interval = 0.05

[data]
source = "breast_cancer"

[model]
kind = "logreg"
n_features = 30
n_classes = 2

[training]
lr = 0.01

[swarm]
seed = {i}
"""
        (site / "site.toml").write_text(text)
        configs.append(site / "site.toml")
    return configs


def test_three_processes_over_libp2p_complete_secure_rounds(tmp_path: Path) -> None:
    configs = write_sites(tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    started = time.monotonic()
    try:
        for i, config in enumerate(configs):
            log = (tmp_path / f"site{i}.log").open("wb")
            logs.append(log)
            cmd = [
                sys.executable,
                str(SCRIPT),
                str(config),
                str(i),
                str(SITES),
                "0",
                str(tmp_path / f"r{i}.json"),
            ]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        for proc in procs:
            remaining = DEADLINE_S - (time.monotonic() - started)
            proc.wait(timeout=max(1.0, remaining))
    except subprocess.TimeoutExpired:
        pytest.fail("site processes did not finish in time:\n" + _tails(tmp_path))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    assert codes == [0] * SITES, f"exit codes {codes}\n" + _tails(tmp_path)
    results = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(SITES)]
    finals = {r["final_hash"] for r in results}
    assert len(finals) == 1
    assert None not in finals
    assert {r["ledger_final_hash"] for r in results} == finals
    for r in results:
        assert r["rounds"] == list(range(1, ROUNDS + 1))
    print("round wall times (s):", [[round(t, 2) for t in r["round_wall_s"]] for r in results])
    print("test AUC per site (swarm model):", [round(r["test_auc"], 4) for r in results])


def _tails(root: Path) -> str:
    out = []
    for i in range(SITES):
        path = root / f"site{i}.log"
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-25:]
            out.append(f"--- site{i} ---\n" + "\n".join(lines))
    return "\n".join(out)
