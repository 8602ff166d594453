"""Error types of the `consensus` package.

Two families, as h11 separates remote and local protocol errors:

- `crypto.errors.ProtocolError` subclasses defined here (`InvalidBlock`,
  `InvalidCertificate`) mean a *peer* sent something we refuse. Nothing has
  changed; the caller drops the input (and may lower the peer's score).
- `LocalProtocolError` means this node misused its own API: a bug, so the
  caller crashes loudly. `EquivocationRefused` is the store's last line of
  defence against signing two different votes for one height/round/step.
"""

from __future__ import annotations

from crypto.errors import ProtocolError


class InvalidBlock(ProtocolError):
    """A block does not extend our chain, has a wrong field or exceeds a limit."""


class InvalidCertificate(ProtocolError):
    """A commit certificate does not prove >2/3 precommits of the block's validators."""


class LocalProtocolError(Exception):
    """This node used the consensus API wrongly (a bug, never a peer's fault)."""


class EquivocationRefused(LocalProtocolError):
    """A different message was about to be signed for an already-signed height/round/step."""


class StoreError(Exception):
    """The block store on disk is inconsistent with what we are asked to write."""
