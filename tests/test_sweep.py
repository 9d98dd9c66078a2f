"""Sweeps (run, skip finished cells, resume, aggregate across seeds) and the paper-style plots."""
import pathlib
import textwrap

import jax
import numpy as np
import pytest

from dimat_jax import plots, report, sweep, train

SWEEP = textwrap.dedent('''
    from dimat_jax.config import get_default_config

    def get_config():
        c = get_default_config()
        c.width = 0.25
        c.num_agents = 3
        c.pretrain_epochs = 1
        c.rounds = 2
        c.local_epochs = 1
        c.batch_size = 16
        c.data.steps_per_epoch = 2
        c.merge.batch_size = 32
        c.merge.num_batches = 1
        c.agents.strategy = "vmap"
        c.log.progress = False
        c.log.plot = False
        return c

    def get_grid():
        return {"algorithm": ["dimat", "local"], "seed": SEEDS}
''')


def write_sweep(tmp_path, seeds):
    path = tmp_path / "sweep.py"
    path.write_text(SWEEP.replace("SEEDS", repr(seeds)))
    return path


def test_cells_and_names():
    grid = {"algorithm": ["dimat", "sgp"], ("dataset", "model"): [("digits", "cnn"), ("mnist", "resnet20")],
            "data.alpha": [0.1]}
    cs = sweep.cells(grid)
    assert len(cs) == 4 and cs[0] == {"algorithm": "dimat", "dataset": "digits", "model": "cnn", "data.alpha": 0.1}
    assert sweep.cell_name(cs[0]) == "algorithm=dimat-dataset=digits-model=cnn-alpha=0.1"
    # a list of grids: the union of the products, in order, each cell once
    union = sweep.cells([{"seed": [0, 1], "topology": ["ring", "fc"], "algorithm": ["dimat"]},
                         {"seed": [0, 1], "algorithm": ["local"]}, {"seed": [1], "algorithm": ["local"]}])
    assert [sweep.cell_name(c) for c in union] == [
        "seed=0-topology=ring-algorithm=dimat", "seed=0-topology=fc-algorithm=dimat",
        "seed=1-topology=ring-algorithm=dimat", "seed=1-topology=fc-algorithm=dimat",
        "seed=0-algorithm=local", "seed=1-algorithm=local"]


def test_sweep_runs_skips_finished_cells_and_aggregates_across_seeds(tmp_path, monkeypatch):
    calls = []
    real_run = train.run

    def counting_run(config, workdir, log=print):
        calls.append(pathlib.Path(workdir).name)
        return real_run(config, workdir, log)

    cleared = []  # each cell's compiled programs are dropped when it ends
    real_clear = jax.clear_caches
    monkeypatch.setattr(jax, "clear_caches", lambda: (cleared.append(len(calls)), real_clear()))
    monkeypatch.setattr(train, "run", counting_run)
    work = tmp_path / "sw"
    sweep.run_sweep(write_sweep(tmp_path, [0, 1]), work, log=lambda s: None)
    assert sorted(calls) == sorted(["algorithm=dimat-seed=0", "algorithm=dimat-seed=1",
                                    "algorithm=local-seed=0", "algorithm=local-seed=1"])
    assert cleared == [1, 2, 3, 4]
    assert (work / "pretrained").is_dir()  # the shared pre-training cache
    finished = {p: p.stat().st_mtime_ns for p in (work / "cells").rglob("metrics.jsonl")}

    # a grid with one more seed: only the two new cells run; finished cells are untouched
    calls.clear()
    rows = sweep.run_sweep(write_sweep(tmp_path, [0, 1, 2]), work, log=lambda s: None)
    assert sorted(calls) == ["algorithm=dimat-seed=2", "algorithm=local-seed=2"]
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())

    # aggregate = numpy mean / population std over the seeds' own metrics
    for algorithm in ("dimat", "local"):
        runs = [report.read_metrics(work / "cells" / f"algorithm={algorithm}-seed={s}") for s in (0, 1, 2)]
        for row in [r for r in rows if r["algorithm"] == algorithm]:
            accs = [next(x["mean_test_accuracy"] for x in recs if x["round"] == row["round"] and x["phase"] == row["phase"])
                    for recs in runs]
            assert row["seeds"] == 3
            assert row["mean_accuracy"] == pytest.approx(np.mean(accs))
            assert row["std_accuracy"] == pytest.approx(np.std(accs))
    finals = sweep.read_csv(work / sweep.FINAL_FILE)
    assert {f["algorithm"] for f in finals} == {"dimat", "local"} and all(f["seeds"] == 3 for f in finals)
    csv_rows = sweep.read_csv(work / sweep.AGGREGATE_FILE)
    assert len(csv_rows) == len(rows) and csv_rows[0]["mean_accuracy"] == pytest.approx(rows[0]["mean_accuracy"])


