"""Data layer: sources, partitions across agents, batching and on-device preprocessing."""
from __future__ import annotations

import dataclasses

import numpy as np

from dimat_jax.data.partition import PARTITIONS, PartitionError, class_sample, label_histograms, partition
from dimat_jax.data.pipeline import AUGMENTATIONS, Preprocess, epoch_batches, steps_per_epoch
from dimat_jax.data.sources import DATASETS, DataError, Dataset, load, pad_images, with_channels

__all__ = ["AUGMENTATIONS", "DATASETS", "PARTITIONS", "AgentData", "DataError", "Dataset", "PartitionError",
           "Preprocess", "epoch_batches", "label_histograms", "load", "partition", "prepare", "reshape_images",
           "steps_per_epoch"]


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


def _subsample(x, y, limit, seed, stratified: bool = False):
    """A seeded subset of ``limit`` examples (all when ``limit`` is 0 or too large): uniformly random,
    or ``stratified`` by class (the class proportions kept)."""
    if limit <= 0 or limit >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    keep = class_sample(y, limit, rng) if stratified else np.sort(rng.permutation(len(y))[:limit])
    return x[keep], y[keep]


def reshape_images(dataset: Dataset, pad_to: int = 0, channels: int = 0) -> Dataset:
    """``dataset`` with images zero-padded to ``pad_to`` x ``pad_to`` and grey repeated to ``channels``
    (0 = leave as they are), e.g. 28x28x1 Fashion-MNIST in the 32x32x3 layout of CIFAR models."""
    if pad_to:
        dataset = dataclasses.replace(dataset, x_train=pad_images(dataset.x_train, pad_to),
                                      x_test=pad_images(dataset.x_test, pad_to))
    return with_channels(dataset, channels) if channels else dataset


def prepare(config, dataset: Dataset | None = None) -> AgentData:
    """Load ``config.dataset`` (unless given), subsample if asked, and partition it over agents.

    ``config.algorithm == 'centralized'`` gives a single "agent" that holds the whole training set.
    """
    d = config.data
    if dataset is None:
        dataset = load(config.dataset, data_path=config.data_path, data_dir=d.data_dir,
                       normalization_flavour=d.normalization, num_classes=d.num_classes)
    xtr, ytr = _subsample(dataset.x_train, dataset.y_train, d.max_train_examples, config.seed)
    xte, yte = _subsample(dataset.x_test, dataset.y_test, d.max_test_examples, config.seed + 1)
    xtr, ytr = _subsample(xtr, ytr, d.train_subset, config.seed + 2, stratified=True)
    xte, yte = _subsample(xte, yte, d.test_subset, config.seed + 3, stratified=True)
    dataset = reshape_images(dataclasses.replace(dataset, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte),
                             d.pad_to, d.channels)
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
