"""The `swarmnode` command line.

Every command is a small function over the library (`scaffold`, `ledgerview`,
`control`, `report`, `testnet`, the trainer). Errors a user can fix (config,
key, data, genesis, occupied port, no running node) are caught here and
printed as one line ``swarmnode: error: ...``; exit code 2 for usage and
configuration errors, 1 for a failed check or a failed run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

# Only what building the parser needs is imported here (pure Python): `--help` and usage
# errors must not wait for torch, numpy, TenSEAL or libp2p. Each command imports the rest.
from . import __version__
from .cli_export import add_export_commands
from .cli_genesis import add_genesis_commands
from .cli_relay import add_relay_command

if TYPE_CHECKING:
    from .scaffold import SiteSettings

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class CommandFailed(Exception):
    """A command ran but its check failed (exit 1); the message is printed as is."""


def _out(text: str = "") -> None:
    print(text, flush=True)


# -- init / join ----------------------------------------------------------------------


def _site_settings(args: argparse.Namespace, directory: Path) -> SiteSettings:
    from models.spec import ModelSpec

    from .scaffold import SetupError, SiteSettings, infer_model

    # Paths on the command line are the user's, relative to the working directory; site.toml
    # keeps them absolute (its own relative paths would resolve against --dir).
    args.data, args.test_data = (_cwd_path(p) for p in (args.data, args.test_data))
    positive = args.positive_class
    if positive is None and args.data == "breast_cancer":
        positive = "malignant"  # the usual disease-vs-rest task of the bundled demo data
    hidden = tuple(int(h) for h in args.hidden.split(",") if h) if args.hidden else ()
    if args.data is not None and Path(args.data).is_dir():
        return _image_site_settings(args, Path(args.data))
    args.model = args.model or "logreg"
    if args.features is not None and args.classes is not None:
        if args.model not in ("logreg", "mlp"):
            raise SetupError(f"--model {args.model}: --features/--classes size a logreg or mlp model")
        try:
            model = (
                ModelSpec(kind="logreg", n_features=args.features, n_classes=args.classes)
                if args.model == "logreg"
                else ModelSpec(
                    kind="mlp", n_features=args.features, n_classes=args.classes, hidden=hidden or (64, 32)
                )
            )
        except ValueError as exc:
            raise SetupError(f"model: {exc}") from None
    else:
        model = infer_model(
            args.data,
            label_column=args.label_column,
            positive_class=positive,
            kind=args.model,
            hidden=hidden,
            base_dir=directory,
        )
    return SiteSettings(
        **_site_fields(args), label_column=args.label_column, positive_class=positive, model=model
    )


def _site_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The `SiteSettings` fields every kind of site takes from the command line as given."""
    return {
        "name": args.name,
        "data": args.data,
        "test_source": args.test_data,
        "listen": args.listen,
        "port": args.port,
        "advertise": tuple(args.advertise),
        "bootstrap": tuple(getattr(args, "bootstrap", ())),
        "relays": tuple(args.relay),
        "weightage": args.weightage,
    }


def _image_site_settings(args: argparse.Namespace, folder: Path) -> SiteSettings:
    """An image-folder site: a MONAI model (--model, default resnet18) sized from the folder:
    its class folders are the classes, its images' mode the channels (`infer_image_model`)."""
    from .scaffold import SetupError, SiteSettings, infer_image_model

    try:
        widths = tuple(int(w) for w in args.widths.split(",") if w.strip()) if args.widths else ()
    except ValueError:
        raise SetupError(f"--widths {args.widths!r}: expected integers such as 8,16,32,64") from None
    model, _ = infer_image_model(folder, kind=args.model, image_size=args.image_size, widths=widths)
    return SiteSettings(
        **_site_fields(args),
        model=model,
        data_kind="image_folder",
        standardize="none",  # pixels are already in [0, 1]
    )


def _cwd_path(source: str | None) -> str | None:
    from models.data import SKLEARN_DATASETS

    if source is None or (source in SKLEARN_DATASETS and not Path(source).exists()):
        return source
    return str(Path(source).resolve())


