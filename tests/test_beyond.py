"""Beyond the paper: merging into a shared basis, adaptive re-matching, partial merges and
compressed merge messages — against planted permutations, hand-built matrices and hand counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dimat_jax import report, topology, train
from dimat_jax.config import ConfigError, validate
from dimat_jax.data import sources
from dimat_jax.data.pipeline import Preprocess
from dimat_jax.merging import spec as S
from dimat_jax.merging.engine import Merger, merge_batches
from dimat_jax.merging.matching import universe_permutations
from dimat_jax.merging.neighbours import Neighbourhood
from dimat_jax.models import build_model, permutation_spec
from tiny_config import tiny_config


def stack(*trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def live_cnn():
    """A small CNN whose units all fire on the digits: BatchNorm statistics estimated on the data and
    every BatchNorm / fc1 bias shifted up, so each unit is a distinct, non-constant feature."""
    ds = sources.load("digits")
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max)
    m = build_model("cnn", 10, 0.5)
    v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    flat = S.flatten(v)
    for path in flat:
        if path.endswith("/bias") and ("/bn" in path or "/fc1/" in path):
            flat[path] = flat[path] + (1.0 if "/bn" in path else 10.0)
    v = S.unflatten(flat)
    merger = Merger(m, permutation_spec("cnn", v), pre)
    one = merger.reestimate_bn(stack(v), jnp.asarray(ds.x_train), np.arange(500).reshape(5, 1, 100))
    return m, jax.tree.map(lambda x: x[0], one)


# ------------------------------------------------------------------------------- shared basis
@pytest.mark.parametrize("name", ["erdos_renyi", "one_peer_exponential", "ring"])
def test_universe_permutations_undo_planted_ones_on_any_graph(name):
    """Agent a holds the model permuted by pi_a (pi_0 = identity). With the exact pairwise matchings
    (M aligning j to i is inv(pi_j)[pi_i]) every agent's universe permutation is inv(pi_a): all
    land in agent 0's basis, whatever the tree, for undirected and directed graphs."""
    n, c = 8, 6
    w = topology.build(name, n, seed=2, edge_probability=0.4).matrix(0)
    hood = Neighbourhood.from_matrix(w)
    rng = np.random.default_rng(0)
    pis = [np.arange(c)] + [rng.permutation(c) for _ in range(n - 1)]
    perms = {"P": np.zeros((n, hood.num_slots, c), np.int32)}
    for i, j, k in hood.edges():
        perms["P"][i, k] = S.invert(pis[j])[pis[i]]
    u = universe_permutations(hood, perms, {"P": c})["P"]
    reached = {0} | {j for i, j, _ in hood.edges()} | {i for i, j, _ in hood.edges()}
    for a in range(n):
        if a in reached and topology.is_connected(np.maximum(w, w.T)):
            np.testing.assert_array_equal(pis[a][u[a]], np.arange(c))


@pytest.mark.parametrize("data", ["global", "local"])
def test_shared_basis_merge_of_permuted_copies_returns_the_root_model_everywhere(data):
    """Five permuted copies of one model on a ring: with basis='shared' every agent ends up with
    agent 0's parameters exactly (one common basis); with basis='own' each keeps its own basis."""
    ds = sources.load("digits")
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max)
    m, v = live_cnn()
    spec = permutation_spec("cnn", v)
    copies = [v] + [S.permute(v, spec, S.random_permutations(spec, jax.random.PRNGKey(10 + a))) for a in range(1, 5)]
    hood = Neighbourhood.from_matrix(topology.build("ring", 5).matrix())
    merger = Merger(m, spec, pre)
    batches = merge_batches([np.arange(a, 1400, 5) for a in range(5)], data, 100, 2)
    kw = dict(shared_data=data == "global", reestimate_before=False, reestimate_after=False)
    shared, info = merger.merge(stack(*copies), hood, jnp.asarray(ds.x_train), batches, basis="shared", **kw)
    for a in range(5):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x[a], y, atol=1e-5), shared, v)
    own, _ = merger.merge(stack(*copies), hood, jnp.asarray(ds.x_train), batches, basis="own", **kw)
    for a in range(1, 5):  # agent a: a's own basis, i.e. its own (permuted) copy
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x[a], y, atol=1e-5), own, copies[a])
    assert set(info.universe) == set(spec.perms)


def test_alignment_gain_is_zero_in_a_shared_basis_and_positive_otherwise():
    ds = sources.load("digits")
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max)
    m, v = live_cnn()
    spec = permutation_spec("cnn", v)
    hood = Neighbourhood.from_matrix(topology.build("ring", 3).matrix())
    merger = Merger(m, spec, pre)
    batches = merge_batches([np.arange(a, 900, 3) for a in range(3)], "local", 64, 1)
    x = jnp.asarray(ds.x_train)
    aligned = stack(*[jax.tree.map(lambda t: t + 0.01 * a, v) for a in range(3)])  # near copies, one basis
    gain, gflops = merger.alignment_gain(aligned, hood, x, batches)
    assert abs(gain) < 0.01 and gflops > 0  # noise only (the default threshold is 0.1)
    permuted = stack(v, *[S.permute(v, spec, S.random_permutations(spec, jax.random.PRNGKey(a))) for a in (1, 2)])
    assert merger.alignment_gain(permuted, hood, x, batches)[0] > 0.3


