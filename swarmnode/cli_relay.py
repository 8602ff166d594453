"""`swarmnode relay`: a relay-only process an organiser runs for sites behind NAT
(`swarmnode.net.relay_node`: no ledger, no data, no key-epoch secret).

Registered by `swarmnode.cli.build_parser`; imports libp2p only when it runs, so `--help`
stays light.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_relay_command(sub: Any) -> None:
    """The `relay` sub-command on `sub` (argparse's sub-parsers action)."""
    p = sub.add_parser(
        "relay",
        help="run a circuit relay for a swarm's sites behind NAT (members only; no ledger, no data)",
        description=(
            "Serve circuit relay v2 (hop) to the members of the swarm(s) whose genesis is given: "
            "a reservation or circuit from or to any other peer is refused (logged once per peer)."
        ),
    )
    p.add_argument(
        "--genesis",
        action="append",
        required=True,
        type=Path,
        metavar="FILE",
        help="the swarm's genesis.cbor: its founders may reserve and connect (repeat: several swarms)",
    )
    p.add_argument(
        "--members",
        type=Path,
        metavar="FILE",
        help=(
            "members since genesis, one a line: a peer id or member line adds a site, -PEER_ID "
            "takes one off (left or removed); read again whenever it changes"
        ),
    )
    p.add_argument(
        "--key-file",
        default="relay.key",
        help="the relay's key; created (mode 0600) if missing (default relay.key)",
    )
    p.add_argument("--listen", default="0.0.0.0", help="IPv4 address to bind (default 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=7000, help="listen port (default 7000)")
    p.add_argument(
        "--advertise",
        action="append",
        default=[],
        metavar="HOST|MULTIADDR",
        help="where sites reach the relay (IP, DNS name or multiaddr); printed as network.relays entries",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    p.set_defaults(handler=cmd_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    import trio

    from crypto.identity import NodeIdentity

    from .addresses import advertised_addresses
    from .cli import _ctrl_c_stops, _out
    from .logsetup import setup_logging
    from .net.relay_members import RelayAllowList
    from .net.relay_node import run_relay
    from .scaffold import SetupError, load_genesis, load_identity

    geneses = [load_genesis(path) for path in args.genesis]
    try:
        allowed = RelayAllowList([m.node_id for g in geneses for m in g.members], args.members)
    except OSError as exc:
        raise SetupError(f"--members {args.members}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise SetupError(f"--members: {exc}") from None
    key_path = Path(args.key_file)
    if not key_path.exists():
        NodeIdentity.generate().save(key_path)
        _out(f"created {key_path} (mode 0600): the relay's identity; keep it to keep its peer id")
    identity = load_identity(key_path)
    try:
        advertised = advertised_addresses(args.listen, args.port, args.advertise)
    except ValueError as exc:
        raise SetupError(f"--advertise: {exc}") from None
    _ctrl_c_stops()
    setup_logging("info", log_format=args.log_format, site="relay")
    _out(f"relay peer id: {identity.node_id.peer_id}")
    chains = ", ".join(g.chain_id.hex() for g in geneses)
    _out(f"relaying only for the {len(allowed.members)} members of chain {chains}")

    def ready(bound: tuple[str, ...]) -> None:
        entries = [f"{a}/p2p/{identity.node_id.peer_id}" for a in advertised] or list(bound)
        _out("sites behind NAT add to [network] relays (and their member line gets <relay>/p2p-circuit):")
        for entry in entries:
            _out(f"  {entry}")
        if not advertised:
            _out("(these are the bound addresses: give --advertise with the address sites dial)")

    trio.run(lambda: run_relay(identity, args.listen, args.port, admits=allowed.admits, on_ready=ready))
    return 0
