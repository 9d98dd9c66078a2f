"""Time one DIMAT merge round, broken down by stage, for stacked agents.

  python experiments/benchmarks/merge_round.py [--cases resnet20:1,vgg16:0.5] [--topologies ring,fc]
      [--agents 5] [--batch 100] [--batches 2] [--merge-data local] [--out results.json]

Stages: BN re-estimation before matching, the activation-statistics pass (all agents and edges),
host LSA (scipy, per edge and permutation), apply + mix (one jitted call), BN re-estimation of the
merged models. Each case runs once to compile, then is timed on a second round (median of
``--reps``). Synthetic CIFAR-shaped pixels (32x32x3, 10 classes). ``data passes`` counts passes
over the merge data for all agents together; ``forwards/batch`` counts model evaluations per batch
in the statistics pass (N for shared data; N + edges for local data).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics

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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="resnet20:1,vgg16:0.5")
    p.add_argument("--topologies", default="ring,fc")
    p.add_argument("--agents", type=int, default=5)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--merge-data", default="local", choices=["local", "global"])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--out", default="")
    args = p.parse_args()
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
            shared = args.merge_data == "global"
            batches = merge_batches(shards, args.merge_data, args.batch, args.batches)
            plan = ForwardPlan.build(hood, shared)
            merger.merge(variables, hood, x, batches, shared_data=shared)  # compile
            infos = [merger.merge(variables, hood, x, batches, shared_data=shared)[1] for _ in range(args.reps)]
            med = {k: statistics.median(getattr(i, k) for i in infos)
                   for k in ("bn_before_s", "stats_s", "match_s", "mix_s", "bn_after_s", "total_s")}
            forwards = n * plan.blocks_per_model
            lsa_calls = hood.num_edges * len(spec.perms)
            rows.append([f"{arch} w={float(width):g}", f"{n_params / 1e6:.2f}M", topo, hood.num_edges,
                         f"{med['bn_before_s']:.2f}", f"{med['stats_s']:.2f}", f"{med['match_s']:.3f}",
                         f"{med['mix_s']:.3f}", f"{med['bn_after_s']:.2f}", f"{med['total_s']:.2f}",
                         infos[0].data_passes, forwards, lsa_calls])
            results.append({"model": arch, "width": float(width), "params_per_agent": n_params, "topology": topo,
                            "agents": n, "edges": hood.num_edges, "merge_data": args.merge_data,
                            "batch": args.batch, "batches": args.batches, **med,
                            "data_passes": infos[0].data_passes, "forwards_per_batch": forwards,
                            "lsa_calls": lsa_calls})
            print(f"done {case} {topo}", flush=True)
    print(f"{n} agents, merge data {args.merge_data}, {args.batches} batches of {args.batch} per pass; backend "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}), {platform.machine()}, jax {jax.__version__}")
    print(table(rows, ["model", "params", "graph", "edges", "BN s", "stats s", "LSA s", "mix s", "BN s",
                       "total s", "passes", "fwd/batch", "LSAs"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
