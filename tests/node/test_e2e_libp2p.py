"""End to end: node processes over real libp2p on 127.0.0.1 run >= 3 secure rounds (3 honest
sites; and 4 sites, one a Byzantine decryptor).

Each process loads its own ``site.toml`` (key file, genesis file, listen port,
bootstrap addresses of the others) and trains its part of breast cancer with
`train_with_swarm`. Bounded: every process has a deadline and is killed in
``finally``; logs are kept in the work directory and shown on failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from consensus.contract import MERGED, WRONG_SHARE
from consensus.genesis import DecryptionThreshold
from crypto.identity import NodeIdentity
from swarmnode.testing.labswarm import SwarmSite, site_toml, write_swarm
from swarmnode.testing.siteprocs import SiteProcesses, SiteTimeout
from swarmnode.testnet import free_ports

SITES = 3
ROUNDS = 3
SCRIPT = Path(__file__).with_name("e2e_site_main.py")
DEADLINE_S = 420.0
pytestmark = pytest.mark.timeout(600)


def write_sites(root: Path, sites: int = SITES, threshold: DecryptionThreshold | None = None) -> list[Path]:
    identities = [NodeIdentity.generate() for _ in range(sites)]
    ports = free_ports(sites)
    return write_swarm(
        root,
        [
            SwarmSite(
                f"site{i}",
                ident,
                (f"/ip4/127.0.0.1/tcp/{ports[i]}",),
                site_toml(
                    f"site{i}",
                    "127.0.0.1",
                    port=ports[i],
                    seed=i,
                    bootstrap=[
                        f"/ip4/127.0.0.1/tcp/{ports[j]}/p2p/{identities[j].node_id.peer_id}"
                        for j in range(sites)
                        if j != i
                    ],
                ),
            )
            for i, ident in enumerate(identities)
        ],
        name="e2e",
        rounds=ROUNDS,
        threshold=threshold,
    )


def run_sites(tmp_path: Path, configs: list[Path], byzantine: int | None = None) -> list[dict[str, Any]]:
    """Every site as its own process, bounded by `DEADLINE_S`; their result JSON."""
    with SiteProcesses(tmp_path) as sites:
        for i, config in enumerate(configs):
            cmd = [
                sys.executable,
                str(SCRIPT),
                str(config),
                str(i),
                str(len(configs)),
                "0",
                str(tmp_path / f"r{i}.json"),
                *(["byzantine"] if i == byzantine else []),
            ]
            sites.start(f"site{i}", cmd)
        try:
            codes = sites.wait_all(DEADLINE_S)
        except SiteTimeout as exc:
            pytest.fail(f"site processes did not finish in time:\n{exc}")
        assert codes == [0] * len(configs), f"exit codes {codes}\n" + sites.tails(25)
    return [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(len(configs))]


def test_three_processes_over_libp2p_complete_secure_rounds(tmp_path: Path) -> None:
    results = run_sites(tmp_path, write_sites(tmp_path))
    finals = {r["final_hash"] for r in results}
    assert len(finals) == 1
    assert None not in finals
    assert {r["ledger_final_hash"] for r in results} == finals
    for r in results:
        assert r["rounds"] == list(range(1, ROUNDS + 1))
    print("round wall times (s):", [[round(t, 2) for t in r["round_wall_s"]] for r in results])
    print("test AUC per site (swarm model):", [round(r["test_auc"], 4) for r in results])


def test_four_processes_with_a_byzantine_decryptor_end_with_the_honest_merge(tmp_path: Path) -> None:
    """Issue 20, attack 3, with real processes: site 3 publishes decryption shares shifted on
    every coefficient but the weight (which the Lagrange-share combine merged silently). At
    t = 2 of 4 (a robust key epoch: 4 points, degree 1) the combiners name it, the ledger
    records `wrong_share` against it, later decrypt sets leave it out, and every site ends
    with the same final model, recorded on every ledger, that trains as well as an honest
    swarm's (a shift of 2^-7 in every parameter of every merge would not)."""
    configs = write_sites(tmp_path, sites=4, threshold=DecryptionThreshold(numerator=1, denominator=4))
    results = run_sites(tmp_path, configs, byzantine=3)
    culprit = results[3]["peer_id"]
    finals = {r["final_hash"] for r in results}
    assert len(finals) == 1
    assert None not in finals
    assert {r["ledger_final_hash"] for r in results} == finals
    for r in results:
        named = [e for e in r["evidence"] if e["kind"] == WRONG_SHARE]
        assert named, "no wrong_share evidence on this ledger"
        assert {e["offender"] for e in named} == {culprit}
        merged = [c for c in r["closed_rounds"] if c["outcome"] == MERGED]
        assert len(merged) == ROUNDS
        assert culprit not in merged[-1]["decrypt_set"]  # left out once named
        assert r["test_auc"] > 0.9
