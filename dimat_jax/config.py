"""The configuration schema: defaults, allowed values and cross-field checks — data only.

Config files in ``configs/`` start from :func:`get_default_config` (a *locked* ConfigDict, so a
misspelt key fails at once with a "did you mean" hint) and change what they need. :func:`validate`
runs before any work starts and raises :class:`ConfigError` naming the key and its allowed values;
checks that need an implementation (does this graph exist for N agents and suit the algorithm?)
live with the implementation and run in the runner's ``train.preflight``, still before any work.

This module imports only ml_collections and :mod:`dimat_jax.choices`: reading a config never loads
JAX. Top-level keys are a stable command-line contract (``--config.<key>=...``); other settings live
in the nested sections ``data``, ``optim``, ``pretrain``, ``merge``, ``baseline``, ``graph``,
``agents``, ``mesh``, ``distributed``, ``guard``, ``checkpoint``, ``runtime``, ``log``.
"""
from __future__ import annotations

import difflib

import ml_collections

from dimat_jax.choices import (ALGORITHMS, AUGMENTATIONS, COMPRESSIONS, DATASETS, FILTER_GRADS, IMAGE_SIZES,
                               MERGE_BASES, MERGE_DATA, REMATCH,
                               MERGE_FAMILY, MODELS, NORMALIZATIONS, NUM_CLASSES, OPTIMIZER_ALIASES, OPTIMIZERS,
                               PARTITIONS, STRATEGIES, SWARM_VARIANTS, TOPOLOGIES, TOPOLOGY_ALIASES, TOPOLOGY_NEEDS,
                               VGG_MIN_INPUT_SIZE)


class ConfigError(ValueError):
    """An invalid configuration; raised before any work starts."""


