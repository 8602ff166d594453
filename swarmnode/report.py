"""`swarmnode report`: an HTML page and PNG plots of one site or of a work dir of sites.

``swarmnode report --config site.toml`` (`write_site_report`) reads that site's own files
only: its metrics.json and its ledger, whose rounds name every site's contribution; a
site needs no other site's directory. ``swarmnode report --dir WORKDIR`` (`write_report`)
reads every site under a work dir, as `swarmnode testnet` leaves it:

Inputs (all optional except at least one site):

- every ``<dir>/**/site.toml`` (at most two levels deep) is a site; its
  ``<storage_dir>/metrics.json`` (written by `swarmnode run`, see
  `swarmnode.siterun`) gives per-round local/merged validation metrics, the
  final test metrics and timings;
- the ledger of the first site that has one gives the contribution table;
- ``<dir>/baselines.json`` (written by `swarmnode testnet`) gives test metrics
  of each site trained alone and of central training::

      {"metric": "roc_auc", "dataset": ..., "scenario": ...,
       "local": {"site0": {<Metrics.to_dict()>}, ...}, "central": {<Metrics.to_dict()>}}

Outputs in ``<dir>/report/``: ``report.html``, ``validation.png`` (the main
plot), ``test_metrics.png``, ``timings.png``, and ``report.json`` (the numbers
shown).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from .config import ConfigError, NodeConfig
from .metricsfile import METRICS_FILE, load_metrics
from .scaffold import SetupError

REPORT_DIR: Final = "report"
BASELINES_FILE: Final = "baselines.json"
PHASES: Final = ("ready", "contribute", "aggregate", "verify", "decrypt")


@final
@dataclass(frozen=True, slots=True)
class SiteResult:
    name: str
    config_path: Path
    metrics: Mapping[str, Any] | None


@final
@dataclass(frozen=True, slots=True)
class ReportFiles:
    html: Path
    plots: tuple[Path, ...]
    summary: Path


def find_sites(directory: Path) -> tuple[SiteResult, ...]:
    if not directory.is_dir():
        raise SetupError(f"{directory}: not a directory")
    paths = sorted(
        {*directory.glob("site.toml"), *directory.glob("*/site.toml"), *directory.glob("*/*/site.toml")}
    )
    sites = [site_result(path) for path in paths]
    if not sites:
        raise SetupError(f"{directory}: no site.toml found (in it or one/two levels below)")
    return tuple(sites)


def site_result(config_path: Path) -> SiteResult:
    """One site's name and metrics.json (None if it has not merged a round yet)."""
    config = NodeConfig.load(config_path)
    metrics_path = config.node.storage_dir / METRICS_FILE
    try:
        metrics = load_metrics(metrics_path)
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    return SiteResult(config.node.name, config_path, metrics)


