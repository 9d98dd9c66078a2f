"""One run: data -> stacked agents -> pre-training -> rounds of the algorithm -> metrics and plots.

Round 0 is the evaluation right after pre-training (SPEC §1 step 1, the ``local`` phase every
algorithm starts from); each algorithm then emits one record per round (the merge family two: one
right after the merge, phase ``merged``, and one after local training, phase ``trained``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from dimat_jax import agents, algorithms, checkpoint, comms, distributed, report, runtime
from dimat_jax import topology as topology_lib
from dimat_jax.algorithms import TOPOLOGY_NEEDS
from dimat_jax.config import ConfigError, validate
from dimat_jax.costs import FlopCounter
from dimat_jax.guards import DivergenceError, NonFiniteError, check_losses, divergence_limit  # noqa: F401
from dimat_jax.workdir import GracefulStop, WorkdirError, WorkdirLock, check_workdir, check_writable, set_aside_metrics
from dimat_jax.data import AgentData, epoch_batches, prepare, steps_per_epoch
from dimat_jax.models import build_model, check_input_shape
from dimat_jax.optim import make_optimizer


class RunInterrupted(RuntimeError):
    """Stopped on request (Ctrl-C / SIGTERM) after a checkpoint; rerunning the command resumes."""


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
    mesh: object = None       # the agents mesh (distributed.py) or None on one device
    per_agent_data: bool = False  # several processes: x_train/y_train are agent-local [N, n_max, ...]
    epoch: int = 0            # cumulative local epochs
    local_steps: int = 0      # cumulative local steps per agent
    writer: report.MetricsWriter | None = None
    flops: FlopCounter = dataclasses.field(default_factory=FlopCounter)
    _steps: dict = dataclasses.field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return agents.resolve_strategy(self.config.agents.strategy, num_agents=self.data.num_agents)

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
                                                           bn_mode=bn_mode, mesh=self.mesh,
                                                           per_agent_data=self.per_agent_data))
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
    *extra_args(epoch, step, t))`` with t counting steps within this call. Returns the state and
    ``loss`` / ``accuracy`` (per-agent means, [N] arrays), ``gflops`` (XLA's count of the steps, all
    agents; 0 when ``step_fn`` cannot be lowered) and ``time_s``."""
    cfg, steps = ctx.config, ctx.steps_per_epoch
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0xA06)
    t_start = time.perf_counter()
    step_gflops = None
    loss_sum = acc_sum = 0.0
    # disable=None: bars only on a terminal, so log files stay readable
    bar = tqdm(total=num_epochs * steps, desc=desc, leave=False, disable=None if ctx.progress else True,
               unit="step")
    prev, t = None, 0
    limit = divergence_limit(ctx.data.dataset.num_classes, cfg.guard.divergence_factor)
    for e in range(first_epoch, first_epoch + num_epochs):
        epoch_start = loss_sum
        idx = jnp.asarray(epoch_batches(ctx.data.shards, cfg.seed, e, steps, cfg.batch_size, ctx.per_agent_data))
        for s in range(steps):
            extra = extra_args(e, s, t) if extra_args else ()
            args = (ctx.x_train, ctx.y_train, idx[s], jax.random.fold_in(key, e * steps + s), *extra)
            state, m = step_fn(state, *args)
            if step_gflops is None:  # after the call: the state is donated, its successor has the same shapes
                step_gflops = ctx.flops.gflops(step_fn, state, *args)
            t += 1
            loss_sum, acc_sum = loss_sum + m["loss"], acc_sum + m["accuracy"]
            if prev is not None:  # keep one step in flight: an honest progress bar, no pipeline stall
                jax.block_until_ready(prev)
            prev = m["loss"]
            bar.update(1)
        epoch_loss = distributed.to_host(loss_sum - epoch_start) / steps  # [N] this epoch's mean
        check_losses(epoch_loss, f"epoch {e} ({desc})", limit, bar)
        bar.set_postfix(loss=f"{float(np.mean(epoch_loss)):.4f}")
    bar.close()
    n = max(1, num_epochs * steps)
    return state, {"loss": distributed.to_host(loss_sum) / n, "accuracy": distributed.to_host(acc_sum) / n,
                   "gflops": (step_gflops or 0.0) * num_epochs * steps, "time_s": time.perf_counter() - t_start}


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
        "train_gflops": None if train is None else float(train.get("gflops", 0.0)),
        "train_time_s": None if train is None else float(train.get("time_s", 0.0)),
        "local_steps": ctx.local_steps, **ctx.counter.record(),
        "wall_time_s": time.perf_counter() - ctx.t0,
    }
    rec.update(extra or {})
    for k in ("mean_test_accuracy", "mean_test_loss"):
        if not math.isfinite(rec[k]):
            bad = [i for i, v in enumerate(rec[k.replace("mean_", "per_agent_")]) if not math.isfinite(v)]
            what = k.replace("mean_", "").replace("_", " ")
            raise NonFiniteError(f"non-finite {what} for agent(s) {bad} at round {round_} ({phase}); lower the "
                                 "learning rate (lr / baseline.lr) or check the data")
    return rec


