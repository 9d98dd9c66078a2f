"""One run: data -> stacked agents -> pre-training -> rounds of the algorithm -> metrics and plots.

Round 0 is the evaluation right after pre-training (SPEC §1 step 1, the ``local`` phase every
algorithm starts from); round r evaluates after r rounds of ``local_epochs`` epochs each.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from dimat_jax import agents, report
from dimat_jax.config import validate
from dimat_jax.data import AgentData, epoch_batches, prepare, steps_per_epoch
from dimat_jax.models import build_model, check_input_shape
from dimat_jax.optim import make_optimizer


class WorkdirError(RuntimeError):
    """The workdir already holds results; nothing is overwritten."""


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss."""


RESULT_FILES = ("metrics.jsonl", "config.json", "summary.json")


def check_workdir(workdir) -> pathlib.Path:
    """Create ``workdir``; refuse one that already holds results."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} exists and is not a directory")
    found = [f for f in RESULT_FILES if (workdir / f).exists()]
    if found:
        raise WorkdirError(f"workdir {workdir} already holds results ({', '.join(found)}); nothing was "
                           "overwritten. Choose another --workdir or move these files away.")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


@dataclasses.dataclass
class Context:
    """Everything a round needs that is not the agents' state."""
    config: ml_collections.ConfigDict
    data: AgentData
    model: object
    steps_per_epoch: int
    x_train: jax.Array
    y_train: jax.Array
    test: agents.TestSet
    eval_step: Callable
    progress: bool
    log: Callable[[str], None]
    _steps: dict = dataclasses.field(default_factory=dict)

    def optimizer(self, phase: str):
        c = self.config
        o = c.pretrain if phase == "pretrain" else c
        decay = c.pretrain.lr_decay if phase == "pretrain" else c.optim.lr_decay
        return make_optimizer(o.optimizer, o.lr, momentum=c.optim.momentum, nesterov=c.optim.nesterov,
                              weight_decay=c.optim.weight_decay, lr_decay=decay,
                              steps_per_epoch=self.steps_per_epoch)

    def optimizer_settings(self, phase: str) -> tuple:
        c = self.config
        if phase == "pretrain":
            return (c.pretrain.optimizer, c.pretrain.lr, c.pretrain.lr_decay)
        return (c.optimizer, c.lr, c.optim.lr_decay)

    def train_step(self, phase: str):
        """(optimizer, jitted step) for ``phase`` ('pretrain' | 'local'); phases with identical optimizer
        settings share one compiled step."""
        key = self.optimizer_settings(phase)
        if key not in self._steps:
            tx = self.optimizer(phase)
            self._steps[key] = (tx, agents.make_train_step(self.model, tx, self.data.preprocess,
                                                           self.config.agents.strategy))
        return self._steps[key]

    def evaluate(self, state: agents.AgentState) -> dict:
        return agents.evaluate(self.eval_step, state.variables, self.test)


def train_epochs(ctx: Context, state: agents.AgentState, step_fn, first_epoch: int, num_epochs: int,
                 desc: str) -> tuple[agents.AgentState, dict]:
    """Run ``num_epochs`` epochs of local training for all agents, starting at global epoch
    ``first_epoch`` (which fixes the batch order and augmentation). Returns the state and the
    per-agent mean training ``loss`` / ``accuracy`` ([N] arrays)."""
    cfg, steps = ctx.config, ctx.steps_per_epoch
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0xA06)
    loss_sum = acc_sum = 0.0
    # disable=None: bars only on a terminal, so log files stay readable
    bar = tqdm(total=num_epochs * steps, desc=desc, leave=False, disable=None if ctx.progress else True,
               unit="step")
    prev = None
    for e in range(first_epoch, first_epoch + num_epochs):
        idx = jnp.asarray(epoch_batches(ctx.data.shards, cfg.seed, e, steps, cfg.batch_size))
        for s in range(steps):
            state, m = step_fn(state, ctx.x_train, ctx.y_train, idx[s], jax.random.fold_in(key, e * steps + s))
            loss_sum, acc_sum = loss_sum + m["loss"], acc_sum + m["accuracy"]
            if prev is not None:  # keep one step in flight: an honest progress bar, no pipeline stall
                jax.block_until_ready(prev)
            prev = m["loss"]
            bar.update(1)
        epoch_loss = np.asarray(loss_sum)
        if not np.all(np.isfinite(epoch_loss)):
            bad = [int(i) for i in np.flatnonzero(~np.isfinite(epoch_loss))]
            bar.close()
            raise NonFiniteError(f"non-finite training loss for agent(s) {bad} in epoch {e} ({desc}); "
                                 "lower the learning rate (lr / pretrain.lr) or check the data")
        bar.set_postfix(loss=f"{float(np.mean(epoch_loss)) / ((e - first_epoch + 1) * steps):.4f}")
    bar.close()
    n = max(1, num_epochs * steps)
    return state, {"loss": np.asarray(loss_sum) / n, "accuracy": np.asarray(acc_sum) / n}


