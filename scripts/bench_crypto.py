#!/usr/bin/env python3
"""Benchmark threshold CKKS (crypto.secure_merge) against plain TenSEAL in the same run.

    python scripts/bench_crypto.py [--quick] [--json PATH]

Measures, for one model-sized vector (1M parameters; 100k with --quick):
- key epoch time for n = 4 and 16 members (all members simulated in this process);
- encryption rate in parameters per second per core (CPU time; wall time too), and
  bytes per parameter on the wire;
- plain TenSEAL `CKKSVector` encryption of the same vector (its default-style
  N = 8192, [60, 40, 40, 60], scale 2^40 context) and its serialized size, as reference;
- aggregation time (decode + validate + add + encode) for n = 4, 16, 64 contributions
  (each contributor may be summed once: the 16 members' ciphertexts, and for 64 the same
  ciphertexts re-addressed to 48 stand-in contributor ids; addition cost does not depend
  on the contents or the names, and the 64-sum is never decrypted);
- decryption share time per member and combine time (t = 9 of 16 shares);
- max abs error of the 16-member weighted mean of vectors in [-100, 100] with random
  weights, decrypted by t = 9 members and by all 16 (worst case: 16 smudging terms);
- robust decryption (`--robust`, or `--robust-only` to add just this section to an
  existing --json file): point shares with PRSS-shared smudging (crypto/robust_merge.py)
  against today's shares at n = 4, 5, 7, 10, every member contributing and publishing,
  measured on a few ciphertexts and scaled linearly to `length` parameters.

Timings on a shared 2-core host are noisy: each is reported as min and median over
repetitions where there are several, with both CPU and wall time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tenseal as ts
from _provenance import git_commit  # scripts/ is on sys.path when this file runs

from crypto import ckks, threshold
from crypto import robust_merge as rm
from crypto import secure_merge as sm
from crypto.ckks_params import DEFAULT_PARAMS
from crypto.identity import NodeId, NodeIdentity
from crypto.pointshare import PointShare
from crypto.testing import round_binding, run_key_epoch, run_prss_dealing

T = TypeVar("T")


def timed(function: Callable[[], T]) -> tuple[T, float, float]:
    """(result, cpu seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "count": len(values)}


def readdressed(blob: bytes, contributor: NodeId) -> bytes:
    """`blob` (one contribution) with the same residues and seed, re-addressed to `contributor`.

    A well-formed stand-in for another contributor's ciphertext, for timing aggregation only:
    its mask is bound to the original contributor, so a sum holding it decrypts to garbage.
    """
    ctx = ckks.context()
    vector = ckks.EncryptedVector.from_bytes(ctx, blob)
    (seed,) = vector.header.seeds
    residues = (batch for _, batch in vector.batches())
    return ckks.EncryptedVector.from_residues(
        ctx, vector.length, vector.binding, {contributor: seed}, residues
    ).to_bytes()


def bench_epochs(sizes: list[int]) -> dict[str, Any]:
    out = {}
    for n in sizes:
        (_, _, _), cpu, wall = timed(lambda n=n: run_key_epoch(n))  # type: ignore[misc]
        out[str(n)] = {
            "threshold": threshold.default_threshold(n),
            "total_cpu_s": cpu,
            "total_wall_s": wall,
            "per_member_cpu_s": cpu / n,
        }
        print(f"key epoch n={n:3d}: {wall:6.2f} s for all members, {cpu / n:.3f} s CPU per member")
    return out


def bench_tenseal(vector: np.ndarray) -> dict[str, Any]:
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    context.global_scale = 2**40
    encrypted, cpu, wall = timed(lambda: ts.ckks_vector(context, vector.tolist()))
    wire, ser_cpu, _ = timed(encrypted.serialize)
    result: dict[str, Any] = {
        "context": "N=8192, coeff_mod_bit_sizes=[60,40,40,60], scale=2^40",
        "encrypt_cpu_s": cpu,
        "encrypt_wall_s": wall,
        "params_per_s_per_core": vector.size / cpu,
        "serialize_cpu_s": ser_cpu,
        "bytes_per_param": len(wire) / vector.size,
        "max_abs_error": float(np.abs(np.array(encrypted.decrypt()) - vector).max()),
    }
    print(
        f"tenseal CKKSVector: {result['params_per_s_per_core'] / 1e6:.2f}M params/s/core, "
        f"{result['bytes_per_param']:.1f} B/param"
    )
    return result


