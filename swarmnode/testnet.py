"""`swarmnode testnet`: a whole swarm on this machine, watched live, ending in a report.

1. `prepare_testnet` writes, into a work dir, what N real sites would have:
   ``data/site{i}.npz`` (each site's share of the dataset, split per a
   paper-style scenario) and ``data/test.npz`` (the held-out global test set),
   and per site ``site{i}/node.key`` + ``site{i}/site.toml`` (free ports on
   127.0.0.1, every other site as bootstrap peer) and one shared
   ``genesis.cbor``.
2. `run_processes` starts one ``python -m swarmnode run --plain`` process per
   site (each in its own process group), shows one table of all of them (their
   control endpoints + metrics.json) and stops every group on exit, error or
   Ctrl-C: SIGINT first (a clean stop), SIGKILL after a grace period, so no
   process outlives the command. `run_simulated` is the same swarm in this
   process over a `MemoryNetwork` (``--sim``).
3. `compute_baselines` trains each site alone and one central model on the
   pooled site data, evaluated on the same test set (``baselines.json``).
4. `swarmnode.report.write_report` turns it all into HTML + PNG.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import numpy as np

from consensus.genesis import DecryptionThreshold, FoundingMember, Genesis, JoinPolicy, Timeouts
from crypto.identity import NodeId
from models.schema import DataSchema

from .config import NodeConfig
from .control import ControlError, request_control
from .liveview import SiteRow, SiteView, render, site_row
from .scaffold import (
    DEFAULT_POSITIVE_CLASS,
    GenesisSettings,
    SetupError,
    SiteSettings,
    build_genesis,
    init_site,
    peer_address,
    save_genesis,
    transport_address,
)
from .testnet_images import IMAGE_DATASETS, ImageSites, save_image_sites

if TYPE_CHECKING:
    from models.data import Dataset
    from models.spec import ModelSpec
    from models.splits import SiteSplit

MARKER: Final = "testnet.json"
GRACE_SECONDS: Final = 15.0
TESTNET_TIMEOUTS: Final = Timeouts(
    ready_wait=120.0, contribute=60.0, aggregate=60.0, verify=60.0, decrypt=60.0, key_epoch=120.0
)


@final
@dataclass(frozen=True, slots=True)
class SitePlan:
    name: str
    directory: Path
    config_path: Path
    port: int
    node_id: NodeId


@final
@dataclass(frozen=True, slots=True)
class TestnetPlan:
    workdir: Path
    sites: tuple[SitePlan, ...]
    genesis_path: Path
    dataset: str
    scenario: str
    baseline_epochs: int  # the local-only and central models' budget (`LocalTrainer.fit`)

    @classmethod
    def load(cls, workdir: Path) -> TestnetPlan:
        from models.training import DEFAULT_FIT_EPOCHS

        info = json.loads((workdir / MARKER).read_text())
        sites = tuple(
            SitePlan(
                s["name"],
                workdir / s["name"],
                workdir / s["name"] / "site.toml",
                s["port"],
                NodeId(bytes.fromhex(s["public_key"])),
            )
            for s in info["sites"]
        )
        return cls(
            workdir,
            sites,
            workdir / "genesis.cbor",
            info["dataset"],
            info["scenario"],
            int(info.get("baseline_epochs", DEFAULT_FIT_EPOCHS)),
        )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free right now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _prepare_workdir(workdir: Path, overwrite: bool) -> None:
    if workdir.exists() and any(workdir.iterdir()):
        if not overwrite:
            raise SetupError(f"{workdir}: not empty; choose another --workdir or pass --overwrite")
        if not (workdir / MARKER).exists():
            raise SetupError(f"{workdir}: not a testnet work dir (no {MARKER}); refusing to delete it")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)


def _load_split(dataset: str, scenario: str, nodes: int, seed: int) -> tuple[Dataset, SiteSplit]:
    """The bundled `dataset` and its split over `nodes` sites per `scenario`."""
    from models.data import DatasetError, load_dataset
    from models.splits import preset_scenario, split_sites

    if nodes < 2:
        raise SetupError(f"--nodes {nodes}: a swarm needs at least 2 sites (min_peers >= 2)")
    try:
        bundled = IMAGE_DATASETS.get(dataset, dataset)
        data = load_dataset(bundled, positive_class=DEFAULT_POSITIVE_CLASS.get(bundled))
    except DatasetError as exc:
        raise SetupError(f"--dataset: {exc}") from None
    try:
        split = split_sites(data.labels, preset_scenario(scenario, nodes), seed)
    except ValueError as exc:
        raise SetupError(f"--scenario {scenario!r}: {exc}") from None
    return data, split


def _save_site_data(data_dir: Path, data: Dataset, split: SiteSplit, nodes: int) -> None:
    """``test.npz`` and one ``site<i>.npz`` per site in `data_dir`."""
    data_dir.mkdir()

    def save(name: str, part: Any) -> None:
        np.savez(
            data_dir / name,
            X=part.features,
            y=part.labels,
            feature_names=np.array(part.feature_names),
            class_names=np.array(part.class_names),
        )

    save("test.npz", split.test_data(data))
    for i in range(nodes):
        save(f"site{i}.npz", split.site_data(data, i))


def _init_sites(
    workdir: Path,
    nodes: int,
    spec: ModelSpec,
    *,
    lr: float,
    seed: int,
    sync_every: int,
    images: ImageSites | None,
) -> tuple[SitePlan, ...]:
    """`nodes` site directories on free local ports, each bootstrapping from all the others."""
    sites: list[SitePlan] = []
    for i, port in enumerate(free_ports(nodes)):
        name = f"site{i}"
        settings = SiteSettings(
            name=name,
            data=f"../data/site{i}.npz",
            test_source="../data/test.npz",
            model=spec,
            port=port,
            genesis="../genesis.cbor",
            lr=lr,
            seed=seed + i,
            epochs=sync_every,  # local epochs per round: the genesis's
        )
        if images is not None:
            settings = images.site_settings(settings, i)
        result = init_site(workdir / name, settings)
        sites.append(SitePlan(name, workdir / name, result.config_path, port, result.node_id))
    # Everyone dials everyone: bootstrap lists are rewritten once all peer ids exist.
    for site in sites:
        others = tuple(peer_address("127.0.0.1", s.port, s.node_id) for s in sites if s is not site)
        text = site.config_path.read_text().replace(
            "bootstrap = []", f"bootstrap = {json.dumps(list(others))}"
        )
        site.config_path.write_text(text)
    return tuple(sites)


def _testnet_genesis(
    name: str,
    sites: Sequence[SitePlan],
    spec: ModelSpec,
    *,
    secure: bool,
    threshold: DecryptionThreshold | None,
    sync_every: int,
    max_rounds: int,
    statistics_rounds: int,
    data: DataSchema | None = None,
) -> Genesis:
    return build_genesis(
        GenesisSettings(
            name=name,
            members=tuple(
                FoundingMember(
                    name=s.name, node_id=s.node_id, addresses=(transport_address("127.0.0.1", s.port),)
                )
                for s in sites
            ),
            model=spec,
            secure=secure,
            threshold=threshold if threshold is not None else DecryptionThreshold(),
            merge_method="mean",
            min_peers=2,
            sync_every=sync_every,
            max_rounds=max_rounds,
            statistics_rounds=statistics_rounds,
            join_policy=JoinPolicy(mode="members", approvals=1),
            timeouts=TESTNET_TIMEOUTS,
            nonce=os.urandom(16),
            data=data,
        )
    )


def prepare_testnet(
    workdir: Path,
    *,
    nodes: int,
    dataset: str,
    scenario: str,
    rounds: int,
    model: str = "logreg",
    seed: int = 0,
    lr: float = 0.01,
    sync_every: int = 1,
    secure: bool = True,
    overwrite: bool = False,
    threshold: DecryptionThreshold | None = None,
    images: ImageSites | None = None,
) -> TestnetPlan:
    """`images`: how a `IMAGE_DATASETS` dataset's sites read their image folders."""
    from models.flatten import spec_layout
    from models.preprocess import statistics_rounds
    from models.spec import logistic_regression, mlp
    from models.training import DEFAULT_FIT_EPOCHS

    if (dataset in IMAGE_DATASETS) != (images is not None):
        raise SetupError(f"--dataset {dataset!r}: image settings are for {', '.join(IMAGE_DATASETS)} only")
    data, split = _load_split(dataset, scenario, nodes, seed)
    if images is not None:
        spec = images.spec(model, data.n_classes)
    elif model in ("logreg", "mlp"):
        spec = (
            logistic_regression(data.n_features, data.n_classes)
            if model == "logreg"
            else mlp(data.n_features, data.n_classes, hidden=(32,))
        )
    else:
        raise SetupError(f"--model {model!r}: {dataset} trains logreg or mlp (image models: digits-images)")
    _prepare_workdir(workdir, overwrite)
    if secure and nodes < 3:
        raise SetupError(f"--nodes {nodes}: a secure swarm needs t + 1 = 3 sites or more (or --plain)")
    if images is not None:
        save_image_sites(workdir / "data", data, split, nodes, images.image_size)
    else:
        _save_site_data(workdir / "data", data, split, nodes)
    sites = _init_sites(workdir, nodes, spec, lr=lr, seed=seed, sync_every=sync_every, images=images)
    standardized = images is None or images.standardize == "swarm"
    genesis = _testnet_genesis(
        f"testnet-{dataset}-{scenario}",
        sites,
        spec,
        secure=secure,
        threshold=threshold,
        sync_every=sync_every,
        # `rounds` training merges after the swarm-agreed standardisation's statistics merges.
        max_rounds=rounds,
        statistics_rounds=statistics_rounds(data.n_features, spec_layout(spec).size) if standardized else 0,
        data=None if images is None else images.schema(spec, data.class_names),
    )
    genesis_path = workdir / "genesis.cbor"
    save_genesis(genesis, genesis_path)
    for site in sites:
        NodeConfig.load(site.config_path)  # every written config must load
    baseline_epochs = DEFAULT_FIT_EPOCHS if images is None else images.epochs
    marker = {
        "dataset": dataset,
        "scenario": scenario,
        "rounds": rounds,
        "seed": seed,
        "baseline_epochs": baseline_epochs,
        "chain_id": genesis.chain_id.hex(),
        "sites": [{"name": s.name, "port": s.port, "public_key": s.node_id.public_key.hex()} for s in sites],
        "class_counts": [list(c) for c in split.class_counts(data.labels, data.n_classes)],
    }
    (workdir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return TestnetPlan(workdir, sites, genesis_path, dataset, scenario, baseline_epochs)


# -- baselines ------------------------------------------------------------------------


def compute_baselines(plan: TestnetPlan, metric: str = "roc_auc") -> dict[str, Any]:
    """Each site trained alone and one model trained on all sites' data, on the same test set."""
    import torch

    from models.data import Dataset
    from models.training import LocalTrainer

    from .siteinput import load_site_data, site_augmenter

    configs = [NodeConfig.load(s.config_path) for s in plan.sites]
    schema = Genesis.load(plan.genesis_path).data
    test_source = configs[0].data.test_source
    assert test_source is not None
    test = load_site_data(configs[0], schema, test_source)

    def fit(data: Dataset, seed: int, config: NodeConfig) -> dict[str, Any]:
        trainer = LocalTrainer(
            config.model,
            data,
            replace(config.training, epochs=plan.baseline_epochs),
            generator=torch.Generator().manual_seed(seed),
            preprocess=config.data.preprocess,
            augment=site_augmenter(config),
        )
        trainer.fit()
        return trainer.evaluate(test).to_dict()

    # testnet sites all have data
    site_data = [load_site_data(c, schema, str(c.data.source)) for c in configs]
    local = {c.node.name: fit(d, c.swarm.seed, c) for c, d in zip(configs, site_data, strict=True)}
    central = fit(Dataset.concatenate(site_data), 999, configs[0])
    baselines = {
        "metric": metric,
        "dataset": plan.dataset,
        "scenario": plan.scenario,
        "local": local,
        "central": central,
        "note": "local: each site's data alone (fit with early stopping); central: all sites' data pooled",
    }
    (plan.workdir / "baselines.json").write_text(json.dumps(baselines, indent=2) + "\n")
    return baselines


class BaselineJob:
    """`compute_baselines` in a child process (its own process group) while the swarm runs,
    which mostly waits on the network and the ledger. A process, not a thread: it can be
    stopped at once on Ctrl-C, and torch is never torn down mid-computation at exit."""

    def __init__(self, plan: TestnetPlan) -> None:
        self._plan = plan
        self._log = (plan.workdir / "baselines.log").open("wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "swarmnode.testnet", "baselines", str(plan.workdir)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(),
            start_new_session=True,
        )

    def result(self, timeout: float = 900.0) -> dict[str, Any]:
        try:
            code = self._process.wait(timeout=timeout)
        finally:
            self.stop()
        if code != 0:
            tail = _log_tail(self._plan.workdir / "baselines.log")
            raise SetupError(f"baselines failed (exit {code}); last log lines:\n{tail}")
        result: dict[str, Any] = json.loads((self._plan.workdir / "baselines.json").read_text())
        return result

    def stop(self) -> None:
        stop_all((self._process,), grace=0.0)
        self._log.close()


# -- running --------------------------------------------------------------------------


def _read_metrics(config: NodeConfig) -> dict[str, Any] | None:
    try:
        data = json.loads((config.node.storage_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class View:
    """One table of all sites: rich.live on a terminal, a plain line per change otherwise."""

    def __init__(self, title: str, live: bool, write: Callable[[str], None]) -> None:
        self.title = title
        self.write = write
        self._last: dict[str, tuple[str, str, str]] = {}
        self._live: Any = None
        if live:
            from rich.live import Live

            self._live = Live(render([], title), refresh_per_second=4)

    def __enter__(self) -> View:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, rows: Sequence[SiteRow]) -> None:
        if self._live is not None:
            self._live.update(render(rows, self.title))
            return
        for row in rows:
            key = (row.state, row.round, row.phase)
            if self._last.get(row.site) != key:
                self._last[row.site] = key
                self.write(row.plain())


def _child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # N sites share this machine's cores: one compute thread each avoids oversubscription.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def _stop_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def stop_all(processes: Sequence[subprocess.Popen[bytes]], grace: float = GRACE_SECONDS) -> None:
    """SIGINT every still-running process group, then SIGKILL whatever is left after `grace` s."""
    for p in processes:
        if p.poll() is None:
            _stop_group(p, signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in processes:
        _stop_group(p, signal.SIGKILL)  # the group: also any helper the child started
        p.wait()


@final
@dataclass(frozen=True, slots=True)
class RunOutcome:
    exit_codes: dict[str, int]
    final_hashes: dict[str, str | None]

    @property
    def agreed(self) -> bool:
        hashes = set(self.final_hashes.values())
        return len(hashes) == 1 and None not in hashes


def run_processes(
    plan: TestnetPlan,
    *,
    timeout: float,
    view: View,
    on_start: Callable[[Sequence[subprocess.Popen[bytes]]], None] | None = None,
) -> RunOutcome:
    """Run one `swarmnode run` process per site until all exit; none outlives this call."""
    configs = {s.name: NodeConfig.load(s.config_path) for s in plan.sites}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    last_status: dict[str, dict[str, Any]] = {}  # shown after a site's process ended
    logs = []
    try:
        for site in plan.sites:
            log = (site.directory / "run.log").open("wb")
            logs.append(log)
            processes[site.name] = subprocess.Popen(
                [sys.executable, "-m", "swarmnode", "run", "--plain", "--config", str(site.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_child_env(),
                start_new_session=True,  # its own process group: we can stop it and all it started
            )
        if on_start is not None:
            on_start(tuple(processes.values()))
        deadline = time.monotonic() + timeout
        while True:
            rows = []
            for name, process in processes.items():
                config = configs[name]
                code = process.poll()
                if code is None:
                    with contextlib.suppress(ControlError):
                        last_status[name] = request_control(config.node.storage_dir, timeout=2.0)
                status = last_status.get(name)
                state = "running" if code is None else ("done" if code == 0 else f"failed ({code})")
                rows.append(site_row(name, state, status, _read_metrics(config)))
            view.update(rows)
            codes = {name: p.poll() for name, p in processes.items()}
            failed = [name for name, c in codes.items() if c not in (None, 0)]
            if failed:
                tail = _log_tail(plan.workdir / failed[0] / "run.log")
                raise SetupError(f"{failed[0]} exited with code {codes[failed[0]]}; last log lines:\n{tail}")
            if all(c == 0 for c in codes.values()):
                break
            if time.monotonic() > deadline:
                raise SetupError(
                    f"testnet did not finish within {timeout:g} s; logs in {plan.workdir}/site*/run.log"
                )
            time.sleep(0.5)
    finally:
        stop_all(tuple(processes.values()))
        for log in logs:
            log.close()
    return RunOutcome(
        exit_codes={name: int(p.returncode) for name, p in processes.items()},
        final_hashes={name: (_read_metrics(c) or {}).get("final_hash") for name, c in configs.items()},
    )


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_simulated(plan: TestnetPlan, *, timeout: float, view: View, seed: int = 0) -> RunOutcome:
    """The same swarm in this process: one node per site over a seeded in-memory network."""
    import trio

    from crypto.identity import NodeIdentity

    from .net.memory import open_memory_network
    from .siterun import run_site, stop_on_signal
    from .trainer import default_metric

    genesis = Genesis.load(plan.genesis_path)
    configs = [NodeConfig.load(s.config_path) for s in plan.sites]
    views = [SiteView(c.node.name, default_metric(genesis)) for c in configs]
    finals: dict[str, dict[str, Any]] = {}

    async def main() -> None:
        async with open_memory_network(seed) as network, trio.open_nursery() as nursery:

            async def site(config: NodeConfig, site_view: SiteView) -> None:
                identity = NodeIdentity.load(config.node.key_file)
                report = await run_site(
                    config,
                    genesis=genesis,
                    transport=network.transport(identity.node_id),
                    identity=identity,
                    observers=(site_view,),
                )
                finals[config.node.name] = report.summary.to_dict()

            async def show() -> None:
                while True:
                    view.update([v.row("done" if v.stopped else "running") for v in views])
                    await trio.sleep(0.5)

            with trio.fail_after(timeout):
                async with trio.open_nursery() as sites:
                    for config, site_view in zip(configs, views, strict=True):
                        sites.start_soon(site, config, site_view)
                    nursery.start_soon(show)
            view.update([v.row("done") for v in views])
            nursery.cancel_scope.cancel()

    try:
        trio.run(stop_on_signal, main)
    except trio.TooSlowError:
        raise SetupError(f"simulated testnet did not finish within {timeout:g} s") from None
    return RunOutcome(
        exit_codes={c.node.name: 0 for c in configs},
        final_hashes={name: data.get("final_hash") for name, data in finals.items()},
    )


def describe_plan(plan: TestnetPlan) -> str:
    info = json.loads((plan.workdir / MARKER).read_text())
    counts = info["class_counts"]
    lines = [f"testnet in {plan.workdir}: {len(plan.sites)} sites, chain {info['chain_id'][:16]}"]
    for site, c in zip(plan.sites, counts, strict=False):
        lines.append(f"  {site.name}: 127.0.0.1:{site.port}  {site.node_id.short}  samples per class {c}")
    lines.append(f"  held-out test set: samples per class {counts[-1]}")
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m swarmnode.testnet baselines WORKDIR` (what BaselineJob runs)
    if len(sys.argv) != 3 or sys.argv[1] != "baselines":
        raise SystemExit("usage: python -m swarmnode.testnet baselines WORKDIR")
    compute_baselines(TestnetPlan.load(Path(sys.argv[2])))
