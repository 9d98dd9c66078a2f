"""Training throughput of N stacked agents per agent strategy, vs N independent single-agent steps.

  python experiments/benchmarks/agent_strategies.py [--model resnet20 --width 1 --agents 5
      --batch 128 --reps 3 --strategies separate,unrolled,vmap,map --out results.json]

One "step" advances all N agents by one minibatch of ``--batch`` CIFAR-shaped images each
(synthetic pixels, Adam). ``separate`` is the baseline: N independent jitted single-agent steps
called one after the other. Strategies are timed in alternating repetitions (round-robin) after a
warm-up/compile step; the table shows medians. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax import agents
from dimat_jax.data.pipeline import Preprocess
from dimat_jax.models import build_model
from dimat_jax.optim import make_optimizer
from dimat_jax.report import table


def build(args):
    model = build_model(args.model, 10, args.width)
    shape = (args.size, args.size, 3)
    tx = make_optimizer("adam", 1e-3)
    pre = Preprocess((0.5,) * 3, (0.25,) * 3, 255.0, "crop_flip", 4)
    rng = np.random.default_rng(0)
    n_train = args.agents * args.batch
    x = jnp.asarray(rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, n_train, dtype=np.int32))
    idx = jnp.asarray(np.arange(n_train, dtype=np.int32).reshape(args.agents, args.batch))
    return model, tx, pre, shape, x, y, idx


def make_runner(name, args, model, tx, pre, shape, x, y, idx):
    """A zero-argument function that performs one step of all agents and blocks until done."""
    key = jax.random.PRNGKey(0)
    if name == "separate":
        single = agents.make_train_step(model, tx, pre, "unrolled")
        states = [agents.init_state(model, tx, shape, 1, seed=i) for i in range(args.agents)]

        def run():
            for i in range(args.agents):
                states[i], m = single(states[i], x, y, idx[i:i + 1], key)
            jax.block_until_ready(m)
        return run
    step = agents.make_train_step(model, tx, pre, name)
    box = [agents.init_state(model, tx, shape, args.agents, seed=0)]

    def run():
        box[0], m = step(box[0], x, y, idx, key)
        jax.block_until_ready(m)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--agents", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--strategies", default="separate,unrolled,vmap,map")
    p.add_argument("--out", default="")
    args = p.parse_args()
    names = args.strategies.split(",")
    parts = build(args)
    runners, compile_s = {}, {}
    for n in names:
        t = time.perf_counter()
        runners[n] = make_runner(n, args, *parts)
        runners[n]()  # compile + first step
        compile_s[n] = time.perf_counter() - t
        print(f"{n}: compiled + first step in {compile_s[n]:.1f} s", flush=True)
    times = {n: [] for n in names}
    for _ in range(args.reps):
        for n in names:
            t = time.perf_counter()
            runners[n]()
            times[n].append(time.perf_counter() - t)
    base = statistics.median(times["separate"]) if "separate" in times else None
    rows, results = [], []
    images = args.agents * args.batch
    for n in names:
        med = statistics.median(times[n])
        ratio = base / med if base else float("nan")
        rows.append([n, f"{med:.3f}", f"{images / med:.0f}", f"{ratio:.2f}", f"{compile_s[n]:.1f}"])
        results.append({"strategy": n, "median_s_per_step": med, "images_per_s": images / med,
                        "throughput_vs_separate": ratio, "compile_and_first_step_s": compile_s[n],
                        "all_s": times[n]})
    device = jax.devices()[0]
    header = (f"{args.model} w={args.width:g}, {args.agents} agents x batch {args.batch}, "
              f"{args.size}x{args.size}x3, Adam; backend {jax.default_backend()} ({device.device_kind}), "
              f"{platform.processor() or platform.machine()}, jax {jax.__version__}; median of {args.reps}")
    print(header)
    print(table(rows, ["strategy", "s/step", "images/s", "vs separate", "compile s"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "backend": jax.default_backend(), "device": device.device_kind,
                       "jax": jax.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
