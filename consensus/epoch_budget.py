"""The smudging budget of a key epoch: what a round's decryption costs, and what the
contract does when one would not fit.

Decryption shares leak a little about the epoch's keys (bounded in `crypto.smudging`);
each key epoch counts the shares its rounds asked for (`decryption_units`, on entering
``DECRYPT`` and for every new decrypt set in it) and a decryption that would pass the
budget is never asked for: the round is aborted and a new key epoch over the same members
starts. A round does not start while one like the epoch's largest decryption would no
longer fit; a new epoch starts first.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from crypto.smudging import DEFAULT_BUDGET, SmudgingBudget

from .contract_state import ContractState, KeyEpoch, Round
from .genesis import Genesis
from .key_epochs import renew_epoch
from .round_history import abort
from .stopping import stop

# Every CKKS parameter set has this budget (`crypto.ckks_params`; tests/crypto/test_ckks_params.py).
SMUDGING_BUDGET: Final[SmudgingBudget] = DEFAULT_BUDGET


def decryption_units(r: Round) -> int:
    """Smudging budget units of asking `r`'s decrypt set for shares of its aggregate: every
    contributor's error, hidden in each of the |T| shares, over every coefficient. The
    coefficient count is bounded from the largest committed blob (a ciphertext packs a
    coefficient in 7.5 bytes; its header only adds), so a lying blob size can only
    overcharge."""
    sizes = [c.blob_size for c in r.contributions if c.node_id in r.contributors]
    return SmudgingBudget.units(len(r.contributors), len(r.decrypt_set), max(sizes, default=0) * 2 // 15)


def another_round_fits(epoch: KeyEpoch) -> bool:
    """Whether a decryption like the epoch's largest so far still fits in its budget."""
    return epoch.smudging_spent + epoch.largest_decryption <= SMUDGING_BUDGET.capacity


def charge_decryption(s: ContractState, g: Genesis, h: int) -> ContractState:
    """The round asks its decrypt set for shares: count them against the key epoch's
    smudging budget, or, if they would pass it, abort the round and start a new key epoch
    over the same members (fresh secrets, a fresh budget) before any share is made."""
    epoch, cost, capacity = s.epoch, decryption_units(s.round), SMUDGING_BUDGET.capacity
    if cost > capacity:
        return stop(s, h, f"one decryption needs {cost} smudging budget units, a key epoch has {capacity}")
    if epoch.smudging_spent + cost > capacity:
        s = abort(s, g, h, f"smudging budget of key epoch {epoch.number} spent")
        return renew_epoch(s, g, h)
    spent, largest = epoch.smudging_spent + cost, max(epoch.largest_decryption, cost)
    return replace(s, epoch=replace(epoch, smudging_spent=spent, largest_decryption=largest))
