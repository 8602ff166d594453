"""A site's training loop reduced to its merges, for swarm tests over `Node.merge`."""

from __future__ import annotations

from collections.abc import Callable

import numpy.typing as npt

from ..node import MergeResult, Node, SwarmStopped


def _one_more(result: MergeResult) -> npt.ArrayLike:
    return result.parameters + 1.0


async def merge_until_stopped(
    node: Node,
    params: npt.ArrayLike,
    weight: int,
    *,
    results: list[MergeResult],
    next_params: Callable[[MergeResult], npt.ArrayLike] = _one_more,
    val_metric: float | None = None,
) -> MergeResult | None:
    """Merges `params`, then `next_params` of each merged model (by default: it plus one),
    until training stops; every round's result is appended to `results`. Returns the final
    model: the last result, or the one `SwarmStopped` carries (None if it carries none).
    `NodeClosed` (the node crashed or was shut) propagates."""
    while True:
        try:
            result = await node.merge(params, weight, val_metric=val_metric, timeout=900)
        except SwarmStopped as stopped:
            return stopped.final
        results.append(result)
        if result.stopped:
            return result
        params = next_params(result)