def make_record(ctx: Context, *, round_: int, epoch: int, phase: str, ev: dict, train: dict | None,
                steps: int, t0: float, extra: dict | None = None) -> dict:
    acc, loss = np.asarray(ev["accuracy"]), np.asarray(ev["loss"])
    rec = {
        "round": round_, "epoch": epoch, "algorithm": ctx.config.algorithm, "phase": phase,
        "num_agents": int(acc.shape[0]),
        "mean_test_accuracy": float(acc.mean()), "std_test_accuracy": float(acc.std()),
        "per_agent_test_accuracy": acc.tolist(),
        "mean_test_loss": float(loss.mean()), "per_agent_test_loss": loss.tolist(),
        "mean_train_loss": None if train is None else float(np.mean(train["loss"])),
        "mean_train_accuracy": None if train is None else float(np.mean(train["accuracy"])),
        "local_steps": steps, "messages_sent_total": 0, "bytes_sent_total": 0,
        "wall_time_s": time.perf_counter() - t0,
    }
    rec.update(extra or {})
    for k in ("mean_test_accuracy", "mean_test_loss"):
        if not math.isfinite(rec[k]):
            bad = [i for i, v in enumerate(rec[k.replace("mean_", "per_agent_")]) if not math.isfinite(v)]
            raise NonFiniteError(f"non-finite {k.replace('mean_', '')} for agent(s) {bad} at round {round_}")
    return rec


def build_context(config, log=print) -> Context:
    data = prepare(config)
    ds = data.dataset
    check_input_shape(config.model, ds.image_shape)
    model = build_model(config.model, ds.num_classes, config.width)
    steps = steps_per_epoch([len(s) for s in data.shards], config.batch_size, config.data.steps_per_epoch)
    strategy = agents.resolve_strategy(config.agents.strategy)
    return Context(config=config, data=data, model=model, steps_per_epoch=steps,
                   x_train=jnp.asarray(ds.x_train), y_train=jnp.asarray(ds.y_train),
                   test=agents.TestSet(ds.x_test, ds.y_test, config.data.eval_batch_size),
                   eval_step=agents.make_eval_step(model, data.preprocess, strategy),
                   progress=config.log.progress, log=log)