def bench_large(length: int) -> dict[str, Any]:
    """One merge of three `length`-parameter updates (t + 1 for t = 2: the fewest a decryptor
    accepts), end to end, one step at a time to bound memory."""
    spec, _, keys = run_key_epoch(3)  # t = 2
    binding = round_binding(spec.epoch_id)
    rng = np.random.default_rng(9)
    builder = sm.AggregateBuilder(length, DEFAULT_PARAMS, binding=binding)
    expected = np.zeros(length, dtype=np.float64)
    out: dict[str, Any] = {"length": length, "encrypt_wall_s": [], "add_wall_s": []}
    for i, weight in enumerate((1.0, 3.0, 4.0)):
        values = rng.uniform(-1, 1, length).astype(np.float32)
        expected += weight / 8.0 * values
        blob, _, wall = timed(
            lambda k=keys[i], v=values, w=weight: sm.encrypt_update(k, v, w, 8.0, binding=binding)  # type: ignore[misc]
        )
        out["encrypt_wall_s"].append(wall)
        out["ciphertext_bytes"] = len(blob)
        _, _, wall = timed(functools.partial(builder.add, blob, keys[i].me))
        out["add_wall_s"].append(wall)
        del blob, values
    aggregate, _, out["aggregate_result_wall_s"] = timed(builder.result)
    del builder
    decrypt_set = list(spec.members[:2])
    parts = []
    for k in keys[:2]:

        def make_share(k: threshold.EpochKeys = k) -> bytes:
            return sm.decryption_share(
                k, aggregate, decrypt_set, contributions=3, min_peers=2, binding=binding
            )

        part, _, wall = timed(make_share)
        parts.append(part)
        out.setdefault("share_wall_s", []).append(wall)
    merged, _, out["combine_wall_s"] = timed(
        lambda: sm.combine(spec, aggregate, parts, params=DEFAULT_PARAMS)
    )
    out["max_abs_error_float32_output"] = float(np.abs(merged.mean.astype(np.float64) - expected).max())
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"large: {length:,} parameters merged end to end; encrypt {out['encrypt_wall_s'][0]:.0f} s, "
        f"share {out['share_wall_s'][0]:.0f} s, combine {out['combine_wall_s']:.0f} s, "
        f"error {out['max_abs_error_float32_output']:.2e}, peak RSS {out['peak_rss_gib']:.1f} GiB"
    )
    return out


def _shifted_point(blob: bytes, length: int) -> bytes:
    """`blob` with 2^83 (about 0.008 at scale 2^90) added to every coefficient but the weight."""
    ctx = ckks.context()
    share = PointShare.from_bytes(ctx, blob)
    body = share.batch(0, share.header.chunks).copy()
    for j, q in enumerate(ctx.data_moduli):
        flat = body[:, j, :].reshape(-1)
        weight = flat[length]
        flat[:] = (flat + np.uint64((1 << 83) % q)) % np.uint64(q)
        flat[length] = weight
        body[:, j, :] = flat.reshape(body.shape[0], -1)
    return ckks.encode_blob(blob[:4], share.header, [ckks.pack60(body)])


