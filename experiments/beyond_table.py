"""Table and figures of the beyond-the-paper comparison (configs/sweeps/fashion_beyond.py), with
the main sweep's cells of the same setting as baselines (pass both workdirs):

  python experiments/beyond_table.py --out experiments/results/fashion_beyond \
      --workdir experiments/results/fashion_beyond/sweep experiments/results/fashion_main/sweep

For every partition, topology and number of rounds: each variant's mean test accuracy (± std over
seeds) after the first round and after the last one, the bytes it sent and the merge compute it
spent (both means over seeds, whole run; compute also as a share of per-round DIMAT's in the same
setting), and for adaptive re-matching how many merges matched. Writes results.md, results.json,
and per setting accuracy vs round, vs bytes sent and vs merge compute (PNG + PDF). Works on a
partly finished sweep.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib

import numpy as np

from dimat_jax import plots, report
from dimat_jax.sweep import CELLS_FILE, aggregate

ORDER = ["DIMAT (global merge data)", "DIMAT", "DIMAT, shared basis", "DIMAT, shared basis + adaptive re-matching",
         "DIMAT, shared basis + adaptive re-matching (threshold 0.1)", "DIMAT, shared basis, matching once",
         "DIMAT, bf16 messages",
         "DIMAT, int8 messages", "DIMAT, top-10% messages", "DIMAT, half the edges", "WA", "SGP", "CGA", "CDSGD",
         "Local", "Centralized"]


# what dimat_jax.sweep.aggregate() adds to a cell's keys in each of its rows
AGGREGATED = {"round", "phase", "epoch", "seeds", "num_agents", "mean_accuracy", "std_accuracy", "mean_loss",
              "messages_sent_total", "bytes_sent_total", "merge_gflops_total", "name", "_rounds"}


def variant(cell: dict) -> str:
    algo = cell.get("algorithm", "dimat")
    if algo != "dimat":
        return plots.NAMES.get(algo, algo)
    if cell.get("merge.basis") == "shared":
        threshold = cell.get("merge.rematch_threshold")
        if cell.get("merge.rematch") == "adaptive" and threshold is not None and threshold >= 2:
            return "DIMAT, shared basis, matching once"  # no probe gain exceeds 2: later merges only average
        return "DIMAT, shared basis" + (" + adaptive re-matching" if cell.get("merge.rematch") == "adaptive" else "") + (
            f" (threshold {threshold})" if threshold is not None else "")
    comp = cell.get("merge.compression", "none")
    if comp == "topk":
        return "DIMAT, top-10% messages"
    if comp != "none":
        return f"DIMAT, {comp} messages"
    if cell.get("merge.edge_fraction", 1.0) < 1:
        return "DIMAT, half the edges"
    return "DIMAT (global merge data)" if cell.get("merge_data") == "global" else "DIMAT"


def runs(workdirs: list[pathlib.Path]) -> dict:
    """(partition, topology, rounds, variant) -> list of each finished seed's records."""
    out: dict = {}
    for workdir, entry in ((w, e) for w in workdirs for e in json.loads((w / CELLS_FILE).read_text())):
        cell_dir = workdir / "cells" / entry["name"]
        if (cell_dir / "summary.json").exists():
            c, recs = entry["cell"], report.read_metrics(cell_dir)
            key = (c.get("partition", "iid"), c.get("topology", "any"), max(r["round"] for r in recs), variant(c))
            out.setdefault(key, []).append(recs)
    return out


