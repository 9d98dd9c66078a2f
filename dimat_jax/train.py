"""The round driver: data -> stacked agents -> pre-training -> rounds of the algorithm -> summary.

Round 0 is the evaluation right after pre-training (docs/algorithm.md §1, the state every algorithm
starts from); each algorithm then emits one record per round (the merge family two: right after
the merge, phase ``merged``, and after local training, phase ``trained``). The parts live apart:
workdir safety and graceful stop (workdir.py), the epoch loop (loop.py), what an algorithm may use
(services.py), records and summaries (report.py), checkpoints (checkpoint.py).
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dimat_jax import agents, algorithms, checkpoint, distributed, report, runtime
from dimat_jax import topology as topology_lib
from dimat_jax.choices import TOPOLOGY_NEEDS
from dimat_jax.config import ConfigError, validate
from dimat_jax.data import prepare, steps_per_epoch
from dimat_jax.guards import DivergenceError, NonFiniteError  # noqa: F401  (raised from here)
from dimat_jax.models import build_model, check_input_shape
from dimat_jax.services import RunCounters, Services
from dimat_jax.workdir import (GracefulStop, WorkdirError, WorkdirLock, check_workdir,  # noqa: F401
                               check_writable, set_aside_metrics)


class RunInterrupted(RuntimeError):
    """Stopped on request (Ctrl-C / SIGTERM) after a checkpoint; rerunning the command resumes."""


def preflight(config: ml_collections.ConfigDict) -> topology_lib.Topology | None:
    """Every check of ``config`` that needs no data: the schema (config.validate), then whether its
    graph exists for this agent count and suits the algorithm. Returns the topology (None for
    algorithms without one); raises :class:`ConfigError` naming the problem."""
    validate(config)
    if config.log.tensorboard:
        import importlib.util
        if importlib.util.find_spec("tensorboardX") is None:
            raise ConfigError("log.tensorboard needs the pure-Python writer tensorboardX: "
                              "pip install -e '.[tensorboard]' (or pip install tensorboardX)")
    try:
        topo = build_topology(config)
        if topo is not None:
            algorithms.check_topology(config.algorithm, topo)
    except topology_lib.TopologyError as e:
        raise ConfigError(f"{e} (algorithm {config.algorithm!r})") from e
    return topo


def build_topology(config) -> topology_lib.Topology | None:
    if config.algorithm not in TOPOLOGY_NEEDS:
        return None
    return topology_lib.build(config.topology, config.num_agents, seed=config.seed,
                              edge_probability=config.graph.edge_probability, torus_rows=config.graph.torus_rows,
                              path=config.topology_path, **TOPOLOGY_NEEDS[config.algorithm])


def build_services(config, log=print) -> Services:
    """Data on device, the model, the evaluation step and fresh counters for ``config``."""
    data = prepare(config)
    ds = data.dataset
    check_input_shape(config.model, ds.image_shape)
    model = build_model(config.model, ds.num_classes, config.width, config.agents.conv_filter_grad)
    steps = steps_per_epoch([len(s) for s in data.shards], config.batch_size, config.data.steps_per_epoch)
    strategy = agents.resolve_strategy(config.agents.strategy, num_agents=data.num_agents,
                                       algorithm=config.algorithm)
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
    return Services(config=config, data=data, model=model, steps_per_epoch=steps, x_train=x_train, y_train=y_train,
                    test=test, eval_step=agents.make_eval_step(model, data.preprocess, strategy, mesh), log=log,
                    counters=RunCounters(data.num_agents), mesh=mesh, per_agent_data=per_agent)


def pretrain(services: Services) -> tuple[agents.AgentState, dict | None]:
    """Pre-trained agents (docs/algorithm.md §1): trained here, or loaded from ``pretrain.checkpoint``
    or the ``pretrain.cache_dir`` cache (and saved there after training). Optimizer state is fresh."""
    c, s = services.config, services
    ds, n = s.data.dataset, s.data.num_agents
    tx, step = s.train_step("pretrain")
    state = distributed.shard_agents(agents.init_state(s.model, tx, ds.image_shape, n, c.seed), s.mesh)
    source = c.pretrain.checkpoint or (str(checkpoint.pretrain_cache_path(c)) if c.pretrain.cache_dir else "")
    if source and pathlib.Path(source).exists() and c.pretrain_epochs:
        variables, meta = checkpoint.restore_tree(source, state.variables)
        checkpoint.check_fingerprint(meta, c, source)
        s.log(f"pre-trained agents loaded from {source}")
        s.counters.epoch, s.counters.local_steps = c.pretrain_epochs, meta["local_steps"]
        variables = distributed.shard_agents(variables, s.mesh)
        return state.replace(params=variables["params"], batch_stats=variables["batch_stats"]), meta.get("train")
    if c.pretrain.checkpoint:
        raise checkpoint.CheckpointError(f"pretrain.checkpoint {c.pretrain.checkpoint} does not exist")
    stats = None
    if c.pretrain_epochs:
        state, stats = s.train(state, step, c.pretrain_epochs, "pretrain")
        if c.pretrain.cache_dir:
            path = checkpoint.save_tree(source, state.variables, {
                "fingerprint": checkpoint.pretrain_fingerprint(c), "local_steps": s.counters.local_steps,
                "train": {k: np.asarray(v).tolist() for k, v in stats.items()}})
            s.log(f"pre-trained agents saved to {path}")
    return state, stats


def run(config: ml_collections.ConfigDict, workdir, log: Callable[[str], None] = print) -> dict:
    """Check ``config`` and run it in ``workdir``; return the summary dict.

    A new workdir starts a run. Rerunning the same settings in the same workdir resumes from the
    newest intact checkpoint (exactly: the resumed run's metrics equal an uninterrupted run's), or,
    if the run had finished, reports that and returns its summary. One run at a time holds a
    workdir. The first SIGINT / SIGTERM finishes the current round, saves a checkpoint and raises
    :class:`RunInterrupted`; a second SIGINT aborts.
    """
    topo = preflight(config)
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
        return _run_locked(config, topo, workdir, status, primary, log)
    finally:
        if lock is not None:
            lock.release()


def _finished(workdir, log) -> dict:
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    log(f"the run in {workdir} has already finished (final mean test accuracy "
        f"{100 * summary['final_mean_test_accuracy']:.2f} %); nothing to do")
    return summary


def _describe(services: Services, topo, workdir: pathlib.Path, primary: bool):
    """Log the data, partition and graph of the run; write partition.json and topology.json.
    Returns the partition's class ceiling [N]."""
    config, log, data = services.config, services.log, services.data
    ds = data.dataset
    log(f"dataset {ds.name} ({ds.source}): {len(ds.y_train)} train / {len(ds.y_test)} test, "
        f"{ds.image_shape}, {ds.num_classes} classes; {data.preprocess}")
    for note in ds.notes:
        log(note)
    sizes = [len(s) for s in data.shards]
    small = [a for a, size in enumerate(sizes) if size < config.batch_size]
    if small:
        log(f"note: batch_size {config.batch_size} is larger than the shard of agent(s) {small[:8]}"
            f"{' …' if len(small) > 8 else ''} (smallest: {min(sizes)} examples); their batches wrap around their "
            "shard and repeat examples within a batch")
    hist, ceiling = data.histograms(), data.class_ceiling()
    log(f"partition {config.partition if config.algorithm != 'centralized' else 'all data (centralized)'}: "
        f"label histogram per agent\n{report.histogram_table(hist)}")
    if ceiling.min() < 1:
        log(f"class ceiling (share of test examples in classes an agent has seen): mean "
            f"{100 * ceiling.mean():.1f} %, per agent {', '.join(f'{100 * c:.1f}' for c in ceiling)}")
    if primary:
        report.write_json(workdir / "partition.json", {
            "partition": config.partition, "num_agents": data.num_agents, "shard_sizes": sizes,
            "label_histograms": hist, "class_ceiling": ceiling})
    if topo is not None:
        summary = topo.summary()
        if primary:
            report.write_json(workdir / "topology.json", {**summary, "matrices": [m.tolist() for m in topo.matrices]})
        log(f"topology {topo.name}: rho {summary['rho']:.4f}, spectral gap {summary['spectral_gap']:.4f}, "
            f"max degree {summary['max_degree']}" + (f", period {topo.period}" if topo.time_varying else ""))
    return ceiling


