r"""Sweeps: run (or resume) every cell of a grid and aggregate across seeds.

  python -m dimat_jax.sweep --sweep configs/sweeps/cpu_main.py --workdir runs/sweeps/cpu_main [--list]

A sweep file is a Python file with ``get_config()`` (the base config, as for ``dimat_jax.main``),
``get_grid()`` and optionally ``configure(config, cell) -> config`` (settings that depend on the
cell, e.g. the paper preset of each algorithm). The grid is a dict from a config key (dotted) — or
a tuple of keys varied together — to the list of values, e.g. ``{"seed": [0, 1, 2], "algorithm": ["dimat", "sgp"], ("dataset", "model"):
[("cifar10", "resnet20"), ("cifar100", "vgg16")]}``, or a list of such dicts (the union of their
products). Cells are the Cartesian product; each runs in
``<workdir>/cells/<name>/`` as an ordinary run, so a finished cell is skipped and an interrupted one
resumes. Pre-trained agents are shared through ``<workdir>/pretrained`` unless the base config names
another cache. Results: ``aggregate.csv`` (per group of cells differing only in ``seed``, per round
and phase: mean and population std across seeds) and ``final.csv`` (each group's last round).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import pathlib
import sys
import time

import numpy as np

from dimat_jax import report

AGGREGATE_FILE, FINAL_FILE, CELLS_FILE = "aggregate.csv", "final.csv", "cells.json"


def load_sweep(path):
    """(base config, grid, configure) of a sweep file; ``configure(config, cell) -> config`` is the
    file's optional hook for settings that depend on the cell (identity when absent)."""
    from dimat_jax.config import exec_python_file
    module = exec_python_file(path, "sweep", FileNotFoundError)
    if not hasattr(module, "get_grid"):
        raise ValueError(f"{path} defines no get_grid() (a dict: config key -> list of values)")
    return module.get_config(), module.get_grid(), getattr(module, "configure", lambda config, cell: config)


def _value_str(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def cells(grid) -> list[dict]:
    """The Cartesian product of ``grid`` as a list of {dotted key: value} dicts. A list of grids
    gives the union of their products, in order, without repeats (e.g. algorithms that ignore the
    topology in a grid of their own)."""
    if isinstance(grid, (list, tuple)):
        out = []
        for g in grid:
            out += [c for c in cells(g) if c not in out]
        return out
    axes = []
    for key, values in grid.items():
        if not values:
            raise ValueError(f"grid axis {key!r} has no values")
        if isinstance(key, tuple):
            for v in values:
                if len(v) != len(key):
                    raise ValueError(f"grid axis {key}: value {v} has {len(v)} items, expected {len(key)}")
            axes.append([dict(zip(key, v)) for v in values])
        else:
            axes.append([{key: v} for v in values])
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]


def cell_name(cell: dict) -> str:
    return "-".join(f"{k.split('.')[-1]}={_value_str(v)}" for k, v in cell.items()).replace("/", "_")


def _apply(config, cell: dict, configure):
    from dimat_jax.config import ConfigError, set_key
    from dimat_jax.train import preflight
    config = config.copy_and_resolve_references()
    for dotted, value in cell.items():
        try:
            set_key(config, dotted, value)
        except ConfigError as e:
            raise ConfigError(f"sweep grid: {e}") from e
    config = configure(config, cell)
    preflight(config)
    return config


def run_sweep(sweep_path, workdir, log=print, dry_run: bool = False) -> list[dict]:
    """Run or resume every cell; aggregate; return the aggregate rows."""
    from dimat_jax import train
    base, grid, configure = load_sweep(sweep_path)
    workdir = pathlib.Path(workdir)
    if not base.pretrain.cache_dir:
        base.pretrain.cache_dir = str(workdir / "pretrained")
    todo = cells(grid)
    configs = [(_apply(base, c, configure), c) for c in todo]  # validate every cell before running any
    workdir.mkdir(parents=True, exist_ok=True)
    report.write_json(workdir / CELLS_FILE, [{"name": cell_name(c), "cell": c} for c in todo])
    log(f"sweep {sweep_path}: {len(todo)} cells in {workdir}/cells")
    from dimat_jax.workdir import GracefulStop
    with GracefulStop(log) as stop:  # a stop request during a cell ends the sweep after that cell
        for i, (config, cell) in enumerate(configs, start=1):
            if stop.requested:
                raise train.RunInterrupted(f"sweep stopped before cell {i} of {len(todo)}")
            _run_cell(i, len(todo), config, cell, workdir, log, dry_run)
    return [] if dry_run else aggregate(workdir)