def build_context(config, log=print) -> Context:
    data = prepare(config)
    ds = data.dataset
    check_input_shape(config.model, ds.image_shape)
    model = build_model(config.model, ds.num_classes, config.width, config.agents.conv_filter_grad)
    steps = steps_per_epoch([len(s) for s in data.shards], config.batch_size, config.data.steps_per_epoch)
    strategy = agents.resolve_strategy(config.agents.strategy, num_agents=data.num_agents)
    try:
        mesh = distributed.make_mesh(config.mesh.devices, data.num_agents)
    except distributed.MeshError as e:
        raise ConfigError(str(e)) from e
    test = agents.TestSet(ds.x_test, ds.y_test, config.data.eval_batch_size)
    per_agent = distributed.multi_process()
    if per_agent:  # several processes: each keeps only its own agents' training data
        if mesh is None or distributed.num_devices(mesh) != jax.device_count():
            raise ConfigError(f"with {jax.process_count()} processes set mesh.devices = 0 (all "
                              f"{jax.device_count()} devices) so that every process holds some agents")
        if config.algorithm in ("cga", "swarmsgd") or config.merge_data == "global":
            raise ConfigError(f"{config.algorithm if config.merge_data != 'global' else 'merge_data=global'} needs "
                              "other agents' training data on every process; with several processes use another "
                              "algorithm / merge_data='local'")
        mine = distributed.local_agents(mesh, data.num_agents)
        x_train = distributed.per_agent_array(mesh, data.shards, ds.x_train, mine)
        y_train = distributed.per_agent_array(mesh, data.shards, ds.y_train, mine)
    else:  # data replicated on every device; agents sharded (see pretrain / restore)
        x_train = distributed.replicate(jnp.asarray(ds.x_train), mesh)
        y_train = distributed.replicate(jnp.asarray(ds.y_train), mesh)
    if mesh is not None:
        test.x, test.y, test.mask = distributed.replicate((test.x, test.y, test.mask), mesh)
    return Context(config=config, data=data, model=model, steps_per_epoch=steps, x_train=x_train,
                   y_train=y_train, test=test, eval_step=agents.make_eval_step(model, data.preprocess, strategy, mesh),
                   progress=config.log.progress, log=log, counter=comms.Counter(data.num_agents),
                   t0=time.perf_counter(), mesh=mesh, per_agent_data=per_agent)


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
    state = distributed.shard_agents(agents.init_state(ctx.model, tx, ds.image_shape, n, c.seed), ctx.mesh)
    source = c.pretrain.checkpoint or (str(checkpoint.pretrain_cache_path(c)) if c.pretrain.cache_dir else "")
    if source and pathlib.Path(source).exists() and c.pretrain_epochs:
        variables, meta = checkpoint.restore_tree(source, state.variables)
        checkpoint.check_fingerprint(meta, c, source)
        ctx.log(f"pre-trained agents loaded from {source}")
        ctx.epoch, ctx.local_steps = c.pretrain_epochs, meta["local_steps"]
        variables = distributed.shard_agents(variables, ctx.mesh)
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
    """Validate ``config`` and run it in ``workdir``; return the summary dict.

    A new workdir starts a run. Rerunning the same settings in the same workdir resumes from the
    latest checkpoint (exactly: the resumed run's metrics equal an uninterrupted run's), or, if the
    run had finished, reports that and returns its summary. The first SIGINT / SIGTERM finishes the
    current round, saves a checkpoint and raises :class:`RunInterrupted`; a second SIGINT aborts.
    """
    validate(config)
    primary = distributed.is_primary()
    if not primary:  # process 0 logs and writes the result files; every process computes
        log = lambda *a, **k: None  # noqa: E731
    workdir = pathlib.Path(workdir)
    if check_workdir(workdir, config) == "finished":
        return _finished(workdir, log)
    if primary:
        check_writable(workdir)
    lock = WorkdirLock(workdir) if primary else None  # one run per workdir (refused, not queued)
    try:
        status = check_workdir(workdir, config)  # again, under the lock
        distributed.barrier("dimat_jax:workdir-checked")
        if status == "finished":
            return _finished(workdir, log)
        return _run_locked(config, workdir, status, primary, log)
    finally:
        if lock is not None:
            lock.release()


