"""Data layer: sources, partitions across agents, batching and on-device preprocessing."""
from __future__ import annotations

import dataclasses

import numpy as np

from dimat_jax.data.partition import PARTITIONS, PartitionError, label_histograms, partition
from dimat_jax.data.pipeline import AUGMENTATIONS, Preprocess, epoch_batches, steps_per_epoch
from dimat_jax.data.sources import DATASETS, DataError, Dataset, load

__all__ = ["AUGMENTATIONS", "DATASETS", "PARTITIONS", "AgentData", "DataError", "Dataset", "PartitionError",
           "Preprocess", "epoch_batches", "label_histograms", "load", "partition", "prepare", "steps_per_epoch"]


@dataclasses.dataclass(frozen=True)
class AgentData:
    """A dataset split across agents, with its preprocessing recipe."""
    dataset: Dataset
    shards: list          # one sorted int array of training-set indices per agent
    preprocess: Preprocess

    @property
    def num_agents(self) -> int:
        return len(self.shards)

    def histograms(self) -> np.ndarray:
        """[N, K] label counts per agent."""
        return label_histograms(self.dataset.y_train, self.shards, self.dataset.num_classes)

    def class_ceiling(self) -> np.ndarray:
        """[N] share of the test set whose class the agent has seen in training: the best test
        accuracy a model trained only on that agent's classes can reach."""
        seen = self.histograms() > 0
        test_counts = np.bincount(self.dataset.y_test, minlength=self.dataset.num_classes)
        return (seen * test_counts).sum(1) / max(1, len(self.dataset.y_test))


def _subsample(x, y, limit, seed):
    if limit <= 0 or limit >= len(y):
        return x, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
    return x[keep], y[keep]


def prepare(config, dataset: Dataset | None = None) -> AgentData:
    """Load ``config.dataset`` (unless given), subsample if asked, and partition it over agents.

    ``config.algorithm == 'centralized'`` gives a single "agent" that holds the whole training set.
    """
    d = config.data
    if dataset is None:
        dataset = load(config.dataset, data_path=config.data_path, data_dir=d.data_dir,
                       normalization_flavour=d.normalization)
    xtr, ytr = _subsample(dataset.x_train, dataset.y_train, d.max_train_examples, config.seed)
    xte, yte = _subsample(dataset.x_test, dataset.y_test, d.max_test_examples, config.seed + 1)
    dataset = dataclasses.replace(dataset, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    if config.algorithm == "centralized":
        shards = [np.arange(len(ytr))]
    else:
        shards = partition(ytr, config.num_agents, config.partition, num_classes=dataset.num_classes,
                           seed=config.seed, alpha=d.alpha, classes_per_agent=d.classes_per_agent,
                           shards_per_agent=d.shards_per_agent, min_size=d.min_agent_examples)
    kind = dataset.augment if d.augment == "auto" else d.augment
    padding = dataset.crop_padding if d.crop_padding < 0 else d.crop_padding
    preprocess = Preprocess(dataset.mean, dataset.std, dataset.pixel_max, kind, padding)
    return AgentData(dataset=dataset, shards=shards, preprocess=preprocess)
