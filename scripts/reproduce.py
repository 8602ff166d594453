"""Reproduce the Swarm Learning experiment design (Warnat-Herresthal et al., Nature 2021).

Does the swarm model beat each site's own model? For every dataset, site count,
scenario and seed this script trains, with the same model, data split and
epoch budget:

* **local**: every site alone on its own rows,
* **central**: one model on the union of all sites' rows (the upper bound
  that Swarm Learning avoids because it needs the data in one place),
* **swarm**: one real `swarmnode` node per site (the production runtime:
  ledger, round protocol, threshold-CKKS secure merge) over an in-memory
  network in virtual time (trio's MockClock, inline compute), each site
  running the spec-built trainer path of ``swarmnode run`` (`SwarmTrainer`):
  swarm-agreed standardisation first (the first merged rounds carry the
  sites' per-feature moments through the secure mean; 2 rounds here), then
  `epochs_per_round` epochs between merges for `rounds` training rounds,

and evaluates every model on the same held-out test set (ROC AUC and balanced
accuracy; the malignant class is the positive class of breast_cancer).
Standardisation: a site alone uses its own mean/std, the central model those
of the pooled rows, the swarm the pooled statistics agreed through the merge.

    python scripts/reproduce.py            # 3/8/16 sites x 5 seeds (about 10 min on an idle 2-core machine)
    python scripts/reproduce.py --quick    # 3/8 sites, 2 seeds, 5 rounds (a few minutes)
    python scripts/reproduce.py --dp-curve # epsilon vs ROC AUC under differential privacy (dp_curve.py)

Writes ``docs/results/reproduce[_quick].json`` (every run + summary + markdown
table) and ``.png`` (metric per scenario for local/swarm/central, spread over
seeds). Seeds: split seed s; site i trains with ``torch.Generator(1000 s + i)``,
the central model with ``1000 s + 999``; all models of one seed start from
the same initial parameters (``init_parameters(spec, seed=s)``). Local and
central models train ``rounds x epochs_per_round`` epochs (no early stopping,
no validation split), the same budget as each swarm site.
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
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from _provenance import finish, machine  # noqa: E402

SCENARIOS: Final = ("even", "uneven_size", "uneven_class", "few_positives", "dirichlet")
UNEVEN: Final = frozenset({"uneven_size", "uneven_class", "few_positives", "dirichlet"})
POSITIVE: Final = {"breast_cancer": "malignant"}
METRICS: Final = ("roc_auc", "balanced_accuracy")

JsonDict = dict[str, Any]


# ------------------------------------------------------------------------------- one case


def _metrics(m: Any) -> JsonDict:
    return {"roc_auc": m.roc_auc, "balanced_accuracy": m.balanced_accuracy, "f1": m.f1}


def run_case(
    dataset: str, scenario: str, n_sites: int, seed: int, rounds: int, epochs_per_round: int
) -> JsonDict:
    """Local, central and secure-swarm models for one split; metrics on the held-out test set."""
    import numpy as np
    import torch
    import trio
    import trio.testing

    from consensus.genesis import StoppingRule
    from models import LocalTrainer, TrainConfig, load_dataset, mlp, preset_scenario, split_sites
    from models.preprocess import PreprocessConfig, statistics_rounds
    from models.training import init_parameters
    from swarmnode.net.memory import open_memory_network
    from swarmnode.simswarm import SwarmPlan
    from swarmnode.trainer import TRAINING, SwarmTrainer

    torch.set_num_threads(1)
    data = load_dataset(dataset, positive_class=POSITIVE.get(dataset))
    spec = mlp(data.n_features, data.n_classes, hidden=(64, 32), dropout=0.2)
    epochs = rounds * epochs_per_round
    config = TrainConfig(epochs=epochs, validation_fraction=0.0, patience=0)
    split = split_sites(data.labels, preset_scenario(scenario, n_sites), seed)
    test = split.test_data(data)
    sites = [split.site_data(data, i) for i in range(n_sites)]
    init = init_parameters(spec, seed=seed)
    stats_rounds = statistics_rounds(data.n_features, init.size)

    def trainer(part: Any, torch_seed: int, standardize: str) -> Any:
        return LocalTrainer(
            spec,
            part,
            config,
            generator=torch.Generator().manual_seed(torch_seed),
            initial_parameters=init,
            preprocess=PreprocessConfig(standardize=standardize),  # type: ignore[arg-type]
        )

    started = time.perf_counter()
    local = []
    for i, part in enumerate(sites):
        t = trainer(part, 1000 * seed + i, "local")
        t.train_epochs(epochs)
        local.append(_metrics(t.evaluate(test)))
    # One model on the union: standardised with the statistics of the pooled rows.
    central_trainer = trainer(split.union_data(data), 1000 * seed + 999, "local")
    central_trainer.train_epochs(epochs)
    central = _metrics(central_trainer.evaluate(test))
    baseline_seconds = time.perf_counter() - started

    swarm: dict[int, JsonDict] = {}
    hashes: dict[int, str | None] = {}
    started = time.perf_counter()
    # Ledger files on tmpfs: simulation speed, not disk fsync speed (the protocol is the same).
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="reproduce-", dir=shm) as tmp:
        # The ledger's max_rounds counts the statistics rounds too: `rounds` training rounds follow.
        max_rounds = rounds + stats_rounds
        plan = SwarmPlan.create(Path(tmp), spec, founders=n_sites, max_rounds=max_rounds, train=config)
        if plan.genesis.training.stopping != StoppingRule(max_rounds=max_rounds):
            raise RuntimeError("unexpected stopping rule in the simulated genesis")

        async def site(i: int, network: Any) -> None:
            t = trainer(sites[i], 1000 * seed + i, "swarm")
            swarm_trainer = SwarmTrainer.from_local_trainer(t, plan.genesis, sync_every=epochs_per_round)
            async with plan.open_node(i, network) as node:
                summary = await swarm_trainer.arun(node, inline_compute=True)
            trained = sum(r.kind == TRAINING for r in summary.rounds)
            swarm[i] = {**_metrics(t.evaluate(test)), "rounds": trained}
            hashes[i] = None if summary.final_hash is None else summary.final_hash.hex()

        async def main() -> None:
            async with open_memory_network(seed=seed) as network, trio.open_nursery() as nursery:
                for i in range(n_sites):
                    nursery.start_soon(site, i, network)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    swarm_seconds = time.perf_counter() - started
    site_rows = [
        {
            "rows": part.n_samples,
            "positives": int(np.sum(part.labels == 1)) if data.n_classes == 2 else None,
            "local": local[i],
            "swarm": swarm[i],
        }
        for i, part in enumerate(sites)
    ]
    return {
        "dataset": dataset,
        "scenario": scenario,
        "n_sites": n_sites,
        "seed": seed,
        "test_rows": test.n_samples,
        "sites": site_rows,
        "central": central,
        "swarm_same_final_model": len(set(hashes.values())) == 1 and None not in hashes.values(),
        "swarm_rounds": min(s["rounds"] for s in swarm.values()),
        "swarm_statistics_rounds": stats_rounds,
        "seconds": {"baselines": round(baseline_seconds, 2), "swarm": round(swarm_seconds, 2)},
    }


def split_problem(dataset: str, scenario: str, n_sites: int, seed: int) -> str | None:
    """Why this scenario cannot be split for this many sites (e.g. halving sizes over 16 sites)."""
    from models import load_dataset, preset_scenario, split_sites

    data = load_dataset(dataset, positive_class=POSITIVE.get(dataset))
    try:
        split_sites(data.labels, preset_scenario(scenario, n_sites), seed)
    except ValueError as exc:
        return str(exc)
    return None


def _run_case_star(args: tuple[str, str, int, int, int, int]) -> JsonDict:
    try:
        return run_case(*args)
    except Exception as exc:  # one failed case must not lose the others; it is reported
        dataset, scenario, n_sites, seed = args[:4]
        error = f"{type(exc).__name__}: {exc}"
        return {"dataset": dataset, "scenario": scenario, "n_sites": n_sites, "seed": seed, "error": error}


# ------------------------------------------------------------------------------- summary


def _stats(values: Sequence[float]) -> JsonDict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(runs: Sequence[JsonDict], metric: str) -> list[JsonDict]:
    """Per (dataset, sites, scenario): local mean/best/worst, swarm, central over seeds."""
    groups: dict[tuple[str, int, str], list[JsonDict]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["n_sites"], run["scenario"]), []).append(run)
    rows = []
    for (dataset, n_sites, scenario), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], SCENARIOS.index(kv[0][2]))
    ):
        per_seed: dict[str, list[float]] = {
            k: [] for k in ("local_mean", "local_best", "local_worst", "swarm", "central")
        }
        for run in group:
            local = [s["local"][metric] for s in run["sites"]]
            per_seed["local_mean"].append(statistics.fmean(local))
            per_seed["local_best"].append(max(local))
            per_seed["local_worst"].append(min(local))
            per_seed["swarm"].append(statistics.fmean(s["swarm"][metric] for s in run["sites"]))
            per_seed["central"].append(run["central"][metric])
        stats = {k: _stats(v) for k, v in per_seed.items()}
        wins_mean = sum(s > m for s, m in zip(per_seed["swarm"], per_seed["local_mean"], strict=True))
        wins_best = sum(s > b for s, b in zip(per_seed["swarm"], per_seed["local_best"], strict=True))
        rows.append(
            {
                "dataset": dataset,
                "n_sites": n_sites,
                "scenario": scenario,
                "metric": metric,
                **stats,
                "seeds": len(group),
                "swarm_beats_local_mean": stats["swarm"]["mean"] > stats["local_mean"]["mean"],
                "swarm_beats_local_best": stats["swarm"]["mean"] > stats["local_best"]["mean"],
                "seeds_swarm_beats_local_mean": wins_mean,
                "seeds_swarm_beats_local_best": wins_best,
                "all_sites_same_final_model": all(r["swarm_same_final_model"] for r in group),
            }
        )
    return rows


def markdown_table(rows: Sequence[JsonDict]) -> str:
    head = (
        "| dataset | sites | scenario | local mean | local best | swarm (secure) | central | "
        "swarm > local mean | swarm > best local |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:

        def cell(key: str, row: JsonDict = r) -> str:
            return f"{row[key]['mean']:.3f} ± {row[key]['sd']:.3f}"

        n = r["seeds"]
        lines.append(
            f"| {r['dataset']} | {r['n_sites']} | {r['scenario']} "
            f"| {cell('local_mean')} | {cell('local_best')} "
            f"| **{cell('swarm')}** | {cell('central')} "
            f"| {'yes' if r['swarm_beats_local_mean'] else 'NO'} ({r['seeds_swarm_beats_local_mean']}/{n}) "
            f"| {'yes' if r['swarm_beats_local_best'] else 'NO'} ({r['seeds_swarm_beats_local_best']}/{n}) |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[JsonDict], runs: Sequence[JsonDict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dataset"], r["n_sites"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False, sharey=True)
    series = (
        ("local_mean", "local (mean of sites)", "#bbbbbb"),
        ("local_best", "best local", "#777777"),
        ("swarm", "swarm (secure merge)", "#1f77b4"),
        ("central", "central", "#2ca02c"),
    )
    for ax, (dataset, n_sites) in zip(axes[0], panels, strict=True):
        panel = [r for r in rows if r["dataset"] == dataset and r["n_sites"] == n_sites]
        width = 0.2
        for k, (key, label, color) in enumerate(series):
            xs = [i + (k - 1.5) * width for i in range(len(panel))]
            means = [r[key]["mean"] for r in panel]
            sds = [r[key]["sd"] for r in panel]
            ax.bar(xs, means, width, yerr=sds, label=label, color=color, capsize=2)
        ax.set_xticks(range(len(panel)))
        ax.set_xticklabels([r["scenario"].replace("_", "\n") for r in panel], fontsize=8)
        ax.set_title(f"{dataset}, {n_sites} sites ({panel[0]['seeds']} seeds)", fontsize=10)
        lows = [r[key]["mean"] - r[key]["sd"] for r in panel for key, _, _ in series]
        ax.set_ylim(max(0.0, min(lows) - 0.03), 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{rows[0]['metric']} on the held-out test set (mean ± sd over seeds)")
    axes[0][-1].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--dp-curve" in argv:  # the epsilon-vs-ROC AUC curve, with its own options (scripts/dp_curve.py)
        from dp_curve import main as dp_curve

        return dp_curve([a for a in argv if a != "--dp-curve"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3/8 sites, 2 seeds, 5 rounds: a few minutes")
    parser.add_argument("--json", type=Path, default=None, help="output JSON (default: docs/results/)")
    parser.add_argument("--datasets", default="breast_cancer", help="comma list: breast_cancer,digits,wine")
    parser.add_argument("--sites", default=None, help="comma list of site counts (default 3,8)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seeds", type=int, default=None, help="seeds per case (default 5; quick 2)")
    parser.add_argument("--large-sites", default="16", help="extra, costlier site counts (not with --quick)")
    parser.add_argument("--large-seeds", type=int, default=5, help="seeds for --large-sites")
    parser.add_argument("--rounds", type=int, default=None, help="merge rounds (default 10; quick 5)")
    parser.add_argument("--epochs-per-round", type=int, default=5)
    parser.add_argument("--metric", default="roc_auc", choices=METRICS)
    parser.add_argument("--jobs", type=int, default=2, help="cases run in parallel processes")
    args = parser.parse_args(argv)
    sites = [int(s) for s in (args.sites or "3,8").split(",")]
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    rounds = args.rounds if args.rounds is not None else (5 if args.quick else 10)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    datasets = [d for d in args.datasets.split(",") if d]
    default_name = "reproduce_quick.json" if args.quick else "reproduce.json"
    out = args.json or REPO / "docs" / "results" / default_name
    out.parent.mkdir(parents=True, exist_ok=True)

    large = [int(x) for x in args.large_sites.split(",") if x] if not args.quick else []
    large_seeds = min(seeds, args.large_seeds)
    planned = [
        (d, sc, n, seed, rounds, args.epochs_per_round)
        for d in datasets
        for n in sorted(set(sites) | set(large), reverse=True)  # longest first: better packing
        for sc in scenarios
        for seed in range(large_seeds if n in large and n not in sites else seeds)
    ]
    cases, not_applicable = [], []
    for case in planned:
        problem = split_problem(*case[:4])
        if problem is None:
            cases.append(case)
        else:
            not_applicable.append(
                {
                    "dataset": case[0],
                    "scenario": case[1],
                    "n_sites": case[2],
                    "seed": case[3],
                    "reason": problem,
                }
            )
    print(
        f"{len(cases)} cases ({len(datasets)} datasets x sites {sites} x {len(scenarios)} scenarios x "
        f"{seeds} seeds; sites {large} x {large_seeds} seeds), {rounds} rounds x {args.epochs_per_round} "
        f"epochs, {args.jobs} jobs; not applicable: {len(not_applicable)}",
        flush=True,
    )
    host = machine()
    started = time.perf_counter()
    runs: list[JsonDict] = []
    failed: list[JsonDict] = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(max(1, args.jobs)) as pool:
        for run in pool.imap_unordered(_run_case_star, cases):
            if "error" in run:
                failed.append(run)
                print(f"FAILED {run}", flush=True)
                continue
            runs.append(run)
            local = statistics.fmean(s["local"][args.metric] for s in run["sites"])
            swarm = statistics.fmean(s["swarm"][args.metric] for s in run["sites"])
            print(
                f"[{len(runs):3d}/{len(cases)}] {run['dataset']} {run['n_sites']:2d} sites "
                f"{run['scenario']:<13} seed {run['seed']}: local mean {local:.3f}  swarm {swarm:.3f}  "
                f"central {run['central'][args.metric]:.3f}  ({run['seconds']['swarm']:.0f} s swarm)",
                flush=True,
            )
    elapsed = time.perf_counter() - started
    finish(host)
    runs.sort(key=lambda r: (r["dataset"], r["n_sites"], SCENARIOS.index(r["scenario"]), r["seed"]))
    rows = summarise(runs, args.metric)
    table = markdown_table(rows)
    misses = [
        f"{r['dataset']} {r['n_sites']} sites {r['scenario']}: swarm "
        + ("below the mean local model" if not r["swarm_beats_local_mean"] else "below the best local model")
        for r in rows
        if not r["swarm_beats_local_mean"] or (r["scenario"] in UNEVEN and not r["swarm_beats_local_best"])
    ]
    result = {
        "benchmark": "reproduce (Swarm Learning experiment design, Nature 2021)",
        "command": "python scripts/reproduce.py" + (" --quick" if args.quick else ""),
        "settings": {
            "datasets": datasets,
            "sites": sites,
            "large_sites": large,
            "large_seeds": large_seeds if large else None,
            "scenarios": scenarios,
            "seeds": seeds,
            "rounds": rounds,
            "epochs_per_round": args.epochs_per_round,
            "local_and_central_epochs": rounds * args.epochs_per_round,
            "model": "mlp hidden (64, 32), dropout 0.2, adam lr 1e-3, batch 32",
            "metric": args.metric,
            "swarm": "real swarmnode nodes, secure merge (threshold CKKS), MemoryTransport, virtual time",
            "standardization": {
                "local": "each site alone: its own training rows' mean/std",
                "central": "mean/std of the pooled rows",
                "swarm": "swarm-agreed: pooled mean/std merged securely before training "
                "(statistics rounds on the ledger, not counted in `rounds`)",
            },
            "jobs": args.jobs,
        },
        "machine": host,
        "elapsed_s": round(elapsed, 1),
        "summary": rows,
        "misses": misses,
        "failed_cases": failed,
        "not_applicable": not_applicable,
        "table_md": table,
        "runs": runs,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    png = out.with_suffix(".png")
    plot(
        rows,
        runs,
        png,
        f"Swarm vs local vs central ({args.metric}); {rounds} rounds x "
        f"{args.epochs_per_round} epochs; {result['command']}",
    )
    print(table)
    print(
        "misses:"
        if misses
        else "swarm beats the mean local model everywhere and the best local one in every uneven scenario",
        *misses,
        sep="\n  ",
    )
    print(f"wrote {out} and {png} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
