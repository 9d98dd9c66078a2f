"""Time one DIMAT merge round, broken down by stage, next to a local epoch and the reference's procedure.

  python experiments/benchmarks/merge_round.py [--cases resnet20:1,vgg16:0.5] [--topologies ring,fc]
      [--agents 5] [--batch 100] [--batches 2] [--merge-data local] [--out results.json]
  python experiments/benchmarks/merge_round.py --real [--budgets 0,1000] [--merge-data global,local]
      [--bn-before on,off] [--cache runs/pretrained]

Stages: BN re-estimation before matching, the activation-statistics pass (all agents and edges),
host LSA (scipy, per edge and permutation), apply + mix (one jitted call), BN re-estimation of the
merged models. Each configuration runs once to compile, then is timed (median of ``--reps``).
``passes`` counts passes over the merge data for all agents together; ``fwd/batch`` counts model
evaluations per batch in the statistics pass (N for shared data, N + edges for local data).

Default: synthetic CIFAR-shaped pixels, ``--batches`` batches per pass. ``--real``: the setting of
configs/real/fashion_mnist.py (Fashion-MNIST 12k images padded to 32x32x3, ResNet-20 w=1, 5
pre-trained agents, taken from / saved to the ``--cache``), a merge per budget (examples per agent
per pass, 0 = full pass), one local epoch of all agents timed in the same process (so a merge reads
in local epochs), and the reference code's procedure for the same merge counted in full-data
forward passes: every agent re-estimates BatchNorm of itself and each neighbour, evaluates all of
them for its statistics, and re-estimates its merged model — N (2 (D + 1) + 1) passes on a graph of
degree D (35 for a 5-agent ring); with the fully connected shortcut one agent does it for all
(2 N + 1 = 11).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax import agents
from dimat_jax.data.pipeline import Preprocess
from dimat_jax.merging.engine import Merger, merge_batches
from dimat_jax.merging.neighbours import ForwardPlan, Neighbourhood
from dimat_jax.models import build_model, permutation_spec
from dimat_jax.report import table
from dimat_jax.topology import build as build_topology

ROOT = pathlib.Path(__file__).resolve().parents[2]
STAGES = ("bn_before_s", "stats_s", "match_s", "mix_s", "bn_after_s", "total_s")


def reference_passes(topology: str, n: int, degree: int) -> int:
    """Full-data forward passes of the reference code's merge of all agents (see the docstring)."""
    return 2 * n + 1 if topology == "fc" else n * (2 * (degree + 1) + 1)


def timed_merge(merger, variables, hood, x, batches, shared, bn_before, reps):
    merger.merge(variables, hood, x, batches[:1], shared_data=shared, reestimate_before=bn_before)  # compile
    infos = []
    for _ in range(reps):
        merged, info = merger.merge(variables, hood, x, batches, shared_data=shared, reestimate_before=bn_before)
        jax.block_until_ready(merged)
        infos.append(info)
    return {k: statistics.median(getattr(i, k) for i in infos) for k in STAGES}, infos[0]


def synthetic(args):
    n = args.agents
    rng = np.random.default_rng(0)
    per_agent = args.batch * args.batches
    x = jnp.asarray(rng.integers(0, 256, (n * per_agent, 32, 32, 3), dtype=np.uint8))
    shards = [np.arange(a * per_agent, (a + 1) * per_agent) for a in range(n)]
    pre = Preprocess((0.5,) * 3, (0.25,) * 3, 255.0)
    rows, results = [], []
    for case in args.cases.split(","):
        arch, width = case.split(":")
        model = build_model(arch, 10, float(width))
        variables = agents.init_variables(model, (32, 32, 3), n, seed=0)
        spec = permutation_spec(arch, jax.tree.map(lambda v: v[0], variables))
        merger = Merger(model, spec, pre)
        n_params = agents.num_params(variables["params"])
        for topo in args.topologies.split(","):
            hood = Neighbourhood.from_matrix(build_topology(topo, n).matrix())
            for merge_data in args.merge_data.split(","):
                shared = merge_data == "global"
                batches = merge_batches(shards, merge_data, args.batch, args.batches)
                med, info = timed_merge(merger, variables, hood, x, batches, shared, True, args.reps)
                forwards = n * ForwardPlan.build(hood, shared).blocks_per_model
                rows.append([f"{arch} w={float(width):g}", f"{n_params / 1e6:.2f}M", topo, merge_data, hood.num_edges,
                             f"{med['bn_before_s']:.2f}", f"{med['stats_s']:.2f}", f"{med['match_s']:.3f}",
                             f"{med['mix_s']:.3f}", f"{med['bn_after_s']:.2f}", f"{med['total_s']:.2f}",
                             info.data_passes, forwards, f"{info.gflops:.0f}"])
                results.append({"model": arch, "width": float(width), "params_per_agent": n_params, "topology": topo,
                                "agents": n, "edges": hood.num_edges, "merge_data": merge_data, "batch": args.batch,
                                "batches": args.batches, **med, "data_passes": info.data_passes,
                                "forwards_per_batch": forwards, "gflops": info.gflops})
                print(f"done {case} {topo} {merge_data}", flush=True)
    print(f"{n} agents, {args.batches} batches of {args.batch} per pass")
    print(table(rows, ["model", "params", "graph", "data", "edges", "BN s", "stats s", "LSA s", "mix s", "BN s",
                       "total s", "passes", "fwd/batch", "GFLOP"]))
    return results


