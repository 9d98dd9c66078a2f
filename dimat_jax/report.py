"""Run outputs: metrics as JSON lines, human-readable tables, and the accuracy plot."""
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


class MetricsWriter:
    """Appends one JSON object per line to ``<workdir>/metrics.jsonl``, flushed after each record."""

    def __init__(self, workdir, enabled: bool = True):
        self.path = pathlib.Path(workdir) / METRICS_FILE
        self.records: list[dict] = []
        self.enabled = enabled  # False on every process but the first of a multi-process run

    def write(self, record: dict) -> None:
        record = _jsonable(record)
        self.records.append(record)
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


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
