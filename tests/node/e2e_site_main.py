"""One site of the end-to-end test, run as its own process (not collected by pytest).

    python e2e_site_main.py SITE.toml SITE_INDEX N_SITES SPLIT_SEED RESULT.json [byzantine]

Loads the `NodeConfig`, its part of breast cancer (uneven-class split), and runs
the Swarm Learning loop over a real `Libp2pTransport` until the swarm stops; then
writes the outcome (final hash, rounds, per-round wall times, the ledger's evidence and
closed rounds) as JSON. With `byzantine` the site publishes shifted decryption shares
(`Faults.byzantine_share`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
import trio

from models import LocalTrainer, load_sklearn, preset_scenario, split_sites
from swarmnode.config import NodeConfig
from swarmnode.faults import Faults
from swarmnode.node import MergeResult, NodeOptions, open_swarm_node
from swarmnode.simswarm import train_with_swarm


async def main(config_path: str, index: int, n_sites: int, seed: int, out: str, byzantine: bool) -> None:
    config = NodeConfig.load(config_path)
    data = load_sklearn("breast_cancer", positive_class="malignant")
    split = split_sites(data.labels, preset_scenario("uneven_class", n_sites), seed)
    trainer = LocalTrainer(
        config.model,
        split.site_data(data, index),
        config.training,
        generator=torch.Generator().manual_seed(config.swarm.seed),
    )
    common_start = LocalTrainer(
        config.model, split.site_data(data, 0), config.training, generator=torch.Generator().manual_seed(0)
    ).parameters()
    times: list[float] = []
    last = [time.monotonic()]

    async def on_round(result: MergeResult) -> None:
        now = time.monotonic()
        times.append(now - last[0])
        last[0] = now

    options = NodeOptions(behaviour=Faults(byzantine_share=byzantine))
    async with open_swarm_node(config, options=options) as node:
        outcome = await train_with_swarm(
            node, trainer, epochs_per_round=2, start=common_start, merge_timeout=240, on_round=on_round
        )
        ledger_final = node.contract.final_model_hash
        evidence = [{"kind": e.kind, "offender": e.offender.peer_id} for e in node.contract.evidence()]
        closed = [
            {
                "outcome": r.outcome,
                "decrypt_set": [p.peer_id for p in r.decrypt_set],
                "contributors": [c.peer_id for c in r.contributors],
            }
            for r in node.contract.history()
        ]
    result = {
        "site": config.node.name,
        "rounds": list(outcome.rounds),
        "final_hash": None if outcome.final_hash is None else outcome.final_hash.hex(),
        "ledger_final_hash": None if ledger_final is None else ledger_final.hex(),
        "round_wall_s": times,
        "test_auc": trainer.evaluate(split.test_data(data)).roc_auc,
        "peer_id": node.node_id.peer_id,
        "evidence": evidence,
        "closed_rounds": closed,
    }
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    byzantine = sys.argv[6:] == ["byzantine"]
    trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], byzantine)
