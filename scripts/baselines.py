"""Local-only and central baselines: the yardstick a swarm model must beat.

For a dataset and a site scenario, split the data (held-out global test set +
sites), train one model per site on that site's data alone and one model
centrally on the union of all sites, and evaluate every model on the same
held-out test set. Repeats over several split seeds and writes a JSON table and
a PNG bar chart.

    python scripts/baselines.py --dataset breast_cancer --scenario uneven_class --sites 3 \
        [--seed 0] [--repeats 5] [--out docs/results]

Seeds: repeat r uses split seed ``seed + r``; site i trains with
``torch.Generator().manual_seed(1000 * split_seed + i)`` and the central model
with ``1000 * split_seed + 999``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Final

import numpy as np
import torch

from models import (
    Dataset,
    LocalTrainer,
    ModelSpec,
    TrainConfig,
    load_dataset,
    logistic_regression,
    mlp,
    preset_scenario,
    small_cnn,
    split_sites,
)
from models.splits import SCENARIO_KINDS

METRICS: Final = ("roc_auc", "balanced_accuracy", "f1", "accuracy")
DEFAULT_POSITIVE: Final = {"breast_cancer": "malignant"}


def build_spec(kind: str, data: Dataset) -> ModelSpec:
    if kind == "logreg":
        return logistic_regression(data.n_features, data.n_classes)
    if kind == "mlp":
        return mlp(data.n_features, data.n_classes, hidden=(64, 32), dropout=0.2)
    side = math.isqrt(data.n_features)
    if side * side != data.n_features:
        raise SystemExit(f"cnn needs square images; {data.n_features} features is not a square")
    return small_cnn((1, side, side), data.n_classes)


def run_once(
    data: Dataset,
    spec: ModelSpec,
    config: TrainConfig,
    scenario_name: str,
    n_sites: int,
    seed: int,
    test_fraction: float,
) -> dict[str, object]:
    scenario = preset_scenario(scenario_name, n_sites, test_fraction=test_fraction)
    split = split_sites(data.labels, scenario, seed)
    test = split.test_data(data)
    results: dict[str, object] = {}
    trainees = [(f"site_{i}", split.site_data(data, i), 1000 * seed + i) for i in range(n_sites)]
    trainees.append(("central", split.union_data(data), 1000 * seed + 999))
    for name, part, torch_seed in trainees:
        trainer = LocalTrainer(spec, part, config, generator=torch.Generator().manual_seed(torch_seed))
        fitted = trainer.fit()
        results[name] = {
            "rows": part.n_samples,
            "class_counts": list(part.class_counts()),
            "train_rows": fitted.num_samples,
            "epochs_run": fitted.epochs_run,
            "best_epoch": fitted.best_epoch,
            "test": trainer.evaluate(test).to_dict(),
        }
    return {
        "seed": seed,
        "scenario": dataclasses.asdict(scenario),
        "split": {
            "test_class_counts": list(test.class_counts()),
            "site_class_counts": [list(data.subset(s).class_counts()) for s in split.sites],
            "unused_rows": int(split.unused.size),
        },
        "results": results,
    }


def summarise(runs: list[dict[str, object]], names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        summary[name] = {}
        for metric in METRICS:
            values = []
            for run in runs:
                results = run["results"]
                assert isinstance(results, dict)
                value = results[name]["test"][metric]
                values.append(math.nan if value is None else float(value))
            array = np.array(values)
            summary[name][metric] = {
                "mean": float(np.nanmean(array)) if not np.isnan(array).all() else math.nan,
                "std": float(np.nanstd(array)) if not np.isnan(array).all() else math.nan,
                "min": float(np.nanmin(array)) if not np.isnan(array).all() else math.nan,
            }
    return summary


def plot(
    path: Path, summary: dict[str, dict[str, dict[str, float]]], labels: dict[str, str], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(9, 5.4))
    colours = plt.get_cmap("tab10")
    for k, name in enumerate(names):
        means = [summary[name][m]["mean"] for m in METRICS]
        stds = [summary[name][m]["std"] for m in METRICS]
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(METRICS))]
        colour = "black" if name == "central" else colours(k)
        ax.bar(
            xs,
            means,
            width * 0.95,
            yerr=stds,
            capsize=3,
            label=labels[name],
            color=colour,
            alpha=0.85 if name == "central" else 0.75,
        )
    ax.set_xticks(range(len(METRICS)))
    ax.set_xticklabels(["ROC AUC", "balanced accuracy", "F1 (positive)", "accuracy"])
    lowest = min(summary[n][m]["mean"] - summary[n][m]["std"] for n in names for m in METRICS)
    ax.set_ylim(max(0.0, math.floor(lowest * 10) / 10 - 0.05), 1.02)
    ax.set_ylabel("held-out test set (mean ± sd over split seeds)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="breast_cancer", help="bundled name or .csv/.h5ad/.npz path")
    parser.add_argument("--label-column", default=None, help="label column (CSV) / obs key (h5ad)")
    parser.add_argument("--positive-class", default=None, help="one-vs-rest positive class")
    parser.add_argument("--scenario", default="uneven_class", choices=SCENARIO_KINDS)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="first split seed")
    parser.add_argument("--repeats", type=int, default=5, help="number of split seeds (seed, seed+1, ...)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--model", default="logreg", choices=("logreg", "mlp", "cnn"))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument(
        "--class-weights",
        default="none",
        choices=("none", "balanced"),
        help="balanced: loss weighted by 1/(K f_c), f each model's own training rows' class frequencies "
        "(central: the union's, what a swarm with genesis class_weights = balanced pools)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest here)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    positive = args.positive_class or DEFAULT_POSITIVE.get(str(args.dataset))
    data = load_dataset(args.dataset, label_column=args.label_column, positive_class=positive)
    if args.scenario in ("uneven_class", "few_positives") and data.n_classes != 2:
        raise SystemExit(
            f"{args.scenario} needs a binary task: pass --positive-class (classes: {data.class_names})"
        )
    spec = build_spec(args.model, data)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        patience=args.patience,
        balance_classes=args.class_weights == "balanced",
    )
    started = time.perf_counter()
    runs = [
        run_once(data, spec, config, args.scenario, args.sites, args.seed + r, args.test_fraction)
        for r in range(args.repeats)
    ]
    elapsed = time.perf_counter() - started
    names = [f"site_{i}" for i in range(args.sites)] + ["central"]
    summary = summarise(runs, names)
    worst = min(names[:-1], key=lambda n: summary[n]["roc_auc"]["mean"])
    best_site = max(names[:-1], key=lambda n: summary[n]["roc_auc"]["mean"])
    gaps = {
        metric: {
            "central": summary["central"][metric]["mean"],
            "worst_site": worst,
            "worst_site_value": summary[worst][metric]["mean"],
            "best_site_value": max(summary[n][metric]["mean"] for n in names[:-1]),
        }
        for metric in METRICS
    }

    first_split = runs[0]["split"]
    assert isinstance(first_split, dict)
    counts = first_split["site_class_counts"]
    labels = {
        name: f"{name}: {sum(c)} rows, {c[-1]} {data.class_names[-1]}"
        for name, c in zip(names, counts, strict=False)
    }
    labels["central"] = f"central (union of sites): {sum(sum(c) for c in counts)} rows"

    stem = f"baselines_{Path(str(args.dataset)).stem}_{args.scenario}_{args.sites}sites"
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "local and central baselines",
        "command": " ".join(["python", "scripts/baselines.py", *(sys.argv[1:] if argv is None else argv)]),
        "dataset": str(args.dataset),
        "positive_class": positive,
        "class_names": list(data.class_names),
        "scenario": args.scenario,
        "sites": args.sites,
        "seeds": [args.seed + r for r in range(args.repeats)],
        "model_spec": spec.to_json_dict(),
        "model_spec_hash": spec.spec_hash().hex(),
        "train_config": dataclasses.asdict(config),
        "summary": summary,
        "gap_to_central": gaps,
        "runs": runs,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "torch_threads": args.threads,
            "wall_seconds": round(elapsed, 1),
        },
    }
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    title = (
        f"{args.dataset}: {args.scenario}, {args.sites} sites, {args.model} — local vs central "
        f"({args.repeats} split seeds)"
    )
    png_path = args.out / f"{stem}.png"
    plot(png_path, summary, labels, title)

    print(f"{'model':<10}" + "".join(f"{m:>20}" for m in METRICS))
    for name in names:
        cells = "".join(f"{summary[name][m]['mean']:>13.4f} ±{summary[name][m]['std']:.3f}" for m in METRICS)
        print(f"{name:<10}{cells}")
    print(f"worst site by ROC AUC: {worst}; best site: {best_site}; {elapsed:.1f} s")
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