def test_adaptive_rematching_skips_the_matching_while_bases_stay_aligned(tmp_path):
    c = tiny_config(algorithm="dimat", num_agents=3, rounds=3, merge__basis="shared", merge__rematch="adaptive",
                    merge__rematch_threshold=1.0, merge__probe_examples=32,  # any gain below 1: never re-match after the first merge
                    merge__num_batches=4)  # merge passes of 4 x 32 examples, the probe on 32
    train.run(c, tmp_path / "w", log=lambda s: None)
    merged = [r for r in report.read_metrics(tmp_path / "w") if r["phase"] == "merged"]
    assert [r["merge_matched"] for r in merged] == [True, False, False]
    assert merged[0]["merge_data_passes"] == 2 and merged[1]["merge_data_passes"] == 1  # statistics + BN after; BN after only
    assert all(r["merge_gflops"] < merged[0]["merge_gflops"] for r in merged[1:])
    assert "merge_probe_gain" in merged[1] and "merge_probe_gain" not in merged[0]
    c = tiny_config(algorithm="dimat", num_agents=3, rounds=2, merge__basis="shared", merge__rematch="always")
    train.run(c, tmp_path / "a", log=lambda s: None)
    assert all(r["merge_matched"] for r in report.read_metrics(tmp_path / "a") if r["phase"] == "merged")
    train.run(tiny_config(algorithm="wa", num_agents=3, rounds=1), tmp_path / "wa", log=lambda s: None)
    assert [r["merge_matched"] for r in report.read_metrics(tmp_path / "wa") if r["phase"] == "merged"] == [False]


# ------------------------------------------------------------------------------- partial merges
def test_dropped_edges_keep_pi_doubly_stochastic():
    rng = np.random.default_rng(0)
    for name in ("ring", "fc", "torus", "erdos_renyi"):
        w = topology.build(name, 9, seed=1).matrix()
        for frac, strag in ((0.5, 0.0), (1.0, 0.3), (0.3, 0.2)):
            p = topology.drop_edges(w, frac, strag, rng)
            np.testing.assert_allclose(p.sum(0), 1)
            np.testing.assert_allclose(p.sum(1), 1)
            np.testing.assert_allclose(p, p.T)
            assert np.all(p >= 0) and np.all((p > 0) <= (w > 0) | np.eye(9, dtype=bool))  # only edges removed
            off = ~np.eye(9, dtype=bool)
            kept = (p > 0) & off
            np.testing.assert_allclose(p[kept], w[kept])  # the kept edges keep their weights
    np.testing.assert_array_equal(topology.drop_edges(w, 1.0, 0.0, rng), w)
    w = topology.build("fc", 20).matrix()
    kept = np.mean([((topology.drop_edges(w, 0.3, 0.0, rng) > 0) & ~np.eye(20, dtype=bool)).sum() / 380
                    for _ in range(30)])
    assert kept == pytest.approx(0.3, abs=0.03)
    p = topology.drop_edges(w, 1.0, 0.5, np.random.default_rng(3))
    stragglers = [a for a in range(20) if np.isclose(p[a, a], 1.0)]
    assert stragglers and all(np.allclose(p[a], np.eye(20)[a]) for a in stragglers)


def test_partial_merges_count_only_the_edges_used(tmp_path):
    c = tiny_config(algorithm="wa", num_agents=5, topology="fc", rounds=3, merge__edge_fraction=0.5)
    train.run(c, tmp_path / "w", log=lambda s: None)
    recs = [r for r in report.read_metrics(tmp_path / "w") if r["phase"] == "merged"]
    total, before = 0, 0
    for r in recs:
        total += r["merge_edges"]
        assert r["messages_sent_total"] - before == r["merge_edges"]  # one message per directed edge used
        before = r["messages_sent_total"]
    assert 0 < total < 3 * 20


# ------------------------------------------------------------------------------- compression
@pytest.mark.parametrize("compression", ["bf16", "int8", "topk"])
def test_compressed_merges_count_compressed_bytes(tmp_path, compression):
    c = tiny_config(algorithm="dimat", num_agents=3, rounds=3, merge__compression=compression,
                    merge__topk_fraction=0.25)
    train.run(c, tmp_path / "w", log=lambda s: None)
    recs = [r for r in report.read_metrics(tmp_path / "w") if r["phase"] == "merged"]
    m = build_model("cnn", 10, 0.25)
    v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
    leaves = jax.tree.leaves(v)
    values = sum(int(np.prod(x.shape)) for x in leaves)
    channels = sum(int(x.shape[-1]) if x.ndim > 1 else 1 for x in leaves)
    k = sum(max(1, round(0.25 * int(np.prod(x.shape)))) for x in leaves)
    per_message = {"bf16": [2 * values] * 3, "int8": [values + 4 * channels] * 3,
                   "topk": [4 * values, 8 * k, 8 * k]}[compression]  # topk: the first message dense
    before = 0
    for r, nbytes in zip(recs, per_message):
        assert r["bytes_sent_total"] - before == 6 * nbytes  # 3 agents on a ring: 6 messages a merge
        before = r["bytes_sent_total"]
    assert all(np.isfinite(r["mean_test_loss"]) for r in recs)


def test_beyond_the_paper_options_are_checked():
    for kw, message in (({"merge__rematch": "adaptive"}, "needs merge.basis='shared'"),
                        ({"merge__edge_fraction": 0.0}, "edge_fraction"),
                        ({"merge__compression": "topk", "merge__edge_fraction": 0.5}, "every agent must send"),
                        ({"merge__compression": "gzip"}, "merge.compression"),
                        ({"merge__basis": "shared", "mesh__devices": 2, "num_agents": 4}, "one device")):
        with pytest.raises(ConfigError, match=message):
            validate(tiny_config(algorithm="dimat", **kw))
