"""One run: data -> stacked agents -> pre-training -> rounds of the algorithm -> metrics and plots.

Round 0 is the evaluation right after pre-training (SPEC §1 step 1, the ``local`` phase every
algorithm starts from); each algorithm then emits one record per round (the merge family two: one
right after the merge, phase ``merged``, and one after local training, phase ``trained``).
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

from dimat_jax import agents, checkpoint, comms, report
from dimat_jax import topology as topology_lib
from dimat_jax.algorithms import TOPOLOGY_NEEDS, runner
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
    """Everything a round needs besides the agents' state, plus the run's counters."""
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
    counter: comms.Counter
    t0: float
    epoch: int = 0            # cumulative local epochs
    local_steps: int = 0      # cumulative local steps per agent
    writer: report.MetricsWriter | None = None
    _steps: dict = dataclasses.field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return agents.resolve_strategy(self.config.agents.strategy)

    def optimizer(self, phase: str):
        c = self.config
        name, lr, decay = self.optimizer_settings(phase)
        return make_optimizer(name, lr, momentum=c.optim.momentum, nesterov=c.optim.nesterov,
                              weight_decay=c.optim.weight_decay, lr_decay=decay,
                              steps_per_epoch=self.steps_per_epoch)

    def optimizer_settings(self, phase: str) -> tuple:
        c = self.config
        if phase == "pretrain":
            return (c.pretrain.optimizer, c.pretrain.lr, c.pretrain.lr_decay)
        return (c.optimizer, c.lr, c.optim.lr_decay)

    def train_step(self, phase: str, bn_mode: str = "ema"):
        """(optimizer, jitted step) for ``phase`` ('pretrain' | 'local'); identical settings share
        one compiled step."""
        key = self.optimizer_settings(phase) + (bn_mode,)
        if key not in self._steps:
            tx = self.optimizer(phase)
            self._steps[key] = (tx, agents.make_train_step(self.model, tx, self.data.preprocess, self.strategy,
                                                           bn_mode=bn_mode))
        return self._steps[key]

    def evaluate(self, variables: dict) -> dict:
        return agents.evaluate(self.eval_step, variables, self.test)

    def train(self, state, step_fn, num_epochs: int, desc: str, extra_args: Callable | None = None):
        """``num_epochs`` epochs of local training for all agents; advances the epoch/step counters."""
        state, stats = train_epochs(self, state, step_fn, self.epoch, num_epochs, desc, extra_args)
        self.epoch += num_epochs
        self.local_steps += num_epochs * self.steps_per_epoch
        return state, stats

    def emit(self, variables: dict, *, round_: int, phase: str, train: dict | None = None,
             extra: dict | None = None) -> dict:
        """Evaluate ``variables``, write one metrics record, print its progress line."""
        rec = make_record(self, round_=round_, phase=phase, ev=self.evaluate(variables), train=train, extra=extra)
        self.writer.write(rec)
        self.log(_progress_line(rec, self.config.rounds))
        return rec


def train_epochs(ctx: Context, state: agents.AgentState, step_fn, first_epoch: int, num_epochs: int,
                 desc: str, extra_args: Callable | None = None) -> tuple[agents.AgentState, dict]:
    """Run ``num_epochs`` epochs of training for all agents, starting at global epoch ``first_epoch``
    (which fixes the batch order and augmentation): ``step_fn(state, x_train, y_train, idx, key,
    *extra_args(epoch, step, t))`` with t counting steps within this call. Returns the state and the
    per-agent mean training ``loss`` / ``accuracy`` ([N] arrays)."""
    cfg, steps = ctx.config, ctx.steps_per_epoch
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0xA06)
    loss_sum = acc_sum = 0.0
    # disable=None: bars only on a terminal, so log files stay readable
    bar = tqdm(total=num_epochs * steps, desc=desc, leave=False, disable=None if ctx.progress else True,
               unit="step")
    prev, t = None, 0
    for e in range(first_epoch, first_epoch + num_epochs):
        idx = jnp.asarray(epoch_batches(ctx.data.shards, cfg.seed, e, steps, cfg.batch_size))
        for s in range(steps):
            extra = extra_args(e, s, t) if extra_args else ()
            state, m = step_fn(state, ctx.x_train, ctx.y_train, idx[s], jax.random.fold_in(key, e * steps + s),
                               *extra)
            t += 1
            loss_sum, acc_sum = loss_sum + m["loss"], acc_sum + m["accuracy"]
            if prev is not None:  # keep one step in flight: an honest progress bar, no pipeline stall
                jax.block_until_ready(prev)
            prev = m["loss"]
            bar.update(1)
        epoch_loss = np.asarray(loss_sum)
        check_finite(epoch_loss, f"epoch {e} ({desc})", bar)
        bar.set_postfix(loss=f"{float(np.mean(epoch_loss)) / ((e - first_epoch + 1) * steps):.4f}")
    bar.close()
    n = max(1, num_epochs * steps)
    return state, {"loss": np.asarray(loss_sum) / n, "accuracy": np.asarray(acc_sum) / n}


def check_finite(per_agent_loss, where: str, bar=None) -> None:
    loss = np.asarray(per_agent_loss)
    if not np.all(np.isfinite(loss)):
        if bar is not None:
            bar.close()
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(loss))]
        raise NonFiniteError(f"non-finite training loss for agent(s) {bad} in {where}; lower the learning "
                             "rate (lr / pretrain.lr / baseline.lr) or check the data")


def make_record(ctx: Context, *, round_: int, phase: str, ev: dict, train: dict | None,
                extra: dict | None = None) -> dict:
    acc, loss = np.asarray(ev["accuracy"]), np.asarray(ev["loss"])
    rec = {
        "round": round_, "epoch": ctx.epoch, "algorithm": ctx.config.algorithm, "phase": phase,
        "num_agents": int(acc.shape[0]),
        "mean_test_accuracy": float(acc.mean()), "std_test_accuracy": float(acc.std()),
        "per_agent_test_accuracy": acc.tolist(),
        "mean_test_loss": float(loss.mean()), "per_agent_test_loss": loss.tolist(),
        "mean_train_loss": None if train is None else float(np.mean(train["loss"])),
        "mean_train_accuracy": None if train is None else float(np.mean(train["accuracy"])),
        "local_steps": ctx.local_steps, **ctx.counter.record(),
        "wall_time_s": time.perf_counter() - ctx.t0,
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
                   progress=config.log.progress, log=log, counter=comms.Counter(data.num_agents),
                   t0=time.perf_counter())


def build_topology(config) -> topology_lib.Topology | None:
    if config.algorithm not in TOPOLOGY_NEEDS:
        return None
    return topology_lib.build(config.topology, config.num_agents, seed=config.seed,
                              edge_probability=config.graph.edge_probability, torus_rows=config.graph.torus_rows,
                              path=config.topology_path, **TOPOLOGY_NEEDS[config.algorithm])


def pretrain(ctx: Context) -> tuple[agents.AgentState, dict | None]:
    """Pre-trained agents (SPEC §1 step 1): trained here, or loaded from ``pretrain.checkpoint`` or
    the ``pretrain.cache_dir`` cache (and saved there after training). Optimizer state is fresh."""
    c = ctx.config
    ds, n = ctx.data.dataset, ctx.data.num_agents
    tx, step = ctx.train_step("pretrain")
    state = agents.init_state(ctx.model, tx, ds.image_shape, n, c.seed)
    source = c.pretrain.checkpoint or (str(checkpoint.pretrain_cache_path(c)) if c.pretrain.cache_dir else "")
    if source and pathlib.Path(source).exists() and c.pretrain_epochs:
        variables, meta = checkpoint.restore_tree(source, state.variables)
        checkpoint.check_fingerprint(meta, c, source)
        ctx.log(f"pre-trained agents loaded from {source}")
        ctx.epoch, ctx.local_steps = c.pretrain_epochs, meta["local_steps"]
        return state.replace(params=variables["params"], batch_stats=variables["batch_stats"]), meta.get("train")
    if c.pretrain.checkpoint:
        raise checkpoint.CheckpointError(f"pretrain.checkpoint {c.pretrain.checkpoint} does not exist")
    stats = None
    if c.pretrain_epochs:
        state, stats = ctx.train(state, step, c.pretrain_epochs, "pretrain")
        if c.pretrain.cache_dir:
            path = checkpoint.save_tree(source, state.variables, {
                "fingerprint": checkpoint.pretrain_fingerprint(c), "local_steps": ctx.local_steps,
                "train": {k: np.asarray(v).tolist() for k, v in stats.items()}})
            ctx.log(f"pre-trained agents saved to {path}")
    return state, stats


def run(config: ml_collections.ConfigDict, workdir, log: Callable[[str], None] = print) -> dict:
    """Validate ``config``, train, write ``workdir`` outputs; return the summary dict."""
    validate(config)
    workdir = check_workdir(workdir)
    report.write_json(workdir / "config.json", config.to_dict())
    ctx = build_context(config, log)
    ds, n = ctx.data.dataset, ctx.data.num_agents
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
    topo = build_topology(config)
    if topo is not None:
        summary = topo.summary()
        report.write_json(workdir / "topology.json", {**summary, "matrices": [m.tolist() for m in topo.matrices]})
        log(f"topology {topo.name}: rho {summary['rho']:.4f}, spectral gap {summary['spectral_gap']:.4f}, "
            f"max degree {summary['max_degree']}" + (f", period {topo.period}" if topo.time_varying else ""))

    state, train_stats = pretrain(ctx)
    n_params = agents.num_params(state.params)
    log(f"model {config.model} (width {config.width:g}): {n_params:,} parameters per agent; {n} agent(s); "
        f"{ctx.steps_per_epoch} steps/epoch of batch {config.batch_size}; strategy {ctx.strategy} on "
        f"{jax.default_backend()} ({jax.device_count()} device(s)); algorithm {config.algorithm}")
    ctx.writer = report.MetricsWriter(workdir)
    ctx.emit(state.variables, round_=0, phase="trained", train=train_stats)
    runner(config.algorithm)(ctx, state, topo)

    records = ctx.writer.records
    summary = summarize(records, config, n_params, time.perf_counter() - ctx.t0)
    report.write_json(workdir / "summary.json", summary)
    if config.log.plot:
        report.plot_accuracy(records, workdir / "accuracy.png", ceiling=float(ceiling.mean()),
                             title=f"{config.algorithm} · {config.dataset} · {config.model} · N={n} · {config.partition}")
    log("\n" + format_summary(records, summary, workdir))
    return summary


def _progress_line(rec: dict, rounds: int) -> str:
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
            "wall_time_s": wall}


def format_summary(records: list[dict], summary: dict, workdir) -> str:
    lines = [f"=== {summary['algorithm']} on {summary['dataset']} / {summary['model']} · "
             f"{summary['num_agents']} agent(s) · {summary['partition']} · seed {summary['seed']} ===",
             report.rounds_table(records), "", "final accuracy per agent:", report.agents_table(records[-1]), "",
             f"final mean test accuracy {100 * summary['final_mean_test_accuracy']:.2f} ± "
             f"{100 * summary['final_std_test_accuracy']:.2f} % (best {100 * summary['best_mean_test_accuracy']:.2f} % "
             f"at round {summary['best_round']}); {summary['messages_sent_total']:,} messages, "
             f"{summary['bytes_sent_total'] / 1e6:,.1f} MB sent; {summary['wall_time_s']:.1f} s",
             f"outputs in {workdir}: " + " ".join(f for f in ("config.json", "partition.json", "topology.json",
                                                               "metrics.jsonl", "summary.json", "accuracy.png")
                                                  if (pathlib.Path(workdir) / f).exists())]
    return "\n".join(lines)
