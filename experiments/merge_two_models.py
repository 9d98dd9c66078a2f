"""Merge two differently initialised, separately trained models: activation matching vs weight
matching vs plain averaging, on the embedded digits (CPU, ~3-4 minutes for the default models).

  python experiments/merge_two_models.py [--models cnn:1,resnet20:1,resnet20:2] [--epochs 8] [--out file.json]

Both models train on the whole training set (Adam 3e-3, batch 64, crop augmentation) from their
own seeds; each merge averages the two with weights 1/2 after aligning agent 1 to agent 0 (and
vice versa), then re-estimates BatchNorm on the merge data ('local': each agent's own data;
'global': all data). Prints test accuracy of both merged agents.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax import agents
from dimat_jax.data import sources
from dimat_jax.data.pipeline import Preprocess, epoch_batches
from dimat_jax.merging.engine import Merger, merge_batches
from dimat_jax.merging.neighbours import Neighbourhood
from dimat_jax.models import build_model, permutation_spec
from dimat_jax.optim import make_optimizer
from dimat_jax.report import table


def run(arch: str, width: float, epochs: int, seed: int = 11) -> dict:
    ds = sources.load("digits")
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max, "crop", 1)
    model = build_model(arch, 10, width)
    tx = make_optimizer("adam", 3e-3)
    state = agents.init_state(model, tx, ds.image_shape, 2, seed=seed)
    step = agents.make_train_step(model, tx, pre)
    shards = [np.arange(len(ds.y_train))] * 2
    x_all, y_all = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    steps = len(ds.y_train) // 64
    for e in range(epochs):
        idx = epoch_batches(shards, seed, e, steps, 64)
        for s in range(steps):
            state, _ = step(state, x_all, y_all, jnp.asarray(idx[s]), jax.random.PRNGKey(e * 100 + s))
    test = agents.TestSet(ds.x_test, ds.y_test, len(ds.y_test))
    ev = agents.make_eval_step(model, pre)
    result = {"model": arch, "width": width, "before": agents.evaluate(ev, state.variables, test)["accuracy"].tolist()}
    spec = permutation_spec(arch, jax.tree.map(lambda x: x[0], state.variables))
    hood = Neighbourhood.from_matrix(np.full((2, 2), 0.5))
    for data in ("local", "global"):
        batches = merge_batches(shards, data, 128, 0, seed=1)
        for matcher in ("activation", "weight", "identity"):
            merged, _ = Merger(model, spec, pre, matcher=matcher).merge(
                state.variables, hood, x_all, batches, shared_data=data == "global")
            result[f"{matcher}/{data}"] = agents.evaluate(ev, merged, test)["accuracy"].tolist()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn:1,resnet20:1,resnet20:2")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", default="")
    args = p.parse_args()
    rows, results = [], []
    for item in args.models.split(","):
        arch, width = item.split(":")
        t = time.perf_counter()
        r = run(arch, float(width), args.epochs)
        results.append(r)
        fmt = lambda v: " / ".join(f"{100 * a:.1f}" for a in v)  # noqa: E731
        rows.append([f"{arch} w={float(width):g}", fmt(r["before"]), fmt(r["activation/local"]),
                     fmt(r["weight/local"]), fmt(r["identity/local"]), fmt(r["activation/global"]),
                     f"{time.perf_counter() - t:.0f}"])
        print(f"done {item}", flush=True)
    print(table(rows, ["model", "before %", "activation %", "weight %", "plain avg %", "activation (global) %",
                       "s"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
