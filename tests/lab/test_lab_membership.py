"""Membership changes in the lab (issue 22), with `swarmnode run` processes and the CLI.

Founders site0 (public, relaying), site1 (public), site2 and site3 (each behind NAT with an
outbound-only firewall, reserving on site0) in their own namespaces; every CLI command
(`invite`, `join`, `approve`, `remove`) runs as an operator would, `approve` and `remove`
through the founder's local control endpoint inside that founder's namespace.

- A 5th site behind NAT joins mid-run (`invite`, `join --relay`, then `approve` by two
  members, the genesis's join policy): approved once, it is pending, may connect, and
  catches up on the ledger while the founders merge two more rounds after its start; approved twice, it is
  a member, is dealt into the next key epoch and contributes; every site, the joiner
  included, ends with the same final model on its ledger.
- site3 is removed by a vote of site0 and site1 (`remove --site site3`): the next key epoch,
  dealt and complete on the ledger, has the three others and not site3, and rounds merge in it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from consensus.contract import MERGED, Contract
from consensus.genesis import JoinPolicy
from crypto.identity import NodeIdentity
from swarmnode.testing.labswarm import LabMember, stored_contract, swarmnode_command, write_lab_swarm
from swarmnode.testing.netlab import LabSite, NetLab
from swarmnode.testing.siteprocs import SiteProcesses

START_S = 300.0
DEADLINE_S = 900.0
CLI_TIMEOUT_S = 180.0  # a CLI start takes tens of seconds on a loaded machine
LEDGER_POLL_S = 3.0  # a poll replays the whole stored ledger: not too often on shared cores
# Rounds take 10-30 s here and a CLI command up to minutes on a loaded machine: enough rounds
# that the second approval, the joiner's key epoch and its first contributions fit before the end.
ROUNDS_WITH_JOIN = 24
pytestmark = pytest.mark.timeout(1500)


def _founders(lab: NetLab) -> list[LabMember]:
    site0 = LabMember("site0", lab.sites[0], relay_service=True)
    relays = (site0.peer_address,)
    return [
        site0,
        LabMember("site1", lab.sites[1]),
        LabMember("site2", lab.sites[2], relays=relays),
        LabMember("site3", lab.sites[3], relays=relays),
    ]


def _start(sites: SiteProcesses, lab: NetLab, name: str, site: LabSite, config: Path) -> None:
    sites.start(name, lab.exec_in(site, *swarmnode_command("run", "--plain", "--config", str(config))))


def _cli(lab: NetLab, site: LabSite, *args: str) -> str:
    """A `swarmnode` command inside `site`'s namespace; its stdout (fails the test on an error)."""
    done = subprocess.run(
        lab.exec_in(site, *swarmnode_command(*args)), capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    assert done.returncode == 0, (
        f"swarmnode {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    )
    return done.stdout


def _merged(contract: Contract | None) -> list[int]:
    """The numbers of the merged rounds on a ledger."""
    return [] if contract is None else [r.number for r in contract.transparency() if r.outcome == MERGED]


def test_a_site_behind_nat_joins_mid_run_and_ends_with_the_founders_model(
    tmp_path: Path, join_lab: NetLab
) -> None:
    founders = _founders(join_lab)
    configs = write_lab_swarm(
        tmp_path, founders, rounds=ROUNDS_WITH_JOIN, key_epoch_timeout=120,
        join_policy=JoinPolicy(mode="members", approvals=2), extra_toml=_LOCAL_STANDARDIZE,
    )  # fmt: skip
    joiner_site = join_lab.sites[4]
    joiner_dir = tmp_path / "site4"
    # the joiner's files first (no node needs to run for these): the join itself happens mid-run
    invite = str(tmp_path / "invite.cbor")
    _cli(join_lab, founders[0].site, "invite", "--config", str(configs[0]), "--out", invite)
    _cli(
        join_lab, joiner_site, "join", "--invite", invite, "--name", "site4", "--dir", str(joiner_dir),
        "--listen", joiner_site.address, "--port", "7000", "--relay", founders[0].peer_address,
        "--features", "30", "--classes", "2",
    )  # fmt: skip
    joiner_toml = joiner_dir / "site.toml"  # the same data settings as the founders' (see _LOCAL_STANDARDIZE)
    text = joiner_toml.read_text().replace('standardize = "swarm"', 'standardize = "local"')
    joiner_toml.write_text(text.replace('positive_class = "malignant"\n', ""))
    names = [m.name for m in founders] + ["site4"]
    with SiteProcesses(tmp_path) as sites:
        for member, config in zip(founders, configs, strict=True):
            _start(sites, join_lab, member.name, member.site, config)
        control = tmp_path / "site0" / "state" / "control.json"
        sites.wait_for("site0's control endpoint", control.exists, START_S)

        # the first of two approvals: the joiner is pending, may connect, and follows the chain
        first = _cli(
            join_lab, founders[0].site, "approve", "--config", str(configs[0]),
            "--request", str(joiner_dir / "join-request.cbor"),
        )  # fmt: skip
        assert "approved" in first, first
        _start(sites, join_lab, "site4", joiner_site, joiner_toml)
        merged_at_start = len(_merged(stored_contract(tmp_path / "site0")))
        sites.wait_for(
            "the joiner catching up while the founders merge two more rounds",
            lambda: len(_merged(stored_contract(joiner_dir))) >= merged_at_start + 2,
            START_S,
            LEDGER_POLL_S,
        )
        joiner_id = NodeIdentity.load(joiner_dir / "node.key").node_id
        second = _cli(
            join_lab, founders[1].site, "approve", "--config", str(configs[1]), "--peer", joiner_id.peer_id
        )
        assert "approved" in second, second

        codes = sites.wait_all(DEADLINE_S, names=names)
        assert codes == [0] * len(names), f"exit codes {codes}\n" + sites.tails()

    ledgers = {name: stored_contract(tmp_path / name) for name in names}
    finals = {name: None if c is None else c.final_model_hash for name, c in ledgers.items()}
    assert len(set(finals.values())) == 1, finals
    assert None not in finals.values()
    founder_ledger, joiner_ledger = ledgers["site0"], ledgers["site4"]
    assert founder_ledger is not None
    assert joiner_ledger is not None
    assert founder_ledger.is_member(joiner_id)
    assert joiner_id in founder_ledger.key_epoch().members
    with_joiner = [
        r.number
        for r in founder_ledger.transparency()
        if r.outcome == MERGED and joiner_id in {c.node_id for c in r.contributors}
    ]
    assert with_joiner, "the joiner never contributed to a merged round"
    assert _merged(joiner_ledger) == _merged(founder_ledger)


def test_a_site_removed_by_vote_is_left_out_of_the_next_key_epoch(tmp_path: Path, swarm_lab: NetLab) -> None:
    founders = _founders(swarm_lab)
    configs = write_lab_swarm(
        tmp_path, founders, rounds=30, key_epoch_timeout=120, extra_toml=_LOCAL_STANDARDIZE
    )
    removed = founders[3]
    with SiteProcesses(tmp_path) as sites:
        for member, config in zip(founders, configs, strict=True):
            _start(sites, swarm_lab, member.name, member.site, config)
        sites.wait_for("a merged round", lambda: ": merged model " in sites.log("site0"), START_S)
        contract = stored_contract(tmp_path / "site0")
        assert contract is not None
        epoch_before = contract.key_epoch().number
        assert removed.identity.node_id in contract.key_epoch().members

        first = _cli(swarm_lab, founders[0].site, "remove", "--config", str(configs[0]), "--site", "site3")
        assert "1 of 2 votes needed" in first, first
        second = _cli(swarm_lab, founders[1].site, "remove", "--config", str(configs[1]), "--site", "site3")
        assert "removed site3" in second, second

        def new_epoch_merged() -> bool:
            ledger = stored_contract(tmp_path / "site0")
            if ledger is None or ledger.key_epoch().number <= epoch_before or not ledger.key_epoch().complete:
                return False
            epoch = ledger.key_epoch().number
            return any(r.outcome == MERGED and r.epoch == epoch for r in ledger.transparency())

        sites.wait_for(
            "a merged round in a key epoch after the removal", new_epoch_merged, START_S, LEDGER_POLL_S
        )

    ledger = stored_contract(tmp_path / "site0")
    assert ledger is not None
    epoch = ledger.key_epoch()
    assert epoch.number > epoch_before
    assert removed.identity.node_id not in epoch.members
    assert set(epoch.members) == {m.identity.node_id for m in founders[:3]}
    assert removed.identity.node_id not in {m.node_id for m in ledger.members()}
    for summary in ledger.transparency():
        if summary.epoch == epoch.number:
            assert removed.identity.node_id not in {c.node_id for c in summary.contributors}
            assert removed.identity.node_id not in summary.decrypt_set


# The swarm-agreed standardisation adds statistics rounds before training: not what these test.
_LOCAL_STANDARDIZE = """
[data.preprocess]
standardize = "local"
"""