def real(args):
    from dimat_jax import train
    from dimat_jax.algorithms.merge import make_merger
    from dimat_jax.config import load_config_file
    rows, results = [], []
    config = load_config_file(ROOT / "configs" / "real" / "fashion_mnist.py", {
        "pretrain.cache_dir": args.cache, "data_path": args.data_path, "log.progress": False})
    services = train.build_services(config, log=print)
    state, _ = train.pretrain(services)
    n = services.data.num_agents
    tx, step = services.train_step("local")
    first = services.counters.epoch
    epoch_s = []
    for _ in range(2):  # the second epoch is timed (the first compiles)
        services.counters.epoch = first
        copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731 -- the step donates its input state
        s = state.replace(params=copy(state.params), batch_stats=copy(state.batch_stats),
                          opt_state=agents.init_opt_state(tx, state.params))
        t = time.perf_counter()
        s, stats = services.train(s, step, 1, "epoch")
        jax.block_until_ready(s.params)
        epoch_s.append(time.perf_counter() - t)
    epoch_time, epoch_gflops = epoch_s[-1], stats["gflops"]
    merger = make_merger(services, state.variables)
    for topo in args.topologies.split(","):
        c = config.copy_and_resolve_references()
        c.topology = topo
        hood = Neighbourhood.from_matrix(train.build_topology(c).matrix())
        ref = reference_passes(topo, n, hood.num_slots)
        for merge_data in args.merge_data.split(","):
            shared = merge_data == "global"
            for bn_before in args.bn_before.split(","):
                for budget in [int(b) for b in args.budgets.split(",")]:
                    batches = merge_batches(services.data.shards, merge_data, config.merge.batch_size, 0, config.seed,
                                            1, num_examples=budget, labels=services.data.dataset.y_train)
                    med, info = timed_merge(merger, state.variables, hood, services.x_train, batches, shared,
                                            bn_before == "on", args.reps)
                    forwards = n * ForwardPlan.build(hood, shared).blocks_per_model
                    rows.append([topo, merge_data, bn_before, info.examples_per_pass, info.data_passes, forwards,
                                 f"{med['bn_before_s']:.1f}", f"{med['stats_s']:.1f}", f"{med['bn_after_s']:.1f}",
                                 f"{med['total_s']:.1f}", f"{med['total_s'] / epoch_time:.2f}",
                                 f"{info.gflops / epoch_gflops:.2f}", ref])
                    results.append({"topology": topo, "merge_data": merge_data, "bn_before": bn_before,
                                    "budget": budget, "examples_per_pass": info.examples_per_pass, **med,
                                    "data_passes": info.data_passes, "forwards_per_batch": forwards,
                                    "gflops": info.gflops, "epoch_time_s": epoch_time, "epoch_gflops": epoch_gflops,
                                    "reference_full_data_passes": ref})
                    print(f"done {topo} {merge_data} bn_before={bn_before} budget={budget}", flush=True)
    print(f"Fashion-MNIST 12k (32x32x3), ResNet-20 w=1, {n} agents; one local epoch of all agents: "
          f"{epoch_time:.1f} s, {epoch_gflops:.0f} GFLOP")
    print(table(rows, ["graph", "data", "BN before", "examples/pass", "passes", "fwd/batch", "BN s", "stats s",
                       "BN s", "total s", "x epoch (time)", "x epoch (GFLOP)", "reference passes"]))
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="resnet20:1,vgg16:0.5")
    p.add_argument("--topologies", default="ring,fc")
    p.add_argument("--agents", type=int, default=5)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--merge-data", default="local", help="local, global or both (comma separated)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--real", action="store_true", help="Fashion-MNIST, pre-trained agents, budgets, a local epoch")
    p.add_argument("--budgets", default="0,1000", help="--real: examples per agent per pass (0 = full pass)")
    p.add_argument("--bn-before", default="on", help="--real: pre-merge BatchNorm re-estimation: on, off or both")
    p.add_argument("--cache", default="runs/pretrained", help="--real: pre-trained agents cache")
    p.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default="")
    args = p.parse_args()
    results = real(args) if args.real else synthetic(args)
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), {platform.machine()}, "
          f"jax {jax.__version__}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
