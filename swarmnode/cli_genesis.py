"""`swarmnode genesis` and `swarmnode genesis-show`: founding a swarm (`swarmnode.scaffold`).

Registered by `swarmnode.cli.build_parser`; like every command, each imports what it needs
when it runs, so `--help` stays light (the genesis module is pure Python).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consensus.genesis import (
    CLASS_WEIGHTS,
    DEFAULT_CKKS_PARAMS,
    METRIC_GOALS,
    SELECTIONS,
    SYNC_UNITS,
    Timeouts,
)
from models.optimizers import OPTIMIZER_NAMES
from models.rules import RULE_NAMES

if TYPE_CHECKING:
    from models.schema import DataSchema

    from .config import NodeConfig


def add_genesis_commands(sub: Any) -> None:
    """The `genesis` and `genesis-show` sub-commands on `sub` (argparse's sub-parsers action)."""
    p = sub.add_parser("genesis", help="found a swarm: write the genesis file, print its chain id")
    _add_genesis_options(p)
    p.set_defaults(handler=cmd_genesis)

    p = sub.add_parser("genesis-show", help="print a genesis file")
    p.add_argument("file", nargs="?", default="genesis.cbor")
    p.set_defaults(handler=cmd_genesis_show)


def _timeouts(args: argparse.Namespace) -> Timeouts:
    from .scaffold import SetupError

    p = args.phase_timeout
    try:
        return Timeouts(
            ready_wait=args.ready_wait,
            contribute=p,
            aggregate=p,
            verify=p,
            decrypt=p,
            key_epoch=args.key_epoch_timeout,
        )
    except ValueError as exc:  # names the field: "training.timeouts.decrypt: must be in (0, 86400] seconds"
        raise SetupError(f"genesis: {exc}") from None


def _sync_every(args: argparse.Namespace, site: NodeConfig) -> int:
    """``--sync-every``, else the founding site's ``training.epochs`` (its local epochs per
    round: every site then trains that many), else 1."""
    from .scaffold import SetupError

    epochs = site.training.epochs
    if args.sync_every is not None:
        return int(args.sync_every)
    if epochs is None:
        return 1
    if args.sync_unit != "epochs":
        raise SetupError(
            f"genesis: {site.source}: training.epochs = {epochs}, but --sync-unit {args.sync_unit} counts "
            "steps: give --sync-every, and remove training.epochs from the sites' site.toml"
        )
    return epochs


def _named_classes(schema: DataSchema | None, names_text: str, site: NodeConfig) -> DataSchema:
    """The founding site's table with its classes named `names_text` ("a,b,c", in the order of
    its classes: sorted labels, so integer codes 0, 1, 2 ...): the names sites' labels are read
    by (integer codes stand for them, in order), and export and predict show."""
    from .scaffold import SetupError

    if schema is None:
        raise SetupError(
            "genesis: --class-names names the classes of the table genesis records: drop --no-schema"
        )
    if site.data.positive_class is not None:
        raise SetupError(
            f"genesis: --class-names: {site.source} trains {site.data.positive_class!r} vs the rest, "
            f"whose classes are named already ({', '.join(schema.class_names)})"
        )
    names = tuple(n.strip() for n in names_text.split(","))
    if len(names) != len(schema.class_names):
        raise SetupError(
            f"genesis: --class-names gives {len(names)} name(s) for the {len(schema.class_names)} classes of "
            f"{site.data.source} ({', '.join(schema.class_names)})"
        )
    try:
        return dataclasses.replace(schema, class_names=names)
    except ValueError as exc:  # names the field: "data.class_names: ..."
        raise SetupError(f"genesis: --class-names {names_text!r}: {exc}") from None


def cmd_genesis(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK, _out
    from .config import NodeConfig
    from .scaffold import (
        GenesisSettings,
        SetupError,
        build_genesis,
        founding_schema,
        parse_bounds,
        parse_join_policy,
        parse_member,
        parse_merge_param,
        parse_threshold,
        save_genesis,
    )
    from .trainer import statistics_rounds_for

    if not args.member:
        raise SetupError("genesis: give at least one --member NAME=PEER_ID@ADDR")
    model_config = NodeConfig.load(args.model_from)
    schema = None if args.no_schema else founding_schema(model_config)
    if args.class_names is not None:
        schema = _named_classes(schema, args.class_names, model_config)
    out = Path(args.out)
    settings = GenesisSettings(
        name=args.name,
        members=tuple(parse_member(m) for m in args.member),
        model=model_config.model,
        merge_method=args.merge,
        merge_params=tuple(parse_merge_param(p) for p in args.merge_param),
        server_optimizer=args.server_optimizer,
        server_params=tuple(parse_merge_param(p, "--server-param") for p in args.server_param),
        secure=args.secure,
        min_peers=args.min_peers,
        sync_every=_sync_every(args, model_config),
        sync_unit=args.sync_unit,
        threshold=parse_threshold(args.threshold),
        ckks_params=args.ckks_params,
        max_rounds=args.max_rounds,
        patience=args.patience,
        min_delta=args.min_delta,
        goal=args.goal,
        select=args.select,
        metric_bounds=parse_bounds(args.metric_bounds),
        class_weights=args.class_weights,
        join_policy=parse_join_policy(args.join_policy),
        timeouts=_timeouts(args),
        nonce=os.urandom(16) if args.nonce is None else args.nonce.encode(),
        statistics_rounds=statistics_rounds_for(
            model_config.model, model_config.data.preprocess, args.class_weights
        ),
        data=schema,
        dp_clip_norm=args.dp_clip_norm, dp_noise_multiplier=args.dp_noise_multiplier,
        dp_delta=args.dp_delta, dp_epsilon_budget=args.dp_epsilon_budget,
    )  # fmt: skip
    genesis = build_genesis(settings)
    save_genesis(genesis, out)
    _out(genesis.describe())
    _out(f"wrote {out}; chain id {genesis.chain_id.hex()}")
    _out("copy it to every founding site (the path in [ledger] genesis of its site.toml)")
    return EXIT_OK


def cmd_genesis_show(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK, _out
    from .scaffold import load_genesis

    _out(load_genesis(Path(args.file)).describe())
    return EXIT_OK


def _add_genesis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="swarm", help="the swarm's name")
    p.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME=KEY@ADDR",
        help="founding member: KEY is a peer id, 64 hex digits or a key file; ADDR /ip4/IP/tcp/P "
        "or /dns4/NAME/tcp/P",
    )
    p.add_argument("--model-from", default="site.toml", metavar="SITE_TOML", help="take [model] from here")
    p.add_argument("--merge", choices=RULE_NAMES, default="mean", help="merge rule (default mean)")
    p.add_argument("--merge-param", action="append", default=[], metavar="NAME=VALUE", help="e.g. mu=0.01")
    p.add_argument(
        "--server-optimizer", choices=OPTIMIZER_NAMES, default="none", help="applied to each merged mean"
    )
    p.add_argument("--server-param", action="append", default=[], metavar="NAME=VALUE", help="e.g. tau=0.01")
    p.add_argument(
        "--secure", action=argparse.BooleanOptionalAction, default=True, help="encrypted merges (default on)"
    )
    p.add_argument("--min-peers", type=int, default=2, help="contributions a round needs (>= 2)")
    p.add_argument(
        "--sync-every",
        type=int,
        help="merge every k epochs/steps (default: --model-from's training.epochs, else 1)",
    )
    p.add_argument("--sync-unit", choices=SYNC_UNITS, default="epochs")
    p.add_argument("--threshold", default="1/2", metavar="A/B", help="decrypt threshold t = floor(n*A/B)+1")
    p.add_argument("--ckks-params", default=DEFAULT_CKKS_PARAMS, help="CKKS parameter set (README)")
    p.add_argument("--max-rounds", type=int, default=10, help="stop after this many training rounds")
    p.add_argument("--no-schema", action="store_true", help="do not record feature/class names (README)")
    p.add_argument(
        "--class-names",
        metavar="A,B,...",
        help="name the founding data's classes in their order (e.g. integer codes 0,1,...)",
    )
    p.add_argument("--patience", type=int, default=0, help="stop after k rounds without improvement")
    p.add_argument("--min-delta", type=float, default=0.0, help="improvement that resets patience")
    p.add_argument("--goal", choices=METRIC_GOALS, default="max", help="validation metric: max or min")
    p.add_argument("--select", choices=SELECTIONS, default="last", help="final model: last or best merge")
    p.add_argument("--metric-bounds", default="0,1", metavar="LOW,HIGH", help="reported metrics clamped")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="none", help="balanced: pooled")
    p.add_argument("--join-policy", default="members:1", metavar="members:K|admin:KEY")
    p.add_argument("--dp-clip-norm", type=float, help="differential privacy: L2 bound C of a site's update")
    p.add_argument("--dp-noise-multiplier", type=float, help="DP: noise std / C in the merged sum")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="DP: delta (default 1e-5)")
    p.add_argument("--dp-epsilon-budget", type=float, help="DP: stop before epsilon would exceed this")
    defaults = Timeouts()
    p.add_argument(
        "--ready-wait",
        type=float,
        default=defaults.ready_wait,
        help="seconds a round waits for every member's Ready before starting with those ready",
    )
    p.add_argument(
        "--phase-timeout",
        type=float,
        default=defaults.contribute,
        help="seconds for each of contribute/aggregate/verify/decrypt before replacing a party",
    )
    p.add_argument("--key-epoch-timeout", type=float, default=defaults.key_epoch)  # fmt: skip
    p.add_argument("--nonce", help="fixed nonce (default random: two swarms never share a chain id)")
    p.add_argument("--out", default="genesis.cbor", help="output file (default genesis.cbor)")
