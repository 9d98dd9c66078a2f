"""Run outputs: metrics records as JSON lines, progress lines, summaries, tables, and the accuracy plot."""
from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np

METRICS_FILE = "metrics.jsonl"


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON atomically (temp file + rename)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


TENSORBOARD_DIR = "tensorboard"
# record fields written to TensorBoard as scalars (tag: <phase>/<field>, step: the round)
TENSORBOARD_SCALARS = ("mean_test_accuracy", "std_test_accuracy", "mean_test_loss", "mean_train_loss",
                       "mean_train_accuracy", "epoch", "local_steps", "messages_sent_total", "bytes_sent_total",
                       "wall_time_s", "train_gflops", "merge_gflops", "merge_time_s", "mean_matched_correlation")


class MetricsWriter:
    """Appends one JSON object per line to ``<workdir>/metrics.jsonl``, flushed after each record;
    with ``tensorboard``, also TensorBoard event files in ``<workdir>/tensorboard/`` (tensorboardX:
    pure Python, no TensorFlow). ``resume_from``: the first round this writer records again after a
    resume — TensorBoard drops the events of the abandoned attempt from that step on."""

    def __init__(self, workdir, enabled: bool = True, tensorboard: bool = False, resume_from: int | None = None):
        self.path = pathlib.Path(workdir) / METRICS_FILE
        self.records: list[dict] = []
        self.enabled = enabled  # False on every process but the first of a multi-process run
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(pathlib.Path(workdir) / TENSORBOARD_DIR), purge_step=resume_from)

    def write(self, record: dict) -> None:
        record = _jsonable(record)
        self.records.append(record)
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for key in TENSORBOARD_SCALARS:
                if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool):
                    self._tb.add_scalar(f"{record.get('phase', 'eval')}/{key}", record[key], record["round"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def make_record(algorithm: str, counters, *, round_: int, phase: str, ev: dict, train: dict | None,
                extra: dict | None = None, wall_time_s: float = 0.0) -> dict:
    """One metrics record from an evaluation ``ev`` (per-agent ``accuracy``, ``loss``), the round's
    training stats ``train`` (or None) and the run's counters; :class:`NonFiniteError` when the test
    accuracy or loss is not finite."""
    from dimat_jax.guards import NonFiniteError
    acc, loss = np.asarray(ev["accuracy"]), np.asarray(ev["loss"])
    rec = {
        "round": round_, "epoch": counters.epoch, "algorithm": algorithm, "phase": phase,
        "num_agents": int(acc.shape[0]),
        "mean_test_accuracy": float(acc.mean()), "std_test_accuracy": float(acc.std()),
        "per_agent_test_accuracy": acc.tolist(),
        "mean_test_loss": float(loss.mean()), "per_agent_test_loss": loss.tolist(),
        "mean_train_loss": None if train is None else float(np.mean(train["loss"])),
        "mean_train_accuracy": None if train is None else float(np.mean(train["accuracy"])),
        "train_gflops": None if train is None else float(train.get("gflops", 0.0)),
        "train_time_s": None if train is None else float(train.get("time_s", 0.0)),
        **counters.record(), "wall_time_s": wall_time_s,
    }
    rec.update(extra or {})
    for k in ("mean_test_accuracy", "mean_test_loss"):
        if not math.isfinite(rec[k]):
            bad = [i for i, v in enumerate(rec[k.replace("mean_", "per_agent_")]) if not math.isfinite(v)]
            what = k.replace("mean_", "").replace("_", " ")
            raise NonFiniteError(f"non-finite {what} for agent(s) {bad} at round {round_} ({phase}); lower the "
                                 "learning rate (lr / baseline.lr) or check the data")
    return rec


def read_metrics(path) -> list[dict]:
    """All records of a metrics.jsonl file (a workdir or the file itself)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[list], header: list[str]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def rounds_table(records: list[dict]) -> str:
    rows = [[r["round"], r["epoch"], r.get("phase", ""), f"{100 * r['mean_test_accuracy']:.2f}",
             f"{100 * r['std_test_accuracy']:.2f}", f"{r['mean_test_loss']:.4f}",
             "" if r.get("mean_train_loss") is None else f"{r['mean_train_loss']:.4f}", f"{r['wall_time_s']:.1f}"]
            for r in records]
    return table(rows, ["round", "epoch", "phase", "acc %", "± std", "test loss", "train loss", "time s"])


def agents_table(record: dict) -> str:
    accs, losses = record["per_agent_test_accuracy"], record["per_agent_test_loss"]
    rows = [[i, f"{100 * a:.2f}", f"{l:.4f}"] for i, (a, l) in enumerate(zip(accs, losses))]
    return table(rows, ["agent", "acc %", "test loss"])


def histogram_table(hist: np.ndarray) -> str:
    """Per-agent label counts, [N, K]."""
    hist = np.asarray(hist)
    k = hist.shape[1]
    if k <= 20:
        rows = [[i, int(h.sum())] + [int(v) for v in h] for i, h in enumerate(hist)]
        return table(rows, ["agent", "total"] + [f"c{c}" for c in range(k)])
    rows = [[i, int(h.sum()), int((h > 0).sum()), int(h.max()), int(np.argmax(h))] for i, h in enumerate(hist)]
    return table(rows, ["agent", "total", "classes", "max count", "top class"])


def plot_accuracy(records: list[dict], path, title: str = "", ceiling: float | None = None) -> None:
    """Mean test accuracy vs round with a ±1 std band across agents, and each agent's curve (PNG).
    ``ceiling`` (fraction), when below 1, is drawn dashed: the mean class ceiling of the partition."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    by_phase = {}
    for r in records:
        by_phase.setdefault(r.get("phase") or "eval", []).append(r)
    for phase, rs in by_phase.items():
        x = np.array([r["round"] for r in rs])
        mean = 100 * np.array([r["mean_test_accuracy"] for r in rs])
        std = 100 * np.array([r["std_test_accuracy"] for r in rs])
        label = rs[0]["algorithm"] + ("" if phase == "eval" else f" ({phase})")
        (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{label}: mean ± std")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
        per_agent = 100 * np.array([r["per_agent_test_accuracy"] for r in rs])
        if per_agent.shape[1] > 1:
            ax.plot(x, per_agent, color=line.get_color(), lw=0.6, alpha=0.35)
    if ceiling is not None and ceiling < 1:
        ax.axhline(100 * ceiling, ls="--", color="grey", lw=1, label="class ceiling (mean)")
    ax.set_xlabel("round (0 = after pre-training)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- progress and summaries
def diagnostics_line(diagnostics: dict) -> str:
    """An algorithm's round diagnostics as one line: ``key value, key value`` (floats to 3 figures)."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))  # noqa: E731
    return ", ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in diagnostics.items())


def progress_line(rec: dict, rounds: int) -> str:
    train = "" if rec["mean_train_loss"] is None else f" | train loss {rec['mean_train_loss']:.4f}"
    return (f"round {rec['round']:>3}/{rounds} {rec['phase']:>7} | epoch {rec['epoch']:>4} | test acc "
            f"{100 * rec['mean_test_accuracy']:6.2f} ± {100 * rec['std_test_accuracy']:5.2f} % | "
            f"test loss {rec['mean_test_loss']:.4f}{train} | {rec['wall_time_s']:7.1f} s")


def summarize(records: list[dict], config, n_params: int, wall: float) -> dict:
    last = records[-1]
    best = max(records, key=lambda r: r["mean_test_accuracy"])
    return {"algorithm": config.algorithm, "dataset": config.dataset, "model": config.model,
            "width": config.width, "num_agents": last["num_agents"], "partition": config.partition,
            "topology": config.topology, "seed": config.seed, "params_per_agent": n_params,
            "rounds": last["round"], "epochs": last["epoch"],
            "final_mean_test_accuracy": last["mean_test_accuracy"],
            "final_std_test_accuracy": last["std_test_accuracy"],
            "final_per_agent_test_accuracy": last["per_agent_test_accuracy"],
            "best_mean_test_accuracy": best["mean_test_accuracy"], "best_round": best["round"],
            "messages_sent_total": last["messages_sent_total"], "bytes_sent_total": last["bytes_sent_total"],
            "wall_time_s": wall, **compute_summary(records)}


def compute_summary(records: list[dict]) -> dict:
    """Training vs merge compute (XLA GFLOPs, all agents) and time after pre-training, and what one
    merge costs in local epochs of all agents, by compute and by time. The time ratio uses the
    median merge and the median epoch after the first of each when there are several (the first
    call of a pass includes its compilation)."""
    after = [r for r in records if r["round"] > 0]
    trained = [r for r in after if r.get("train_gflops") is not None]
    merges = [r for r in after if r.get("merge_gflops") is not None]
    out = {"pretrain_gflops": records[0].get("train_gflops") if records else None,
           "train_gflops_total": sum(r["train_gflops"] for r in trained),
           "train_time_s_total": sum(r["train_time_s"] for r in trained),
           "merges": len(merges), "merge_gflops_total": sum(r["merge_gflops"] for r in merges),
           "merge_time_s_total": sum(r["merge_time_s"] for r in merges)}
    epochs = [(r, r["epoch"] - prev["epoch"]) for prev, r in zip(records, records[1:]) if r in trained]
    epochs = [(r, e) for r, e in epochs if e > 0]
    if merges and epochs:
        steady = lambda xs: xs[1:] if len(xs) > 1 else xs  # noqa: E731
        per_epoch_t = float(np.median([r["train_time_s"] / e for r, e in steady(epochs)]))
        per_epoch_f = float(np.median([r["train_gflops"] / e for r, e in epochs]))
        merge_t = float(np.median([r["merge_time_s"] for r in steady(merges)]))
        merge_f = float(np.median([r["merge_gflops"] for r in merges]))
        out["merge_cost_local_epochs_time"] = merge_t / per_epoch_t if per_epoch_t > 0 else None
        out["merge_cost_local_epochs_gflops"] = merge_f / per_epoch_f if per_epoch_f > 0 else None
    return out


def format_summary(records: list[dict], summary: dict, workdir) -> str:
    lines = [f"=== {summary['algorithm']} on {summary['dataset']} / {summary['model']} · "
             f"{summary['num_agents']} agent(s) · {summary['partition']} · seed {summary['seed']} ===",
             rounds_table(records), "", "final accuracy per agent:", agents_table(records[-1]), "",
             f"final mean test accuracy {100 * summary['final_mean_test_accuracy']:.2f} ± "
             f"{100 * summary['final_std_test_accuracy']:.2f} % (best {100 * summary['best_mean_test_accuracy']:.2f} % "
             f"at round {summary['best_round']}); {summary['messages_sent_total']:,} messages, "
             f"{summary['bytes_sent_total'] / 1e6:,.1f} MB sent; {summary['wall_time_s']:.1f} s",
             *([f"compute after pre-training: training {summary['train_gflops_total']:,.1f} GFLOP in "
                f"{summary['train_time_s_total']:.1f} s; {summary['merges']} merge(s) {summary['merge_gflops_total']:,.1f} "
                f"GFLOP in {summary['merge_time_s_total']:.1f} s"
                + (f" — one merge costs {summary['merge_cost_local_epochs_gflops']:.2f} local epochs of compute, "
                   f"{summary['merge_cost_local_epochs_time']:.2f} of time"
                   if summary.get("merge_cost_local_epochs_gflops") is not None
                   and summary.get("merge_cost_local_epochs_time") is not None else "")]
               if summary.get("merges") else []),
             f"outputs in {workdir}: " + " ".join(f for f in ("config.json", "partition.json", "topology.json",
                                                               "metrics.jsonl", "summary.json", "accuracy.png")
                                                  if (pathlib.Path(workdir) / f).exists())]
    return "\n".join(lines)