def cmd_init(args: argparse.Namespace) -> int:
    from .scaffold import init_site

    directory = Path(args.dir)
    result = init_site(directory, _site_settings(args, directory))
    _out(f"created {result.key_path} (mode 0600) and {result.config_path}")
    _out(f"peer id:    {result.node_id.peer_id}")
    _out(f"public key: {result.node_id.public_key.hex()}")
    _out("give this member line to the genesis organiser:")
    _out(f"  --member {result.member_line}")
    if "@" not in result.member_line:
        _out("(no address: with port 0 this site only dials out; give --port and --advertise to be dialled)")
    return EXIT_OK


def cmd_join(args: argparse.Namespace) -> int:
    from .scaffold import JOIN_REQUEST_FILE, join_site

    directory = Path(args.dir)
    result, genesis = join_site(directory, Path(args.invite), _site_settings(args, directory))
    _out(f"created {result.key_path} (mode 0600), {result.config_path} and the genesis of {genesis.name!r}")
    _out(f"chain id: {genesis.chain_id.hex()}")
    _out(f"peer id:  {result.node_id.peer_id}")
    request = directory / JOIN_REQUEST_FILE
    policy = genesis.join_policy
    needed = "the admin key" if policy.mode == "admin" else f"{policy.approvals} member(s)"
    _out(f"wrote {request}: send it to a member, who runs")
    _out(f"  swarmnode approve --config THEIR/site.toml --request {request.name}")
    _out(
        f"admission needs approval by {needed}; others run: swarmnode approve --peer {result.node_id.peer_id}"
    )
    _out(f"then start this site: swarmnode run --config {result.config_path}")
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    from .config import NodeConfig
    from .control import ControlError, request_control
    from .scaffold import SetupError

    config = NodeConfig.load(args.config)
    if (args.request is None) == (args.peer is None):
        raise SetupError("approve: give exactly one of --request FILE or --peer PEER_ID")
    if args.request is not None:
        try:
            tx = Path(args.request).read_bytes()
        except OSError as exc:
            raise SetupError(f"{args.request}: cannot read join request ({exc.strerror})") from None
        command, call_args = "submit-join", {"tx": tx.hex()}
    else:
        command, call_args = "approve", {"peer_id": args.peer}
    try:
        result = request_control(config.node.storage_dir, command, args=call_args, timeout=90.0)
    except ControlError as exc:
        raise CommandFailed(str(exc)) from None
    _out(f"approved {result['joiner']} (as {result['approved_by']})")
    return EXIT_OK


def cmd_leave(args: argparse.Namespace) -> int:
    from .config import NodeConfig
    from .control import ControlError, request_control

    config = NodeConfig.load(args.config)
    try:
        result = request_control(config.node.storage_dir, "leave", timeout=90.0)
    except ControlError as exc:
        raise CommandFailed(str(exc)) from None
    _out(f"left the swarm ({result['left']}); the next key epoch is dealt without this site")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from .config import NodeConfig
    from .control import ControlError, request_control

    config = NodeConfig.load(args.config)
    call_args = {"site": args.site, "reason": args.reason}
    try:
        result = request_control(config.node.storage_dir, "remove", args=call_args, timeout=90.0)
    except ControlError as exc:
        raise CommandFailed(str(exc)) from None
    if result["removed"]:
        _out(f"removed {result['site']} ({result['peer_id']}); the next key epoch is dealt without it")
    else:
        needed = (result["members"] - 1) // 2 + 1  # consensus/membership.py: a majority of the others
        _out(f"voted to remove {result['site']}: {result['votes']} of {needed} votes needed")
    return EXIT_OK


# -- invite ---------------------------------------------------------------------------


def cmd_invite(args: argparse.Namespace) -> int:
    from .config import NodeConfig
    from .scaffold import make_invite, save_invite

    config = NodeConfig.load(args.config)
    invite = make_invite(config, args.bootstrap)
    save_invite(invite, Path(args.out))
    _out(f"wrote {args.out}: genesis + {len(invite.bootstrap)} bootstrap address(es)")
    _out(f"the new site runs: swarmnode join --invite {args.out} --name NAME --data ...")
    return EXIT_OK