def summary(groups: dict) -> list[dict]:
    rows = []
    for (part, topo, _, name), seeds in groups.items():
        def point(recs, rnd):
            phase = "merged" if recs[0]["algorithm"] in plots.MERGE_FAMILY else "trained"
            return next(r for r in recs if r["round"] == rnd and r["phase"] == phase)
        last = max(r["round"] for r in seeds[0])
        first = [point(recs, 1)["mean_test_accuracy"] for recs in seeds]
        final = [point(recs, last)["mean_test_accuracy"] for recs in seeds]
        merges = [[r for r in recs if r.get("merge_gflops") is not None] for recs in seeds]
        rows.append({"partition": part, "topology": topo, "variant": name, "seeds": len(seeds), "rounds": last,
                     "first": float(np.mean(first)), "first_std": float(np.std(first)),
                     "final": float(np.mean(final)), "final_std": float(np.std(final)),
                     "pre": float(np.mean([recs[0]["mean_test_accuracy"] for recs in seeds])),
                     "megabytes": float(np.mean([recs[-1]["bytes_sent_total"] for recs in seeds])) / 1e6,
                     "merge_gflops": float(np.mean([sum(r["merge_gflops"] for r in m) for m in merges])),
                     "merges_matched": (float(np.mean([sum(bool(r.get("merge_matched", True)) for r in m)
                                                       for m in merges]))
                                        if merges[0] and seeds[0][0]["algorithm"] != "wa" else None),  # wa: no matching
                     "merges": len(merges[0])})
    for r in rows:  # merge compute as a share of per-round DIMAT's in the same setting
        ref = [b for b in rows if (b["partition"], b["topology"], b["rounds"], b["variant"]) ==
               (r["partition"], r["topology"], r["rounds"], "DIMAT")]
        r["compute_vs_dimat"] = (r["merge_gflops"] / ref[0]["merge_gflops"]
                                 if ref and ref[0]["merge_gflops"] and r["merge_gflops"] else None)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = []
    settings = sorted({(r["partition"], r["topology"], r["rounds"]) for r in rows if r["topology"] != "any"})
    for part, topo, rounds in settings:
        sel = sorted([r for r in rows if r["partition"] == part and r["topology"] in (topo, "any")
                      and r["rounds"] == rounds],
                     key=lambda r: ORDER.index(r["variant"]) if r["variant"] in ORDER else len(ORDER))
        seeds = sorted({r["seeds"] for r in sel})
        lines += [f"**{part}, {topo}, {rounds} rounds** — pre-trained agents: {100 * sel[0]['pre']:.1f} %; "
                  f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per row", "",
                  f"| variant | round 1 % | round {rounds} % | MB sent | merge GFLOP | vs DIMAT | merges matched |",
                  "|---|---|---|---|---|---|---|"]
        for r in sel:
            matched = "–" if r["merges_matched"] is None else f"{r['merges_matched']:.1f} / {r['merges']}"
            gf = "–" if not r["merge_gflops"] else f"{r['merge_gflops']:,.1f}"
            share = "–" if r["compute_vs_dimat"] is None else f"{r['compute_vs_dimat']:.2f}"
            pm = (lambda m, s: f"{100 * m:.1f} ± {100 * s:.1f}") if r["seeds"] > 1 else (lambda m, s: f"{100 * m:.1f}")
            lines.append(f"| {r['variant']} | {pm(r['first'], r['first_std'])} | {pm(r['final'], r['final_std'])} | "
                         f"{r['megabytes']:,.1f} | {gf} | {share} | {matched} |")
        lines.append("")
    return "\n".join(lines)


def figures(workdirs: list[pathlib.Path], out: pathlib.Path, title: str) -> int:
    rows = [r for w in workdirs for r in aggregate(w)]
    for r in rows:  # aggregate rows carry the cell's keys (seed dropped): name the variant from them
        r["name"] = variant(r)
    written = 0

    def group(r):  # the cell's own keys: everything aggregate() did not compute
        return tuple(sorted((k, str(v)) for k, v in r.items() if k not in AGGREGATED))
    last: dict = {}
    for r in rows:
        last[group(r)] = max(last.get(group(r), 0), r["round"])
    for r in rows:
        r["_rounds"] = last[group(r)]
    common = collections.Counter(last.values()).most_common(1)[0][0] if last else 0  # unmarked in file names
    for part in sorted({r.get("partition", "iid") for r in rows}):
        for topo in sorted({r["topology"] for r in rows if "topology" in r}):
            for rounds in sorted(set(last.values())):
                # algorithms without a graph (local) appear in every topology's panel
                sel = [r for r in rows if r.get("partition", "iid") == part and r.get("topology", topo) == topo
                       and r["_rounds"] == rounds]
                if not any("topology" in r for r in sel):
                    continue
                sel.sort(key=lambda r: ORDER.index(r["name"]) if r["name"] in ORDER else len(ORDER))
                stem = f"partition={part}-topology={topo}" + (f"-rounds={rounds}" if rounds != common else "")
                t = f"{title} {part}, {topo}, {rounds} rounds".strip()
                plots.plot_accuracy_vs_round(sel, out / f"accuracy_vs_round-{stem}", keys=("name",), title=t)
                plots.plot_accuracy_vs_bytes(sel, out / f"accuracy_vs_bytes-{stem}", keys=("name",), title=t)
                plots.plot_accuracy_vs_compute(sel, out / f"accuracy_vs_merge_compute-{stem}", keys=("name",),
                                               title=t)
                written += 3
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, nargs="+", help="sweep workdirs (the beyond sweep, the main sweep)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="Fashion-MNIST, 5 ResNet-20 agents:")
    args = p.parse_args()
    workdirs, out = [pathlib.Path(w) for w in args.workdir], pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary(runs(workdirs))
    md = markdown(rows)
    (out / "results.md").write_text(md + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    n = figures(workdirs, out, args.title)
    print(md)
    print(f"wrote results.md, results.json and {n} figures (.png + .pdf) to {out}")


if __name__ == "__main__":
    main()
