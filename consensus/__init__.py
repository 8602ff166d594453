"""Permissioned BFT ledger: sans-I/O consensus core, block store and contract.

The names below load their module on first use (PEP 562), so that importing a light part
(`consensus.genesis` for the CLI's argument choices) does not pull in the contract and
the numpy-backed crypto it judges with.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import AppFactory as AppFactory
    from .app import Application as Application
    from .blocks import Block as Block
    from .blocks import CommitCertificate as CommitCertificate
    from .blocks import EnvelopeOpener as EnvelopeOpener
    from .blocks import verify_certificate as verify_certificate
    from .contract import Contract as Contract
    from .contract import ContractState as ContractState
    from .contract import KeyEpoch as KeyEpoch
    from .contract import MemberRecord as MemberRecord
    from .contract import Round as Round
    from .contract import RoundSummary as RoundSummary
    from .core import Action as Action
    from .core import Broadcast as Broadcast
    from .core import Commit as Commit
    from .core import CoreConfig as CoreConfig
    from .core import Event as Event
    from .core import MessageReceived as MessageReceived
    from .core import PersistSigned as PersistSigned
    from .core import ReportEvidence as ReportEvidence
    from .core import RequestBlocks as RequestBlocks
    from .core import Resume as Resume
    from .core import RoundState as RoundState
    from .core import ScheduleTimeout as ScheduleTimeout
    from .core import Step as Step
    from .core import TendermintCore as TendermintCore
    from .core import TimeoutConfig as TimeoutConfig
    from .core import TimeoutFired as TimeoutFired
    from .core import TimeoutKind as TimeoutKind
    from .core import TxRejected as TxRejected
    from .core import TxSubmitted as TxSubmitted
    from .errors import EquivocationRefused as EquivocationRefused
    from .errors import InvalidBlock as InvalidBlock
    from .errors import InvalidCertificate as InvalidCertificate
    from .errors import LocalProtocolError as LocalProtocolError
    from .errors import StoreError as StoreError
    from .genesis import FoundingMember as FoundingMember
    from .genesis import Genesis as Genesis
    from .genesis import GenesisError as GenesisError
    from .genesis import JoinPolicy as JoinPolicy
    from .genesis import TrainingParams as TrainingParams
    from .mempool import Mempool as Mempool
    from .mempool import MempoolLimits as MempoolLimits
    from .messages import CONSENSUS_MESSAGES as CONSENSUS_MESSAGES
    from .messages import BlockRequest as BlockRequest
    from .messages import BlockResponse as BlockResponse
    from .messages import Precommit as Precommit
    from .messages import Prevote as Prevote
    from .messages import Proposal as Proposal
    from .messages import SyncedBlock as SyncedBlock
    from .messages import TxGossip as TxGossip
    from .simnet import Delivery as Delivery
    from .simnet import LinkFaults as LinkFaults
    from .simnet import SimNetwork as SimNetwork
    from .simnet import SimStats as SimStats
    from .simulator import KVApp as KVApp
    from .simulator import Simulation as Simulation
    from .simulator import run_schedule as run_schedule
    from .store import LedgerStore as LedgerStore
    from .store import recover as recover
    from .transactions import TX_MESSAGES as TX_MESSAGES
    from .transactions import Phase as Phase
    from .transactions import TxSigner as TxSigner
    from .verify import ChainProblem as ChainProblem
    from .verify import ChainReport as ChainReport
    from .verify import verify_chain as verify_chain
    from .votes import Equivocation as Equivocation
    from .votes import VoteKeeper as VoteKeeper

_MODULE_OF: dict[str, str] = {
    "AppFactory": "app",
    "Application": "app",
    "Block": "blocks",
    "CommitCertificate": "blocks",
    "EnvelopeOpener": "blocks",
    "verify_certificate": "blocks",
    "Contract": "contract",
    "ContractState": "contract",
    "KeyEpoch": "contract",
    "MemberRecord": "contract",
    "Round": "contract",
    "RoundSummary": "contract",
    "Action": "core",
    "Broadcast": "core",
    "Commit": "core",
    "CoreConfig": "core",
    "Event": "core",
    "MessageReceived": "core",
    "PersistSigned": "core",
    "ReportEvidence": "core",
    "RequestBlocks": "core",
    "Resume": "core",
    "RoundState": "core",
    "ScheduleTimeout": "core",
    "Step": "core",
    "TendermintCore": "core",
    "TimeoutConfig": "core",
    "TimeoutFired": "core",
    "TimeoutKind": "core",
    "TxRejected": "core",
    "TxSubmitted": "core",
    "EquivocationRefused": "errors",
    "InvalidBlock": "errors",
    "InvalidCertificate": "errors",
    "LocalProtocolError": "errors",
    "StoreError": "errors",
    "FoundingMember": "genesis",
    "Genesis": "genesis",
    "GenesisError": "genesis",
    "JoinPolicy": "genesis",
    "TrainingParams": "genesis",
    "Mempool": "mempool",
    "MempoolLimits": "mempool",
    "CONSENSUS_MESSAGES": "messages",
    "BlockRequest": "messages",
    "BlockResponse": "messages",
    "Precommit": "messages",
    "Prevote": "messages",
    "Proposal": "messages",
    "SyncedBlock": "messages",
    "TxGossip": "messages",
    "Delivery": "simnet",
    "LinkFaults": "simnet",
    "SimNetwork": "simnet",
    "SimStats": "simnet",
    "KVApp": "simulator",
    "Simulation": "simulator",
    "run_schedule": "simulator",
    "LedgerStore": "store",
    "recover": "store",
    "TX_MESSAGES": "transactions",
    "Phase": "transactions",
    "TxSigner": "transactions",
    "ChainProblem": "verify",
    "ChainReport": "verify",
    "verify_chain": "verify",
    "Equivocation": "votes",
    "VoteKeeper": "votes",
}


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(_MODULE_OF)