# -- ledger / status ------------------------------------------------------------------


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    from .config import NodeConfig
    from .ledgerview import verify_site_ledger

    report = verify_site_ledger(NodeConfig.load(args.config))
    _out(str(report))
    if not report.ok:
        raise CommandFailed(f"ledger verification failed: {len(report.problems)} problem(s)")
    return EXIT_OK


def cmd_ledger_show(args: argparse.Namespace) -> int:
    from .config import NodeConfig
    from .ledgerview import format_ledger, ledger_json, read_ledger

    record = read_ledger(NodeConfig.load(args.config))
    _out(json.dumps(ledger_json(record), indent=2) if args.json else format_ledger(record))
    return EXIT_OK


def format_status(status: dict[str, object]) -> str:
    """Render a status (the running node's JSON or `stored_status`): known keys first, then
    anything else it reports; peer ids of members shown as ``name (…last 8 chars)``."""
    names = status.get("names")
    names = names if isinstance(names, dict) else {}

    def shown(value: object) -> object:
        if isinstance(value, str) and value in names:
            return f"{names[value]} (…{value[-8:]})"
        return value

    lines = []
    for key, value in status.items():
        if key in ("history", "names"):
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{key}: {len(value)}")
            continue
        text = ", ".join(str(shown(v)) for v in value) if isinstance(value, list) else shown(value)
        lines.append(f"{key}: {text}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from .config import NodeConfig
    from .control import ControlError, NotRunning, request_control
    from .scaffold import SetupError

    config = NodeConfig.load(args.config)
    try:
        status = {"running": True, **request_control(config.node.storage_dir)}
    except NotRunning as exc:
        from .ledgerview import stored_status

        try:
            status = stored_status(config)
        except SetupError as missing:
            raise CommandFailed(f"{exc}; and no stored ledger to show: {missing}") from None
    except ControlError as exc:
        raise CommandFailed(str(exc)) from None
    _out(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK


# -- run ------------------------------------------------------------------------------


def _ctrl_c_stops() -> None:
    """Make SIGINT raise KeyboardInterrupt even if it was inherited as ignored (a shell starts
    background jobs that way), so Ctrl-C and `swarmnode testnet` can always stop a node cleanly."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    _ctrl_c_stops()
    from .config import NodeConfig
    from .liveview import render
    from .logsetup import setup_logging
    from .scaffold import load_genesis
    from .startup import preflight

    overrides = [*args.set, *([f"metrics.prometheus={args.prometheus}"] if args.prometheus else [])]
    config = NodeConfig.load(args.config, overrides)
    genesis = load_genesis(config.ledger.genesis)
    live_view = sys.stdout.isatty() and not args.plain and args.log_format == "text"
    setup_logging(config.node.log_level, log_format=args.log_format, quiet=live_view, site=config.node.name)
    identity = preflight(config, genesis)  # refusals at once, before the data and the network

    from .liveview import SiteView
    from .siterun import SiteReport, run_site, stop_on_signal
    from .trainer import default_metric

    view = SiteView(config.node.name, default_metric(genesis))

    async def run_plain() -> SiteReport:
        return await stop_on_signal(
            lambda: run_site(config, genesis=genesis, identity=identity, observers=(view,))
        )

    if not live_view:
        report = trio.run(run_plain)
    else:
        from rich.live import Live

        def table() -> object:
            return render([view.row("stopped" if view.stopped else "running")], genesis.name, view.metric)

        async def run_live() -> SiteReport:
            with Live(table(), refresh_per_second=4) as live:  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:

                    async def refresh() -> None:
                        while True:
                            live.update(table())  # type: ignore[arg-type]
                            await trio.sleep(0.25)

                    nursery.start_soon(refresh)
                    result = await run_plain()
                    live.update(table())  # type: ignore[arg-type]
                    nursery.cancel_scope.cancel()
                return result

        report = trio.run(run_live)
    final = report.summary.to_dict()
    test = final.get("test")
    _out(f"stopped: {final.get('stop_reason')}; final model {final.get('final_hash')}")
    if isinstance(test, dict):
        _out("test metrics: " + ", ".join(f"{k} {v}" for k, v in test.items()))
    _out(f"metrics: {report.metrics_path}")
    return EXIT_OK


# -- report -------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report, write_site_report
    from .scaffold import SetupError

    if args.config is not None and args.dir is not None:
        raise SetupError("report: give --config (one site) or --dir (every site under it), not both")
    if args.config is not None:
        files = write_site_report(Path(args.config), None if args.out is None else Path(args.out))
    else:
        files = write_report(Path(args.dir or "."), out=None if args.out is None else Path(args.out))
    _out(f"report: {files.html}")
    for plot in files.plots:
        _out(f"plot:   {plot}")
    return EXIT_OK


# -- testnet ------------------------------------------------------------------------


def cmd_testnet(args: argparse.Namespace) -> int:
    from .report import write_report
    from .testnet import (
        BaselineJob,
        View,
        describe_plan,
        prepare_testnet,
        run_processes,
        run_simulated,
    )
    from .testnet_images import image_sites

    _ctrl_c_stops()
    workdir = Path(args.workdir)
    plan = prepare_testnet(
        workdir,
        nodes=args.nodes,
        dataset=args.dataset,
        scenario=args.scenario,
        rounds=args.rounds,
        model=args.model,
        seed=args.seed,
        lr=args.lr,
        sync_every=args.sync_every,
        secure=args.secure,
        overwrite=args.overwrite,
        images=image_sites(args.dataset, args.image_size, args.widths, args.augment, args.rounds),
    )
    _out(describe_plan(plan))
    live = sys.stdout.isatty() and not args.plain
    title = f"swarmnode testnet: {args.nodes} sites, {args.dataset}/{args.scenario}, {args.rounds} rounds"
    baselines = BaselineJob(plan)  # trains while the swarm runs
    try:
        with View(title, live, _out) as view:
            if args.sim:
                outcome = run_simulated(plan, timeout=args.timeout, view=view, seed=args.seed)
            else:
                outcome = run_processes(plan, timeout=args.timeout, view=view)
    except BaseException:
        baselines.stop()
        raise
    for name, digest in outcome.final_hashes.items():
        _out(f"{name}: final model {digest}")
    _out("local-only and central baselines ...")
    baselines.result()
    files = write_report(workdir, title=title)
    _out(f"report: {files.html}")
    for plot in files.plots:
        _out(f"plot:   {plot}")
    if not outcome.agreed:
        raise CommandFailed("the sites ended with different (or missing) final models")
    _out("all sites hold the same final model")
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------


def _add_site_options(p: argparse.ArgumentParser, *, join: bool) -> None:
    p.add_argument("--name", required=True, help="this site's display name")
    p.add_argument("--dir", default=".", help="directory for node.key and site.toml (default: .)")
    p.add_argument(
        "--listen", default="127.0.0.1", help="IPv4 address to bind, 0.0.0.0: all (default 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=7000, help="listen port (default 7000)")
    p.add_argument(
        "--advertise",
        action="append",
        default=[],
        metavar="HOST|MULTIADDR",
        help="where other sites reach this one: IP, DNS name or /dns4/NAME/tcp/PORT (default: --listen)",
    )
    p.add_argument(
        "--relay", action="append", default=[], metavar="MULTIADDR", help="behind NAT: relay (with /p2p/ id)"
    )
    if not join:
        p.add_argument(
            "--bootstrap", action="append", default=[], metavar="MULTIADDR", help="peer to dial first"
        )
    p.add_argument(
        "--data",
        default="breast_cancer",
        help="bundled dataset name, .csv/.h5ad/.npz file, or a folder of class folders of images",
    )
    p.add_argument("--label-column", help="label column (.csv) or obs key (.h5ad)")
    p.add_argument("--positive-class", help="train 'this class vs the rest'")
    p.add_argument("--test-data", help="held-out test file to report test metrics on")
    p.add_argument(
        "--model",
        choices=("logreg", "mlp", "resnet18", "densenet121"),
        help="model kind (default logreg; resnet18 for an image folder)",
    )
    p.add_argument("--image-size", type=int, default=32, help="image folder: resize to N x N (default 32)")
    p.add_argument("--widths", help="image folder: MONAI network widths, e.g. 8,16,32,64 (default standard)")
    p.add_argument("--hidden", help="mlp hidden widths, e.g. 64,32")
    p.add_argument("--features", type=int, help="number of features (skips reading the data)")
    p.add_argument("--classes", type=int, help="number of classes (with --features)")
    p.add_argument("--weightage", type=int, default=1, help="1-100, scales this site's merge weight")


def _add_ledger_commands(p: argparse.ArgumentParser) -> None:
    ledger = p.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    q = ledger.add_parser("verify", help="re-check every block, certificate and state hash from genesis")
    q.add_argument("--config", default="site.toml")
    q.set_defaults(handler=cmd_ledger_verify)
    q = ledger.add_parser("show", help="the transparency record: rounds, contributors, weights, hashes")
    q.add_argument("--config", default="site.toml")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_ledger_show)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="site.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a site.toml key")
    p.add_argument("--plain", action="store_true", help="log lines even on a terminal")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text or one JSON object per line (json implies --plain)",
    )
    p.add_argument(
        "--prometheus",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (sets [metrics] prometheus)",
    )


def _add_testnet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="number of sites (>= 2, default 3)")
    p.add_argument(
        "--dataset", default="breast_cancer", help="bundled: breast_cancer, digits, wine, digits-images"
    )
    p.add_argument(
        "--scenario",
        default="uneven_class",
        help="site split: even, uneven_size, uneven_class, few_positives, dirichlet (default uneven_class)",
    )
    p.add_argument("--rounds", type=int, default=10, help="merged rounds before the swarm stops (default 10)")
    p.add_argument("--sim", action="store_true", help="in-process nodes over the in-memory network")
    p.add_argument("--workdir", default="swarmnode-testnet", help="work dir (default ./swarmnode-testnet)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier testnet work dir")
    p.add_argument("--model", choices=("logreg", "mlp", "resnet18", "densenet121"), default="logreg")
    p.add_argument("--image-size", type=int, default=32, help="digits-images: pixels per side (default 32)")
    p.add_argument(
        "--widths", default="", help="resnet18/densenet121 widths, e.g. 8,16,32,64 (default MONAI's)"
    )
    p.add_argument("--augment", default="none", help="digits-images: none, affine or affine_flip")
    p.add_argument("--lr", type=float, default=0.01, help="local learning rate (default 0.01)")
    p.add_argument("--sync-every", type=int, default=1, help="local epochs between merges (default 1)")
    p.add_argument("--secure", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmnode",
        description=(
            "Swarm Learning node: train one model across sites whose data never leaves them, "
            "with a BFT ledger and threshold-CKKS secure merges."
        ),
    )
    parser.add_argument("--version", action="version", version=f"swarmnode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="create a node key and a commented site.toml")
    _add_site_options(p, join=False)
    p.set_defaults(handler=cmd_init)

    add_genesis_commands(sub)

    p = sub.add_parser("invite", help="write an invite file for a site joining later")
    p.add_argument("--config", default="site.toml", help="a member's site.toml")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR", help="extra address")
    p.add_argument("--out", default="invite.cbor")
    p.set_defaults(handler=cmd_invite)

    p = sub.add_parser("join", help="create a joining site from an invite")
    p.add_argument("--invite", required=True, help="invite file from `swarmnode invite`")
    _add_site_options(p, join=True)
    p.set_defaults(handler=cmd_join)

    p = sub.add_parser("approve", help="admit a joining site (through this site's running node)")
    p.add_argument("--config", default="site.toml", help="this member's site.toml (its node must run)")
    p.add_argument("--request", help="the joiner's join-request.cbor (submits it, then approves)")
    p.add_argument("--peer", help="approve an already pending joiner by peer id")
    p.set_defaults(handler=cmd_approve)

    p = sub.add_parser("leave", help="this site leaves the swarm (through its running node)")
    p.add_argument("--config", default="site.toml", help="this member's site.toml (its node must run)")
    p.set_defaults(handler=cmd_leave)

    p = sub.add_parser("remove", help="vote to remove a member site (through this site's running node)")
    p.add_argument("--config", default="site.toml", help="this member's site.toml (its node must run)")
    p.add_argument("--site", required=True, help="the member's name, as in genesis or its join request")
    p.add_argument("--reason", default="", help="recorded on the ledger with the vote")
    p.set_defaults(handler=cmd_remove)

    _add_ledger_commands(sub.add_parser("ledger", help="verify or show the ledger"))

    p = sub.add_parser("run", help="run this site until the swarm stops (Ctrl-C stops, a restart resumes)")
    _add_run_options(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("report", help="HTML + PNG report of one site (--config) or of the sites under --dir")
    p.add_argument("--config", help="this site's site.toml: report from its own ledger and metrics only")
    p.add_argument("--dir", help="work dir holding site directories (default .)")
    p.add_argument("--out", help="output directory (default: report/ next to site.toml, or under --dir)")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("testnet", help="run N sites on this machine (or --sim in memory) and write a report")
    _add_testnet_options(p)
    p.set_defaults(handler=cmd_testnet)

    add_export_commands(sub)
    add_relay_command(sub)

    p = sub.add_parser(
        "status", help="membership (by name), round, phase, height: from the running node, else its ledger"
    )
    p.add_argument("--config", default="site.toml")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)
    return parser


# Errors a user can act on, as (module, class): a command imports what it needs, so an
# error class whose module was never imported cannot have been raised.
_USAGE_ERRORS: Final = (
    ("swarmnode.config", "ConfigError"),
    ("swarmnode.scaffold", "SetupError"),
    ("crypto.errors", "KeyFileError"),
    ("consensus.genesis", "GenesisError"),
    ("models.data", "DatasetError"),
    ("swarmnode.trainer", "SwarmSetupError"),
    ("swarmnode.net.base", "TransportError"),
    ("swarmnode.startup", "StartRefused"),  # e.g. not a member, port in use
    ("swarmnode.export", "ExportError"),
)
_FAILURES: Final = (("swarmnode.node", "SwarmError"), ("consensus.errors", "StoreError"))


def _raised(exc: BaseException, errors: Sequence[tuple[str, str]]) -> bool:
    for module_name, class_name in errors:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def _leaf(exc: BaseException) -> BaseException:
    """The one real error inside (nested) exception groups of a single exception; an
    interrupt anywhere in a group wins (the other errors are its consequences)."""
    if isinstance(exc, BaseExceptionGroup):
        interrupt, _ = exc.split(KeyboardInterrupt)
        if interrupt is not None:
            return KeyboardInterrupt()
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _exit_code(exc: BaseException) -> int | None:
    """Exit code for an error the user can act on (printed as one line); None: a bug."""
    if _raised(exc, _USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(exc, CommandFailed) or _raised(exc, _FAILURES):
        return EXIT_FAILED
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / help / version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except BaseException as raised:
        error = _leaf(raised)
        if isinstance(error, BrokenPipeError):  # e.g. `swarmnode ledger show | head`
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILED
        if isinstance(error, KeyboardInterrupt):
            _to_stderr("swarmnode: interrupted; state is saved, run the same command to resume")
            return 130
        code = _exit_code(error)
        if code is None:
            raise
        _to_stderr(f"swarmnode: error: {error}", error=True)
        return code


def _to_stderr(text: str, *, error: bool = False) -> None:
    """A last line for the user; a record like every other one once `run` logs JSON."""
    logsetup = sys.modules.get("swarmnode.logsetup")
    if logsetup is not None and logsetup.json_logging():
        import logging

        logging.getLogger("swarmnode.cli").log(logging.ERROR if error else logging.WARNING, "%s", text)
    else:
        print(text, file=sys.stderr, flush=True)
