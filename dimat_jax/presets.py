"""The reference experiments' settings, for ``configs/paper/<algorithm>.py``.

A setting string ``<dataset>-<model>-<topology>-<partition>-<agents>`` picks the experiment:
dataset ``cifar100`` | ``cifar10`` | ``tiny_imagenet``; model ``resnet20x8`` | ``vgg16``; topology
``ring`` | ``fc``; partition ``iid`` | ``noniid``; agents ``5`` | ``10`` | ``20``. Example:
``--config configs/paper/dimat.py:cifar10-vgg16-fc-noniid-10``.

Faithful to the reference: 100 pre-training epochs (Adam 1e-3, batch 100); DIMAT-family T = 100
merges with E = 2 epochs of Adam 1e-3 (fresh each iteration) in between, merge statistics and
BatchNorm re-estimation on the whole augmented training set (``merge_data='global'``,
``merge.augment``), BatchNorm left in cumulative-average mode after a DIMAT merge (WA and WM keep
the usual moving average), the fully connected shortcut; WA without BatchNorm re-estimation;
baselines SGD lr 0.01, momentum 0.9, lr x 0.981 per epoch for 200 epochs, logged every 2 epochs,
trained with BatchNorm in inference mode (the reference's quirk); SwarmSGD's reference variant;
the reference's CIFAR-100 normalisation constants. These are GPU/TPU-sized runs
(docs/algorithm.md §7 lists where the reference code differs from ours).
"""
from __future__ import annotations

from dimat_jax.config import ConfigError, get_default_config

DATASETS = ("cifar100", "cifar10", "tiny_imagenet")
MODELS = {"resnet20x8": ("resnet20", 8.0), "vgg16": ("vgg16", 1.0)}
TOPOLOGIES = ("ring", "fc")
PARTITIONS = ("iid", "noniid")
AGENTS = (5, 10, 20)


def parse(setting: str) -> tuple[str, str, str, str, int]:
    parts = setting.split("-")
    if len(parts) != 5:
        raise ConfigError(f"paper setting {setting!r} must be <dataset>-<model>-<topology>-<partition>-<agents>, "
                          "e.g. cifar100-resnet20x8-ring-iid-5")
    dataset, model, topo, part, n = parts
    for value, allowed, what in ((dataset, DATASETS, "dataset"), (model, tuple(MODELS), "model"),
                                 (topo, TOPOLOGIES, "topology"), (part, PARTITIONS, "partition")):
        if value not in allowed:
            raise ConfigError(f"paper setting {what} {value!r} is not one of {', '.join(allowed)}")
    if not n.isdigit() or int(n) not in AGENTS:
        raise ConfigError(f"paper setting agents {n!r} is not one of {', '.join(map(str, AGENTS))}")
    return dataset, model, topo, part, int(n)


def paper(algorithm: str, setting: str = "cifar100-resnet20x8-ring-iid-5"):
    dataset, model, topo, part, n = parse(setting)
    c = get_default_config()
    c.algorithm = algorithm
    c.dataset = dataset
    c.model, c.width = MODELS[model]
    c.topology = topo
    c.partition = part
    c.num_agents = n
    c.seed = 0
    c.batch_size = 100
    c.data.normalization = "reference"
    c.data.eval_batch_size = 1000
    c.pretrain_epochs = 100
    c.pretrain.optimizer, c.pretrain.lr = "adam", 1e-3
    c.pretrain.cache_dir = "runs/pretrained"
    c.local_epochs = 2
    c.rounds = 100  # DIMAT: 100 merges; baselines: 200 epochs logged every 2
    c.optimizer, c.lr = "adam", 1e-3
    c.merge_data = "global"
    c.merge.augment = True
    c.merge.batch_size = 100
    c.merge.num_examples, c.merge.bn_before = 0, True  # full passes, BatchNorm re-estimated before matching
    c.merge.bn_cumulative = algorithm == "dimat"  # only DIMAT's path; the reference's WA / WM keep the EMA
    c.merge.fc_shortcut = topo == "fc" and algorithm in ("dimat", "wa", "wm")
    c.merge.bn_after = algorithm != "wa"
    c.baseline.lr, c.baseline.momentum, c.baseline.lr_decay = 0.01, 0.9, 0.981
    c.baseline.bn_frozen = True
    c.baseline.swarm_variant, c.baseline.swarm_i1, c.baseline.swarm_i2 = "reference", 10, 20
    return c