def _finished(workdir, log) -> dict:
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    log(f"the run in {workdir} has already finished (final mean test accuracy "
        f"{100 * summary['final_mean_test_accuracy']:.2f} %); nothing to do")
    return summary


def _run_locked(config, workdir: pathlib.Path, status: str, primary: bool, log) -> dict:
    if status == "fresh" and primary:
        report.write_json(workdir / "config.json", config.to_dict())
    ctx = build_context(config, log)
    ds, n = ctx.data.dataset, ctx.data.num_agents
    log(f"dataset {ds.name} ({ds.source}): {len(ds.y_train)} train / {len(ds.y_test)} test, "
        f"{ds.image_shape}, {ds.num_classes} classes; {ctx.data.preprocess}")
    for note in ds.notes:
        log(note)
    sizes = [len(s) for s in ctx.data.shards]
    small = [a for a, size in enumerate(sizes) if size < config.batch_size]
    if small:
        log(f"note: batch_size {config.batch_size} is larger than the shard of agent(s) {small[:8]}"
            f"{' …' if len(small) > 8 else ''} (smallest: {min(sizes)} examples); their batches wrap around their "
            "shard and repeat examples within a batch")
    hist, ceiling = ctx.data.histograms(), ctx.data.class_ceiling()
    log(f"partition {config.partition if config.algorithm != 'centralized' else 'all data (centralized)'}: "
        f"label histogram per agent\n{report.histogram_table(hist)}")
    if ceiling.min() < 1:
        log(f"class ceiling (share of test examples in classes an agent has seen): mean "
            f"{100 * ceiling.mean():.1f} %, per agent {', '.join(f'{100 * c:.1f}' for c in ceiling)}")
    if primary:
        report.write_json(workdir / "partition.json", {
            "partition": config.partition, "num_agents": n, "shard_sizes": [len(s) for s in ctx.data.shards],
            "label_histograms": hist, "class_ceiling": ceiling})
    topo = build_topology(config)
    if topo is not None:
        summary = topo.summary()
        if primary:
            report.write_json(workdir / "topology.json", {**summary, "matrices": [m.tolist() for m in topo.matrices]})
        log(f"topology {topo.name}: rho {summary['rho']:.4f}, spectral gap {summary['spectral_gap']:.4f}, "
            f"max degree {summary['max_degree']}" + (f", period {topo.period}" if topo.time_varying else ""))

    algo = algorithms.build(config.algorithm, ctx, topo)
    ckpt = (checkpoint.RunCheckpointer(workdir, config.checkpoint.keep, verify=not ctx.per_agent_data)
            if config.checkpoint.every_rounds else None)
    found = _restore(ckpt, ctx, algo, workdir) if (ckpt is not None and status == "resume") else None
    if found is None:
        set_aside_metrics(workdir, 0, log, primary, distributed.barrier)
        state, train_stats = pretrain(ctx)
        ctx.writer = report.MetricsWriter(workdir, enabled=primary)
        ctx.emit(state.variables, round_=0, phase="trained", train=train_stats)
        state = algo.setup(state)
        start = 0
        _save(ckpt, 0, state, ctx, algo)
    else:
        start, state = found
    n_params = agents.num_params(state.params)
    where = (f"sharded over {distributed.num_devices(ctx.mesh)} {jax.default_backend()} devices (shard_map, "
             f"{ctx.strategy} within each)" if ctx.mesh is not None else
             f"strategy {ctx.strategy} on {jax.default_backend()} ({jax.device_count()} device(s) visible)")
    where += f", conv filter gradients: {ctx.model.conv_filter_grad}"
    log(f"model {config.model} (width {config.width:g}): {n_params:,} parameters per agent; {n} agent(s); "
        f"{ctx.steps_per_epoch} steps/epoch of batch {config.batch_size}; {where}; algorithm {config.algorithm}")
    hint = runtime.allocator_hint(jax.default_backend())
    if hint:
        log(hint)

    with GracefulStop(log) as stop:
        for r in range(start + 1, config.rounds + 1):
            state = algo.round(state, r)
            if ckpt is not None and (r % config.checkpoint.every_rounds == 0 or r == config.rounds or stop.requested):
                _save(ckpt, r, state, ctx, algo)
            if stop.requested and r < config.rounds:
                raise RunInterrupted(f"stopped after round {r} of {config.rounds}" + (
                    f"; checkpoint saved in {ckpt.dir}. Rerun the same command to resume." if ckpt else
                    " (checkpointing is off: checkpoint.every_rounds = 0)"))

    records = ctx.writer.records
    summary = summarize(records, config, n_params, time.perf_counter() - ctx.t0)
    distributed.barrier("dimat_jax:run-finished")
    if not primary:
        return summary
    report.write_json(workdir / "summary.json", summary)
    if config.log.plot:
        report.plot_accuracy(records, workdir / "accuracy.png", ceiling=float(ceiling.mean()),
                             title=f"{config.algorithm} · {config.dataset} · {config.model} · N={n} · {config.partition}")
    log("\n" + format_summary(records, summary, workdir))
    return summary


