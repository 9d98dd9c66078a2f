"""Table and figures of the real-image comparison (configs/sweeps/fashion_main.py).

  python experiments/real_table.py --workdir experiments/results/fashion_main/sweep --out experiments/results/fashion_main

Reads the sweep's cells (finished ones; run it on a partial sweep at any time), aggregates across
seeds and writes ``results.md`` (per partition: the pre-trained agents' accuracy, then for every
algorithm and topology the mean ± std over seeds after the first merge / round and after the last
one, ring first, and the megabytes sent), ``results.json`` (the same numbers) and, per partition
and topology, accuracy vs round and accuracy vs bytes sent (PNG + PDF). ``local`` and ``centralized`` ignore the topology: they appear
in every topology's column and panel.
"""
from __future__ import annotations

import argparse
import json
import pathlib


from dimat_jax import plots
from dimat_jax.sweep import aggregate

ORDER = ["DIMAT (global merge data)", "DIMAT (local merge data)", "WA", "WM", "SGP", "CGA", "CDSGD", "CDMSGD",
         "SwarmSGD", "Local", "Centralized"]


def name(row: dict) -> str:
    """Display name of a row: the merge family says which merge data it used."""
    algo = row["algorithm"]
    if algo == "dimat":
        return f"DIMAT ({row.get('merge_data', 'local')} merge data)"
    return plots.NAMES.get(algo, algo)


def reported_point(rows: list[dict], rnd: int) -> dict | None:
    """The reported record of round ``rnd``: right after the merge for the merge family, after
    training otherwise (round 0: the pre-trained agents)."""
    for r in rows:
        phase = "merged" if (r["algorithm"] in plots.MERGE_FAMILY and rnd > 0) else "trained"
        if r["round"] == rnd and r["phase"] == phase:
            return r
    return None


def build(rows: list[dict]) -> dict:
    """{partition: {'pre': (mean, std), 'cells': {name: {topology: {'first': (m, s), 'last': (m, s), 'round': R}}}}}"""
    out: dict = {}
    groups: dict = {}
    for r in rows:
        key = (r.get("partition", "iid"), r.get("topology", "any"), name(r))
        groups.setdefault(key, []).append(r)
    partitions = sorted({k[0] for k in groups})
    topologies = sorted({k[1] for k in groups} - {"any"}) or ["any"]
    for part in partitions:
        entry = out.setdefault(part, {"pre": None, "cells": {}})
        for (p, topo, label), rs in groups.items():
            if p != part and not (label == "Centralized"):
                continue
            last_round = max(r["round"] for r in rs)
            first, last = reported_point(rs, 1), reported_point(rs, last_round)
            pre = reported_point(rs, 0)
            if pre is not None and label != "Centralized" and entry["pre"] is None:
                entry["pre"] = (pre["mean_accuracy"], pre["std_accuracy"], pre["seeds"])
            for t in (topologies if topo == "any" else [topo]):
                entry["cells"].setdefault(label, {})[t] = {
                    "first": None if first is None else (first["mean_accuracy"], first["std_accuracy"]),
                    "last": None if last is None else (last["mean_accuracy"], last["std_accuracy"]),
                    "round": last_round, "seeds": rs[0]["seeds"],
                    "mb_sent": None if last is None else last.get("bytes_sent_total", 0.0) / 1e6}
    return out


def _fmt(v, seeds: int = 2) -> str:
    """Mean ± std over seeds in percent (the mean alone for one seed)."""
    if v is None:
        return "–"
    return f"{100 * v[0]:.1f}" + (f" ± {100 * v[1]:.1f}" if seeds > 1 else "")


def topology_order(topologies) -> list[str]:
    """The ring (the paper's sparse graph) first, then the others alphabetically."""
    return sorted(topologies, key=lambda t: (t != "ring", t))


def markdown(table: dict) -> str:
    """Per partition: for each topology (ring first) accuracy after round 1 and after the last
    round, then the megabytes every agent sent in all (summed over agents), per topology."""
    lines = []
    for part, entry in table.items():
        cells = entry["cells"]
        topos = topology_order({t for c in cells.values() for t in c})
        last = max(c[t]["round"] for c in cells.values() for t in c)
        pre = entry["pre"]
        lines.append(f"**{part}** — pre-trained agents (round 0): {_fmt(pre, pre[2] if pre else 1)} %" +
                     (f" ({pre[2]} seed{'s' if pre[2] > 1 else ''})" if pre else ""))
        lines.append("")
        header = (["algorithm"] + [f"{t}: round {r}" for t in topos for r in (1, last)]
                  + [f"MB sent ({t})" for t in topos])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label in sorted(cells, key=lambda x: ORDER.index(x) if x in ORDER else len(ORDER)):
            c = cells[label]
            vals = [_fmt(c[t][k], c[t]["seeds"]) if t in c else "–" for t in topos for k in ("first", "last")]
            vals += [f"{c[t]['mb_sent']:,.0f}" if t in c and c[t]["mb_sent"] is not None else "–" for t in topos]
            lines.append("| " + " | ".join([label] + vals) + " |")
        lines.append("")
    return "\n".join(lines)


def figures(rows: list[dict], out: pathlib.Path, title: str) -> list[str]:
    written = []
    for r in rows:
        r["name"] = name(r)
    parts = sorted({r["partition"] for r in rows if "partition" in r})
    topos = topology_order({r["topology"] for r in rows if "topology" in r})
    for part in parts:
        for topo in topos:
            sel = [r for r in rows if r.get("partition", part) == part and r.get("topology", topo) == topo]
            sel.sort(key=lambda r: ORDER.index(r["name"]) if r["name"] in ORDER else len(ORDER))
            stem = f"partition={part}-topology={topo}"
            t = f"{title} {part}, {topo}".strip()
            plots.plot_accuracy_vs_round(sel, out / f"accuracy_vs_round-{stem}", keys=("name",), title=t)
            plots.plot_accuracy_vs_bytes(sel, out / f"accuracy_vs_bytes-{stem}", keys=("name",), title=t)
            written += [f"accuracy_vs_round-{stem}", f"accuracy_vs_bytes-{stem}"]
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the sweep's --workdir")
    p.add_argument("--out", required=True, help="directory for results.md, results.json and the figures")
    p.add_argument("--title", default="Fashion-MNIST, 5 ResNet-20 agents:")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(pathlib.Path(args.workdir))
    table = build(rows)
    md = markdown(table)
    (out / "results.md").write_text(md + "\n")
    (out / "results.json").write_text(json.dumps(table, indent=1, default=float) + "\n")
    written = figures(rows, out, args.title)
    print(md)
    print(f"wrote results.md, results.json and {len(written)} figures (.png + .pdf) to {out}")


if __name__ == "__main__":
    main()
