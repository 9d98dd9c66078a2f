"""Split a training set across agents. Every function returns one sorted index array per agent.

Faithful to the reference (docs/algorithm.md §5):
- ``iid``: each class's examples, in dataset order, are cut into N contiguous blocks (sizes differ
  by at most one when the count is not divisible by N); agent k gets block k of every class.
- ``noniid``: class c goes entirely to agent c mod N.
Ours (seeded):
- ``iid_shuffled``: a random permutation of all examples cut into N near-equal blocks.
- ``k_classes``: after a seeded shuffle of the class order, agent i owns classes
  (i*k + j) mod K for j < k; each class is split evenly (randomly) among its owners.
- ``shards``: sort by label, cut into N*s equal shards, give each agent s random shards.
- ``dirichlet``: per class c, proportions p_c ~ Dir(alpha * 1_N) over agents split c's shuffled
  examples ("per-class proportions over agents"); redrawn until every agent holds at least
  ``min_size`` examples.
"""
from __future__ import annotations

import numpy as np
from dimat_jax.choices import PARTITIONS  # noqa: F401  (re-exported)



class PartitionError(ValueError):
    """A partition cannot be built for this dataset / agent count; the message says why."""


def partition(labels: np.ndarray, num_agents: int, kind: str, *, num_classes: int | None = None,
              seed: int = 0, alpha: float = 0.5, classes_per_agent: int = 2, shards_per_agent: int = 2,
              min_size: int = 1) -> list[np.ndarray]:
    """Indices of ``labels`` (shape [n]) owned by each of ``num_agents`` agents."""
    labels = np.asarray(labels)
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    if num_agents < 1:
        raise PartitionError(f"num_agents must be >= 1, got {num_agents}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9A27]))
    if kind == "iid":
        parts = _iid(labels, num_agents, k)
    elif kind == "noniid":
        if num_agents > k:
            raise PartitionError(f"partition 'noniid' gives class c to agent c mod N, so N = {num_agents} "
                                 f"agents with {k} classes leaves agents without data; use N <= {k} "
                                 "or partition 'k_classes' / 'dirichlet'")
        parts = [np.flatnonzero(labels % num_agents == a) for a in range(num_agents)]
    elif kind == "iid_shuffled":
        parts = np.array_split(rng.permutation(len(labels)), num_agents)
    elif kind == "k_classes":
        parts = _k_classes(labels, num_agents, k, classes_per_agent, rng)
    elif kind == "shards":
        parts = _shards(labels, num_agents, shards_per_agent, rng)
    elif kind == "dirichlet":
        parts = _dirichlet(labels, num_agents, k, alpha, min_size, rng)
    else:
        raise PartitionError(f"unknown partition {kind!r}; choose one of {', '.join(PARTITIONS)}")
    parts = [np.sort(np.asarray(p, np.int64)) for p in parts]
    empty = [a for a, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise PartitionError(f"partition {kind!r} leaves agent(s) {empty} without any example "
                             f"({len(labels)} examples, {num_agents} agents); use fewer agents or more data")
    return parts


def _iid(labels, n, k):
    parts = [[] for _ in range(n)]
    for c in range(k):
        for a, block in enumerate(np.array_split(np.flatnonzero(labels == c), n)):
            parts[a].append(block)
    return [np.concatenate(p) for p in parts]


def _k_classes(labels, n, k, per_agent, rng):
    if not 1 <= per_agent <= k:
        raise PartitionError(f"data.classes_per_agent must be in 1..{k} (number of classes), got {per_agent}")
    order = rng.permutation(k)
    owners = {c: [] for c in range(k)}
    for a in range(n):
        for j in range(per_agent):
            owners[int(order[(a * per_agent + j) % k])].append(a)
    parts = [[] for _ in range(n)]
    for c, own in owners.items():
        if not own:
            continue  # class unused when N * k < K
        for a, block in zip(own, np.array_split(rng.permutation(np.flatnonzero(labels == c)), len(own))):
            parts[a].append(block)
    return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]


def _shards(labels, n, per_agent, rng):
    total = n * per_agent
    if total > len(labels):
        raise PartitionError(f"partition 'shards' needs num_agents * data.shards_per_agent = {total} "
                             f"<= {len(labels)} examples")
    sorted_idx = np.argsort(labels, kind="stable")
    shards = np.array_split(sorted_idx, total)
    pick = rng.permutation(total)
    return [np.concatenate([shards[s] for s in pick[a * per_agent:(a + 1) * per_agent]]) for a in range(n)]


def _dirichlet(labels, n, k, alpha, min_size, rng, max_tries=1000):
    if alpha <= 0:
        raise PartitionError(f"data.alpha (Dirichlet concentration) must be > 0, got {alpha}")
    if n * min_size > len(labels):
        raise PartitionError(f"cannot give {n} agents at least {min_size} examples each from {len(labels)}")
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(k)]
    for _ in range(max_tries):
        parts = [[] for _ in range(n)]
        for idx in by_class:
            p = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for a, block in enumerate(np.split(idx, cuts)):
                parts[a].append(block)
        parts = [np.concatenate(p) for p in parts]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise PartitionError(f"Dirichlet(alpha={alpha}) did not give every agent >= {min_size} examples in "
                         f"{max_tries} draws; raise data.alpha or lower data.min_agent_examples")


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """[N, K] count of each class held by each agent."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def class_quotas(counts, total: int, balanced: bool = False) -> np.ndarray:
    """How many of ``total`` examples to take from each class with ``counts`` [K] available.

    ``balanced=False`` (stratified): proportional to the counts, remainders to the largest
    fractional parts. ``balanced=True``: as equal as the counts allow (classes with fewer examples
    give all they have; the rest is shared among the others). Never more than a class holds; the
    quotas sum to ``min(total, counts.sum())``.
    """
    counts = np.asarray(counts, np.int64)
    total = int(min(total, counts.sum()))
    if balanced:
        quota = np.zeros_like(counts)
        left = total
        open_ = counts > 0
        while left > 0 and open_.any():
            share = left // open_.sum()
            if share == 0:  # fewer examples left than open classes: one more each to the fullest classes
                order = np.argsort(-(counts - quota) * open_, kind="stable")[:left]
                quota[order] += 1
                break
            give = np.where(open_, np.minimum(share, counts - quota), 0)
            quota += give
            left -= int(give.sum())
            open_ = counts > quota
        return quota
    exact = counts * (total / max(1, counts.sum()))
    quota = np.floor(exact).astype(np.int64)
    rest = total - int(quota.sum())
    order = np.argsort(-(exact - quota), kind="stable")[:rest]
    quota[order] += 1
    return quota


def class_sample(labels: np.ndarray, total: int, rng: np.random.Generator, balanced: bool = False) -> np.ndarray:
    """Sorted positions of a seeded sample of ``total`` examples of ``labels`` [n], stratified by
    class (``balanced``: as class-balanced as the data allows; see :func:`class_quotas`)."""
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    quota = class_quotas(np.bincount(inverse, minlength=len(classes)), total, balanced)
    picks = [rng.choice(np.flatnonzero(inverse == c), q, replace=False) for c, q in enumerate(quota) if q]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)