def bench_robust_one(n: int, chunks: int, scale: float) -> dict[str, Any]:
    """Today's share and combine against point shares for n members (t = n // 2 + 1)."""
    spec, _, keys = run_key_epoch(n)
    prss_keys = run_prss_dealing(spec)
    t = spec.threshold
    length = chunks * ckks.DEFAULT_PARAMS.degree - 1
    rng = np.random.default_rng(n)
    values = [rng.uniform(-1, 1, length).astype(np.float32) for _ in range(n)]
    weights = [float(w) for w in rng.integers(1, 10, n)]
    total = sum(weights)
    blobs = {
        k.me: sm.encrypt_update(k, v, w, total, binding=round_binding(spec.epoch_id))
        for k, v, w in zip(keys, values, weights, strict=True)
    }
    aggregate = sm.aggregate_contributions(
        blobs, length=length, binding=round_binding(spec.epoch_id), params=DEFAULT_PARAMS
    )
    expected = sum(w / total * v.astype(np.float64) for v, w in zip(values, weights, strict=True))
    for k in keys:
        _ = k.dealer_quotients  # once per epoch in both designs
    decrypt_set = list(spec.members[:t])
    today_cpu, today = [], []
    for k in keys[:t]:
        share, cpu, _ = timed(
            lambda k=k: sm.decryption_share(
                k, aggregate, decrypt_set, contributions=n, min_peers=2, binding=round_binding(spec.epoch_id)
            )  # type: ignore[misc]
        )
        today_cpu.append(cpu)
        today.append(share)
    merged, today_combine_cpu, _ = timed(lambda: sm.combine(spec, aggregate, today, params=DEFAULT_PARAMS))
    point_cpu, points = [], []
    for k, p in zip(keys, prss_keys, strict=True):
        point, cpu, _ = timed(
            lambda k=k, p=p: rm.make_point_share(
                k, p, aggregate, contributions=n, min_peers=2, binding=round_binding(spec.epoch_id)
            )  # type: ignore[misc]
        )
        point_cpu.append(cpu)
        points.append(point)
    verdict, check_cpu, _ = timed(lambda: rm.combine_points(spec, aggregate, points))
    bad = list(points)
    bad[1] = _shifted_point(points[1], length)
    try:
        caught = [w.point for w in rm.combine_points(spec, aggregate, bad).wrong]
        byzantine = f"named {caught}"
    except rm.WrongShareDetected:
        byzantine = "detected, not named"
    out: dict[str, Any] = {
        "threshold": t,
        "measured_params": length,
        "prss_keys_per_member": len(prss_keys[0].keys),
        "max_faulty": verdict.max_faulty,
        "today_share_cpu_s_per_1m": statistics.median(today_cpu) * scale,
        "today_combine_cpu_s_per_1m": today_combine_cpu * scale,
        "today_share_bytes_per_param": len(today[0]) / length,
        "today_max_abs_error": float(np.abs(merged.mean - expected).max()),
        "point_share_cpu_s_per_1m": statistics.median(point_cpu) * scale,
        "point_check_combine_cpu_s_per_1m": check_cpu * scale,
        "point_share_bytes_per_param": len(points[0]) / length,
        "point_max_abs_error": float(np.abs(verdict.merged.mean - expected).max()),
        "one_shifted_share_of_n": byzantine,
    }
    out["point_over_today_share"] = out["point_share_cpu_s_per_1m"] / out["today_share_cpu_s_per_1m"]
    print(
        f"robust n={n:2d} t={t}: share {out['today_share_cpu_s_per_1m']:.2f} -> "
        f"{out['point_share_cpu_s_per_1m']:.2f} s CPU per 1M params ({out['point_over_today_share']:.1f}x), "
        f"combine {out['today_combine_cpu_s_per_1m']:.2f} -> "
        f"{out['point_check_combine_cpu_s_per_1m']:.2f} s, "
        f"{out['today_share_bytes_per_param']:.1f} -> {out['point_share_bytes_per_param']:.1f} B/param, "
        f"error {out['today_max_abs_error']:.1e} -> {out['point_max_abs_error']:.1e}; "
        f"one shifted share: {byzantine}"
    )
    return out


