"""Smudging table: what the default smudging noise leaks over a run, and what it costs in precision.

For n contributors (t = n/2 + 1 decryption shares per round, every member contributing),
P parameters and R rounds, with the default CKKS parameters (`crypto.ckks.DEFAULT_PARAMS`:
a discrete Gaussian of sigma = 2^smudging_bits per share, a budget of 2^-smudging_budget_bits
per key epoch, `crypto.smudging`):

- shares: decryption shares made over the run (t per round);
- KL: the bound sum over shares and coefficients of e^2 / (2 sigma^2), e the Hoeffding bound
  on the aggregate's error (`SmudgingBudget.divergence`);
- statistical distance: sqrt(KL / 2) plus, per coefficient of every share, the Hoeffding
  tail and twice the sampler's distance from the Gaussian (`SmudgingBudget.distance`),
  for the whole run as if on one key and for the worst key epoch;
- key epochs: how many the budget forces (`smudging.key_epochs_needed`); the last row,
  10,000 rounds of 50M parameters, goes past one epoch's budget to show it (its whole-run
  distance is then a sum over independent keys, each epoch's within the budget);
- merge error of the decrypted weighted mean: RMS sqrt(t) sigma / 2^scale plus the
  rescaling roundings (t shares and n contributions, each uniform within q0/2), and the
  expected maximum over P parameters, at most RMS sqrt(2 ln 2P).

It also decrypts a small aggregate with the real sampler and compares the measured error
with the formula. Writes docs/results/smudging_table.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _provenance import REPO, machine  # scripts/ is on sys.path when this file runs

from crypto import ckks
from crypto import threshold as th
from crypto.ckks import DEFAULT_PARAMS, chunk_count
from crypto.smudging import SmudgingBudget, key_epochs_needed, sampler_distance, sampler_sigma
from crypto.testing import round_binding, run_key_epoch

CASES = ((16, 1_000_000, 100), (16, 50_000_000, 1000), (64, 1_000_000, 100), (64, 50_000_000, 1000))
LONG_RUN = (64, 50_000_000, 10_000)  # beyond one epoch's budget: shows the forced key epochs
MAX_DISTANCE_LOG2 = -40
MAX_MERGE_ERROR = 1e-5
DEFAULT_PARAMS_Q0 = ckks.context(DEFAULT_PARAMS).data_moduli[0]


def merge_rms(shares: int, contributions: int) -> float:
    """RMS error of one decrypted coefficient of the mean (weights normalised to sum 1)."""
    q0 = DEFAULT_PARAMS_Q0
    smudging = shares * sampler_sigma(DEFAULT_PARAMS.smudging_bits) ** 2
    rounding = (shares + contributions) * q0 * q0 / 12
    return math.sqrt(smudging + rounding) / 2.0**DEFAULT_PARAMS.scale_bits


def row(budget: SmudgingBudget, members: int, parameters: int, rounds: int) -> dict[str, Any]:
    shares = members // 2 + 1
    coefficients = chunk_count(DEFAULT_PARAMS, parameters) * DEFAULT_PARAMS.degree
    units = SmudgingBudget.units(members, shares, coefficients)
    per_epoch = min(rounds, budget.capacity // units)
    kl = rounds * budget.divergence(members, shares, coefficients)
    run_distance = budget.distance(rounds * units, rounds * shares * coefficients)
    epoch_distance = budget.distance(per_epoch * units, per_epoch * shares * coefficients)
    rms = merge_rms(shares, members)
    return {
        "members": members,
        "shares_per_decryption": shares,
        "parameters": parameters,
        "rounds": rounds,
        "coefficients_per_share": coefficients,
        "shares": rounds * shares,
        "total_kl_log2": math.log2(kl),
        "run_distance_log2": math.log2(run_distance),
        "worst_epoch_distance_log2": math.log2(epoch_distance),
        "key_epochs": key_epochs_needed(budget, [units] * rounds),
        "decryptions_per_key_epoch": budget.capacity // units,
        "merge_rms": rms,
        "merge_expected_max": rms * math.sqrt(2 * math.log(2 * parameters)),
    }


def measure(members: int, threshold: int, length: int) -> dict[str, Any]:
    """Decrypt one aggregate of `members` contributions with the real sampler: measured error."""
    spec, identities, keys = run_key_epoch(members, threshold)
    ctx = keys[0].context
    values = np.random.default_rng(7).uniform(-100, 100, length)
    contributions = [
        ckks.encrypt(ctx, k.secret, round_binding(spec.epoch_id), k.me, values, 1.0, float(members))
        for k in keys
    ]
    aggregate = ckks.add(contributions)
    decrypt_set = [i.node_id for i in identities[:threshold]]
    shares = [th.make_decryption_share(k, aggregate, decrypt_set) for k in keys[:threshold]]
    total, weight = th.combine_shares(spec, aggregate, shares)
    error = total / weight - values
    rms = merge_rms(threshold, members)
    return {
        "members": members,
        "shares": threshold,
        "parameters": length,
        "measured_rms": float(np.sqrt(np.mean(error**2))),
        "formula_rms": rms,
        "measured_max": float(np.abs(error).max()),
        "formula_expected_max": rms * math.sqrt(2 * math.log(2 * length)),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| n | t | parameters x rounds | shares | KL (log2) | SD, run (log2) | SD, worst epoch (log2) "
        "| key epochs | merge error RMS | expected max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['members']} | {r['shares_per_decryption']} | {r['parameters']:,} x {r['rounds']} "
            f"| {r['shares']:,} | {r['total_kl_log2']:.1f} | {r['run_distance_log2']:.1f} "
            f"| {r['worst_epoch_distance_log2']:.1f} | {r['key_epochs']} | {r['merge_rms']:.2e} "
            f"| {r['merge_expected_max']:.2e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "smudging_table.json")
    parser.add_argument("--measure-members", type=int, default=8)
    parser.add_argument("--measure-length", type=int, default=4 * 8192 - 1)
    args = parser.parse_args(argv)
    host = machine()
    budget = DEFAULT_PARAMS.smudging
    rows = [row(budget, n, p, r) for n, p, r in CASES]
    long_run = row(budget, *LONG_RUN)
    measured = measure(args.measure_members, args.measure_members // 2 + 1, args.measure_length)
    table = markdown([*rows, long_run])
    ok = all(
        r["run_distance_log2"] <= MAX_DISTANCE_LOG2
        and r["worst_epoch_distance_log2"] <= MAX_DISTANCE_LOG2
        and r["merge_expected_max"] <= MAX_MERGE_ERROR
        for r in rows
    )
    result = {
        "host": host,
        "smudging_bits": DEFAULT_PARAMS.smudging_bits,
        "sigma_log2": math.log2(sampler_sigma(DEFAULT_PARAMS.smudging_bits)),
        "budget_bits": DEFAULT_PARAMS.smudging_budget_bits,
        "capacity_units": budget.capacity,
        "sampler_distance_log2": math.log2(sampler_distance(DEFAULT_PARAMS.smudging_bits)),
        "rows": rows,
        "long_run": long_run,
        "measured": measured,
        "within_targets": ok,
        "table_md": table,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print()
    print(
        f"measured with the real sampler ({measured['members']} members, {measured['shares']} shares, "
        f"{measured['parameters']} parameters): RMS {measured['measured_rms']:.3e} "
        f"(formula {measured['formula_rms']:.3e}), max {measured['measured_max']:.3e} "
        f"(expected max at most {measured['formula_expected_max']:.3e})"
    )
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
