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
import signal
import threading
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
from dimat_jax.data import AgentData, epoch_batches, prepare, steps_per_epoch
from dimat_jax.models import build_model, check_input_shape
from dimat_jax.optim import make_optimizer


class WorkdirError(RuntimeError):
    """The workdir already holds results; nothing is overwritten."""


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss."""


class RunInterrupted(RuntimeError):
    """Stopped on request (Ctrl-C / SIGTERM) after a checkpoint; rerunning the command resumes."""


RESULT_FILES = ("metrics.jsonl", "config.json", "summary.json")
IGNORED_ON_RESUME = ("log.",)  # settings that may change between a run and its resumption


def _flat_dict(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_workdir(workdir, config) -> str:
    """'fresh', 'resume' or 'finished' for running ``config`` in ``workdir``.

    A workdir holding a run with other settings is refused (nothing is overwritten)."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} exists and is not a directory")
    saved = workdir / "config.json"
    if not saved.exists():
        found = [f for f in RESULT_FILES if (workdir / f).exists()]
        if found:
            raise WorkdirError(f"workdir {workdir} holds results ({', '.join(found)}) but no config.json; nothing "
                               "was overwritten. Choose another --workdir or move these files away.")
        workdir.mkdir(parents=True, exist_ok=True)
        return "fresh"
    try:
        old = _flat_dict(json.loads(saved.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(f"{saved} is unreadable ({e}); nothing was overwritten. Use another --workdir.") from e
    new = _flat_dict(config.to_dict())
    diff = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and not k.startswith(IGNORED_ON_RESUME))
    if diff:
        details = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:8])
        raise WorkdirError(f"workdir {workdir} holds a run with other settings ({details}); nothing was "
                           "overwritten. Choose another --workdir, or rerun with the same settings to resume it.")
    return "finished" if (workdir / "summary.json").exists() else "resume"


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
        idx = jnp.asarray(epoch_batches(ctx.data.shards, cfg.seed, e, steps, cfg.batch_size, ctx.per_agent_data))
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
        epoch_loss = distributed.to_host(loss_sum)
        check_finite(epoch_loss, f"epoch {e} ({desc})", bar)
        bar.set_postfix(loss=f"{float(np.mean(epoch_loss)) / ((e - first_epoch + 1) * steps):.4f}")
    bar.close()
    n = max(1, num_epochs * steps)
    return state, {"loss": distributed.to_host(loss_sum) / n, "accuracy": distributed.to_host(acc_sum) / n}


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
    strategy = agents.resolve_strategy(config.agents.strategy)
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
    status = check_workdir(workdir, config)
    distributed.barrier("dimat_jax:workdir-checked")
    if status == "finished":
        summary = json.loads((workdir / "summary.json").read_text())
        log(f"the run in {workdir} has already finished (final mean test accuracy "
            f"{100 * summary['final_mean_test_accuracy']:.2f} %); nothing to do")
        return summary
    if status == "fresh" and primary:
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
    ckpt = checkpoint.RunCheckpointer(workdir, config.checkpoint.keep) if config.checkpoint.every_rounds else None
    start = ckpt.latest() if (ckpt is not None and status == "resume") else None
    if start is None:
        _set_aside_metrics(workdir, 0, log)
        state, train_stats = pretrain(ctx)
        ctx.writer = report.MetricsWriter(workdir, enabled=primary)
        ctx.emit(state.variables, round_=0, phase="trained", train=train_stats)
        state = algo.setup(state)
        start = 0
        _save(ckpt, 0, state, ctx, algo)
    else:
        state = _restore(ckpt, start, ctx, algo, workdir)
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

    with _graceful_stop(log) as stop:
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


def _restore(ckpt, round_: int, ctx: Context, algo, workdir) -> agents.AgentState:
    """Rebuild the run's state at the end of round ``round_`` from its checkpoint."""
    c = ctx.config
    tx, _ = ctx.train_step("pretrain")
    template = algo.setup(agents.init_state(ctx.model, tx, ctx.data.dataset.image_shape, ctx.data.num_agents,
                                            c.seed))
    state, meta = ckpt.restore(round_, template)
    state = distributed.shard_agents(state, ctx.mesh)
    ctx.epoch, ctx.local_steps = meta["epoch"], meta["local_steps"]
    ctx.counter.messages = np.asarray(meta["messages"], np.int64)
    ctx.counter.bytes = np.asarray(meta["bytes"], np.int64)
    ctx.t0 = time.perf_counter() - meta["wall_time_s"]
    algo.load_extra_state(meta["algorithm"])
    records = _set_aside_metrics(workdir, meta["records"], ctx.log)
    ctx.writer = report.MetricsWriter(workdir, enabled=distributed.is_primary())
    ctx.writer.records = records
    ctx.log(f"resuming {workdir} after round {round_} of {c.rounds} (epoch {ctx.epoch})")
    return state


def _set_aside_metrics(workdir, keep: int, log) -> list[dict]:
    """Keep the first ``keep`` records of metrics.jsonl; move any later ones (written after the
    checkpoint being resumed; they will be recomputed) to metrics.discarded.jsonl."""
    path = pathlib.Path(workdir) / report.METRICS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < keep:
        raise checkpoint.CheckpointError(f"{path} has {len(lines)} records but the checkpoint expects {keep}; "
                                         "it was edited or truncated. Nothing was changed.")
    if len(lines) > keep and distributed.is_primary():
        with open(pathlib.Path(workdir) / "metrics.discarded.jsonl", "a") as f:
            f.write("\n".join(lines[keep:]) + "\n")
        path.write_text("".join(line + "\n" for line in lines[:keep]))
        log(f"{len(lines) - keep} metrics record(s) written after the last checkpoint were moved to "
            "metrics.discarded.jsonl (they are recomputed now)")
    distributed.barrier("dimat_jax:metrics-set-aside")
    return [json.loads(line) for line in lines[:keep]]


class _graceful_stop:
    """First SIGINT / SIGTERM: finish the round, checkpoint, stop. Second SIGINT: abort at once."""

    def __init__(self, log):
        self.log, self.requested, self._old = log, False, {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.log(f"\n{signal.Signals(signum).name} received: stopping after this round and saving a checkpoint "
                 "(Ctrl-C again to abort without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


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
