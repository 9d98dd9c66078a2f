"""Local optimizers (optax): SGD, momentum SGD (optionally Nesterov), Adam, with coupled weight
decay (PyTorch-style L2 added to the gradient) and a per-epoch exponential learning-rate decay."""
from __future__ import annotations

import optax

from dimat_jax.choices import OPTIMIZER_ALIASES as ALIASES
from dimat_jax.choices import OPTIMIZERS


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def learning_rate(lr: float, lr_decay: float = 1.0, steps_per_epoch: int = 1) -> optax.Schedule | float:
    """``lr * lr_decay ** floor(step / steps_per_epoch)``; a constant when ``lr_decay == 1``."""
    if lr_decay == 1.0:
        return lr
    return optax.exponential_decay(lr, transition_steps=steps_per_epoch, decay_rate=lr_decay, staircase=True)


def make_optimizer(name: str, lr: float, *, momentum: float = 0.9, nesterov: bool = False,
                   weight_decay: float = 0.0, lr_decay: float = 1.0, steps_per_epoch: int = 1
                   ) -> optax.GradientTransformation:
    """Optimizer ``name`` ('sgd' | 'msgd' | 'adam'; alias 'momentum' = 'msgd')."""
    name = canonical(name)
    schedule = learning_rate(lr, lr_decay, steps_per_epoch)
    if name == "sgd":
        tx = optax.sgd(schedule)
    elif name == "msgd":
        tx = optax.sgd(schedule, momentum=momentum, nesterov=nesterov)
    elif name == "adam":
        tx = optax.adam(schedule)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)} "
                         f"(aliases: {', '.join(ALIASES)})")
    if weight_decay:
        tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
    return tx
