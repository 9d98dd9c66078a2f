"""The signature of activation matching on the embedded digits (CPU, ~6 minutes with the CNN).

  python experiments/dimat_signature.py [--model cnn --width 1] [--rounds 5] [--out experiments/results/signature]

5 agents pre-trained alone from their own initialisations (shared by every cell through the
pre-training cache), then DIMAT and WA (plain averaging of the same agents) on a ring and fully
connected, for IID, non-IID (2 classes per agent) and Dirichlet(0.5) partitions, plus the no-
communication baseline ``local``. Prints the first-merge table (mean test accuracy before and
right after the first merge) and writes ``results.json`` and ``signature.png`` (post-merge and
post-training curves per partition). Cells already finished in ``--out`` are not rerun.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import time

from dimat_jax import report, train
from dimat_jax.config import load_config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARTITIONS = {"iid": {"partition": "iid"}, "noniid": {"partition": "noniid"},
              "dirichlet0.5": {"partition": "dirichlet", "data.alpha": 0.5}}


def cell(out: pathlib.Path, name: str, overrides: dict) -> list[dict]:
    workdir = out / "runs" / name
    if (workdir / "summary.json").is_file():
        return report.read_metrics(workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # an unfinished cell is rerun from scratch
    config = load_config_file(ROOT / "configs" / "cpu" / "dimat.py", overrides)
    train.run(config, workdir, log=lambda s: None)
    return report.read_metrics(workdir)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="experiments/results/signature")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {"model": args.model, "width": args.width, "rounds": args.rounds, "log.progress": False,
            "pretrain.cache_dir": str(out / "pretrained")}
    results = {}
    for part, part_over in PARTITIONS.items():
        for algorithm, topologies in (("dimat", ("ring", "fc")), ("wa", ("ring", "fc")), ("local", ("ring",))):
            for topo in topologies:
                name = f"{part}-{algorithm}-{topo}" if algorithm != "local" else f"{part}-local"
                t = time.perf_counter()
                results[name] = cell(out, name, {**base, **part_over, "algorithm": algorithm, "topology": topo})
                print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    (out / "results.json").write_text(json.dumps(results))

    rows = []
    for part in PARTITIONS:
        pre = results[f"{part}-dimat-ring"][0]["mean_test_accuracy"]
        first = {k: next(r for r in results[f"{part}-{k}"] if r["phase"] == "merged")["mean_test_accuracy"]
                 for k in ("dimat-ring", "wa-ring", "dimat-fc", "wa-fc")}
        last = {k: results[f"{part}-{k}"][-1]["mean_test_accuracy"] for k in ("dimat-ring", "wa-ring", "local")}
        rows.append([part, f"{100 * pre:.1f}"] + [f"{100 * v:.1f}" for v in first.values()]
                    + [f"{100 * v:.1f}" for v in last.values()])
    print(f"{args.model} w={args.width:g}, 5 agents, digits; mean test accuracy (%)")
    print(report.table(rows, ["partition", "pre-merge", "DIMAT ring 1st merge", "WA ring 1st merge",
                              "DIMAT fc 1st merge", "WA fc 1st merge", f"DIMAT ring round {args.rounds}",
                              f"WA ring round {args.rounds}", f"local round {args.rounds}"]))
    plot(results, out / "signature.png", args)


def plot(results, path, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(PARTITIONS), figsize=(5 * len(PARTITIONS), 4), dpi=150, sharey=False)
    colours = {"dimat-ring": "C0", "dimat-fc": "C2", "wa-ring": "C3", "wa-fc": "C1", "local": "grey"}
    for ax, part in zip(axes, PARTITIONS):
        for key, colour in colours.items():
            recs = results[f"{part}-{key}"]
            for phase, style in (("merged", "-"), ("trained", "--")):
                rs = [r for r in recs if r["phase"] == phase or (phase == "trained" and r["round"] == 0)]
                if key == "local" and phase == "merged":
                    continue
                if not rs:
                    continue
                ax.plot([r["round"] for r in rs], [100 * r["mean_test_accuracy"] for r in rs], style, color=colour,
                        marker="o" if phase == "merged" else None, ms=3,
                        label=f"{key} ({'after merge' if phase == 'merged' else 'after training'})"
                        if key != "local" else "local")
        ax.axhline(10, color="k", lw=0.6, ls=":")
        ax.set_title(f"{part}")
        ax.set_xlabel("round (merge k; 0 = pre-trained)")
        ax.set_ylabel("mean test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"DIMAT vs plain averaging, 5 agents, embedded digits, {args.model} w={args.width:g} "
                 "(solid: right after a merge; dashed: after 2 local epochs; dotted: chance)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
