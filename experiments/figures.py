"""Paper-style figures and tables from a finished (or partly finished) sweep.

  python experiments/figures.py --workdir runs/sweeps/cpu_main --out experiments/results/cpu_main

Reads the sweep's cells, re-aggregates them (aggregate.csv, final.csv) and writes, as PNG + PDF:
accuracy vs iteration with ±1 std bands (one panel per combination of the non-algorithm grid
values, e.g. partition / topology), accuracy vs cumulative bytes, messages per agent per epoch vs
number of agents (if the sweep varies num_agents), scalability (final accuracy vs N, idem); and
the results table (results.md, results.tex).
"""
from __future__ import annotations

import argparse
import json
import pathlib

from dimat_jax import plots
from dimat_jax.sweep import CELLS_FILE, aggregate, read_csv, FINAL_FILE


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the sweep's --workdir")
    p.add_argument("--out", required=True, help="directory for the figures and tables")
    p.add_argument("--title", default="")
    args = p.parse_args()
    workdir, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(workdir)
    finals = read_csv(workdir / FINAL_FILE)
    grid_keys = sorted({k for e in json.loads((workdir / CELLS_FILE).read_text()) for k in e["cell"]}
                       - {"seed", "algorithm"})
    panel_keys = [k for k in grid_keys if k != "num_agents" and len({r[k] for r in rows}) > 1]
    panels = sorted({tuple(r[k] for k in panel_keys) for r in rows})
    written = []
    for panel in panels:
        sel = [r for r in rows if tuple(r[k] for k in panel_keys) == panel]
        sub = "-".join(f"{k.split('.')[-1]}={v}" for k, v in zip(panel_keys, panel)) or "all"
        title = (args.title + " " + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in zip(panel_keys, panel))).strip()
        keys = ("algorithm", "num_agents") if len({r["num_agents"] for r in sel}) > 1 else ("algorithm",)
        plots.plot_accuracy_vs_round(sel, out / f"accuracy_vs_round-{sub}", keys=keys, title=title)
        plots.plot_accuracy_vs_bytes(sel, out / f"accuracy_vs_bytes-{sub}", keys=keys, title=title)
        written += [f"accuracy_vs_round-{sub}", f"accuracy_vs_bytes-{sub}"]
    if len({f["num_agents"] for f in finals}) > 1:
        for panel in sorted({tuple(f[k] for k in panel_keys) for f in finals}):
            sel = [f for f in finals if tuple(f[k] for k in panel_keys) == panel]
            sub = "-".join(f"{k.split('.')[-1]}={v}" for k, v in zip(panel_keys, panel)) or "all"
            plots.plot_messages_per_epoch(sel, out / f"messages_per_epoch-{sub}", title=args.title)
            plots.plot_scalability(sel, out / f"scalability-{sub}", title=args.title)
            written += [f"messages_per_epoch-{sub}", f"scalability-{sub}"]
    cols = tuple(k for k in grid_keys if len({f[k] for f in finals}) > 1) or ("num_agents",)
    md, tex = plots.results_table(finals, row_key="algorithm", col_keys=cols)
    (out / "results.md").write_text(md + "\n")
    (out / "results.tex").write_text(tex + "\n")
    print(md)
    print(f"wrote {len(written)} figures (.png + .pdf) and results.md / results.tex to {out}")


if __name__ == "__main__":
    main()
