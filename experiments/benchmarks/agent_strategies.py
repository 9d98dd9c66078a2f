"""Training throughput of N stacked agents per agent strategy and agent count, vs N independent
single-agent steps.

  python experiments/benchmarks/agent_strategies.py [--model resnet20 --width 1 --agents 2,5,10
      --batch 128 --reps 3 --strategies separate,unrolled,vmap,map,chunked,shard_map --out results.json]

One "step" advances all N agents by one minibatch of ``--batch`` CIFAR-shaped images each
(synthetic pixels, Adam). ``separate`` is the baseline: N independent jitted single-agent steps
called one after the other. ``shard_map`` shards the agents over every visible device (on a CPU,
start with XLA_FLAGS=--xla_force_host_platform_device_count=N to get N virtual devices; the agent
count must be divisible by the device count). Strategies are timed in alternating repetitions
(round-robin) after a warm-up/compile step; the table shows medians. Prints a table, writes JSON.
On CPU, start it with LD_PRELOAD=libtcmalloc_minimal.so.4 to time under tcmalloc (see runtime.py).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax import agents, runtime
from dimat_jax.data.pipeline import Preprocess
from dimat_jax.models import build_model
from dimat_jax.models.conv import resolve_filter_grad
from dimat_jax.optim import make_optimizer
from dimat_jax.report import table


def build(args, agents_n):
    model = build_model(args.model, 10, args.width, args.conv_filter_grad)
    shape = (args.size, args.size, 3)
    tx = make_optimizer("adam", 1e-3)
    pre = Preprocess((0.5,) * 3, (0.25,) * 3, 255.0, "crop_flip", 4)
    rng = np.random.default_rng(0)
    n_train = agents_n * args.batch
    x = jnp.asarray(rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, n_train, dtype=np.int32))
    idx = jnp.asarray(np.arange(n_train, dtype=np.int32).reshape(agents_n, args.batch))
    return model, tx, pre, shape, x, y, idx


def make_runner(name, n, model, tx, pre, shape, x, y, idx):
    """A zero-argument function that performs one step of all ``n`` agents and blocks until done."""
    key = jax.random.PRNGKey(0)
    if name == "separate":
        single = agents.make_train_step(model, tx, pre, "unrolled")
        states = [agents.init_state(model, tx, shape, 1, seed=i) for i in range(n)]

        def run():
            for i in range(n):
                states[i], m = single(states[i], x, y, idx[i:i + 1], key)
            jax.block_until_ready(m)
        return run
    mesh = None
    if name == "shard_map":
        from dimat_jax.distributed import make_mesh, replicate
        mesh = make_mesh(0, n)
        x, y = replicate(x, mesh), replicate(y, mesh)
    step = agents.make_train_step(model, tx, pre, "auto" if name == "shard_map" else name, mesh=mesh)
    from dimat_jax.distributed import shard_agents
    box = [shard_agents(agents.init_state(model, tx, shape, n, seed=0), mesh)]

    def run():
        box[0], m = step(box[0], x, y, idx, key)
        jax.block_until_ready(m)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--conv-filter-grad", default="auto", help="auto | xla | taps (dimat_jax/models/conv.py)")
    p.add_argument("--agents", default="5", help="agent count(s), comma separated")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--strategies", default="separate,unrolled,vmap,map")
    p.add_argument("--unrolled-max", type=int, default=0,
                   help="skip 'unrolled' above this many agents (its compile time grows with N); 0 = never skip")
    p.add_argument("--out", default="")
    args = p.parse_args()
    rows, results = [], []
    for n in [int(a) for a in args.agents.split(",")]:
        parts = build(args, n)
        runners, compile_s = {}, {}
        names = [s for s in args.strategies.split(",")
                 if not (s == "unrolled" and args.unrolled_max and n > args.unrolled_max)]
        for name in names:
            t = time.perf_counter()
            runners[name] = make_runner(name, n, *parts)
            runners[name]()  # compile + first step
            compile_s[name] = time.perf_counter() - t
            print(f"{n} agents, {name}: compiled + first step in {compile_s[name]:.1f} s", flush=True)
        times = {name: [] for name in names}
        faults = {name: [] for name in names}  # minor page faults per step (fresh memory touched)
        for _ in range(args.reps):
            for name in names:
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t = time.perf_counter()
                runners[name]()
                times[name].append(time.perf_counter() - t)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        base = statistics.median(times["separate"]) if "separate" in times else None
        images = n * args.batch
        for name in names:
            med = statistics.median(times[name])
            ratio = base / med if base else float("nan")
            rows.append([n, name, f"{med:.3f}", f"{images / med:.0f}", f"{ratio:.2f}", f"{compile_s[name]:.1f}",
                         f"{statistics.median(faults[name]):.0f}"])
            results.append({"agents": n, "strategy": name, "median_s_per_step": med, "images_per_s": images / med,
                            "throughput_vs_separate": ratio, "compile_and_first_step_s": compile_s[name],
                            "all_s": times[name], "minor_page_faults_per_step": faults[name]})
    device = jax.devices()[0]
    print(f"{args.model} w={args.width:g}, batch {args.batch} per agent, {args.size}x{args.size}x3, Adam; backend "
          f"{jax.default_backend()} ({device.device_kind}, {jax.device_count()} device(s)), "
          f"{platform.processor() or platform.machine()}, jax {jax.__version__}, malloc {runtime.malloc_in_use()}, conv filter grad "
          f"{resolve_filter_grad(args.conv_filter_grad)}; "
          f"median of {args.reps}")
    print(table(rows, ["agents", "strategy", "s/step", "images/s", "vs separate", "compile s", "page faults/step"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "backend": jax.default_backend(), "device": device.device_kind,
                       "jax": jax.__version__, "malloc": runtime.malloc_in_use(),
                       "conv_filter_grad": resolve_filter_grad(args.conv_filter_grad), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
