"""`swarmnode genesis --class-names`: names for integer-coded classes, recorded in the genesis's
table; every site reads its integer codes as those names (a site with only some codes takes
part), and a count that does not match the founding data's classes is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consensus.genesis import Genesis
from swarmnode.cli import main
from swarmnode.config import NodeConfig
from swarmnode.siteinput import load_site_data

SITES = (("a", 7371), ("b", 7372))


def sites(tmp_path: Path) -> list[str]:
    (tmp_path / "a.csv").write_text("age,bmi,y\n40,22,0\n50,30,1\n41,23,2\n52,29,1\n")
    (tmp_path / "b.csv").write_text("age,bmi,y\n44,21,2\n51,31,0\n")  # no class 1
    for name, port in SITES:
        argv = ["init", "--name", name, "--dir", str(tmp_path / name), "--port", str(port)]
        assert main([*argv, "--data", str(tmp_path / f"{name}.csv"), "--label-column", "y"]) == 0
    members = [f"--member={n}={tmp_path / n / 'node.key'}@/ip4/127.0.0.1/tcp/{p}" for n, p in SITES]
    return ["genesis", "--no-secure", "--model-from", str(tmp_path / "a" / "site.toml"), *members]


def test_class_names_name_integer_codes_at_every_site(tmp_path: Path) -> None:
    argv = sites(tmp_path)
    out = tmp_path / "genesis.cbor"
    assert main([*argv, "--class-names", "healthy, sepsis, sirs", "--out", str(out)]) == 0
    schema = Genesis.load(out).data
    assert schema is not None
    assert schema.class_names == ("healthy", "sepsis", "sirs")
    b = load_site_data(NodeConfig.load(tmp_path / "b" / "site.toml"), schema, str(tmp_path / "b.csv"))
    assert b.class_names == ("healthy", "sepsis", "sirs")
    np.testing.assert_array_equal(b.labels, [2, 0])
    a = load_site_data(NodeConfig.load(tmp_path / "a" / "site.toml"), schema, str(tmp_path / "a.csv"))
    np.testing.assert_array_equal(a.labels, [0, 1, 2, 1])


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("healthy,sick", "--class-names gives 2 name(s) for the 3 classes of"),
        ("a,b,c,d", "--class-names gives 4 name(s) for the 3 classes of"),
        ("a,a,b", "data.class_names"),
        ("a,,b", "data.class_names"),
    ],
)
def test_class_names_that_do_not_fit_the_classes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], names: str, message: str
) -> None:
    argv = sites(tmp_path)
    capsys.readouterr()
    assert main([*argv, "--class-names", names, "--out", str(tmp_path / "g.cbor")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "g.cbor").exists()


def test_class_names_need_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = sites(tmp_path)
    capsys.readouterr()
    assert main([*argv, "--no-schema", "--class-names", "a,b,c", "--out", str(tmp_path / "g.cbor")]) == 2
    assert "drop --no-schema" in capsys.readouterr().err
