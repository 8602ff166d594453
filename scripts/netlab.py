"""Build the namespace network lab by hand, print how to use it, tear it down on exit.

    sudo python scripts/netlab.py [--public 1] [--natted 2] [--seconds 600] [--symmetric-nat]
        [--rate-mbit 100 --rtt-ms 40]

Sites 0..public-1 sit on the lab's "internet" bridge (198.18.0.10 + i); the next `natted`
sites each sit behind a NAT router with an outbound-only firewall (198.19.i.10). Run a
process in a site with ``ip netns exec <namespace> ...``. The lab is deleted (every
process in it killed) after `--seconds`, on Ctrl-C, and on any error. With `--rate-mbit`
and/or `--rtt-ms` every site link is shaped (`swarmnode/testing/linkshape.py`) and the hub
answers at 198.18.0.1 (``ip netns exec <prefix>-hub ...`` for a server in the internet).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swarmnode.testing.linkshape import LinkShape
from swarmnode.testing.netlab import NetLab


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--public", type=int, default=1)
    parser.add_argument("--natted", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument(
        "--symmetric-nat", action="store_true", help="NAT routers pick random source ports (no hole punching)"
    )
    parser.add_argument("--rate-mbit", type=float, default=None, help="each site link, each way")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round trip added to every connection")
    args = parser.parse_args()
    reason = NetLab.unavailable()
    if reason is not None:
        print(f"netlab: {reason}", file=sys.stderr)
        return 2
    shape = None
    if args.rate_mbit is not None or args.rtt_ms > 0:
        shape = LinkShape(rate_mbit=args.rate_mbit, rtt_ms=args.rtt_ms, lifetime_s=args.seconds + 60)
    with NetLab.build(
        public=args.public, natted=args.natted, symmetric_nat=args.symmetric_nat, shape=shape
    ) as lab:
        for i, site in enumerate(lab.sites):
            kind = f"behind NAT (router {site.router})" if site.natted else "public"
            print(f"site{i}: {site.address:<12} {kind:<28} ip netns exec {site.namespace} ...")
        print(f"lab up for {args.seconds:g} s; Ctrl-C tears it down", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(args.seconds)
    print("lab down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
