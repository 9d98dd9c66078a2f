"""Mixing matrices against hand-computed ones, the reference ring gaps, and validation."""
import numpy as np
import pytest

from dimat_jax import topology
from dimat_jax.topology import TopologyError


def test_fc_and_ring_hand_computed():
    np.testing.assert_allclose(topology.build("fc", 4).matrix(), np.full((4, 4), 0.25))
    t = 1 / 3
    expected = np.array([[t, t, 0, 0, t], [t, t, t, 0, 0], [0, t, t, t, 0], [0, 0, t, t, t], [t, 0, 0, t, t]])
    np.testing.assert_allclose(topology.build("ring", 5).matrix(), expected)
    np.testing.assert_allclose(topology.build("ring", 2).matrix(), np.full((2, 2), 0.5))  # rows sum to 1


@pytest.mark.parametrize("n,rho", [(5, 0.539), (10, 0.873), (20, 0.967)])
def test_reference_ring_spectral_gaps(n, rho):
    s = topology.build("ring", n).summary()
    assert s["rho"] == pytest.approx(rho, abs=5e-4)
    assert s["spectral_gap"] == pytest.approx(1 - rho, abs=5e-4)


def test_bipartite_hand_computed():
    # N = 5: a = floor(100/4)/100 = 0.25; leaves 0..2 self 0.5; hubs 3, 4 self 1 - 3 * 0.25 = 0.25
    w = topology.build("bipartite", 5).matrix()
    expected = np.array([[.5, 0, 0, .25, .25], [0, .5, 0, .25, .25], [0, 0, .5, .25, .25],
                         [.25, .25, .25, .25, 0], [.25, .25, .25, 0, .25]])
    np.testing.assert_allclose(w, expected)
    w = topology.build("bipartite", 10).matrix()  # a = floor(100/9)/100 = 0.11
    assert w[0, 8] == pytest.approx(0.11) and w[0, 0] == pytest.approx(0.78) and w[9, 9] == pytest.approx(0.12)


def test_torus_exponential_disconnected():
    w = topology.build("torus", 6).matrix()  # 2 x 3 torus: up/down coincide -> 3 neighbours
    assert np.count_nonzero(w[0]) == 4 and np.allclose(w[w > 0], 0.25)
    assert set(np.flatnonzero(w[0])) == {0, 1, 2, 3}
    w = topology.build("exponential", 8).matrix()  # offsets ±1, ±2, ±4 -> 6 neighbours... ±4 coincide: 5
    assert set(np.flatnonzero(w[0])) == {0, 1, 2, 4, 6, 7} and np.allclose(w[w > 0], 1 / 6)
    np.testing.assert_array_equal(topology.build("disconnected", 3).matrix(), np.eye(3))


def test_erdos_renyi_connected_doubly_stochastic_seeded():
    a = topology.build("erdos_renyi", 12, seed=3, edge_probability=0.3).matrix()
    np.testing.assert_allclose(a.sum(0), 1)
    np.testing.assert_allclose(a.sum(1), 1)
    np.testing.assert_allclose(a, a.T)
    assert topology.is_connected(a)
    np.testing.assert_array_equal(a, topology.build("erdos_renyi", 12, seed=3, edge_probability=0.3).matrix())
    # Metropolis–Hastings weight on an edge: 1 / (1 + max degree)
    deg = (a > 0).sum(1) - 1
    i, j = np.argwhere(np.triu(a, 1) > 0)[0]
    assert a[i, j] == pytest.approx(1 / (1 + max(deg[i], deg[j])))


def test_one_peer_exponential_is_exact_averaging_for_powers_of_two():
    t = topology.build("one_peer_exponential", 8)
    assert t.time_varying and t.period == 3 and not t.symmetric
    for m in t.matrices:
        np.testing.assert_allclose(m.sum(0), 1)
        assert np.count_nonzero(m[0]) == 2
    np.testing.assert_allclose(t.period_product(), np.full((8, 8), 1 / 8), atol=1e-12)
    assert t.rho() == pytest.approx(0, abs=1e-9)


def test_file_topology(tmp_path):
    f = tmp_path / "w.csv"
    f.write_text("0.5,0.5,0\n0.5,0.25,0.25\n0,0.25,0.75\n")
    np.testing.assert_allclose(topology.build("file", 3, path=str(f)).matrix()[1], [0.5, 0.25, 0.25])
    np.save(tmp_path / "w.npy", np.eye(3))
    with pytest.raises(TopologyError, match="is 3x3 but num_agents = 4"):
        topology.build("file", 4, path=str(tmp_path / "w.npy"))


@pytest.mark.parametrize("w,message", [
    (np.ones((2, 3)) / 3, "square"),
    (np.array([[1.5, -0.5], [0.5, 0.5]]), "negative"),
    (np.array([[2 / 3, 0], [0, 2 / 3]]) + np.array([[0, 1 / 3], [1 / 3, 0]]) * 0, "row 0 sums to 0.666667"),
    (np.array([[1, 0, 0], [0, 0.5, 0.5], [0, 0.5, 0.5]]), "disconnected"),
    (np.array([[np.nan, 1], [0.5, 0.5]]), "non-finite"),
])
def test_invalid_matrices_rejected(w, message):
    with pytest.raises(TopologyError, match=message):
        topology.validate(w)


def test_symmetry_and_double_stochasticity_when_required():
    w = np.array([[0.5, 0.5, 0], [0.25, 0.5, 0.25], [0, 0.5, 0.5]])  # row-stochastic only
    topology.validate(w)
    with pytest.raises(TopologyError, match="symmetric"):
        topology.validate(w, require_symmetric=True)
    with pytest.raises(TopologyError, match="doubly stochastic"):
        topology.validate(w, require_doubly_stochastic=True)


def test_impossible_topologies():
    with pytest.raises(TopologyError, match="bipartite"):
        topology.build("bipartite", 2)
    with pytest.raises(TopologyError, match="unknown topology"):
        topology.build("star", 4)
    with pytest.raises(TopologyError, match="torus_rows"):
        topology.build("torus", 6, torus_rows=4)