def _save(ckpt, round_: int, state, ctx: Context, algo) -> None:
    if ckpt is None:
        return
    meta = {"round": round_, "epoch": ctx.epoch, "local_steps": ctx.local_steps,
            "messages": ctx.counter.messages.tolist(), "bytes": ctx.counter.bytes.tolist(),
            "records": len(ctx.writer.records), "wall_time_s": time.perf_counter() - ctx.t0,
            "algorithm": algo.extra_state()}
    ckpt.save(round_, state, meta)


def _restore(ckpt, ctx: Context, algo, workdir) -> tuple[int, agents.AgentState] | None:
    """(round, state) rebuilt from the newest intact checkpoint, or None when there is none."""
    c = ctx.config
    tx, _ = ctx.train_step("pretrain")
    template = algo.setup(agents.init_state(ctx.model, tx, ctx.data.dataset.image_shape, ctx.data.num_agents,
                                            c.seed))
    found = ckpt.restore_latest(template, ctx.log)
    if found is None:
        return None
    round_, state, meta = found
    state = distributed.shard_agents(state, ctx.mesh)
    ctx.epoch, ctx.local_steps = meta["epoch"], meta["local_steps"]
    ctx.counter.messages = np.asarray(meta["messages"], np.int64)
    ctx.counter.bytes = np.asarray(meta["bytes"], np.int64)
    ctx.t0 = time.perf_counter() - meta["wall_time_s"]
    algo.load_extra_state(meta["algorithm"])
    records = set_aside_metrics(workdir, meta["records"], ctx.log, distributed.is_primary(), distributed.barrier)
    ctx.writer = report.MetricsWriter(workdir, enabled=distributed.is_primary())
    ctx.writer.records = records
    ctx.log(f"resuming {workdir} after round {round_} of {c.rounds} (epoch {ctx.epoch})")
    return round_, state


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
             report.rounds_table(records), "", "final accuracy per agent:", report.agents_table(records[-1]), "",
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
