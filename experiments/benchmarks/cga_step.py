"""CGA's training step under each agent strategy: 5 ResNet-20 agents (width 1) on a ring, batch 100
per agent, 32x32x3 inputs. CGA takes a gradient of every agent's model on its own and each
neighbour's batch (3 per agent on a ring), so its step costs ~3 local-training steps at best.
Prints compile time (first step) and the median of the next steps, with plain local training
(unrolled) for scale.

  python experiments/benchmarks/cga_step.py [--strategies chunked vmap] [--steps 5]
"""
from __future__ import annotations

import argparse
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dimat_jax import agents
from dimat_jax.algorithms.gossip import init_opt_state, make_gossip_step
from dimat_jax.merging.neighbours import Neighbourhood
from dimat_jax.models import build_model

N, B, POOL = 5, 100, 2000


def timed(step, state, args_of, steps):
    times = []
    for t in range(steps + 1):
        start = time.perf_counter()
        state, _ = step(state, *args_of(t))
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    return times[0], float(np.median(times[1:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", nargs="+", default=["chunked", "vmap"])
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    model = build_model("resnet20", 10, 1.0)
    v = agents.init_variables(model, (32, 32, 3), N, 0)
    ring = np.zeros((N, N), np.float32)
    for i in range(N):
        ring[i, [i, (i + 1) % N, (i - 1) % N]] = 1 / 3
    hood = Neighbourhood.from_matrix(ring)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((POOL, 32, 32, 3), np.float32))
    y = jnp.asarray(rng.integers(0, 10, POOL))
    pre = types.SimpleNamespace(train=lambda key, images: images, eval=lambda images: images)
    batches = [jnp.asarray(rng.integers(0, POOL, (N, B))) for _ in range(a.steps + 1)]
    rows = []
    for strategy in a.strategies:
        step = make_gossip_step(model, pre, "cga", strategy=strategy)
        state = jax.tree.map(jnp.copy, agents.AgentState(params=v["params"], batch_stats=v["batch_stats"],
                                                         opt_state=init_opt_state("cga", v["params"])))
        rows.append((f"cga, {strategy}", *timed(step, state, lambda t: (
            x, y, batches[t], jax.random.PRNGKey(t), jnp.asarray(ring), jnp.float32(0.01),
            jnp.asarray(hood.nbr), jnp.asarray(hood.weight)), a.steps)))
    tx = optax.sgd(0.01)
    step = agents.make_train_step(model, tx, pre, "unrolled")
    state = jax.tree.map(jnp.copy, agents.AgentState(params=v["params"], batch_stats=v["batch_stats"],
                                                     opt_state=jax.vmap(tx.init)(v["params"])))
    rows.append(("local training, unrolled", *timed(step, state, lambda t: (x, y, batches[t], jax.random.PRNGKey(t)),
                                                    a.steps)))
    base = rows[-1][2]
    print(f"{'step':<26} {'first (compile) s':>18} {'median s':>9} {'x local step':>13}")
    for name, first, med in rows:
        print(f"{name:<26} {first:>18.1f} {med:>9.2f} {med / base:>13.1f}")


if __name__ == "__main__":
    main()
