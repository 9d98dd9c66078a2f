"""BatchNorm re-estimation (docs/algorithm.md §2.5): reset every BN's running statistics and recompute them
exactly over one pass of data in train mode, for all agents at once.

Each BN layer sows its batch moments E[x], E[x²] (``bn_moments`` collection); with equal-size
batches the dataset mean is the average of batch means and the (population) variance is the
average of E[x²] minus the squared mean — the exact statistics of the pre-BN activations, not an
exponential moving average.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dimat_jax.agents import agent_keys, over_agents
from dimat_jax.merging.spec import flatten, unflatten


def make_bn_moments_step(model, preprocess, strategy: str = "auto", augment: bool = False, mesh=None,
                         per_agent_data: bool = False) -> Callable:
    """Jitted ``step(sums, variables, x_all, idx [N, B], key) -> sums`` adding every BN's batch
    moments (p -> [N, 2, C]: E[x], E[x²]) of each agent's batch ``x_all[idx[a]]`` in train mode."""

    def agent_moments(agent, *shared):
        if per_agent_data:
            variables, idx, key, x_all = agent
        else:
            (variables, idx, key), (x_all,) = agent, shared
        x = x_all[idx]
        x = preprocess.train(key, x) if augment else preprocess.eval(x)
        _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "bn_moments"])
        return {path.rsplit("/moments", 1)[0]: v[0] for path, v in flatten(state["bn_moments"]).items()}

    lifted = over_agents(agent_moments, strategy, mesh)

    @jax.jit
    def step(sums, variables, x_all, idx, key):
        n = idx.shape[0]
        keys = agent_keys(key, n)
        moments = lifted((variables, idx, keys, x_all)) if per_agent_data else lifted((variables, idx, keys), x_all)
        if sums is None:
            return moments
        return jax.tree.map(jnp.add, sums, moments)

    return step


def finalize(sums: dict, num_batches: int, batch_stats) -> dict:
    """Turn summed moments into batch_stats {'.../mean', '.../var'} matching ``batch_stats``' tree."""
    flat = flatten(batch_stats)
    out = dict(flat)
    for layer, s in sums.items():
        mean = s[:, 0] / num_batches
        var = jnp.maximum(s[:, 1] / num_batches - jnp.square(mean), 0.0)
        out[f"{layer}/mean"] = mean.astype(flat[f"{layer}/mean"].dtype)
        out[f"{layer}/var"] = var.astype(flat[f"{layer}/var"].dtype)
    return unflatten(out)


def reestimate(step: Callable, variables: dict, x_all, batches, key=None) -> dict:
    """Re-estimated stacked variables: ``batches`` is an iterable of int [N, B] index arrays."""
    key = jax.random.PRNGKey(0) if key is None else key
    sums, count = None, 0
    for t, idx in enumerate(batches):
        sums = step(sums, variables, x_all, jnp.asarray(idx), jax.random.fold_in(key, t))
        count += 1
    if count == 0:
        raise ValueError("BatchNorm re-estimation needs at least one batch")
    return {"params": variables["params"], "batch_stats": finalize(sums, count, variables["batch_stats"])}