def _run_locked(config, topo, workdir: pathlib.Path, status: str, primary: bool, log) -> dict:
    if status == "fresh" and primary:
        report.write_json(workdir / "config.json", config.to_dict())
    cache = runtime.use_compile_cache(config.runtime.compile_cache)  # before anything compiles
    services = build_services(config, log)
    ceiling = _describe(services, topo, workdir, primary)
    n = services.data.num_agents
    algo = algorithms.build(config.algorithm, services, topo)
    ckpt = (checkpoint.RunCheckpointer(workdir, config.checkpoint.keep, verify=not services.per_agent_data)
            if config.checkpoint.every_rounds else None)
    try:
        found = _restore(ckpt, services, algo, workdir) if (ckpt is not None and status == "resume") else None
        if found is None:
            set_aside_metrics(workdir, 0, log, primary, distributed.barrier)
            state, train_stats = pretrain(services)
            services.writer = report.MetricsWriter(workdir, enabled=primary, tensorboard=config.log.tensorboard,
                                                   resume_from=0)
            services.emit(state.variables, round_=0, phase="trained", train=train_stats)
            state = algo.init(state)
            start = 0
            _save(ckpt, 0, state, services, algo)
        else:
            start, state = found
        n_params = agents.num_params(state.params)
        where = (f"sharded over {distributed.num_devices(services.mesh)} {jax.default_backend()} devices "
                 f"(shard_map, {services.strategy} within each)" if services.mesh is not None else
                 f"strategy {services.strategy} on {jax.default_backend()} ({jax.device_count()} device(s) visible)")
        where += f", conv filter gradients: {services.model.conv_filter_grad}"
        log(f"model {config.model} (width {config.width:g}): {n_params:,} parameters per agent; {n} agent(s); "
            f"{services.steps_per_epoch} steps/epoch of batch {config.batch_size}; {where}; "
            f"algorithm {config.algorithm}")
        hint = runtime.allocator_hint(jax.default_backend())
        if hint:
            log(hint)
        if cache:
            log(f"compiled programs are cached in {cache} (runtime.compile_cache; 'off' disables it)")

        with GracefulStop(log) as stop:
            for r in range(start + 1, config.rounds + 1):
                state, diagnostics = algo.round(state, r, services)
                if diagnostics:
                    log("    " + report.diagnostics_line(diagnostics))
                if ckpt is not None and (r % config.checkpoint.every_rounds == 0 or r == config.rounds
                                         or stop.requested):
                    _save(ckpt, r, state, services, algo)
                if stop.requested and r < config.rounds:
                    raise RunInterrupted(f"stopped after round {r} of {config.rounds}" + (
                        f"; checkpoint saved in {ckpt.dir}. Rerun the same command to resume." if ckpt else
                        " (checkpointing is off: checkpoint.every_rounds = 0)"))
    finally:
        if ckpt is not None:
            ckpt.close()
        if services.writer is not None:
            services.writer.close()

    records = services.writer.records
    summary = report.summarize(records, config, n_params, services.wall_time())
    distributed.barrier("dimat_jax:run-finished")
    if not primary:
        return summary
    report.write_json(workdir / "summary.json", summary)
    if config.log.plot:
        report.plot_accuracy(records, workdir / "accuracy.png", ceiling=float(ceiling.mean()),
                             title=f"{config.algorithm} · {config.dataset} · {config.model} · N={n} · {config.partition}")
    log("\n" + report.format_summary(records, summary, workdir))
    return summary


