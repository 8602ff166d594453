"""Identities, signed envelopes, canonical CBOR and (threshold) CKKS for swarmnode."""

from .envelope import Envelope as Envelope
from .envelope import EnvelopeCodec as EnvelopeCodec
from .envelope import MessageType as MessageType
from .envelope import MessageTypes as MessageTypes
from .errors import KeyFileError as KeyFileError
from .errors import ProtocolError as ProtocolError
from .identity import NodeId as NodeId
from .identity import NodeIdentity as NodeIdentity
