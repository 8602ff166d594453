"""Real-world tables through the CLI: `swarmnode genesis` records the founding site's table,
and a site whose columns differ from it is refused by `swarmnode run` in one line naming the
missing and extra columns (a different feature count without a table: one line too, not a
traceback)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from consensus.genesis import Genesis
from models.schema import CategoricalColumn, DataSchema
from swarmnode.cli import main

pytestmark = pytest.mark.timeout(180)


def found(tmp_path: Path, *genesis_options: str) -> Path:
    """Sites a and b on a.csv / b.csv, a genesis from a's site.toml, copied next to a's."""
    for name, port in (("a", 7341), ("b", 7342)):
        argv = ["init", "--name", name, "--dir", str(tmp_path / name), "--port", str(port)]
        argv += ["--data", str(tmp_path / f"{name}.csv"), "--label-column", "y"]
        assert main(argv) == 0
    members = [
        f"{n}={tmp_path / n / 'node.key'}@/ip4/127.0.0.1/tcp/{p}" for n, p in (("a", 7341), ("b", 7342))
    ]
    out = tmp_path / "genesis.cbor"
    argv = ["genesis", "--name", "tables", "--no-secure", "--model-from", str(tmp_path / "a" / "site.toml")]
    for line in members:
        argv += ["--member", line]
    assert main([*argv, *genesis_options, "--out", str(out)]) == 0
    shutil.copy(out, tmp_path / "a" / "genesis.cbor")
    return out


def run_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["run", "--plain", "--config", str(tmp_path / "a" / "site.toml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1
    return err


def test_genesis_records_the_table_and_misaligned_columns_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = "40,22,f,sirs\n50,30,m,healthy\n41,23,m,sirs\n52,29,f,sepsis\n"
    (tmp_path / "a.csv").write_text("age,bmi,sex,y\n" + rows)
    (tmp_path / "b.csv").write_text("age,bmi,sex,y\n" + rows)
    genesis = Genesis.load(found(tmp_path))
    assert genesis.data == DataSchema(
        feature_names=("age", "bmi", "sex"),
        class_names=("healthy", "sepsis", "sirs"),
        categorical=(CategoricalColumn(name="sex", categories=("f", "m")),),
    )
    assert "categorical sex: f, m" in genesis.describe()
    # Site a's file changes afterwards: a column renamed, another added.
    (tmp_path / "a.csv").write_text("age,weight,sex,crp,y\n40,80,f,1,sirs\n50,70,m,2,healthy\n")
    err = run_error(tmp_path, capsys)
    assert "a.csv" in err
    assert "missing 1: 'bmi'; extra 2: 'weight', 'crp'" in err


def test_a_different_feature_count_without_a_table_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.csv").write_text("age,bmi,y\n40,22,p\n50,30,q\n41,23,p\n52,29,q\n")
    (tmp_path / "b.csv").write_text("age,bmi,y\n40,22,p\n50,30,q\n")
    assert Genesis.load(found(tmp_path, "--no-schema")).data is None
    (tmp_path / "a.csv").write_text("age,bmi,crp,y\n40,22,1,p\n50,30,2,q\n41,23,3,p\n52,29,4,q\n")
    err = run_error(tmp_path, capsys)
    assert "3 features after preprocessing, but the spec expects 2" in err
