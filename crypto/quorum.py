"""How many contributions a decryption needs: the one rule, with nothing heavy to import.

The contract (through `consensus.genesis`), the round planner, the node and the crypto's
own refusal (`crypto.secure_merge.decryptable_aggregate`) all apply it, and the CLI loads
genesis without numpy or SEAL, so it lives here on its own.
"""

from __future__ import annotations


def min_contributions(min_peers: int, threshold: int) -> int:
    """The fewest contributions an aggregate may hold to be decrypted: ``max(min_peers, t + 1)``.

    Up to t - 1 colluding members may sit in a sum; with t + 1 contributions at least two
    honest updates remain in it, so subtracting their own updates from the merge leaves the
    colluders a sum of at least two, never one site's update. The one copy of the rule:
    the contract (round start and abort), the round planner and the node check it through
    `consensus.genesis.TrainingParams.min_contributions`.
    """
    return max(min_peers, threshold + 1)
