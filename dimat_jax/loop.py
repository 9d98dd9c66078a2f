"""The epoch loop: every agent trains for a number of epochs, one jitted step per minibatch.

Batch order and augmentation are pure functions of (seed, epoch, step), so a loop that starts at
epoch e reads exactly what an uninterrupted run reads there (exact resume).
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dimat_jax import distributed
from dimat_jax.costs import FlopCounter
from dimat_jax.data import epoch_batches
from dimat_jax.guards import check_losses


def train_epochs(state, step_fn: Callable, *, shards, x_train, y_train, seed: int, batch_size: int,
                 steps_per_epoch: int, first_epoch: int, num_epochs: int, desc: str = "",
                 extra_args: Callable | None = None, flops: FlopCounter | None = None, progress: bool = True,
                 per_agent_data: bool = False, loss_limit: float = np.inf):
    """``num_epochs`` epochs for all agents from global epoch ``first_epoch``:
    ``state, metrics = step_fn(state, x_train, y_train, idx [N, B], key, *extra_args(epoch, step, t))``
    per minibatch (t counts the steps of this call; ``metrics``: per-agent ``loss``, ``accuracy``).

    After every epoch the agents' mean losses are checked (non-finite or above ``loss_limit`` stops
    the run, see guards.py). Returns the state and ``loss`` / ``accuracy`` (per-agent means over the
    steps, [N]), ``gflops`` (XLA's count of all steps; 0 when ``step_fn`` cannot be lowered) and
    ``time_s``.
    """
    steps = steps_per_epoch
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0xA06)
    t_start = time.perf_counter()
    step_gflops = None
    loss_sum = acc_sum = 0.0
    # disable=None: bars only on a terminal, so log files stay readable
    bar = tqdm(total=num_epochs * steps, desc=desc, leave=False, disable=None if progress else True, unit="step")
    prev, t = None, 0
    for e in range(first_epoch, first_epoch + num_epochs):
        epoch_start = loss_sum
        idx = jnp.asarray(epoch_batches(shards, seed, e, steps, batch_size, per_agent_data))
        for s in range(steps):
            extra = extra_args(e, s, t) if extra_args else ()
            args = (x_train, y_train, idx[s], jax.random.fold_in(key, e * steps + s), *extra)
            state, m = step_fn(state, *args)
            if step_gflops is None and flops is not None:  # after the call: the donated state's successor
                step_gflops = flops.gflops(step_fn, state, *args)  # has the same shapes
            t += 1
            loss_sum, acc_sum = loss_sum + m["loss"], acc_sum + m["accuracy"]
            if prev is not None:  # keep one step in flight: an honest progress bar, no pipeline stall
                jax.block_until_ready(prev)
            prev = m["loss"]
            bar.update(1)
        epoch_loss = distributed.to_host(loss_sum - epoch_start) / steps  # [N] this epoch's mean
        check_losses(epoch_loss, f"epoch {e} ({desc})", loss_limit, bar)
        bar.set_postfix(loss=f"{float(np.mean(epoch_loss)):.4f}")
    bar.close()
    n = max(1, num_epochs * steps)
    return state, {"loss": distributed.to_host(loss_sum) / n, "accuracy": distributed.to_host(acc_sum) / n,
                   "gflops": (step_gflops or 0.0) * num_epochs * steps, "time_s": time.perf_counter() - t_start}
