"""Stopping a run whose numbers are no longer a result: non-finite or exploding training losses.

A loss of NaN or inf is caught at once; so is a finite explosion: an agent whose mean training loss
over an epoch exceeds ``factor`` × ln K (K classes; ln K is the loss of a uniform guess), which
BatchNorm networks reach under a far too large learning rate while every number stays finite.
Both raise before the round ends, so no checkpoint of the diverged state is ever written and the
last good one is kept.
"""
from __future__ import annotations

import math

import numpy as np


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss."""


class DivergenceError(NonFiniteError):
    """Training diverged: a finite loss far above the chance-level loss."""


def divergence_limit(num_classes: int, factor: float) -> float:
    """The largest acceptable mean training loss: ``factor`` × ln K (inf when ``factor`` is 0)."""
    return factor * math.log(max(2, num_classes)) if factor > 0 else math.inf


def check_losses(per_agent_mean_loss, where: str, limit: float = math.inf, bar=None) -> None:
    """Raise :class:`NonFiniteError` / :class:`DivergenceError` naming the agents whose mean training
    loss (``per_agent_mean_loss`` [N]) is not finite / above ``limit``; ``bar`` (tqdm) is closed first."""
    loss = np.asarray(per_agent_mean_loss, np.float64)
    bad = np.flatnonzero(~np.isfinite(loss))
    high = np.flatnonzero(np.isfinite(loss) & (loss > limit))
    if not len(bad) and not len(high):
        return
    if bar is not None:
        bar.close()
    if len(bad):
        raise NonFiniteError(f"non-finite training loss for agent(s) {bad.tolist()} in {where}; lower the learning "
                             "rate (lr / pretrain.lr / baseline.lr) or check the data")
    raise DivergenceError(f"training diverged: agent(s) {high.tolist()} have mean training loss up to "
                          f"{loss[high].max():.3g} in {where}, above {limit:.3g} (guard.divergence_factor × ln K, "
                          "far beyond a uniform guess); lower the learning rate (lr / pretrain.lr / baseline.lr), or "
                          "set guard.divergence_factor=0 to disable this check")
