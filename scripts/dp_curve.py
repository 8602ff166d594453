"""The epsilon-vs-ROC AUC curve of distributed differential privacy (genesis ``training.privacy``).

For every dataset, site count, seed and privacy level (epsilon = 1, 3, 8 and no DP) this
trains a secure swarm of real `swarmnode` nodes (as ``scripts/reproduce.py`` does: ledger,
round protocol, threshold-CKKS merge, in-memory network, virtual time) for `rounds` merged
rounds, each site clipping its update to `--clip` and adding its share of the noise
(`models.privacy`). The noise multiplier is the smallest that keeps all `rounds` rounds within
the epsilon budget (RDP, delta 1e-5: `consensus.privacy_budget`), so the swarm spends exactly
its budget. Every model of a run (sites alone, central, swarm) starts from the swarm's initial
model and standardises its features with its own rows ("local"; swarm standardisation
would release per-site feature moments outside the privacy budget), so the privacy level is
the only difference between the swarm rows. Local and central models train the same epochs.

    python scripts/reproduce.py --dp-curve           # 2 datasets x 3/8 sites x 5 seeds x 4 levels
    python scripts/reproduce.py --dp-curve --seeds 2 --rounds 5 --json docs/results/dp_curve_quick.json

Writes ``docs/results/dp_curve.json`` (every run, the summary and a markdown table) and
``dp_curve.png`` (test ROC AUC against epsilon, mean ± sd over seeds).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from _provenance import finish, machine
from reproduce import POSITIVE, REPO, JsonDict, _metrics, _stats

EPSILONS: Final = (1.0, 3.0, 8.0, None)  # None: no differential privacy
DELTA: Final = 1e-5


def noise_for_budget(epsilon: float, rounds: int, delta: float = DELTA) -> float:
    """The smallest noise multiplier (to 1e-6) whose `rounds` rounds spend at most `epsilon`."""
    from consensus.privacy_budget import gaussian_epsilon

    low, high = 0.1, 1000.0
    if gaussian_epsilon(high, rounds, delta) > epsilon:
        raise ValueError(f"epsilon {epsilon} is out of reach in {rounds} rounds")
    while high - low > 1e-6:
        middle = (low + high) / 2
        low, high = (low, middle) if gaussian_epsilon(middle, rounds, delta) <= epsilon else (middle, high)
    return high


def run_dp_case(
    dataset: str, n_sites: int, seed: int, epsilon: float | None, rounds: int, epochs_per_round: int,
    clip: float, model: str,
) -> JsonDict:  # fmt: skip
    """One secure swarm at one privacy level (and, without DP, the local and central models)."""
    import torch
    import trio
    import trio.testing

    from consensus.genesis import PrivacyParams
    from models import (
        LocalTrainer,
        TrainConfig,
        load_dataset,
        logistic_regression,
        mlp,
        preset_scenario,
        split_sites,
    )
    from models.preprocess import PreprocessConfig
    from swarmnode.net.memory import open_memory_network
    from swarmnode.simswarm import SwarmPlan
    from swarmnode.trainer import SwarmTrainer, initial_parameters

    torch.set_num_threads(1)
    data = load_dataset(dataset, positive_class=POSITIVE.get(dataset))
    spec = (
        logistic_regression(data.n_features, data.n_classes)
        if model == "logreg"
        else mlp(data.n_features, data.n_classes, hidden=(64, 32), dropout=0.2)
    )
    epochs = rounds * epochs_per_round
    config = TrainConfig(epochs=epochs, validation_fraction=0.0, patience=0)
    split = split_sites(data.labels, preset_scenario("even", n_sites), seed)
    test = split.test_data(data)
    sites = [split.site_data(data, i) for i in range(n_sites)]
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    result: JsonDict = {"dataset": dataset, "n_sites": n_sites, "seed": seed, "epsilon": epsilon}
    with tempfile.TemporaryDirectory(prefix="dp-curve-", dir=shm) as tmp:
        plan = SwarmPlan.create(Path(tmp), spec, founders=n_sites, max_rounds=rounds, train=config)
        genesis = plan.genesis
        if epsilon is not None:
            sigma = noise_for_budget(epsilon, rounds)
            privacy = PrivacyParams(
                clip_norm=clip, noise_multiplier=sigma, delta=DELTA, epsilon_budget=epsilon
            )
            genesis = replace(genesis, training=replace(genesis.training, privacy=privacy))
            result["noise_multiplier"] = sigma
        init = initial_parameters(genesis, plan.configs[0])

        def trainer(part: Any, torch_seed: int) -> Any:
            return LocalTrainer(
                spec, part, config, generator=torch.Generator().manual_seed(torch_seed),
                initial_parameters=init, preprocess=PreprocessConfig(standardize="local"),
            )  # fmt: skip

        if epsilon is None:  # the baselines do not depend on the privacy level: once per seed
            local = []
            for i, part in enumerate(sites):
                alone = trainer(part, 1000 * seed + i)
                alone.train_epochs(epochs)
                local.append(_metrics(alone.evaluate(test)))
            central = trainer(split.union_data(data), 1000 * seed + 999)
            central.train_epochs(epochs)
            result |= {"local": local, "central": _metrics(central.evaluate(test))}
        swarm: dict[int, JsonDict] = {}
        started = time.perf_counter()

        async def site(i: int, network: Any) -> None:
            t = trainer(sites[i], 1000 * seed + i)
            swarm_trainer = SwarmTrainer.from_local_trainer(t, genesis, sync_every=epochs_per_round)
            async with plan.open_node(i, network, genesis=genesis) as node:
                await swarm_trainer.arun(node, inline_compute=True)
            swarm[i] = _metrics(t.evaluate(test))

        async def main() -> None:
            async with open_memory_network(seed=seed) as network, trio.open_nursery() as nursery:
                for i in range(n_sites):
                    nursery.start_soon(site, i, network)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    seconds = round(time.perf_counter() - started, 2)
    result |= {"swarm": [swarm[i] for i in range(n_sites)], "seconds": seconds}
    return result


def _run_star(args: tuple[Any, ...]) -> JsonDict:
    try:
        return run_dp_case(*args)
    except Exception as exc:  # one failed case must not lose the others; it is reported
        return {"case": list(args[:4]), "error": f"{type(exc).__name__}: {exc}"}


def summarise(runs: Sequence[JsonDict], metric: str) -> list[JsonDict]:
    """Per (dataset, sites, epsilon): the swarm's metric over seeds, with the baselines of the
    no-DP runs (local mean of sites, central) next to it."""
    baselines: dict[tuple[str, int], dict[str, list[float]]] = {}
    for run in runs:
        if run["epsilon"] is None:
            entry = baselines.setdefault((run["dataset"], run["n_sites"]), {"local_mean": [], "central": []})
            entry["local_mean"].append(statistics.fmean(m[metric] for m in run["local"]))
            entry["central"].append(run["central"][metric])
    groups: dict[tuple[str, int, float | None], list[float]] = {}
    for run in runs:
        key = (run["dataset"], run["n_sites"], run["epsilon"])
        groups.setdefault(key, []).append(statistics.fmean(m[metric] for m in run["swarm"]))
    rows = []
    for (dataset, n_sites, epsilon), values in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] if kv[0][2] is not None else 1e9)
    ):
        base = baselines.get((dataset, n_sites), {})
        rows.append(
            {
                "dataset": dataset, "n_sites": n_sites, "epsilon": epsilon, "metric": metric,
                "swarm": _stats(values), "seeds": len(values),
                **{k: _stats(v) for k, v in base.items() if v},
            }
        )  # fmt: skip
    return rows


def markdown_table(rows: Sequence[JsonDict]) -> str:
    lines = ["| dataset | sites | epsilon | swarm | local mean | central |", "|---|---|---|---|---|---|"]
    for r in rows:

        def cell(key: str, row: JsonDict = r) -> str:
            return f"{row[key]['mean']:.3f} ± {row[key]['sd']:.3f}" if key in row else "-"

        label = "no DP" if r["epsilon"] is None else f"{r['epsilon']:g}"
        lines.append(
            f"| {r['dataset']} | {r['n_sites']} | {label} | **{cell('swarm')}** "
            f"| {cell('local_mean')} | {cell('central')} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[JsonDict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    levels = sorted({r["epsilon"] for r in rows if r["epsilon"] is not None})
    positions = {**{e: k for k, e in enumerate(levels)}, None: len(levels)}
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for n_sites in sorted({r["n_sites"] for r in rows if r["dataset"] == dataset}):
            line = [r for r in rows if r["dataset"] == dataset and r["n_sites"] == n_sites]
            xs = [positions[r["epsilon"]] for r in line]
            shown = ax.errorbar(
                xs, [r["swarm"]["mean"] for r in line], yerr=[r["swarm"]["sd"] for r in line],
                marker="o", capsize=3, label=f"swarm, {n_sites} sites",
            )  # fmt: skip
            for key, style in (("central", "--"), ("local_mean", ":")):
                base = next((r[key] for r in line if key in r), None)
                if base is not None:
                    ax.axhline(base["mean"], linestyle=style, color=shown[0].get_color(), alpha=0.6,
                               label=f"{key.replace('_', ' ')}, {n_sites} sites")  # fmt: skip
        ax.set_xticks(range(len(levels) + 1))
        ax.set_xticklabels([f"ε = {e:g}" for e in levels] + ["no DP"])
        ax.set_title(dataset, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{rows[0]['metric']} on the held-out test set (mean ± sd over seeds)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="breast_cancer,digits")
    parser.add_argument("--sites", default="3,8", help="comma list of site counts")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilons", default="1,3,8", help="comma list; a no-DP run is always added")
    parser.add_argument("--rounds", type=int, default=10, help="merged rounds (all within the budget)")
    parser.add_argument("--epochs-per-round", type=int, default=5)
    parser.add_argument("--clip", type=float, default=1.0, help="genesis training.privacy.clip_norm")
    parser.add_argument("--model", choices=("logreg", "mlp"), default="logreg")
    parser.add_argument("--metric", default="roc_auc", choices=("roc_auc", "balanced_accuracy"))
    parser.add_argument("--jobs", type=int, default=2, help="cases run in parallel processes")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "dp_curve.json")
    args = parser.parse_args(argv)
    epsilons = [float(e) for e in args.epsilons.split(",") if e] + [None]
    cases = [
        (d, n, seed, eps, args.rounds, args.epochs_per_round, args.clip, args.model)
        for d in args.datasets.split(",")
        for n in sorted((int(s) for s in args.sites.split(",")), reverse=True)
        for seed in range(args.seeds)
        for eps in epsilons
    ]
    print(f"{len(cases)} cases, {args.jobs} jobs", flush=True)
    host, started = machine(), time.perf_counter()
    runs, failed = [], []
    with multiprocessing.get_context("spawn").Pool(max(1, args.jobs)) as pool:
        for run in pool.imap_unordered(_run_star, cases):
            (failed if "error" in run else runs).append(run)
            print(f"[{len(runs) + len(failed)}/{len(cases)}] {run}"[:300], flush=True)
    finish(host)
    rows = summarise(runs, args.metric)
    table = markdown_table(rows)
    command = " ".join(["python scripts/reproduce.py --dp-curve", *argv])
    result = {
        "benchmark": "dp_curve (distributed differential privacy: epsilon vs test metric)",
        "command": command,
        "settings": {k: v for k, v in vars(args).items() if k != "json"}
        | {"delta": DELTA, "scenario": "even"},
        "machine": host,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "summary": rows,
        "failed_cases": failed,
        "table_md": table,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    png = args.json.with_suffix(".png")
    if rows:
        title = f"Distributed DP (clip {args.clip:g}, delta {DELTA:g}, {args.rounds} rounds); {command}"
        plot(rows, png, title)
    print(table)
    print(f"wrote {args.json} and {png}")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