def bench_robust(length: int, sizes: list[int], chunks: int = 4) -> dict[str, Any]:
    """Point shares vs today's shares, measured on `chunks` ciphertexts and scaled to `length`."""
    params = ckks.DEFAULT_PARAMS
    scale = ckks.chunk_count(params, length) / chunks
    out: dict[str, Any] = {
        "scaled_to_params": length,
        "measured_chunks": chunks,
        "cpu": "process CPU seconds",
    }
    for n in sizes:
        out[str(n)] = bench_robust_one(n, chunks, scale)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k parameters instead of 1M")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    parser.add_argument(
        "--large", type=int, metavar="N", help="also run one end-to-end merge of N parameters (e.g. 50000000)"
    )
    parser.add_argument("--robust", action="store_true", help="also measure robust decryption (point shares)")
    parser.add_argument(
        "--robust-only",
        action="store_true",
        help="measure only robust decryption and add it to the --json file (other sections kept)",
    )
    parser.add_argument(
        "--robust-sizes", default="4,5,7,10", help="member counts for --robust (default 4,5,7,10)"
    )
    args = parser.parse_args(argv)
    length = 100_000 if args.quick else 1_000_000
    sizes = [int(x) for x in args.robust_sizes.split(",")]
    if args.robust_only:
        results: dict[str, Any] = {}
        if args.json and args.json.exists():
            results = json.loads(args.json.read_text())
        results["robust_decryption"] = bench_robust(length, sizes)
        results["robust_decryption"]["host"] = {"git_commit": git_commit(), "loadavg": os.getloadavg()}
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0
    params = ckks.DEFAULT_PARAMS
    rng = np.random.default_rng(4)
    results = {
        "length": length,
        "quick": args.quick,
        "params": {
            "degree": params.degree,
            "coeff_bits": list(params.coeff_bits),
            "scale_bits": params.scale_bits,
            "weight_scale_bits": params.weight_scale_bits,
            "smudging_bits": params.smudging_bits,
            "security_bits": params.security_bits,
        },
        "host": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "tenseal": ts.__version__,
            "cpus": os.cpu_count(),
            "git_commit": git_commit(),
            "loadavg_start": os.getloadavg(),
        },
    }
    print(f"threshold CKKS benchmark, {length:,} parameters")

    results["key_epoch"] = bench_epochs([4, 16])
    spec, _, keys = run_key_epoch(16)
    binding = round_binding(spec.epoch_id)
    members = 16
    values = [rng.uniform(-100, 100, length).astype(np.float32) for _ in range(members)]
    weights = [float(w) for w in rng.uniform(1, 1000, members)]
    total = sum(weights)

    blobs, enc_cpu, enc_wall = [], [], []
    for k, v, w in zip(keys, values, weights, strict=True):
        blob, cpu, wall = timed(lambda k=k, v=v, w=w: sm.encrypt_update(k, v, w, total, binding=binding))  # type: ignore[misc]
        blobs.append(blob)
        enc_cpu.append(cpu)
        enc_wall.append(wall)
    rate = [length / c for c in enc_cpu]
    results["encrypt"] = {
        "cpu_s": stats(enc_cpu),
        "wall_s": stats(enc_wall),
        "params_per_s_per_core": {"max": max(rate), "median": statistics.median(rate)},
        "bytes_per_param": len(blobs[0]) / length,
    }
    print(
        f"encrypt: {statistics.median(rate) / 1e6:.2f}M params/s/core median "
        f"({max(rate) / 1e6:.2f}M best), {len(blobs[0]) / length:.2f} B/param"
    )
    results["tenseal_reference"] = bench_tenseal(values[0].astype(np.float64))
    results["ratios"] = {
        "bytes_per_param_ours_over_tenseal": results["encrypt"]["bytes_per_param"]
        / results["tenseal_reference"]["bytes_per_param"],
        "encrypt_rate_ours_over_tenseal": statistics.median(rate)
        / results["tenseal_reference"]["params_per_s_per_core"],
    }

    results["aggregate"] = {}
    aggregate16 = b""
    by_contributor = {k.me: blob for k, blob in zip(keys, blobs, strict=True)}
    for i in range(64 - members):  # stand-ins: a contributor may be in a sum only once
        stand_in = NodeIdentity.generate().node_id
        by_contributor[stand_in] = readdressed(blobs[i % members], stand_in)
    for n in (4, 16, 64):
        contributions = dict(list(by_contributor.items())[:n])
        aggregate, cpu, wall = timed(
            lambda c=contributions: sm.aggregate_contributions(  # type: ignore[misc]
                c, length=length, binding=binding, params=DEFAULT_PARAMS
            )
        )
        if n == members:
            aggregate16 = aggregate
        results["aggregate"][str(n)] = {"cpu_s": cpu, "wall_s": wall, "per_contribution_cpu_s": cpu / n}
        print(f"aggregate n={n:3d}: {wall:6.2f} s ({cpu / n:.3f} s CPU per contribution)")

    expected = sum(w / total * v.astype(np.float64) for v, w in zip(values, weights, strict=True))
    results["decrypt"] = {}
    decrypt_sets = (("t_of_16", list(spec.members[: spec.threshold])), ("all_16", list(spec.members)))
    for label, decrypt_set in decrypt_sets:
        share_cpu, share_wall, parts = [], [], []
        for k in keys[: len(decrypt_set)]:

            def make_share(k: threshold.EpochKeys = k, d: list[NodeId] = decrypt_set) -> bytes:
                return sm.decryption_share(
                    k, aggregate16, d, contributions=members, min_peers=2, binding=binding
                )

            part, cpu, wall = timed(make_share)
            parts.append(part)
            share_cpu.append(cpu)
            share_wall.append(wall)
        merged, cpu, wall = timed(lambda p=parts: sm.combine(spec, aggregate16, p, params=DEFAULT_PARAMS))  # type: ignore[misc]
        ctx = ckks.context()
        sums, weight_sum = threshold.combine_shares(
            spec,
            ckks.EncryptedVector.from_bytes(ctx, aggregate16),
            [threshold.DecryptionShare.from_bytes(ctx, p) for p in parts],
        )
        error = float(np.abs(sums / weight_sum - expected).max())
        error32 = float(np.abs(merged.mean.astype(np.float64) - expected).max())
        results["decrypt"][label] = {
            "shares": len(parts),
            "share_cpu_s": stats(share_cpu),
            "share_wall_s": stats(share_wall),
            "share_bytes_per_param": len(parts[0]) / length,
            "combine_cpu_s": cpu,
            "combine_wall_s": wall,
            "max_abs_error": error,
            "max_abs_error_float32_output": error32,
        }
        print(
            f"decrypt {label} ({len(parts)} shares): share {statistics.median(share_cpu):.2f} s CPU each, "
            f"combine {wall:.2f} s, max abs error {error:.2e} (float32 output {error32:.2e})"
        )
    if args.robust:
        results["robust_decryption"] = bench_robust(length, sizes)
    if args.large:
        results["large"] = bench_large(args.large)
    results["host"]["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
