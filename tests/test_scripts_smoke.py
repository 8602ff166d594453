"""Smoke tests of the two result scripts on their smallest settings (real nodes, real outputs).

Each runs the script as a subprocess, bounded in time, into a temp dir, and checks the
JSON it wrote: the structure, and facts that must hold whatever the machine's speed
(every swarm node ended with the same model, bytes were sent, both merge modes ran).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The Flower anchor is not part of this repository: CI keeps it beside the clone (FLOWER_ANCHOR);
# a bare clone elsewhere has no anchor, and then only our own two merge modes are checked.
FLOWER_ANCHOR = REPO.parent / "shared" / "anchors" / "flower" / "results" / "bench_flower.json"
pytestmark = pytest.mark.timeout(300)


def run_script(args: list[str], timeout: float = 240.0) -> None:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_reproduce_smallest_case(tmp_path: Path) -> None:
    out = tmp_path / "reproduce.json"
    run_script(
        ["scripts/reproduce.py", "--quick", "--sites", "3", "--seeds", "1", "--rounds", "2",
         "--scenarios", "uneven_class", "--jobs", "1", "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["failed_cases"] == []
    (run,) = result["runs"]
    assert run["swarm_same_final_model"] is True
    assert run["swarm_rounds"] == 2
    assert len(run["sites"]) == 3
    assert all(0.0 <= site["swarm"]["roc_auc"] <= 1.0 for site in run["sites"])
    (row,) = result["summary"]
    assert row["scenario"] == "uneven_class"
    assert row["seeds"] == 1
    assert "| breast_cancer | 3 | uneven_class |" in result["table_md"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_bench_round_four_processes(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run_script(
        ["scripts/bench_round.py", "--ns", "4", "--sizes", "10k", "--rounds", "1", "--scaling", "",
         "--flower", "recorded" if FLOWER_ANCHOR.exists() else "skip", "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    modes = {p["mode"]: p for p in result["processes"]}
    assert set(modes) == {"plain", "secure"}
    for res in modes.values():
        assert "error" not in res, res
        assert res["same_model_everywhere"] is True
        assert res["measured_rounds"] == 1
        assert res["bytes_sent_per_node"] > 0
    # A ciphertext is larger than the float32 vector: the secure mode must send more.
    assert modes["secure"]["bytes_sent_per_node"] > modes["plain"]["bytes_sent_per_node"]
    if FLOWER_ANCHOR.exists():
        assert "NOT this run" in result["flower_source"]
        (row,) = result["ratios"]
        assert row["flower_fedavg_round_s"] is not None  # the anchor recorded N=4/10k


def test_bench_round_resnet_size_at_its_smoke_width(tmp_path: Path) -> None:
    """The 11M size's code path (MONAI ResNet-18 as a `model.factory` model on 8x8 digits,
    trained each round) at 1/16 of its widths: both merge modes, same model everywhere."""
    pytest.importorskip("monai")
    out = tmp_path / "bench.json"
    run_script(
        ["scripts/bench_round.py", "--ns", "3", "--sizes", "resnet-smoke", "--rounds", "1", "--scaling", "",
         "--flower", "skip", "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    modes = {p["mode"]: p for p in result["processes"]}
    assert set(modes) == {"plain", "secure"}
    for res in modes.values():
        assert "error" not in res, res
        assert res["same_model_everywhere"] is True
        assert res["params"] == 45_366
        assert res["rounds"][-1]["train_s_max"] > 0
        assert res["bytes_sent_per_node"] > 0
    assert modes["secure"]["bytes_sent_per_node"] > modes["plain"]["bytes_sent_per_node"]


def test_dp_curve_smallest_case(tmp_path: Path) -> None:
    out = tmp_path / "dp_curve.json"
    run_script(
        ["scripts/reproduce.py", "--dp-curve", "--datasets", "breast_cancer", "--sites", "3", "--seeds", "1",
         "--rounds", "2", "--epsilons", "8", "--jobs", "1", "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["failed_cases"] == []
    assert sorted(str(r["epsilon"]) for r in result["runs"]) == ["8.0", "None"]
    private = next(r for r in result["runs"] if r["epsilon"] == 8.0)
    assert private["noise_multiplier"] > 0.1
    assert {row["epsilon"] for row in result["summary"]} == {8.0, None}
    assert out.with_suffix(".png").exists()