def run(config: ml_collections.ConfigDict, workdir, log: Callable[[str], None] = print) -> dict:
    """Validate ``config``, train, write ``workdir`` outputs; return the summary dict."""
    t0 = time.perf_counter()
    validate(config)
    workdir = check_workdir(workdir)
    report.write_json(workdir / "config.json", config.to_dict())
    ctx = build_context(config, log)
    ds, n = ctx.data.dataset, ctx.data.num_agents
    strategy = agents.resolve_strategy(config.agents.strategy)
    log(f"dataset {ds.name} ({ds.source}): {len(ds.y_train)} train / {len(ds.y_test)} test, "
        f"{ds.image_shape}, {ds.num_classes} classes; {ctx.data.preprocess}")
    hist, ceiling = ctx.data.histograms(), ctx.data.class_ceiling()
    log(f"partition {config.partition if config.algorithm != 'centralized' else 'all data (centralized)'}: "
        f"label histogram per agent\n{report.histogram_table(hist)}")
    if ceiling.min() < 1:
        log(f"class ceiling (share of test examples in classes an agent has seen): mean "
            f"{100 * ceiling.mean():.1f} %, per agent {', '.join(f'{100 * c:.1f}' for c in ceiling)}")
    report.write_json(workdir / "partition.json", {
        "partition": config.partition, "num_agents": n, "shard_sizes": [len(s) for s in ctx.data.shards],
        "label_histograms": hist, "class_ceiling": ceiling})

    tx, pretrain_step = ctx.train_step("pretrain")
    state = agents.init_state(ctx.model, tx, ds.image_shape, n, config.seed)
    n_params = agents.num_params(state.params)
    log(f"model {config.model} (width {config.width:g}): {n_params:,} parameters per agent; {n} agent(s); "
        f"{ctx.steps_per_epoch} steps/epoch of batch {config.batch_size}; strategy {strategy} on "
        f"{jax.default_backend()} ({jax.device_count()} device(s))")

    writer = report.MetricsWriter(workdir)
    epoch = steps = 0
    train_stats = None
    if config.pretrain_epochs:
        state, train_stats = train_epochs(ctx, state, pretrain_step, 0, config.pretrain_epochs, "pretrain")
        epoch = config.pretrain_epochs
        steps = epoch * ctx.steps_per_epoch
    rec = make_record(ctx, round_=0, epoch=epoch, phase="trained", ev=ctx.evaluate(state), train=train_stats,
                      steps=steps, t0=t0)
    writer.write(rec)
    log(_progress_line(rec, config.rounds))

    if config.rounds:
        tx, step_fn = ctx.train_step("local")
        state = state.replace(opt_state=agents.init_opt_state(tx, state.params))
        for r in range(1, config.rounds + 1):
            state, train_stats = train_epochs(ctx, state, step_fn, epoch, config.local_epochs,
                                              f"round {r}/{config.rounds}")
            epoch += config.local_epochs
            steps += config.local_epochs * ctx.steps_per_epoch
            rec = make_record(ctx, round_=r, epoch=epoch, phase="trained", ev=ctx.evaluate(state),
                              train=train_stats, steps=steps, t0=t0)
            writer.write(rec)
            log(_progress_line(rec, config.rounds))

    summary = summarize(writer.records, config, n_params, time.perf_counter() - t0)
    report.write_json(workdir / "summary.json", summary)
    if config.log.plot:
        report.plot_accuracy(writer.records, workdir / "accuracy.png", ceiling=float(ceiling.mean()),
                             title=f"{config.algorithm} · {config.dataset} · {config.model} · N={n} · {config.partition}")
    log("\n" + format_summary(writer.records, summary, workdir))
    return summary


def _progress_line(rec: dict, rounds: int) -> str:
    train = "" if rec["mean_train_loss"] is None else f" | train loss {rec['mean_train_loss']:.4f}"
    return (f"round {rec['round']:>3}/{rounds} | epoch {rec['epoch']:>4} | test acc "
            f"{100 * rec['mean_test_accuracy']:6.2f} ± {100 * rec['std_test_accuracy']:5.2f} % | "
            f"test loss {rec['mean_test_loss']:.4f}{train} | {rec['wall_time_s']:7.1f} s")


def summarize(records: list[dict], config, n_params: int, wall: float) -> dict:
    last = records[-1]
    best = max(records, key=lambda r: r["mean_test_accuracy"])
    return {"algorithm": config.algorithm, "dataset": config.dataset, "model": config.model,
            "width": config.width, "num_agents": last["num_agents"], "partition": config.partition,
            "seed": config.seed, "params_per_agent": n_params, "rounds": last["round"], "epochs": last["epoch"],
            "final_mean_test_accuracy": last["mean_test_accuracy"],
            "final_std_test_accuracy": last["std_test_accuracy"],
            "final_per_agent_test_accuracy": last["per_agent_test_accuracy"],
            "best_mean_test_accuracy": best["mean_test_accuracy"], "best_round": best["round"],
            "wall_time_s": wall}


def format_summary(records: list[dict], summary: dict, workdir) -> str:
    lines = [f"=== {summary['algorithm']} on {summary['dataset']} / {summary['model']} · "
             f"{summary['num_agents']} agent(s) · {summary['partition']} · seed {summary['seed']} ===",
             report.rounds_table(records), "", "final accuracy per agent:", report.agents_table(records[-1]), "",
             f"final mean test accuracy {100 * summary['final_mean_test_accuracy']:.2f} ± "
             f"{100 * summary['final_std_test_accuracy']:.2f} % (best {100 * summary['best_mean_test_accuracy']:.2f} % "
             f"at round {summary['best_round']}); {summary['wall_time_s']:.1f} s",
             f"outputs in {workdir}: config.json partition.json metrics.jsonl summary.json"
             + (" accuracy.png" if (pathlib.Path(workdir) / "accuracy.png").exists() else "")]
    return "\n".join(lines)