def get_default_config() -> ml_collections.ConfigDict:
    """Every key with its default. Returns a locked ConfigDict (new keys cannot be added)."""
    c = ml_collections.ConfigDict()
    # --- stable top-level keys
    c.dataset = "digits"          # digits | mnist | fashion_mnist | cifar10 | cifar100 | tiny_imagenet | npz
    c.data_path = ""              # .npz file (npz), tiny-imagenet-200 folder (tiny_imagenet), IDX folder (mnist, fashion_mnist)
    c.model = "cnn"               # cnn | resnet20 | vgg16
    c.width = 1.0                 # channel-width multiplier
    c.num_agents = 5
    c.partition = "iid"           # iid | noniid | iid_shuffled | k_classes | shards | dirichlet
    c.algorithm = "local"         # dimat | wa | wm | cdsgd | cdmsgd | sgp | sgp_pushsum | cga | swarmsgd | local | centralized
    c.topology = "ring"           # fc | ring | bipartite | disconnected | torus | exponential | erdos_renyi | one_peer_exponential | file
    c.topology_path = ""          # mixing-matrix file for topology=file (.npy, .txt, .csv)
    c.seed = 0
    c.rounds = 10                 # evaluation rounds after pre-training
    c.local_epochs = 2            # local epochs per round
    c.pretrain_epochs = 10        # independent local training before the first round
    c.batch_size = 32             # per agent
    c.optimizer = "adam"          # sgd | msgd (alias momentum) | adam — local training of dimat/wa/wm/local
    c.lr = 1e-3
    c.merge_data = "local"        # local (each agent's own shard) | global (all training data, as the reference)

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ""          # TFDS data dir ('' -> $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.normalization = "dataset"   # dataset | reference (the reference code's constants)
    c.data.augment = "auto"       # auto (dataset default) | none | crop | flip | crop_flip
    c.data.crop_padding = -1      # random-crop padding; -1 -> dataset default
    c.data.alpha = 0.5            # Dirichlet concentration (partition=dirichlet)
    c.data.classes_per_agent = 2  # partition=k_classes
    c.data.shards_per_agent = 2   # partition=shards
    c.data.min_agent_examples = 1  # partition=dirichlet: redraw until every agent has this many
    c.data.steps_per_epoch = 0    # 0 -> ceil(mean shard size / batch_size)
    c.data.eval_batch_size = 500
    c.data.max_train_examples = 0  # 0 -> all; else a seeded random subset (quick experiments)
    c.data.max_test_examples = 0
    c.data.train_subset = 0       # 0 -> all; else a seeded, class-stratified subset of this many training examples
    c.data.test_subset = 0        # likewise for the test set
    c.data.pad_to = 0             # zero-pad images to pad_to x pad_to (e.g. 32: 28x28 MNIST in the CIFAR layout); 0 = no
    c.data.channels = 0           # 1 or 3 (grey repeated to 3); 0 = the dataset's own
    c.data.num_classes = 0        # dataset=npz: the class count K (labels 0..K-1); 0 = largest label + 1

    c.optim = ml_collections.ConfigDict()
    c.optim.momentum = 0.9        # msgd
    c.optim.nesterov = False
    c.optim.weight_decay = 0.0    # coupled L2, PyTorch-style
    c.optim.lr_decay = 1.0        # lr multiplied by this every epoch (reference baselines: 0.981)

    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.optimizer = "adam"  # reference pre-training: Adam 1e-3, no schedule
    c.pretrain.lr = 1e-3
    c.pretrain.lr_decay = 1.0

    c.pretrain.cache_dir = ""     # reuse pre-trained agents across runs/algorithms ('' = off)
    c.pretrain.checkpoint = ""    # load pre-trained agents from this directory instead of training

    c.merge = ml_collections.ConfigDict()   # dimat / wa / wm
    c.merge.batch_size = 100      # per agent, for the statistics and BatchNorm passes
    c.merge.num_batches = 0       # batches per pass (takes precedence over num_examples when > 0)
    c.merge.num_examples = 1000   # examples per agent per pass (a fresh class-balanced sample each round); 0 = full pass
    c.merge.augment = False       # augment the merge data (the reference does)
    c.merge.bn_before = False     # re-estimate BN of every model before matching (the reference does; dimat)
    c.merge.bn_after = True       # re-estimate BN of the merged models (reference WA: no)
    c.merge.bn_cumulative = False  # reference: BN keeps a cumulative average during the next training
    c.merge.fc_shortcut = False   # reference: on a fully connected graph merge agent 0 and copy it
    c.merge.wm_max_sweeps = 100   # weight matching: coordinate-descent sweeps at most
    # beyond the paper (docs/algorithm.md §8)
    c.merge.basis = "own"         # own (the paper: each agent merges into its own units) | shared (one common basis)
    c.merge.rematch = "always"    # always | adaptive (shared basis: match only when a probe says the bases drifted)
    c.merge.probe_examples = 200  # adaptive: examples per agent of the drift probe (and of BN re-estimation when only averaging)
    c.merge.rematch_threshold = 0.1   # adaptive: re-match when matching would raise the mean unit correlation by more
    c.merge.compression = "none"  # merge messages: none | bf16 | int8 | topk
    c.merge.topk_fraction = 0.1   # topk: share of entries of each tensor's change sent per message
    c.merge.edge_fraction = 1.0   # each round merge over a random subset of the edges (kept with this probability)
    c.merge.straggler_prob = 0.0  # each round every agent misses the merge with this probability

    c.baseline = ml_collections.ConfigDict()  # cdsgd / cdmsgd / sgp / sgp_pushsum / cga / swarmsgd
    c.baseline.lr = 0.01          # reference: SGD lr 0.01
    c.baseline.momentum = 0.9     # cdmsgd, cga (reference 0.9)
    c.baseline.lr_decay = 0.981   # lr multiplied by this every epoch (reference)
    c.baseline.bn_frozen = False  # reference quirk: train with BatchNorm in inference mode
    c.baseline.cga_qp_iters = 200  # CGA: coordinate-descent sweeps of the per-tensor QP
    c.baseline.swarm_variant = "reference"  # swarmsgd: reference (node-then-neighbour pair per step, momentum,
    #                                          averaging in cycles) | uniform_edge (ours: random edge, plain SGD, always average)
    c.baseline.swarm_i1 = 10      # swarmsgd reference: interactions without averaging at the start of every cycle
    c.baseline.swarm_i2 = 20      # ... followed by this many that average

    c.graph = ml_collections.ConfigDict()
    c.graph.edge_probability = 0.5  # topology=erdos_renyi
    c.graph.torus_rows = 0          # topology=torus; 0 -> most square factorisation

    c.agents = ml_collections.ConfigDict()
    c.agents.strategy = "auto"    # auto | vmap | unrolled | map | chunked (see dimat_jax/agents.py)
    c.agents.conv_filter_grad = "auto"  # auto | xla | taps: conv filter gradients (dimat_jax/models/conv.py)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.devices = 1            # shard the agent axis over this many devices (0 = all); N must be divisible

    c.distributed = ml_collections.ConfigDict()  # several processes (hosts): jax.distributed
    c.distributed.enabled = False  # call jax.distributed.initialize (auto-detects TPU VMs and Slurm)
    c.distributed.coordinator = ""  # "host:port" of process 0 when not auto-detected
    c.distributed.num_processes = 0  # 0 = auto-detect
    c.distributed.process_id = -1   # -1 = auto-detect

    c.guard = ml_collections.ConfigDict()
    c.guard.divergence_factor = 100.0  # stop when an agent's mean training loss over an epoch exceeds this x ln K; 0 = off

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_rounds = 1  # save the full state every K rounds (and at the end); 0 = never
    c.checkpoint.keep = 2         # checkpoints kept in <workdir>/checkpoints

    c.runtime = ml_collections.ConfigDict()  # speed only: may change when a run is resumed
    c.runtime.compile_cache = "auto"  # JAX's on-disk cache of compiled programs: auto ($JAX_COMPILATION_CACHE_DIR,
    #                                   else ~/.cache/dimat_jax/xla) | a directory | off

    c.log = ml_collections.ConfigDict()
    c.log.progress = True         # tqdm progress bars
    c.log.plot = True             # write accuracy.png at the end
    c.log.tensorboard = False     # also write TensorBoard event files to <workdir>/tensorboard (pip install -e '.[tensorboard]')
    c.lock()
    return c


