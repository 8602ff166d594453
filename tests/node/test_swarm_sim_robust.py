"""Issue 20 attack 3 with whole nodes: a Byzantine decryptor shifts its decryption share on
every coefficient but the weight coefficient (`Faults.byzantine_share`).

Before robust decryption that share passed `combine`'s only check and every node merged
parameters shifted by about 2^-7, silently. Now (robust key epochs, `consensus.decrypt_phase`)
every participant publishes a point share and combiners check the points against each
other: with 5 sites (t = 3) the wrong share is named on the ledger (`WRONG_SHARE`), the
round merges the honest model and later decrypt sets leave the culprit out; with 4 sites
(t = 3) it is detected but cannot be named, and the round aborts without a merge.

Virtual time (trio's MockClock), in-memory network, synthetic parameters: site i submits
``params = round + i`` with weight ``10 (i + 1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from consensus.contract import ABORTED, MERGED, WRONG_SHARE
from models import logistic_regression
from swarmnode.faults import Faults, SwitchableFaults
from swarmnode.net.memory import open_memory_network
from swarmnode.node import MergeResult, MergeTimeout, Node, NodeOptions, SwarmStopped, open_swarm_node
from swarmnode.simswarm import SwarmPlan

SPEC = logistic_regression(30, 2)
N_PARAMS = 62
BYZANTINE = 1
pytestmark = pytest.mark.timeout(300)


@dataclass
class Site:
    index: int
    node: Node | None = None
    submitted: list[np.ndarray] = field(default_factory=list)
    results: list[MergeResult] = field(default_factory=list)


async def cancel_after_rounds(
    nodes: Callable[[], list[Node | None]], rounds: int, scope: trio.CancelScope
) -> None:
    """Ends the swarm run once every node's ledger has closed `rounds` rounds (checked every
    virtual half second): later rounds would only repeat the checked one, at a CPU cost."""
    while not all(node is not None and len(node.contract.history()) >= rounds for node in nodes()):
        await trio.sleep(0.5)
    scope.cancel()


async def run_swarm(
    tmp_path: Path, founders: int, max_rounds: int, *, virtual_seconds: float = 10_000, until_rounds: int = 0
) -> tuple[SwarmPlan, list[Site]]:
    """`until_rounds`: also stop once every node's ledger has closed that many rounds."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=founders, max_rounds=max_rounds)
    sites = [Site(i) for i in range(founders)]

    async def run_site(site: Site, transport: object) -> None:
        i = site.index
        faults = Faults(byzantine_share=True) if i == BYZANTINE else Faults()
        async with open_swarm_node(
            plan.configs[i], transport=transport,  # type: ignore[arg-type]
            identity=plan.identities[i], genesis=plan.genesis,
            options=NodeOptions(inline_compute=True, behaviour=faults),
        ) as node:  # fmt: skip
            site.node = node
            params = np.full(N_PARAMS, float(1 + i), np.float32)
            while True:
                site.submitted.append(params)
                try:
                    result = await node.merge(params, 10 * (i + 1), val_metric=0.5, timeout=900)
                except SwarmStopped:
                    break
                site.results.append(result)
                if result.stopped:
                    break
                params = np.full(N_PARAMS, float(result.round + 1 + i), np.float32)
            await node.wait_stopped()

    async with open_memory_network(seed=3) as net:
        with trio.move_on_after(virtual_seconds) as scope:
            async with trio.open_nursery() as nursery:
                for site in sites:
                    nursery.start_soon(run_site, site, net.transport(plan.ids[site.index]))
                if until_rounds:
                    nursery.start_soon(
                        cancel_after_rounds, lambda: [site.node for site in sites], until_rounds, scope
                    )
    return plan, sites


