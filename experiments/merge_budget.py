"""How much data does a merge need? Accuracy and cost of one DIMAT merge vs its budget of examples.

  python experiments/merge_budget.py --out experiments/results/merge_budget \
      [--budgets 256,512,1000,2000,5000,0] [--partitions iid,noniid] [--topologies ring,fc] [--seeds 0,1,2]
      [--merge-data global] [--bn-before off,on] [--after-round] [--cache runs/pretrained]

In the setting of configs/real/fashion_mnist.py (Fashion-MNIST 12k/2k padded to 32x32x3, ResNet-20
w=1, 5 agents, 3 pre-training epochs), for every partition, seed, topology, merge data, pre-merge
BatchNorm re-estimation (on / off) and budget (examples per agent per pass; 0 = a full pass): one
merge of the same pre-trained agents, the mean test accuracy right after it, and (--after-round)
after one further local epoch with a fresh Adam — the same batches for every budget, so the
comparison is paired. Also recorded: the merge's time, XLA GFLOPs and data passes, one local
epoch's time and GFLOPs in the same process (so a merge's cost reads in local epochs), and, for
bn_before=off, the share of permutation entries equal to the bn_before=on merge of the same budget.

Rows go to <out>/rows.jsonl as they finish (rerunning skips finished rows, so the script resumes);
at the end <out>/frontier.md and frontier.png summarise the mean over seeds per budget.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def config_for(partition: str, seed: int, cache: str, data_path: str):
    from dimat_jax.config import load_config_file
    return load_config_file(ROOT / "configs" / "real" / "fashion_mnist.py", {
        "partition": partition, "seed": seed, "pretrain.cache_dir": cache, "data_path": data_path,
        "log.progress": False, "algorithm": "dimat"})


def key_of(row: dict) -> tuple:
    return tuple(row[k] for k in ("partition", "seed", "topology", "merge_data", "bn_before", "budget"))


def run(args) -> list[dict]:
    from dimat_jax import agents, report, train
    from dimat_jax.algorithms.merge import make_merger
    from dimat_jax.merging.engine import merge_batches
    from dimat_jax.merging.neighbours import Neighbourhood
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    done = {key_of(r): r for r in report.read_metrics(rows_file)} if rows_file.exists() else {}
    budgets = [int(b) for b in args.budgets.split(",")]
    on_budgets = [int(b) for b in args.bn_before_budgets.split(",")] if args.bn_before_budgets else budgets
    after_budgets = [int(b) for b in args.after_round_budgets.split(",")] if args.after_round_budgets else []
    for partition in args.partitions.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = config_for(partition, seed, args.cache, args.data_path)
            services = train.build_services(config, log=lambda s: None)
            state, _ = train.pretrain(services)
            services.writer = report.MetricsWriter(out, enabled=False)
            pre = services.evaluate(state.variables)
            merger = make_merger(services, state.variables)
            tx, step = services.train_step("local")
            first_epoch = services.counters.epoch
            epoch_cost = None  # GFLOPs of one local epoch of all agents
            for topology in args.topologies.split(","):
                hood = Neighbourhood.from_matrix(train.build_topology(_with(config, topology)).matrix())
                for merge_data in args.merge_data.split(","):
                    shared = merge_data == "global"
                    reference_perms = {}
                    for bn_before in args.bn_before.split(","):
                        these = [b for b in budgets if bn_before == "off" or b in on_budgets]
                        todo = [b for b in these
                                if (partition, seed, topology, merge_data, bn_before, b) not in done]
                        if not todo:
                            continue
                        warm = merge_batches(services.data.shards, merge_data, config.merge.batch_size, 1, seed, 1)
                        merger.merge(state.variables, hood, services.x_train, warm, shared_data=shared,
                                     reestimate_before=bn_before == "on")  # compile outside the timings
                        for budget in these:
                            row_key = (partition, seed, topology, merge_data, bn_before, budget)
                            batches = merge_batches(services.data.shards, merge_data, config.merge.batch_size,
                                                    0, seed, 1, num_examples=budget,
                                                    labels=services.data.dataset.y_train)
                            if row_key in done:
                                continue
                            t = time.perf_counter()
                            merged, info = merger.merge(state.variables, hood, services.x_train, batches,
                                                        shared_data=shared, reestimate_before=bn_before == "on")
                            jax.block_until_ready(merged)
                            merge_s = time.perf_counter() - t
                            ev = services.evaluate(merged)
                            row = {"partition": partition, "seed": seed, "topology": topology,
                                   "merge_data": merge_data, "bn_before": bn_before, "budget": budget,
                                   "examples_per_pass": info.examples_per_pass, "data_passes": info.data_passes,
                                   "merge_time_s": merge_s, "merge_gflops": info.gflops,
                                   "pre_merge_accuracy": float(np.mean(pre["accuracy"])),
                                   "merged_accuracy": float(np.mean(ev["accuracy"]))}
                            if bn_before == "on":
                                reference_perms[budget] = info.perms
                            elif budget in reference_perms:
                                ref = reference_perms[budget]
                                row["perm_agreement_with_bn_before"] = float(np.mean(
                                    [np.mean(info.perms[p][i, k] == ref[p][i, k]) for p in ref
                                     for i, _, k in hood.edges()]))
                            if args.after_round and (not after_budgets or budget in after_budgets):
                                s = state.replace(params=merged["params"], batch_stats=merged["batch_stats"],
                                                  opt_state=agents.init_opt_state(tx, merged["params"]))
                                services.counters.epoch = first_epoch  # the same batches for every row
                                s, stats = services.train(s, step, 1, "after the merge")
                                row["after_round_accuracy"] = float(np.mean(services.evaluate(s.variables)["accuracy"]))
                                row["epoch_time_s"], row["epoch_gflops"] = stats["time_s"], stats["gflops"]
                                epoch_cost = epoch_cost or stats["gflops"]
                            row["merge_cost_local_epochs_gflops"] = info.gflops / epoch_cost if epoch_cost else None
                            with open(rows_file, "a") as f:
                                f.write(json.dumps(row) + "\n")
                            done[row_key] = row
                            print(json.dumps(row), flush=True)
    return list(done.values())


def _with(config, topology):
    c = config.copy_and_resolve_references()
    c.topology = topology
    return c


def paired(rows: list[dict], ref: list[dict] | None, key: str) -> float | None:
    """Mean difference in points of ``key`` between ``rows`` and ``ref`` over the seeds both have."""
    if not ref:
        return None
    base = {r["seed"]: r.get(key) for r in ref}
    diffs = [r[key] - base[r["seed"]] for r in rows if r.get(key) is not None and base.get(r["seed"]) is not None]
    return 100 * float(np.mean(diffs)) if diffs else None


def summarise(rows: list[dict], out: pathlib.Path) -> str:
    """Mean over seeds per (merge data, partition, topology, bn_before, budget), as a Markdown table
    (differences to the full pass of the same setting paired by seed), and the frontier plot
    (accuracy after the merge and after the round vs examples per pass)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["merge_data"], r["partition"], r["topology"], r["bn_before"], r["budget"]), []).append(r)
    lines = ["| merge data | partition | topology | BN before | examples/pass | seeds | after merge % | "
             "Δ vs full (paired) | after round % | Δ vs full | merge s | merge GFLOP | merge / local epoch (GFLOP) |",
             "|" + "---|" * 13]
    full = {k[:4]: v for k, v in groups.items() if k[4] == 0}
    mean = lambda rs, key: float(np.mean([r[key] for r in rs])) if all(r.get(key) is not None for r in rs) else None  # noqa: E731
    for k in sorted(groups, key=lambda k: (k[:4], k[4] if k[4] else 1e9)):
        rs, ref = groups[k], full.get(k[:4])
        m, a = mean(rs, "merged_accuracy"), mean(rs, "after_round_accuracy")
        dm, da = paired(rs, ref, "merged_accuracy"), paired(rs, ref, "after_round_accuracy")
        epoch = [r["epoch_gflops"] for r in rows if r.get("epoch_gflops") and r["partition"] == k[1]]
        ratio = mean(rs, "merge_gflops") / epoch[0] if epoch else None
        f = lambda v, spec=".1f": "–" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {rs[0]['examples_per_pass']} | {len(rs)} | "
                     f"{f(100 * m)} | {f(dm, '+.1f')} | {f(None if a is None else 100 * a)} | {f(da, '+.1f')} | "
                     f"{f(mean(rs, 'merge_time_s'), '.1f')} | {f(mean(rs, 'merge_gflops'), '.0f')} | {f(ratio, '.2f')} |")
    panels = sorted({k[:4] for k in groups if k[3] == "off"} or {k[:4] for k in groups})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=150)
    for ax, key, title in ((axes[0], "merged_accuracy", "right after the merge"),
                           (axes[1], "after_round_accuracy", "after the merge and one local epoch")):
        for p in panels:  # one line per seed: budgets measured on some seeds only stay paired
            for seed in sorted({r["seed"] for k, rs in groups.items() if k[:4] == p for r in rs}):
                pts = sorted((r["examples_per_pass"], 100 * r[key]) for k, rs in groups.items() if k[:4] == p
                             for r in rs if r["seed"] == seed and r.get(key) is not None)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{p[1]} · seed {seed} · {p[0]} data · BN before {p[3]}")
        ax.set_xscale("log")
        ax.set_xlabel("examples per agent per merge pass (log)")
        ax.set_ylabel("mean test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "frontier.png")
    plt.close(fig)
    md = "\n".join(lines)
    (out / "frontier.md").write_text(md + "\n")
    return md


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--budgets", default="256,512,1000,2000,5000,0")
    p.add_argument("--partitions", default="iid,noniid")
    p.add_argument("--topologies", default="ring,fc")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--merge-data", default="global")
    p.add_argument("--bn-before", default="off,on", help="pre-merge BatchNorm re-estimation: off, on or both")
    p.add_argument("--after-round", action="store_true", help="also train one local epoch after each merge")
    p.add_argument("--after-round-budgets", default="", help="only after these budgets (default: all)")
    p.add_argument("--bn-before-budgets", default="", help="bn_before=on only at these budgets (default: all)")
    p.add_argument("--cache", default="runs/pretrained", help="pre-trained agents cache (shared with other runs)")
    p.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--summary-only", action="store_true", help="only rebuild frontier.md / .png from rows.jsonl")
    args = p.parse_args()
    rows = None
    if not args.summary_only:
        rows = run(args)
    from dimat_jax import report
    rows = report.read_metrics(pathlib.Path(args.out) / "rows.jsonl")
    print(summarise(rows, pathlib.Path(args.out)))


if __name__ == "__main__":
    main()
