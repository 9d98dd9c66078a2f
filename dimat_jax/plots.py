"""Paper-style figures and tables from a sweep's ``aggregate.csv`` / ``final.csv`` rows.

Every figure is written as PNG and PDF (``path`` without suffix) and returned (matplotlib Figure).
The reported curve of the merge family is accuracy right after each merge (phase ``merged``, as the
paper reports DIMAT); other algorithms report phase ``trained``; round 0 (pre-trained) starts both.
"""
from __future__ import annotations

import pathlib

import numpy as np

from dimat_jax.choices import MERGE_FAMILY
NAMES = {"dimat": "DIMAT", "wa": "WA", "wm": "WM", "cdsgd": "CDSGD", "cdmsgd": "CDMSGD", "sgp": "SGP",
         "sgp_pushsum": "SGP (push-sum)", "cga": "CGA", "swarmsgd": "SwarmSGD", "local": "Local",
         "centralized": "Centralized"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for ext in (".png", ".pdf"):
        fig.savefig(path.with_suffix(ext), bbox_inches="tight")


def _finish(fig, ax, path, xlabel: str, ylabel: str, title: str, **grid):
    """Label, title, grid (``grid`` passed to ``ax.grid``), legend; save to ``path``; return ``fig``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, **grid)
    if len(ax.get_legend_handles_labels()[1]) > 6:  # many lines: the legend beside the axes, not over them
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=7)
    _save(fig, path)
    return fig


def _line_style(i: int) -> str:
    """Solid for the first 10 lines (the colour cycle's length), then dashed, then dotted, so lines
    that share a colour stay apart."""
    return ("-", "--", ":")[min(i // 10, 2)]


def label(row: dict, keys) -> str:
    parts = [NAMES.get(row["algorithm"], row["algorithm"]) if k == "algorithm" else f"{row[k]}" for k in keys]
    return " · ".join(str(p) for p in parts)


def reported(rows: list[dict], keys=("algorithm",)) -> dict[str, list[dict]]:
    """The reported curve of every group: label -> rows sorted by round (round 0 first)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        phase = "merged" if r["algorithm"] in MERGE_FAMILY else "trained"
        if r["phase"] == phase or r["round"] == 0:
            out.setdefault(label(r, keys), []).append(r)
    return {k: sorted(v, key=lambda r: r["round"]) for k, v in out.items()}


def plot_accuracy_vs_round(rows, path, *, keys=("algorithm",), title="", initial_line=True):
    """Mean test accuracy vs iteration with ±1 std bands, one line per group (paper Fig. type 1)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=150)
    curves = reported(rows, keys)
    for i, (name, rs) in enumerate(curves.items()):
        rs = [r for r in rs if r["round"] > 0]
        x = np.array([r["round"] for r in rs])
        m = 100 * np.array([r["mean_accuracy"] for r in rs])
        s = 100 * np.array([r["std_accuracy"] for r in rs])
        (line,) = ax.plot(x, m, label=name, lw=1.5, ls=_line_style(i))
        ax.fill_between(x, m - s, m + s, alpha=0.2, color=line.get_color())
    if initial_line and curves:
        # the agents' pre-trained accuracy; centralized's round 0 is its own single model
        init = np.mean([rs[0]["mean_accuracy"] for rs in curves.values()
                        if rs and rs[0]["round"] == 0 and rs[0]["algorithm"] != "centralized"] or [np.nan])
        ax.axhline(100 * init, ls="--", color="k", lw=1, label="initial (pre-trained)")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, path, "iteration (round)", "test accuracy (%)", title)


def _plot_accuracy_vs_cumulative(rows, path, field: str, xlabel: str, keys, title):
    """Mean test accuracy (± std band) vs a cumulative per-record ``field`` (log x), one line per
    group; groups whose ``field`` stays 0 are left out."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=150)
    curves = {name: [r for r in rs if r.get(field, 0) > 0] for name, rs in reported(rows, keys).items()}
    for i, (name, rs) in enumerate((name, rs) for name, rs in curves.items() if rs):
        x = np.array([r[field] for r in rs])
        m = 100 * np.array([r["mean_accuracy"] for r in rs])
        s = 100 * np.array([r["std_accuracy"] for r in rs])
        (line,) = ax.plot(x, m, marker="o", ms=3, label=name, ls=_line_style(i))
        ax.fill_between(x, m - s, m + s, alpha=0.2, color=line.get_color())
    ax.set_xscale("log")
    return _finish(fig, ax, path, xlabel, "test accuracy (%)", title, which="both")


def plot_accuracy_vs_bytes(rows, path, *, keys=("algorithm",), title=""):
    """Mean test accuracy vs cumulative bytes communicated (log x), one line per group."""
    return _plot_accuracy_vs_cumulative(rows, path, "bytes_sent_total", "bytes sent, all agents (cumulative)",
                                        keys, title)


def plot_accuracy_vs_compute(rows, path, *, keys=("algorithm",), title=""):
    """Mean test accuracy vs cumulative merge compute (XLA GFLOPs of the merge passes, log x), one
    line per group of the merge family."""
    return _plot_accuracy_vs_cumulative(rows, path, "merge_gflops_total",
                                        "merge compute, all agents (cumulative GFLOP)", keys, title)


def messages_per_agent_per_epoch(final: dict) -> float:
    epochs = final["epoch"] - final.get("initial_epoch", 0)
    return final["messages_sent_total"] / final["num_agents"] / max(epochs, 1)


def plot_messages_per_epoch(finals, path, *, keys=("algorithm",), title=""):
    """Communication rounds (messages) per agent per epoch vs number of agents, log scale (bars)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=150)
    ns = sorted({f["num_agents"] for f in finals})
    groups: dict[str, dict] = {}
    for f in finals:
        if f["messages_sent_total"] > 0:  # algorithms that send nothing (local) have no bar on a log axis
            groups.setdefault(label(f, keys), {})[f["num_agents"]] = messages_per_agent_per_epoch(f)
    width = 0.8 / max(len(groups), 1)
    for g, (name, vals) in enumerate(groups.items()):
        xs = [i + (g - (len(groups) - 1) / 2) * width for i, n in enumerate(ns) if n in vals]
        ax.bar(xs, [vals[n] for n in ns if n in vals], width=width, label=name)
    ax.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax.set_yscale("log")
    return _finish(fig, ax, path, "number of agents", "messages per agent per epoch", title, axis="y", which="both")


def plot_scalability(finals, path, *, keys=("algorithm",), title=""):
    """Final mean test accuracy (± std across seeds) vs number of agents, one line per group."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=150)
    groups: dict[str, list] = {}
    for f in finals:
        groups.setdefault(label(f, keys), []).append(f)
    for name, fs in groups.items():
        fs = sorted(fs, key=lambda f: f["num_agents"])
        ax.errorbar([f["num_agents"] for f in fs], [100 * f["final_accuracy"] for f in fs],
                    yerr=[100 * f["final_std"] for f in fs], marker="o", capsize=3, label=name)
    return _finish(fig, ax, path, "number of agents", "final test accuracy (%)", title)


def results_table(finals, *, row_key: str = "algorithm", col_keys=("partition",)) -> tuple[str, str]:
    """(Markdown, LaTeX) table of final accuracy mean ± std (%): one row per ``row_key`` value, one
    column per combination of ``col_keys`` values."""
    cols = sorted({tuple(f[k] for k in col_keys) for f in finals})
    rows = list(dict.fromkeys(f[row_key] for f in finals))
    cell = {(f[row_key], tuple(f[k] for k in col_keys)): f for f in finals}

    def fmt(f):
        if f is None:
            return "–"
        return f"{100 * f['final_accuracy']:.2f} ± {100 * f['final_std']:.2f}"

    header = [row_key] + [" / ".join(str(v) for v in c) for c in cols]
    best = {c: max((cell[(r, c)]["final_accuracy"] for r in rows if (r, c) in cell), default=None) for c in cols}
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tex = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
           " & ".join(h.replace("_", r"\_") for h in header) + r" \\", r"\midrule"]
    for r in rows:
        name = NAMES.get(r, r) if row_key == "algorithm" else str(r)
        md_cells, tex_cells = [name], [name]
        for c in cols:
            f = cell.get((r, c))
            text = fmt(f)
            is_best = f is not None and f["final_accuracy"] == best[c]
            md_cells.append(f"**{text}**" if is_best else text)
            tex_cells.append((r"\textbf{" + text.replace("±", r"$\pm$") + "}") if is_best
                             else text.replace("±", r"$\pm$"))
        md.append("| " + " | ".join(md_cells) + " |")
        tex.append(" & ".join(tex_cells) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(md), "\n".join(tex)