def _run_cell(i: int, total: int, config, cell: dict, workdir, log, dry_run: bool) -> None:
    from dimat_jax import train
    name = cell_name(cell)
    cell_dir = workdir / "cells" / name
    state = "finished" if (cell_dir / "summary.json").exists() else (
        "resume" if (cell_dir / "config.json").exists() else "new")
    log(f"[{i}/{total}] {name}: {state}")
    if dry_run or state == "finished":
        return
    t = time.perf_counter()
    try:
        train.run(config, cell_dir, log=lambda s: None)
    finally:
        release_compiled()
    log(f"[{i}/{total}] {name}: done in {time.perf_counter() - t:.0f} s")


def release_compiled() -> None:
    """Drop the compiled programs a finished cell leaves in this process. Every cell builds its own
    jitted functions, and without this a long sweep's memory grows cell by cell (a ResNet-20 sweep
    on a CPU reached 11-12 GB after about ten cells, enough for the kernel to kill it; with it, the
    same sweep stayed at 2-3 GB between cells); the next cell recompiles, or reads its programs back
    from the on-disk compilation cache."""
    import gc

    import jax
    jax.clear_caches()
    gc.collect()


def aggregate(workdir) -> list[dict]:
    """Mean and population std across seeds, per group, round and phase -> aggregate.csv, final.csv."""
    workdir = pathlib.Path(workdir)
    listing = json.loads((workdir / CELLS_FILE).read_text())
    groups: dict[tuple, list] = {}
    for entry in listing:
        cell_dir = workdir / "cells" / entry["name"]
        if not (cell_dir / "summary.json").exists():
            continue
        key = tuple(sorted((k, v) for k, v in entry["cell"].items() if k != "seed"))
        groups.setdefault(key, []).append(report.read_metrics(cell_dir))
    rows, finals = [], []
    for key, runs in groups.items():
        by_point: dict[tuple, list] = {}
        for recs in runs:
            spent = 0.0  # merge compute so far in this run
            for r in recs:
                spent += r.get("merge_gflops") or 0.0
                by_point.setdefault((r["round"], r["phase"]), []).append({**r, "_merge_gflops_so_far": spent})
        for (rnd, phase), rs in sorted(by_point.items(), key=lambda kv: (kv[0][0], kv[0][1] != "merged")):
            acc = np.array([r["mean_test_accuracy"] for r in rs])
            rows.append({**dict(key), "round": rnd, "phase": phase, "epoch": rs[0]["epoch"], "seeds": len(rs),
                         "algorithm": rs[0]["algorithm"], "num_agents": rs[0]["num_agents"],
                         "mean_accuracy": float(acc.mean()), "std_accuracy": float(acc.std()),
                         "mean_loss": float(np.mean([r["mean_test_loss"] for r in rs])),
                         "messages_sent_total": float(np.mean([r["messages_sent_total"] for r in rs])),
                         "bytes_sent_total": float(np.mean([r["bytes_sent_total"] for r in rs])),
                         "merge_gflops_total": float(np.mean([r["_merge_gflops_so_far"] for r in rs]))})
        last = [recs[-1] for recs in runs]
        acc = np.array([r["mean_test_accuracy"] for r in last])
        finals.append({**dict(key), "algorithm": last[0]["algorithm"], "num_agents": last[0]["num_agents"],
                       "seeds": len(last), "round": last[0]["round"], "epoch": last[0]["epoch"],
                       "final_accuracy": float(acc.mean()), "final_std": float(acc.std()),
                       "messages_sent_total": float(np.mean([r["messages_sent_total"] for r in last])),
                       "bytes_sent_total": float(np.mean([r["bytes_sent_total"] for r in last])),
                       "initial_accuracy": float(np.mean([recs[0]["mean_test_accuracy"] for recs in runs])),
                       "initial_epoch": float(np.mean([recs[0]["epoch"] for recs in runs]))})
    _write_csv(workdir / AGGREGATE_FILE, rows)
    _write_csv(workdir / FINAL_FILE, finals)
    return rows


def _write_csv(path, rows: list[dict]) -> None:
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    tmp = pathlib.Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_csv(path) -> list[dict]:
    """Rows of aggregate.csv / final.csv with numbers parsed."""
    def parse(v):
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v
    with open(path) as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dimat_jax.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, help="sweep file (get_config() and get_grid())")
    p.add_argument("--workdir", required=True, help="directory of the sweep (cells/, aggregate.csv, final.csv)")
    p.add_argument("--list", action="store_true", help="validate and list the cells and their state; run nothing")
    args = p.parse_args(argv)
    from dimat_jax.config import ConfigError
    from dimat_jax.checkpoint import CheckpointError
    from dimat_jax.train import NonFiniteError, RunInterrupted, WorkdirError
    try:
        run_sweep(args.sweep, args.workdir, dry_run=args.list)
    except (ConfigError, FileNotFoundError, ValueError, WorkdirError, NonFiniteError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:
        print(f"{e} (rerun the sweep command to resume it)", file=sys.stderr)
        return 130
    if not args.list:
        print(f"aggregated into {pathlib.Path(args.workdir) / AGGREGATE_FILE} and {FINAL_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