async def test_a_byzantine_decryptor_is_named_and_the_honest_model_merged(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    plan, sites = await run_swarm(tmp_path, founders=5, max_rounds=3)
    culprit = plan.ids[BYZANTINE]
    weights = np.array([10.0 * (i + 1) for i in range(5)])
    by_round: dict[int, set[bytes]] = {}
    for site in sites:
        assert site.node is not None
        assert len(site.results) == 3
        for result in site.results:
            by_round.setdefault(result.round, set()).add(result.parameters.tobytes())
            # Every site contributed ``round + i``: the honest merge is their weighted mean.
            assert len(result.participants) == 5
            expected = sum(w * (result.round + i) for i, w in enumerate(weights)) / weights.sum()
            np.testing.assert_allclose(result.parameters, expected, atol=1e-5)
        named = [e for e in site.node.contract.evidence() if e.kind == WRONG_SHARE]
        assert [e.offender for e in named] == [culprit]  # named once: left out afterwards
        history = site.node.contract.history()
        assert [r.outcome for r in history] == [MERGED] * 3
        assert culprit in history[0].decrypt_set
        assert named[0].detail == history[0].decryption_share(culprit)
        assert all(culprit not in r.decrypt_set for r in history[1:])
    assert all(len(v) == 1 for v in by_round.values())  # bit-identical on every node


async def test_with_four_sites_a_wrong_share_is_detected_and_the_round_aborted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Four points at t = 3 check each other (one wrong share is detected) but cannot tell
    which is wrong: no merge, nobody named (a documented limit), the swarm goes on."""
    # Every round aborts the same way; four closed rounds show it and that the swarm goes on.
    _, sites = await run_swarm(tmp_path, founders=4, max_rounds=2, virtual_seconds=40, until_rounds=4)
    for site in sites:
        assert site.node is not None
        assert site.results == []  # never merged a shifted model
        history = site.node.contract.history()
        assert len(history) >= 2  # the swarm went on with the next rounds
        assert all(r.outcome == ABORTED for r in history)
        assert "no wrong one can be named" in history[0].note
        assert all(e.kind != WRONG_SHARE for e in site.node.contract.evidence())


async def test_a_named_culprit_filling_the_decrypt_set_never_lets_a_shift_through(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The colluders' best move against the fill rule. Round 1 names site 1 (it shifts its
    share). Then site 4 stops contributing, so only three unbarred participants remain at
    t = 3 and the named culprit must fill the decrypt set; a colluder among the three (site
    2) starts shifting too. Were the set drawn with exactly t points, nothing could check
    them and the round would merge the colluders' shift. The set has t + 1 points instead,
    so the shift is detected: round 2 aborts, and no site ever holds a shifted model."""
    plan = SwarmPlan.create(tmp_path, SPEC, founders=5, max_rounds=3)
    weights = [10 * (i + 1) for i in range(5)]
    results: dict[int, list[MergeResult]] = {i: [] for i in range(5)}
    nodes: dict[int, Node] = {}

    async def run_site(i: int, transport: object) -> None:
        faults = SwitchableFaults(Faults(byzantine_share=True) if i == BYZANTINE else Faults())
        async with open_swarm_node(
            plan.configs[i], transport=transport,  # type: ignore[arg-type]
            identity=plan.identities[i], genesis=plan.genesis,
            options=NodeOptions(inline_compute=True, behaviour=faults),
        ) as node:  # fmt: skip
            nodes[i] = node
            number = 1
            while True:
                params = np.full(N_PARAMS, float(number + i), np.float32)
                try:
                    result = await node.merge(params, weights[i], val_metric=0.5, timeout=150)
                except (SwarmStopped, MergeTimeout):
                    break  # after round 1 every round aborts while the two keep lying
                results[i].append(result)
                if result.stopped or i == 4:
                    break  # site 4 keeps validating blocks but contributes no more
                if i == 2:  # the colluder turns Byzantine once the culprit must fill the set
                    faults.faults = Faults(byzantine_share=True)
                number = result.round + 1
            await trio.sleep_forever()  # keep validating blocks until the test's deadline

    async with open_memory_network(seed=3) as net:
        with trio.move_on_after(200) as scope:
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(run_site, i, net.transport(plan.ids[i]))
                # From round 2 on every round has the same decrypt set and aborts the same way.
                nursery.start_soon(cancel_after_rounds, lambda: [nodes.get(i) for i in range(5)], 4, scope)
    culprit = plan.ids[BYZANTINE]
    for i, node in nodes.items():
        history = node.contract.history()
        assert [e.offender for e in node.contract.evidence() if e.kind == WRONG_SHARE] == [culprit]
        assert history[0].outcome == MERGED
        assert len(history) >= 2
        for result in results[i]:  # first: no shifted model reached anyone
            members = sorted(plan.ids.index(p) for p in result.participants)
            total = sum(weights[k] for k in members)
            expected = sum(weights[k] * (result.round + k) for k in members) / total
            np.testing.assert_allclose(result.parameters, expected, atol=1e-5)
        second = history[1]
        assert culprit in second.decrypt_set  # it had to fill the set
        assert len(second.decrypt_set) == second.threshold + 1
        assert second.outcome == ABORTED