_CHOICES = {
    "dataset": DATASETS, "model": MODELS, "partition": PARTITIONS, "algorithm": ALGORITHMS,
    "topology": TOPOLOGIES + tuple(TOPOLOGY_ALIASES),
    "optimizer": OPTIMIZERS + tuple(OPTIMIZER_ALIASES), "pretrain.optimizer": OPTIMIZERS + tuple(OPTIMIZER_ALIASES),
    "data.normalization": NORMALIZATIONS, "data.augment": AUGMENTATIONS, "agents.strategy": STRATEGIES,
    "agents.conv_filter_grad": FILTER_GRADS,
    "merge_data": MERGE_DATA, "baseline.swarm_variant": SWARM_VARIANTS, "merge.basis": MERGE_BASES,
    "merge.rematch": REMATCH, "merge.compression": COMPRESSIONS,
}


def flatten(tree, sep: str = ".", prefix: str = "") -> dict:
    """A nested mapping (dict, ConfigDict) as ``{'a.b.c': leaf}`` (``sep`` joins the keys)."""
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(flatten(v, sep, f"{prefix}{k}{sep}"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def get_key(config, dotted: str):
    """``config.a.b`` for ``dotted`` = 'a.b' (KeyError when there is no such key)."""
    for part in dotted.split("."):
        config = config[part]
    return config


def set_key(config, dotted: str, value) -> None:
    """``config.a.b = value`` for ``dotted`` = 'a.b'; :class:`ConfigError` for an unknown key or a wrong type."""
    *parents, leaf = dotted.split(".")
    try:
        node = get_key(config, ".".join(parents)) if parents else config
        if leaf not in node:
            raise KeyError(leaf)
        node[leaf] = value
    except (KeyError, AttributeError) as e:
        hint = difflib.get_close_matches(dotted, dotted_keys(), n=1)
        raise ConfigError(f"unknown config key {dotted!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")) from e
    except TypeError as e:
        raise ConfigError(f"config key {dotted!r}: {e}") from e


def dotted_keys() -> list[str]:
    """Every key of the schema, dotted (``data.alpha``)."""
    return list(flatten(get_default_config()))


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check keys, types, allowed values and combinations; return the config or raise ConfigError."""
    defaults = flatten(get_default_config())
    given = flatten(config)
    for key in given:
        if key not in defaults:
            hint = difflib.get_close_matches(key, defaults, n=1)
            raise ConfigError(f"unknown config key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    for key, default in defaults.items():
        if key not in given:
            raise ConfigError(f"config lacks key {key!r}; build config files from "
                              "dimat_jax.config.get_default_config()")
        value = given[key]
        want = type(default)
        ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if want is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise ConfigError(f"config key {key!r} must be of type {want.__name__}, got {value!r}")
    for key, choices in _CHOICES.items():
        value = get_key(config, key)
        if value not in choices:
            raise ConfigError(f"config key {key!r} = {value!r} is not allowed; choose one of {', '.join(choices)}")

    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    c = config
    need(c.num_agents >= 1, f"num_agents must be >= 1, got {c.num_agents}")
    need(c.width > 0, f"width must be > 0, got {c.width}")
    need(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}")
    need(c.lr > 0 and c.pretrain.lr > 0, "lr and pretrain.lr must be > 0")
    need(c.rounds >= 0 and c.pretrain_epochs >= 0, "rounds and pretrain_epochs must be >= 0")
    need(c.local_epochs >= 1, f"local_epochs must be >= 1, got {c.local_epochs}")
    need(c.rounds > 0 or c.pretrain_epochs > 0, "nothing to do: rounds = 0 and pretrain_epochs = 0")
    need(not (c.pretrain.checkpoint and c.pretrain_epochs == 0),
         f"pretrain.checkpoint = {c.pretrain.checkpoint!r} is set but pretrain_epochs = 0; set pretrain_epochs to the "
         "number of epochs those agents were pre-trained for (it is checked against the checkpoint's settings)")
    need(0 < c.optim.lr_decay <= 1 and 0 < c.pretrain.lr_decay <= 1, "optim.lr_decay and pretrain.lr_decay must be in (0, 1]")
    need(0 <= c.optim.momentum < 1, f"optim.momentum must be in [0, 1), got {c.optim.momentum}")
    need(c.optim.weight_decay >= 0, "optim.weight_decay must be >= 0")
    need(c.data.eval_batch_size >= 1, "data.eval_batch_size must be >= 1")
    need(c.data.alpha > 0, f"data.alpha must be > 0, got {c.data.alpha}")
    need(c.data.classes_per_agent >= 1 and c.data.shards_per_agent >= 1,
         "data.classes_per_agent and data.shards_per_agent must be >= 1")
    need(c.data.steps_per_epoch >= 0 and c.data.max_train_examples >= 0 and c.data.max_test_examples >= 0,
         "data.steps_per_epoch, data.max_train_examples and data.max_test_examples must be >= 0")
    if c.dataset in ("npz", "tiny_imagenet"):
        need(bool(c.data_path), f"dataset {c.dataset!r} needs --config.data_path "
             + ("(an .npz with x_train, y_train, x_test, y_test)" if c.dataset == "npz"
                else "(the extracted tiny-imagenet-200 folder)"))
    need(c.data.train_subset >= 0 and c.data.test_subset >= 0, "data.train_subset and data.test_subset must be >= 0")
    need(not (c.data.train_subset and c.data.max_train_examples) and not (c.data.test_subset and c.data.max_test_examples),
         "data.train_subset (class-stratified) and data.max_train_examples (uniformly random) both pick a subset; "
         "set only one (likewise data.test_subset / data.max_test_examples)")
    need(c.data.pad_to >= 0, f"data.pad_to must be >= 0 (0 = no padding), got {c.data.pad_to}")
    need(c.data.channels in (0, 1, 3), f"data.channels must be 0 (the dataset's own), 1 or 3, got {c.data.channels}")
    need(c.data.num_classes >= 0, f"data.num_classes must be >= 0 (0 = infer), got {c.data.num_classes}")
    need(c.data.num_classes == 0 or c.dataset == "npz",
         f"data.num_classes applies to dataset 'npz' only ({c.dataset!r} knows its classes); leave it 0")
    need(c.seed >= 0, f"seed must be >= 0 (it seeds numpy and JAX generators), got {c.seed}")
    size = IMAGE_SIZES.get(c.dataset)
    if c.model == "vgg16" and size is not None and max(min(size), c.data.pad_to) < VGG_MIN_INPUT_SIZE:
        raise ConfigError(f"model 'vgg16' needs images of at least {VGG_MIN_INPUT_SIZE}x{VGG_MIN_INPUT_SIZE} but "
                          f"{c.dataset!r} images are {size[0]}x{size[1]}; use model 'cnn' or 'resnet20', or pad "
                          f"them with --config.data.pad_to={VGG_MIN_INPUT_SIZE}")
    if c.partition == "noniid" and c.algorithm != "centralized":
        classes = NUM_CLASSES.get(c.dataset)
        if classes is not None:
            need(c.num_agents <= classes, f"partition 'noniid' gives class c to agent c mod N, so num_agents "
                 f"= {c.num_agents} > {classes} classes of {c.dataset!r} leaves agents without data")
    need(c.merge.batch_size >= 1 and c.merge.num_batches >= 0 and c.merge.num_examples >= 0,
         "merge.batch_size >= 1, merge.num_batches >= 0, merge.num_examples >= 0")
    need(0 < c.baseline.lr, "baseline.lr must be > 0")
    need(0 <= c.baseline.momentum < 1 and 0 < c.baseline.lr_decay <= 1,
         "baseline.momentum must be in [0, 1) and baseline.lr_decay in (0, 1]")
    need(c.guard.divergence_factor >= 0, f"guard.divergence_factor must be >= 0 (0 = off), got {c.guard.divergence_factor}")
    need(c.mesh.devices >= 0, f"mesh.devices must be >= 0 (0 = all devices), got {c.mesh.devices}")
    if c.mesh.devices > 1:
        n = 1 if c.algorithm == "centralized" else c.num_agents
        need(n % c.mesh.devices == 0, f"num_agents = {n} is not divisible by mesh.devices = {c.mesh.devices}; "
             f"use a multiple of {c.mesh.devices} agents or a divisor of {n} devices")
    need(c.checkpoint.every_rounds >= 0 and c.checkpoint.keep >= 1,
         "checkpoint.every_rounds must be >= 0 and checkpoint.keep >= 1")
    need(c.baseline.cga_qp_iters >= 1 and c.merge.wm_max_sweeps >= 1, "baseline.cga_qp_iters, merge.wm_max_sweeps >= 1")
    need(c.baseline.swarm_i1 >= 0 and c.baseline.swarm_i2 >= 1,
         "baseline.swarm_i1 must be >= 0 and baseline.swarm_i2 >= 1 (swarmsgd averages in the last I2 of every I1 + I2 "
         "interactions)")
    if c.algorithm in MERGE_FAMILY or c.algorithm in TOPOLOGY_NEEDS:
        need(c.num_agents >= 2, f"algorithm {c.algorithm!r} needs num_agents >= 2 (use 'local' or 'centralized' for 1)")
    need(c.merge.probe_examples >= 1 and c.merge.rematch_threshold >= 0,
         "merge.probe_examples must be >= 1 and merge.rematch_threshold >= 0")
    need(0 < c.merge.topk_fraction <= 1, f"merge.topk_fraction must be in (0, 1], got {c.merge.topk_fraction}")
    need(0 < c.merge.edge_fraction <= 1, f"merge.edge_fraction must be in (0, 1], got {c.merge.edge_fraction}")
    need(0 <= c.merge.straggler_prob < 1, f"merge.straggler_prob must be in [0, 1), got {c.merge.straggler_prob}")
    if c.merge.rematch == "adaptive":
        need(c.merge.basis == "shared" and c.algorithm == "dimat",
             "merge.rematch='adaptive' skips matching once agents share a basis: it needs merge.basis='shared' and "
             "algorithm 'dimat' (with merge.basis='own' neighbours never share a basis)")
    if c.merge.compression != "none" or c.merge.basis != "own" or c.merge.edge_fraction < 1 or c.merge.straggler_prob:
        need(c.mesh.devices <= 1 and not c.distributed.enabled,
             "merge.basis / compression / edge_fraction / straggler_prob run on one device; set mesh.devices = 1")
        need(not c.merge.fc_shortcut, "merge.fc_shortcut (agent 0 merges for all) excludes merge.basis / compression / "
             "edge_fraction / straggler_prob")
    need(not (c.merge.compression == "topk" and (c.merge.edge_fraction < 1 or c.merge.straggler_prob)),
         "merge.compression='topk' sends changes against what every neighbour holds, so every agent must send every "
         "round: use it with merge.edge_fraction = 1 and merge.straggler_prob = 0")
    if c.merge.fc_shortcut:
        need(c.algorithm in MERGE_FAMILY and c.topology in ("fc", "fully_connected", "complete"),
             "merge.fc_shortcut applies to dimat / wa / wm on topology 'fc' only")
    if c.topology in ("file",):
        need(bool(c.topology_path), "topology 'file' needs --config.topology_path=/path/to/matrix")
    return config


def exec_python_file(path, kind: str, error=ConfigError):
    """The module of Python file ``path`` (a config or sweep file), executed; ``error`` (naming
    ``kind``) when the file does not exist."""
    import importlib.util
    import pathlib

    path = pathlib.Path(path)
    if not path.is_file():
        raise error(f"{kind} file {str(path)!r} not found")
    spec = importlib.util.spec_from_file_location(f"dimat_{kind}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, with optional ``{'data.alpha': 0.1, ...}`` overrides, validated.

    The Python-API equivalent of ``--config path --config.<key>=<value>`` (for notebooks and sweeps).
    """
    config = exec_python_file(path, "config").get_config()
    for dotted, value in (overrides or {}).items():
        set_key(config, dotted, value)
    return validate(config)
