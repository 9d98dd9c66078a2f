"""Partitions against hand-computed index lists and set identities (disjoint, covering)."""
import numpy as np
import pytest

from dimat_jax.data.partition import PARTITIONS, PartitionError, label_histograms, partition


def _assert_disjoint_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx)), "an example is given to two agents"
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def test_iid_faithful_hand_computed():
    #          0  1  2  3  4  5  6  7  8  9 10
    labels = [0, 1, 0, 2, 0, 1, 0, 1, 2, 2, 1]
    parts = partition(np.array(labels), 2, "iid", num_classes=3)
    # class 0 at [0, 2, 4, 6] -> [0, 2] | [4, 6]; class 1 at [1, 5, 7, 10] -> [1, 5] | [7, 10];
    # class 2 at [3, 8, 9] -> [3, 8] | [9]  (contiguous blocks, sizes differing by at most one)
    assert parts[0].tolist() == [0, 1, 2, 3, 5, 8]
    assert parts[1].tolist() == [4, 6, 7, 9, 10]


def test_iid_equal_blocks_when_divisible():
    labels = np.repeat(np.arange(10), 50)  # 50 per class, N = 5 -> 10 per class per agent
    parts = partition(labels, 5, "iid", num_classes=10)
    for a, p in enumerate(parts):
        assert len(p) == 100
        for c in range(10):
            expected = np.arange(c * 50 + a * 10, c * 50 + (a + 1) * 10)
            np.testing.assert_array_equal(p[labels[p] == c], expected)


def test_noniid_class_c_to_agent_c_mod_n():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 3)
    parts = partition(labels, 5, "noniid", num_classes=10)
    for a in range(5):
        assert sorted(set(labels[parts[a]].tolist())) == [a, a + 5]
        assert parts[a].tolist() == [i for i, y in enumerate(labels) if y % 5 == a]
    _assert_disjoint_cover(parts, len(labels))
    # CIFAR-100 with 5 agents: 20 classes each
    parts = partition(np.repeat(np.arange(100), 3), 5, "noniid", num_classes=100)
    assert all(len(set((np.repeat(np.arange(100), 3)[p]).tolist())) == 20 for p in parts)


@pytest.mark.parametrize("kind", PARTITIONS)
@pytest.mark.parametrize("n", [1, 3, 5])
def test_disjoint_and_covering(kind, n):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 600)
    parts = partition(labels, n, kind, num_classes=10, seed=3, classes_per_agent=4, alpha=0.5)
    assert len(parts) == n
    if kind == "k_classes" and 4 * n < 10:  # fewer owned classes than classes: disjoint, not covering
        allidx = np.concatenate(parts)
        assert len(allidx) == len(np.unique(allidx))
    else:
        _assert_disjoint_cover(parts, len(labels))
    for p in parts:
        assert np.all(np.diff(p) > 0)


def test_k_classes_each_agent_has_k_classes():
    labels = np.repeat(np.arange(10), 20)
    parts = partition(labels, 5, "k_classes", num_classes=10, classes_per_agent=2, seed=0)
    for p in parts:
        assert len(np.unique(labels[p])) == 2
    _assert_disjoint_cover(parts, len(labels))
    parts = partition(labels, 2, "k_classes", num_classes=10, classes_per_agent=3, seed=0)
    assert [len(np.unique(labels[p])) for p in parts] == [3, 3]
    assert sum(len(p) for p in parts) == 6 * 20  # the 4 unowned classes are unused


def test_shards_sizes_and_label_runs():
    labels = np.repeat(np.arange(10), 30)
    parts = partition(labels, 5, "shards", shards_per_agent=2, seed=0)
    for p in parts:
        assert len(p) == 60  # 300 examples / 10 shards * 2
        assert len(np.unique(labels[p])) <= 2  # shards of 30 sorted labels are single-class


def test_dirichlet_counts_seeded_and_skewed():
    labels = np.repeat(np.arange(10), 100)
    hist = label_histograms(labels, partition(labels, 4, "dirichlet", num_classes=10, alpha=0.1, seed=7), 10)
    np.testing.assert_array_equal(hist.sum(0), np.full(10, 100))  # every class fully distributed
    assert hist.sum() == 1000
    again = label_histograms(labels, partition(labels, 4, "dirichlet", num_classes=10, alpha=0.1, seed=7), 10)
    np.testing.assert_array_equal(hist, again)
    other = label_histograms(labels, partition(labels, 4, "dirichlet", num_classes=10, alpha=0.1, seed=8), 10)
    assert not np.array_equal(hist, other)
    # small alpha: each class is concentrated on few agents; large alpha: spread evenly
    top_share = (hist.max(0) / 100).mean()
    flat = label_histograms(labels, partition(labels, 4, "dirichlet", num_classes=10, alpha=1000.0, seed=7), 10)
    assert top_share > 0.6 > (flat.max(0) / 100).mean()
    parts = partition(labels, 4, "dirichlet", num_classes=10, alpha=0.1, seed=7, min_size=150)
    assert min(len(p) for p in parts) >= 150


def test_errors():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(PartitionError, match="noniid"):
        partition(labels, 11, "noniid", num_classes=10)
    with pytest.raises(PartitionError, match="alpha"):
        partition(labels, 3, "dirichlet", alpha=0.0)
    with pytest.raises(PartitionError, match="classes_per_agent"):
        partition(labels, 3, "k_classes", classes_per_agent=11)
    with pytest.raises(PartitionError, match="unknown partition"):
        partition(labels, 3, "iid_sorted")
    with pytest.raises(PartitionError, match="without any example"):
        partition(np.arange(3) % 3, 5, "iid_shuffled")
