"""`swarmnode init`, `genesis`, `invite`, `join`: files in a temporary directory, and every error path."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from consensus.genesis import Genesis
from consensus.transactions import JoinRequest, tx_codec
from crypto.identity import NodeIdentity
from swarmnode.cli import main
from swarmnode.config import NodeConfig
from swarmnode.scaffold import load_invite, node_id_from_peer_id


def init(tmp_path: Path, name: str, port: int, *extra: str) -> Path:
    assert main(["init", "--name", name, "--dir", str(tmp_path / name), "--port", str(port), *extra]) == 0
    return tmp_path / name / "site.toml"


def member(tmp_path: Path, name: str, port: int) -> str:
    return f"{name}={tmp_path / name / 'node.key'}@/ip4/127.0.0.1/tcp/{port}"


def test_init_writes_private_key_and_loadable_commented_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = init(tmp_path, "hospital-a", 7301, "--model", "mlp", "--hidden", "16,8", "--weightage", "7")
    out = capsys.readouterr().out
    key = tmp_path / "hospital-a" / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    identity = NodeIdentity.load(key)
    assert identity.node_id.peer_id in out
    assert f"--member hospital-a={identity.node_id.peer_id}@/ip4/127.0.0.1/tcp/7301" in out
    text = config_path.read_text()
    assert text.count("#") > 20  # commented for a human
    config = NodeConfig.load(config_path)
    assert config.node.name == "hospital-a"
    assert config.node.key_file == key.resolve()
    assert config.network.port == 7301
    assert (config.model.kind, config.model.n_features, config.model.n_classes) == ("mlp", 30, 2)
    assert config.model.hidden == (16, 8)
    assert config.data.source == "breast_cancer"
    assert config.data.positive_class == "malignant"
    assert config.swarm.weightage == 7
    # a second init into the same directory never clobbers the key
    assert main(["init", "--name", "x", "--dir", str(tmp_path / "hospital-a")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert NodeIdentity.load(key).node_id == identity.node_id


def test_init_reads_features_from_a_data_file_and_reports_missing_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    site = tmp_path / "s"
    site.mkdir()
    np.savez(site / "local.npz", X=np.zeros((6, 4), dtype=np.float32), y=np.array([0, 1, 2, 0, 1, 2]))
    monkeypatch.chdir(site)  # --data is relative to the working directory
    init(tmp_path, "s", 7302, "--data", "local.npz")
    assert (NodeConfig.load(site / "site.toml").model.n_features, 3) == (4, 3)
    assert main(["init", "--name", "t", "--dir", str(tmp_path / "t"), "--data", "missing.npz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "missing.npz" in err
    assert "Traceback" not in err
    assert not (tmp_path / "t" / "node.key").exists()


def test_init_data_paths_are_relative_to_the_working_directory_not_to_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`init --data ../data/a.csv --dir site` once resolved the path against --dir."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("x1,x2,y\n1,2,p\n3,4,q\n5,6,p\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    argv = ["--data", "../data/a.csv", "--test-data", "../data/a.csv", "--label-column", "y"]
    init(tmp_path, "a", 7303, *argv)
    config = NodeConfig.load(tmp_path / "a" / "site.toml")
    assert config.data.source == config.data.test_source == str((tmp_path / "data" / "a.csv").resolve())
    assert config.model.n_features == 2


def test_genesis_from_member_lines_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = init(tmp_path, "a", 7311), init(tmp_path, "b", 7312)
    capsys.readouterr()
    b_id = NodeIdentity.load(tmp_path / "b" / "node.key").node_id
    out = tmp_path / "genesis.cbor"
    argv = [
        "genesis", "--name", "demo", "--member", member(tmp_path, "a", 7311),
        "--member", f"b={b_id.peer_id}@/ip4/127.0.0.1/tcp/7312", "--model-from", str(a),
        "--min-peers", "2", "--threshold", "2/3", "--max-rounds", "4", "--patience", "2",
        "--join-policy", "members:2", "--phase-timeout", "30", "--out", str(out),
        "--no-secure",  # a secure swarm needs t + 1 = 3 founders
    ]  # fmt: skip
    assert main(argv) == 0
    genesis = Genesis.load(out)
    assert genesis.chain_id.hex() in capsys.readouterr().out
    assert [m.name for m in genesis.members] == ["a", "b"]
    assert genesis.members[1].node_id == b_id
    assert genesis.training.model_spec_hash == NodeConfig.load(a).model.spec_hash()
    assert (genesis.training.threshold.numerator, genesis.training.threshold.denominator) == (2, 3)
    assert (genesis.training.stopping.max_rounds, genesis.training.stopping.patience) == (4, 2)
    assert genesis.join_policy.approvals == 2
    assert (genesis.training.timeouts.decrypt, genesis.training.timeouts.ready_wait) == (30.0, 600.0)
    assert main(["genesis-show", str(out)]) == 0
    assert "swarm 'demo'" in capsys.readouterr().out
    assert main(argv) == 2  # never overwrites a genesis
    assert "refusing to overwrite" in capsys.readouterr().err

    def fails(*changes: str) -> str:
        assert main(["genesis", "--model-from", str(a), "--out", str(tmp_path / "g2.cbor"), *changes]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "Traceback" not in err
        return err

    ok_member = ["--member", member(tmp_path, "a", 7311)]
    assert "at least one --member" in fails()
    assert "expected a peer id" in fails("--member", "a=nokey@/ip4/1.2.3.4/tcp/1")
    assert "multiaddr" in fails("--member", f"a={b_id.peer_id}@ip4-no-slash")
    assert "training.min_peers" in fails(*ok_member, "--min-peers", "1")
    assert "needs plaintext" in fails(*ok_member, "--merge", "median")
    assert "--threshold" in fails(*ok_member, "--threshold", "3/2")
    assert "join_policy.approvals" in fails(*ok_member, "--join-policy", "members:5")
    assert "expected members:K or admin:KEY" in fails(*ok_member, "--join-policy", "everyone")
    assert "training.timeouts.contribute" in fails(*ok_member, "--phase-timeout", "0")
    assert "config file not found" in fails(*ok_member, "--model-from", str(tmp_path / "nope.toml"))
    # plaintext robust merges are allowed when the swarm says so
    assert main(["genesis", *ok_member, "--model-from", str(a), "--no-secure", "--merge", "median",
                 "--out", str(tmp_path / "g3.cbor")]) == 0  # fmt: skip
    assert not Genesis.load(tmp_path / "g3.cbor").training.secure


def test_genesis_merge_rule_and_its_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = init(tmp_path, "a", 7341)
    base = ["genesis", "--member", member(tmp_path, "a", 7341), "--model-from", str(a), "--no-secure"]
    out = tmp_path / "prox.cbor"
    assert main([*base, "--merge", "fedprox", "--merge-param", "mu=0.5", "--out", str(out)]) == 0
    training = Genesis.load(out).training
    assert (training.merge_method, training.merge_settings()) == ("fedprox", {"mu": 0.5})
    capsys.readouterr()
    for extra, message in [
        (["--merge", "fedprox", "--merge-param", "mu=lots"], "--merge-param 'mu=lots': VALUE must be"),
        (["--merge", "fedprox", "--merge-param", "nu=1"], "training.merge_params: merge rule 'fedprox'"),
        (["--merge", "fedprox", "--merge-param", "mu=-1"], "training.merge_params.mu: must be in"),
        (["--merge-param", "mu=1"], "merge rule 'mean' has no parameter mu"),
    ]:
        assert main([*base, *extra, "--out", str(tmp_path / "bad.cbor")]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert err.count("\n") == 1
    assert main([*base, "--merge", "krum"]) == 2  # argparse: the registry's names are the only choices
    assert "'trimmed_mean', 'fedprox')" in capsys.readouterr().err


def test_invite_and_join(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = init(tmp_path, "a", 7321)
    init(tmp_path, "b", 7322)
    genesis_path = tmp_path / "a" / "genesis.cbor"
    argv = ["genesis", "--member", member(tmp_path, "a", 7321), "--member", member(tmp_path, "b", 7322),
            "--no-secure"]  # fmt: skip
    assert main([*argv, "--model-from", str(a), "--out", str(genesis_path)]) == 0
    invite = tmp_path / "invite.cbor"
    assert main(["invite", "--config", str(a), "--out", str(invite)]) == 0
    loaded, genesis = load_invite(invite)
    assert genesis.chain_id == Genesis.load(genesis_path).chain_id
    a_id = NodeIdentity.load(tmp_path / "a" / "node.key").node_id
    assert f"/ip4/127.0.0.1/tcp/7321/p2p/{a_id.peer_id}" in loaded.bootstrap
    capsys.readouterr()
    assert (
        main(["join", "--invite", str(invite), "--name", "c", "--dir", str(tmp_path / "c"), "--port", "7323"])
        == 0
    )
    out = capsys.readouterr().out
    config = NodeConfig.load(tmp_path / "c" / "site.toml")
    assert Genesis.load(config.ledger.genesis).chain_id == genesis.chain_id
    assert genesis.chain_id.hex() in out
    assert config.network.bootstrap == loaded.bootstrap
    # the signed join request a member submits with `swarmnode approve --request`
    envelope = tx_codec(genesis.chain_id).open((tmp_path / "c" / "join-request.cbor").read_bytes())
    assert isinstance(envelope.body, JoinRequest)
    assert envelope.sender == NodeIdentity.load(tmp_path / "c" / "node.key").node_id
    assert envelope.body.addresses == ("/ip4/127.0.0.1/tcp/7323",)
    assert main(["approve", "--config", str(a)]) == 2
    assert "exactly one of --request FILE or --peer" in capsys.readouterr().err
    assert main(["approve", "--config", str(a), "--request", str(tmp_path / "c" / "join-request.cbor")]) == 1
    assert "is the node running" in capsys.readouterr().err
    # a joiner whose model differs from the swarm's is told so before anything is written
    assert main(["join", "--invite", str(invite), "--name", "d", "--dir", str(tmp_path / "d"),
                 "--model", "mlp"]) == 2  # fmt: skip
    assert "different model" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    # a damaged invite is one clear line
    bad = tmp_path / "bad.cbor"
    bad.write_bytes(invite.read_bytes()[:-3])
    assert main(["join", "--invite", str(bad), "--name", "e", "--dir", str(tmp_path / "e")]) == 2
    assert "not a valid invite" in capsys.readouterr().err


def test_peer_id_decoding_round_trips_and_rejects_garbage() -> None:
    for _ in range(20):
        node = NodeIdentity.generate().node_id
        assert node_id_from_peer_id(node.peer_id) == node
    for bad in (
        "12D3KooW0OIl",
        "1" + NodeIdentity.generate().node_id.peer_id,
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
    ):
        with pytest.raises(ValueError, match=r"peer id|base58"):
            node_id_from_peer_id(bad)


def test_config_errors_name_file_key_value_and_expectation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = init(tmp_path, "a", 7331)
    text = config_path.read_text()
    cases = {
        text.replace("port = 7331", 'port = "high"'): "network.port = 'high': expected an integer",
        text.replace("lr = 0.001", "lr = 0.001\nlearning_rate = 1"): "unknown key training.learning_rate",
        text.replace('kind = "logreg"', 'kind = "transformer"'): "model.kind = 'transformer': expected",
        text.replace("weightage = 1 ", "weightage = 500 "): "weightage must be in 1-100",
    }
    for broken, expected in cases.items():
        config_path.write_text(broken)
        assert main(["invite", "--config", str(config_path)]) == 2
        err = capsys.readouterr().err
        assert str(config_path) in err, err
        assert expected in err, err
        assert err.count("\n") == 1
    config_path.write_text(text)
    (tmp_path / "a" / "genesis.cbor").write_bytes(b"not cbor")
    assert main(["invite", "--config", str(config_path)]) == 2
    assert "genesis.cbor: invalid genesis" in capsys.readouterr().err
    key = tmp_path / "a" / "node.key"
    os.chmod(key, 0o644)
    assert main(["genesis", "--member", member(tmp_path, "a", 7331), "--model-from", str(config_path),
                 "--no-secure", "--out", str(tmp_path / "g.cbor")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "node.key" in err
    assert "chmod 600" in err
    assert err.count("\n") == 1


def test_console_script_runs_in_a_subprocess(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("swarmnode")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "swarmnode"]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [*command, "init", "--name", "sub", "--dir", str(tmp_path / "sub"), "--features", "5",
         "--classes", "2"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "12D3KooW" in done.stdout
    done = subprocess.run(
        [*command, "status", "--config", str(tmp_path / "sub" / "site.toml")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "is the node running" in done.stderr
    assert "Traceback" not in done.stderr


def test_report_and_ledger_without_runs_say_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--dir", str(tmp_path)]) == 2
    assert "no site.toml found" in capsys.readouterr().err
    config = init(tmp_path, "a", 7341)
    assert main(["genesis", "--member", member(tmp_path, "a", 7341), "--model-from", str(config),
                 "--no-secure", "--out", str(tmp_path / "a" / "genesis.cbor")]) == 0  # fmt: skip
    capsys.readouterr()
    for command in (["ledger", "verify"], ["ledger", "show"]):
        assert main([*command, "--config", str(config)]) == 2
        assert "no ledger yet" in capsys.readouterr().err
    # a site that never ran still gets a report page (no plots to draw)
    assert main(["report", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "report" / "report.html").exists()


def test_genesis_server_optimizer_and_its_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = init(tmp_path, "a", 7342)
    base = ["genesis", "--member", member(tmp_path, "a", 7342), "--model-from", str(a), "--no-secure"]
    out = tmp_path / "adam.cbor"
    options = ["--merge", "fedprox", "--server-optimizer", "fedadam", "--server-param", "beta_1=0.5"]
    assert main([*base, *options, "--out", str(out)]) == 0
    training = Genesis.load(out).training
    assert (training.merge_method, training.server_optimizer) == ("fedprox", "fedadam")
    assert training.server_settings()["beta_1"] == 0.5
    capsys.readouterr()
    for extra, message in [
        (["--server-optimizer", "fedadam", "--server-param", "tau=x"], "--server-param 'tau=x': VALUE"),
        (["--server-optimizer", "fedavgm", "--server-param", "tau=1"], "training.server_params: server"),
        (["--server-param", "server_lr=1"], "server optimizer 'none' has no parameter server_lr"),
    ]:
        assert main([*base, *extra, "--out", str(tmp_path / "bad.cbor")]) == 2
        err = capsys.readouterr().err
        assert message in err, err
    assert main([*base, "--server-optimizer", "sgd"]) == 2
    assert "'fedadam', 'fedyogi')" in capsys.readouterr().err


def test_genesis_selection_class_weights_and_metric_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = init(tmp_path, "a", 7343)
    base = ["genesis", "--member", member(tmp_path, "a", 7343), "--model-from", str(a), "--no-secure"]
    out = tmp_path / "best.cbor"
    options = ["--select", "best", "--goal", "min", "--metric-bounds", "0,10", "--class-weights", "balanced"]
    assert main([*base, *options, "--out", str(out)]) == 0
    training = Genesis.load(out).training
    assert training.class_weights == "balanced"
    stopping = training.stopping
    assert (stopping.select, stopping.goal, stopping.metric_low, stopping.metric_high) == (
        "best",
        "min",
        0,
        10,
    )
    assert "keeps the best model" in capsys.readouterr().out
    assert main([*base, "--metric-bounds", "1", "--out", str(tmp_path / "bad.cbor")]) == 2
    assert "--metric-bounds '1'" in capsys.readouterr().err
    assert main([*base, "--metric-bounds", "2,1", "--out", str(tmp_path / "bad.cbor")]) == 2
    assert "training.stopping.metric_low" in capsys.readouterr().err


def test_genesis_differential_privacy_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = init(tmp_path, "a", 7343)
    sites = [member(tmp_path, name, port) for name, port in (("a", 7343), ("b", 7344), ("c", 7345))]
    for name, port in (("b", 7344), ("c", 7345)):
        init(tmp_path, name, port)
    base = ["genesis", *(f for m in sites for f in ("--member", m)), "--model-from", str(a)]
    out = tmp_path / "dp.cbor"
    options = ["--dp-clip-norm", "0.5", "--dp-noise-multiplier", "1.2", "--dp-epsilon-budget", "8"]
    assert main([*base, *options, "--out", str(out)]) == 0
    privacy = Genesis.load(out).training.privacy
    assert privacy is not None
    assert (privacy.clip_norm, privacy.noise_multiplier, privacy.delta, privacy.epsilon_budget) == (
        0.5, 1.2, 1e-5, 8.0,
    )  # fmt: skip
    assert "differential privacy: clip_norm 0.5" in capsys.readouterr().out
    for extra, message in [
        (["--dp-clip-norm", "-1", "--dp-noise-multiplier", "1"], "training.privacy.clip_norm: must be"),
        (["--dp-clip-norm", "1"], "training.privacy: --dp-clip-norm and --dp-noise-multiplier go together"),
        (["--dp-epsilon-budget", "3"], "training.privacy.epsilon_budget: needs --dp-clip-norm"),
        (["--dp-clip-norm", "1", "--dp-noise-multiplier", "1", "--dp-delta", "0.5"], "privacy.delta"),
        (["--dp-clip-norm", "1", "--dp-noise-multiplier", "1", "--no-secure"], "needs secure = true"),
    ]:
        assert main([*base, *extra, "--out", str(tmp_path / "bad.cbor")]) == 2
        err = capsys.readouterr().err
        assert message in err, err