def test_sweep_resumes_an_interrupted_cell(tmp_path, monkeypatch):
    from dimat_jax.algorithms import local

    real_round = local.Local.round

    def crash(self, state, r, services):
        if r == 2:
            raise KeyboardInterrupt
        return real_round(self, state, r, services)

    monkeypatch.setattr(local.Local, "round", crash)
    work = tmp_path / "sw"
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(write_sweep(tmp_path, [0]), work, log=lambda s: None)
    monkeypatch.setattr(local.Local, "round", real_round)
    logs = []
    sweep.run_sweep(write_sweep(tmp_path, [0]), work, log=logs.append)
    assert any("algorithm=dimat-seed=0: finished" in line for line in logs)
    assert any("algorithm=local-seed=0: resume" in line for line in logs)
    assert [r["round"] for r in report.read_metrics(work / "cells" / "algorithm=local-seed=0")] == [0, 1, 2]


def test_bad_grid_fails_before_any_run(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(SWEEP.replace("SEEDS", "[0]").replace('"algorithm": ["dimat", "local"]', '"algoritm": ["dimat"]'))
    from dimat_jax.config import ConfigError
    with pytest.raises(ConfigError, match="unknown config key 'algoritm'"):
        sweep.run_sweep(path, tmp_path / "sw", log=lambda s: None)
    assert not (tmp_path / "sw" / "cells").exists()


# ------------------------------------------------------------------------------------ plots
def synthetic_rows():
    rows = []
    for algorithm, base in (("dimat", 0.6), ("wa", 0.2), ("sgp", 0.4)):
        rows.append({"algorithm": algorithm, "round": 0, "phase": "trained", "num_agents": 5, "mean_accuracy": 0.7,
                     "std_accuracy": 0.01, "bytes_sent_total": 0.0, "messages_sent_total": 0.0})
        for r in range(1, 6):
            for phase in (("merged", "trained") if algorithm != "sgp" else ("trained",)):
                rows.append({"algorithm": algorithm, "round": r, "phase": phase, "num_agents": 5,
                             "mean_accuracy": base + 0.05 * r - (0.1 if phase == "trained" else 0),
                             "std_accuracy": 0.02, "bytes_sent_total": 1e6 * r * (100 if algorithm == "sgp" else 1),
                             "messages_sent_total": 10.0 * r})
    return rows


def synthetic_finals():
    return [{"algorithm": a, "num_agents": n, "partition": p, "final_accuracy": acc - 0.01 * n,
             "final_std": 0.01, "messages_sent_total": m * n * 10, "epoch": 30, "initial_epoch": 20}
            for a, acc, m in (("dimat", 0.9, 1), ("sgp", 0.8, 100)) for n in (5, 10, 20) for p in ("iid", "noniid")]


def test_accuracy_plots_have_one_labelled_line_per_algorithm(tmp_path):
    fig = plots.plot_accuracy_vs_round(synthetic_rows(), tmp_path / "acc", title="t")
    assert (tmp_path / "acc.png").stat().st_size > 0 and (tmp_path / "acc.pdf").stat().st_size > 0
    ax = fig.axes[0]
    assert ax.get_xlabel() == "iteration (round)" and ax.get_ylabel() == "test accuracy (%)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["DIMAT", "WA", "SGP", "initial (pre-trained)"]
    dimat = ax.get_lines()[0]
    np.testing.assert_allclose(dimat.get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(dimat.get_ydata(), [65, 70, 75, 80, 85])  # the post-merge curve
    np.testing.assert_allclose(ax.get_lines()[-1].get_ydata(), [70, 70])  # the pre-trained agents' 70 %


def test_initial_line_leaves_out_the_centralized_model(tmp_path):
    rows = synthetic_rows() + [{"algorithm": "centralized", "round": r, "phase": "trained", "num_agents": 1,
                                "mean_accuracy": 0.9, "std_accuracy": 0.0} for r in (0, 1)]
    fig = plots.plot_accuracy_vs_round(rows, tmp_path / "acc")
    np.testing.assert_allclose(fig.axes[0].get_lines()[-1].get_ydata(), [70, 70])  # not (3 x 70 + 90) / 4
    fig = plots.plot_accuracy_vs_bytes(synthetic_rows(), tmp_path / "bytes")
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].get_legend().get_texts()) == 3