def _value(metrics: Any, metric: str) -> float | None:
    if not isinstance(metrics, Mapping):
        return None
    value = metrics.get(metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _ledger_rows(sites: Sequence[SiteResult]) -> tuple[list[dict[str, Any]], str | None]:
    from .ledgerview import ledger_json, read_ledger

    for site in sites:
        try:
            record = read_ledger(NodeConfig.load(site.config_path), read_only=True)
        except (SetupError, ConfigError):
            continue
        data = ledger_json(record)
        return data["rounds"], str(site.config_path)
    return [], None


def _plot_validation(sites: Sequence[SiteResult], metric: str, path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = False
    merged_done = False
    for i, site in enumerate(sites):
        rounds = (site.metrics or {}).get("rounds") or []
        xs = [r["round"] for r in rounds]
        local = [_value(r.get("local"), metric) for r in rounds]
        merged = [_value(r.get("merged"), metric) for r in rounds]
        color = f"C{i % 10}"
        if any(v is not None for v in local):
            ax.plot(xs, [math.nan if v is None else v for v in local], "o--", color=color, alpha=0.7,
                    label=f"{site.name}: local model")  # fmt: skip
            drawn = True
        if any(v is not None for v in merged):
            ax.plot(xs, [math.nan if v is None else v for v in merged], "s-", color=color,
                    label=f"{site.name}: merged model")  # fmt: skip
            drawn = merged_done = True
    if not drawn:
        plt.close(fig)
        return False
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(f"validation {metric} (each site's own validation split)")
    ax.set_title(
        "Per-round validation: local model before merge vs merged swarm model" if merged_done else ""
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _test_rows(
    sites: Sequence[SiteResult], baselines: Mapping[str, Any] | None, metric: str
) -> list[dict[str, Any]]:
    rows = []
    local = (baselines or {}).get("local") or {}
    for site in sites:
        rows.append(
            {
                "site": site.name,
                "swarm": _value((site.metrics or {}).get("test"), metric),
                "local_only": _value(local.get(site.name), metric),
            }
        )
    return rows


def _plot_test(rows: Sequence[Mapping[str, Any]], central: float | None, metric: str, path: Path) -> bool:
    import matplotlib.pyplot as plt
    import numpy as np

    if not any(r["swarm"] is not None or r["local_only"] is not None for r in rows) and central is None:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(rows))
    swarm = [math.nan if r["swarm"] is None else r["swarm"] for r in rows]
    local = [math.nan if r["local_only"] is None else r["local_only"] for r in rows]
    ax.bar(x - 0.2, local, 0.4, label="site alone (local-only)", color="C7")
    ax.bar(x + 0.2, swarm, 0.4, label="swarm model", color="C0")
    if central is not None:
        ax.axhline(central, color="C3", linestyle="--", label=f"central (all data pooled): {central:.3f}")
    ax.set_xticks(x, [r["site"] for r in rows])
    ax.set_ylabel(f"test {metric} (held-out global test set)")
    ax.set_title("Final test metric: swarm vs each site alone vs central")
    finite = [v for v in [*swarm, *local, central] if v is not None and math.isfinite(v)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05) if max(finite) <= 1 else None)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _timing_table(sites: Sequence[SiteResult]) -> dict[int, dict[str, float]]:
    """Per round: mean local training seconds and the observed seconds of each phase (max over sites)."""
    table: dict[int, dict[str, float]] = {}
    for site in sites:
        timings = (site.metrics or {}).get("timings") or {}
        trains: dict[int, list[float]] = {}
        for r in timings.get("rounds") or []:
            if isinstance(r.get("train_s"), int | float):
                trains.setdefault(int(r["round"]), []).append(float(r["train_s"]))
        for number, values in trains.items():
            row = table.setdefault(number, {})
            row["local training"] = max(row.get("local training", 0.0), sum(values) / len(values))
        for p in timings.get("phases") or []:
            if p.get("phase") in PHASES and isinstance(p.get("seconds"), int | float):
                row = table.setdefault(int(p["round"]), {})
                row[p["phase"]] = max(row.get(p["phase"], 0.0), float(p["seconds"]))
    return dict(sorted(table.items()))


def _plot_timings(table: Mapping[int, Mapping[str, float]], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not table:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    rounds = list(table)
    bottom = [0.0] * len(rounds)
    for i, phase in enumerate(PHASES):
        values = [table[r].get(phase, 0.0) for r in rounds]
        ax.bar(rounds, values, bottom=bottom, label=phase, color=f"C{i}")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    training = [table[r].get("local training") for r in rounds]
    if any(t is not None for t in training):
        ax.plot(
            rounds, [math.nan if t is None else t for t in training], "k^-", label="local training (in ready)"
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("seconds (slowest site)")
    ax.set_title("Time per round and ledger phase")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(directory: Path, *, title: str = "swarmnode report", out: Path | None = None) -> ReportFiles:
    """Build the report for the sites under `directory` (into `out`, by default
    ``<directory>/report/``); returns the files written."""
    sites = find_sites(directory)
    baselines_path = directory / BASELINES_FILE
    baselines = json.loads(baselines_path.read_text()) if baselines_path.exists() else None
    return _build_report(sites, out or directory / REPORT_DIR, title=title, baselines=baselines)


def write_site_report(config_path: Path, out: Path | None = None) -> ReportFiles:
    """The report of one site from its own files only: its metrics.json and its ledger (whose
    rounds name every contributor), so a site needs no other site's directory. Written to
    `out`, by default ``report/`` next to its site.toml."""
    site = site_result(config_path)
    return _build_report(
        (site,),
        out or config_path.parent / REPORT_DIR,
        title=f"swarmnode report: site {site.name}",
        baselines=None,
    )


def _validation_section(sites: Sequence[SiteResult], metric: str, out: Path, plots: list[Path]) -> str | None:
    validation_png = out / "validation.png"
    if not _plot_validation(sites, metric, validation_png):
        return None
    plots.append(validation_png)
    return f'<h2>Validation per round</h2><img src="{validation_png.name}" alt="validation">'


def _test_section(
    rows: Sequence[Mapping[str, Any]], central: float | None, metric: str, out: Path, plots: list[Path]
) -> str:
    test_png = out / "test_metrics.png"
    if _plot_test(rows, central, metric, test_png):
        plots.append(test_png)
    table_rows = [[r["site"], r["swarm"], r["local_only"]] for r in rows]
    table_rows.append(["central (pooled data)", None, central])
    return (
        f"<h2>Final test {html.escape(metric)}</h2>"
        + (f'<img src="{test_png.name}" alt="test metrics">' if test_png in plots else "")
        + _table(["site", "swarm model", "site alone / central"], table_rows)
    )


def _site_test_metrics(sites: Sequence[SiteResult]) -> dict[str, dict[str, Any]]:
    """Every test metric each site reported (metrics.json ``test``: the built-in ones and the
    user's own, `models.training.MetricsFn`), by site."""
    tests = {s.name: (s.metrics or {}).get("test") for s in sites}
    return {name: dict(test) for name, test in tests.items() if isinstance(test, Mapping)}


def _test_metrics_section(test_metrics: Mapping[str, Mapping[str, Any]]) -> str | None:
    if not test_metrics:
        return None
    names = list(dict.fromkeys(name for test in test_metrics.values() for name in test))
    return "<h2>Test metrics (each site's test data)</h2>" + _table(
        ["site", *names], [[site, *(test.get(name) for name in names)] for site, test in test_metrics.items()]
    )


def _contributions_section(ledger_rounds: Sequence[Mapping[str, Any]], ledger_source: str | None) -> str:
    contribution_rows = []
    for r in ledger_rounds:
        total = sum(c["weight"] for c in r["contributors"]) or 1
        contributors = ", ".join(
            f"{c['name']}: {c['weight']} ({100 * c['weight'] / total:.0f}%)" for c in r["contributors"]
        )
        contribution_rows.append(
            [r["number"], r["outcome"], contributors, r["leader"] and r["leader"][-8:],
             r["verifier"] and r["verifier"][-8:], r["median_metric"], (r["merged_hash"] or "")[:16] or None]
        )  # fmt: skip
    return (
        "<h2>Contributions (from the ledger)</h2>"
        + (f"<p>replayed from the ledger of {html.escape(str(ledger_source))}</p>" if ledger_source else "")
        + (
            _table(
                [
                    "round",
                    "outcome",
                    "contributors (weight, share)",
                    "leader",
                    "verifier",
                    "median val",
                    "merged",
                ],
                contribution_rows,
            )
            if contribution_rows
            else "<p>no ledger rounds found</p>"
        )
    )


def _privacy_data(
    sites: Sequence[SiteResult], ledger_rounds: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The (epsilon, delta) spent per merged round and in total if the swarm's genesis asks
    for differential privacy (`swarmnode.privacy.privacy_summary`), else None."""
    from consensus.genesis import Genesis, GenesisError

    from .privacy import privacy_summary

    try:
        genesis = Genesis.load(NodeConfig.load(sites[0].config_path).ledger.genesis)
    except (GenesisError, ConfigError):
        return None
    if genesis.training.privacy is None:
        return None
    merged = [int(r["number"]) for r in ledger_rounds if r["outcome"] == "merged"]
    return privacy_summary(genesis.training.privacy, merged)


def _privacy_section(data: Mapping[str, Any] | None) -> str | None:
    if data is None:
        return None
    rounds = data["rounds"]
    total = rounds[-1] if rounds else None
    budget = "none" if data["epsilon_budget"] is None else _fmt(data["epsilon_budget"])
    return (
        "<h2>Differential privacy</h2>"
        f"<p>clip norm {_fmt(data['clip_norm'])}, noise multiplier {_fmt(data['noise_multiplier'])}, "
        f"delta {data['delta']:g}, epsilon budget {budget}; spent in total: epsilon "
        + (f"{_fmt(total['epsilon_rdp'])} (RDP), {_fmt(total['epsilon_prv'])} (PRV)" if total else "0")
        + ". Site-level guarantee for a site that contributed to every merged round (Opacus "
        "accountants, sampling rate 1; the budget is counted by RDP).</p>"
        + _table(
            ["round", "epsilon of the round (RDP)", "epsilon in total (RDP)", "epsilon in total (PRV)"],
            [[r["round"], r["epsilon_round_rdp"], r["epsilon_rdp"], r["epsilon_prv"]] for r in rounds],
        )
    )


def _timings_section(timing: Mapping[int, Mapping[str, float]], out: Path, plots: list[Path]) -> str | None:
    timings_png = out / "timings.png"
    if not _plot_timings(timing, timings_png):
        return None
    plots.append(timings_png)
    columns = ["local training", *PHASES]
    return (
        f'<h2>Timings</h2><img src="{timings_png.name}" alt="timings">'
        + _table(["round", *columns], [[r, *(row.get(c) for c in columns)] for r, row in timing.items()])
        + "<p>Phase durations as observed by each node (status polled every 0.25 s; the slowest site"
        " shown); 'ready' includes local training and waiting for the slowest site.</p>"
    )


def _head(
    sites: Sequence[SiteResult], final_hashes: Mapping[str, Any], baselines: Mapping[str, Any] | None
) -> str:
    """The lines under the title: which sites, whether they agree on the final model, the data."""
    agree = len(set(final_hashes.values())) == 1 and None not in final_hashes.values()
    head = (
        f"<p>site {html.escape(sites[0].name)}, from its own metrics and ledger; final model hash "
        + html.escape(str(final_hashes[sites[0].name] or "- (not stopped yet)"))
        + "</p>"
        if len(sites) == 1
        else f"<p>{len(sites)} sites; final model hash "
        + (f"<code>{html.escape(str(next(iter(final_hashes.values()))))}</code> on every site" if agree
           else "differs between sites or is missing: " + html.escape(json.dumps(final_hashes)))
        + "</p>"
    )  # fmt: skip
    if baselines:
        head += (
            f"<p>dataset {html.escape(str(baselines.get('dataset')))}, scenario "
            f"{html.escape(str(baselines.get('scenario')))}</p>"
        )
    return head


def _page(title: str, head: str, sections: Sequence[str]) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.2em .6em;font-size:90%}}
img{{max-width:100%}}
</style></head>
<body><h1>{html.escape(title)}</h1>{head}{"".join(sections)}</body></html>
"""


def _build_report(
    sites: Sequence[SiteResult], out: Path, *, title: str, baselines: Mapping[str, Any] | None
) -> ReportFiles:
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    metric = str(
        (baselines or {}).get("metric")
        or next((s.metrics["metric"] for s in sites if s.metrics and "metric" in s.metrics), "roc_auc")
    )
    plots: list[Path] = []
    rows = _test_rows(sites, baselines, metric)
    central = _value((baselines or {}).get("central"), metric)
    ledger_rounds, ledger_source = _ledger_rows(sites)
    timing = _timing_table(sites)
    privacy = _privacy_data(sites, ledger_rounds)
    test_metrics = _site_test_metrics(sites)
    sections = [
        section
        for section in (
            _validation_section(sites, metric, out, plots),
            _test_section(rows, central, metric, out, plots),
            _test_metrics_section(test_metrics),
            _contributions_section(ledger_rounds, ledger_source),
            _privacy_section(privacy),
            _timings_section(timing, out, plots),
        )
        if section is not None
    ]

    final_hashes = {s.name: (s.metrics or {}).get("final_hash") for s in sites}
    summary = {
        "metric": metric,
        "sites": [s.name for s in sites],
        "final_hashes": final_hashes,
        "test": rows,
        "test_metrics": test_metrics,
        "central": central,
        "baselines": baselines,
        "ledger_rounds": ledger_rounds,
        "privacy": privacy,
        "timings": {str(k): v for k, v in timing.items()},
    }
    summary_path = out / "report.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    html_path = out / "report.html"
    html_path.write_text(_page(title, _head(sites, final_hashes, baselines), sections), encoding="utf-8")
    return ReportFiles(html=html_path, plots=tuple(plots), summary=summary_path)