def _save(ckpt, round_: int, state, services: Services, algo) -> None:
    if ckpt is None:
        return
    ckpt.save(round_, state, {"round": round_, "counters": vars(services.counters).copy(),
                              "records": len(services.writer.records), "wall_time_s": services.wall_time(),
                              "algorithm": algo.extra_state()})


def _restore(ckpt, services: Services, algo, workdir) -> tuple[int, agents.AgentState] | None:
    """(round, state) rebuilt from the newest intact checkpoint, or None when there is none."""
    c = services.config
    tx, _ = services.train_step("pretrain")
    template = algo.init(agents.init_state(services.model, tx, services.data.dataset.image_shape,
                                           services.data.num_agents, c.seed))
    found = ckpt.restore_latest(template, services.log)
    if found is None:
        return None
    round_, state, meta = found
    state = distributed.shard_agents(state, services.mesh)
    services.counters = RunCounters.from_checkpoint(meta, services.data.num_agents)
    services.counters.elapsed_s = meta["wall_time_s"]
    algo.load_extra_state(meta["algorithm"])
    records = set_aside_metrics(workdir, meta["records"], services.log, distributed.is_primary(), distributed.barrier)
    services.writer = report.MetricsWriter(workdir, enabled=distributed.is_primary(),
                                           tensorboard=c.log.tensorboard, resume_from=round_ + 1)
    services.writer.records = records
    services.log(f"resuming {workdir} after round {round_} of {c.rounds} (epoch {services.counters.epoch})")
    return round_, state