def test_many_lines_keep_apart_and_their_legend_off_the_data(tmp_path):
    """12 groups: the 11th and 12th lines reuse the first colours, so they are dashed; the legend sits
    right of the axes instead of over the curves."""
    rows = [{"algorithm": "dimat", "variant": f"v{i:02d}", "round": r, "phase": "merged", "num_agents": 5,
             "mean_accuracy": 0.5 + 0.01 * i, "std_accuracy": 0.0} for i in range(12) for r in (1, 2)]
    fig = plots.plot_accuracy_vs_round(rows, tmp_path / "many", keys=("variant",), initial_line=False)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == [f"v{i:02d}" for i in range(12)]
    assert lines[0].get_linestyle() == "-" and lines[10].get_linestyle() == "--"
    assert lines[0].get_color() == lines[10].get_color()  # why the style must differ
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1  # entirely right of the plotting area
    few = plots.plot_accuracy_vs_round(rows[:6], tmp_path / "few", keys=("variant",), initial_line=False)
    few.canvas.draw()
    assert few.axes[0].get_legend().get_window_extent().x0 < few.axes[0].get_window_extent().x1


def test_communication_scalability_plots_and_tables(tmp_path):
    finals = [f for f in synthetic_finals() if f["partition"] == "iid"]
    fig = plots.plot_messages_per_epoch(finals, tmp_path / "msgs")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "number of agents"
    heights = sorted(round(b.get_height(), 6) for b in ax.patches)
    assert heights == [1.0] * 3 + [100.0] * 3  # messages_total / N / (30 - 20 epochs)
    fig = plots.plot_scalability(finals, tmp_path / "scale")
    assert len(fig.axes[0].get_legend().get_texts()) == 2 and (tmp_path / "scale.pdf").exists()
    md, tex = plots.results_table(synthetic_finals(), row_key="algorithm", col_keys=("num_agents", "partition"))
    assert md.splitlines()[0] == "| algorithm | 5 / iid | 5 / noniid | 10 / iid | 10 / noniid | 20 / iid | 20 / noniid |"
    assert "| DIMAT | **85.00 ± 1.00** |" in md
    assert r"\begin{tabular}" in tex and r"\textbf{85.00 $\pm$ 1.00}" in tex


def test_a_stop_request_during_a_cell_ends_the_sweep_after_that_cell(tmp_path, monkeypatch):
    """SIGTERM in the last round of a cell: that run finishes (nothing to resume), and the sweep stops
    instead of starting the next cell (once it went on, and kept writing after its workdir moved)."""
    import os
    import signal

    from dimat_jax.algorithms import merge
    real_round = merge.MergeFamily.round

    def round_then_term(self, state, r, services):
        out = real_round(self, state, r, services)
        if r == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(merge.MergeFamily, "round", round_then_term)
    work = tmp_path / "sw"
    with pytest.raises(train.RunInterrupted, match="sweep stopped before cell 2 of 2"):
        sweep.run_sweep(write_sweep(tmp_path, [0]), work, log=lambda s: None)
    assert (work / "cells" / "algorithm=dimat-seed=0" / "summary.json").exists()
    assert not (work / "cells" / "algorithm=local-seed=0").exists()
