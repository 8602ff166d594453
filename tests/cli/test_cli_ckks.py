"""`swarmnode genesis --ckks-params`: a known set goes into the genesis, an unknown one is
refused in one line naming the field and the known sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.genesis import DEFAULT_CKKS_PARAMS, Genesis
from swarmnode.cli import main

N16384 = "ckks-n16384-q60x3-coeff-s94"


def genesis_argv(tmp_path: Path, out: str, *extra: str) -> list[str]:
    members = []
    for name, port in (("a", 7351), ("b", 7352), ("c", 7353)):
        site = tmp_path / name
        assert main(["init", "--name", name, "--dir", str(site), "--port", str(port)]) == 0
        members += ["--member", f"{name}={site / 'node.key'}@/ip4/127.0.0.1/tcp/{port}"]
    model = str(tmp_path / "a" / "site.toml")
    return ["genesis", *members, "--model-from", model, "--out", str(tmp_path / out), *extra]


def test_genesis_takes_a_ckks_parameter_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(genesis_argv(tmp_path, "default.cbor")) == 0
    assert Genesis.load(tmp_path / "default.cbor").training.ckks_params == DEFAULT_CKKS_PARAMS
    argv = genesis_argv(tmp_path / "big", "big.cbor", "--ckks-params", N16384)
    assert main(argv) == 0
    assert Genesis.load(tmp_path / "big" / "big.cbor").training.ckks_params == N16384
    capsys.readouterr()
    assert main(genesis_argv(tmp_path / "bad", "bad.cbor", "--ckks-params", "ckks-n4096")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "training.ckks_params: unknown CKKS parameter set 'ckks-n4096'" in err
    assert N16384 in err
    assert not (tmp_path / "bad" / "bad.cbor").exists()
