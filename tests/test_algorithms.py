"""Baselines' update equations against numpy, the CGA QP against an exact solver, SwarmSGD pair
averaging, communication counters against hand counts, and the shared pre-trained start."""
import itertools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from dimat_jax import agents, comms, report, train
from dimat_jax.algorithms.gossip import (MomentumState, NoState, PushSumState, init_opt_state, make_gossip_step,
                                         solve_box_qp)
from dimat_jax.algorithms.swarm import make_swarm_step, undirected_edges
from tiny_config import tiny_config
from dimat_jax.data import sources
from dimat_jax.data.pipeline import Preprocess
from dimat_jax.merging.neighbours import Neighbourhood
from dimat_jax.models import build_model

N, B = 4, 8
# doubly stochastic, not symmetric
W_DS = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.25, 0.25], [0.25, 0.0, 0.5, 0.25], [0.25, 0.0, 0.25, 0.5]])
# column-stochastic only (push-sum)
W_COL = np.array([[0.5, 0.0, 0.0, 1 / 3], [0.5, 0.5, 0.0, 1 / 3], [0.0, 0.5, 0.6, 0.0], [0.0, 0.0, 0.4, 1 / 3]])


@pytest.fixture(scope="module")
def setup():
    ds = sources.load("digits")
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max)  # no augmentation: the oracle recomputes gradients
    model = build_model("cnn", 10, 0.25)
    v = agents.init_variables(model, (8, 8, 1), N, seed=3)
    idx = np.arange(N * B, dtype=np.int32).reshape(N, B)
    return ds, pre, model, v, idx


def grads_of(model, pre, params, stats, ds, idx):
    """Oracle gradients per agent (and per extra batch), computed one model at a time."""
    fn = agents.make_agent_grads(model, pre)
    g, _, _, _ = fn(params, stats, jnp.asarray(ds.x_train[idx]), jnp.asarray(ds.y_train[idx]), jax.random.PRNGKey(0))
    return jax.tree.map(lambda x: np.asarray(x, np.float64), g)


def agent(tree, a):
    return jax.tree.map(lambda x: x[a], tree)


def flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def stacked_flat(tree):
    return np.stack([flat(agent(tree, a)) for a in range(N)])


def run_one_step(kind, setup, w, lr=0.1, opt_state=None, **kw):
    ds, pre, model, v, idx = setup
    v = jax.tree.map(jnp.copy, v)  # the step donates its state
    state = agents.AgentState(params=v["params"], batch_stats=v["batch_stats"],
                              opt_state=opt_state if opt_state is not None else init_opt_state(kind, v["params"]))
    step = make_gossip_step(model, pre, kind, momentum=0.9, **kw)
    args = ()
    if kind == "cga":
        hood = Neighbourhood.from_matrix(w)
        args = (jnp.asarray(hood.nbr), jnp.asarray(hood.weight))
    new, _ = step(state, jnp.asarray(ds.x_train), jnp.asarray(ds.y_train), jnp.asarray(idx), jax.random.PRNGKey(0),
                  jnp.asarray(w, jnp.float32), jnp.float32(lr), *args)
    return new


def oracle_grads(setup):
    ds, pre, model, v, idx = setup
    return np.stack([flat(grads_of(model, pre, agent(v["params"], a), agent(v["batch_stats"], a), ds, idx[a]))
                     for a in range(N)])


def test_cdsgd_step(setup):
    x, g = stacked_flat(setup[3]["params"]), oracle_grads(setup)
    new = run_one_step("cdsgd", setup, W_DS)
    np.testing.assert_allclose(stacked_flat(new.params), W_DS @ x - 0.1 * g, atol=2e-5)


def test_sgp_adapt_then_combine_step(setup):
    x, g = stacked_flat(setup[3]["params"]), oracle_grads(setup)
    new = run_one_step("sgp", setup, W_DS)
    np.testing.assert_allclose(stacked_flat(new.params), W_DS @ (x - 0.1 * g), atol=2e-5)


def test_cdmsgd_step_with_momentum_state(setup):
    x, g = stacked_flat(setup[3]["params"]), oracle_grads(setup)
    rng = np.random.default_rng(0)
    m0 = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), setup[3]["params"])
    m_expected = 0.9 * stacked_flat(m0) + g
    new = run_one_step("cdmsgd", setup, W_DS, opt_state=MomentumState(m0))
    m = m_expected
    np.testing.assert_allclose(stacked_flat(new.opt_state.momentum), m, atol=2e-5)
    np.testing.assert_allclose(stacked_flat(new.params), W_DS @ x - 0.1 * (g + 0.9 * m), atol=2e-5)


def test_pushsum_debiasing(setup):
    z, g = stacked_flat(setup[3]["params"]), oracle_grads(setup)
    w0 = np.array([1.0, 0.5, 1.5, 1.0])
    new = run_one_step("sgp_pushsum", setup, W_COL, opt_state=PushSumState(jnp.asarray(w0, jnp.float32)))
    numer = W_COL @ (w0[:, None] * z - 0.1 * g)
    w1 = W_COL @ w0
    np.testing.assert_allclose(np.asarray(new.opt_state.push_weight), w1, rtol=1e-6)
    np.testing.assert_allclose(stacked_flat(new.params), numer / w1[:, None], atol=3e-5)
    # push-sum de-biasing: with no gradient, repeated pushes reach the exact weighted average of z
    zs, ws = w0[:, None] * z, w0.copy()
    for _ in range(200):
        zs, ws = W_COL @ zs, W_COL @ ws
    np.testing.assert_allclose(zs / ws[:, None], np.tile((w0 @ z) / w0.sum(), (N, 1)), atol=1e-6)


def exact_box_qp(q, c, lower=0.5):
    """Enumerate active sets: the unique KKT point of the strictly convex box QP."""
    d = len(c)
    for active in itertools.product([False, True], repeat=d):
        a = np.array(active)
        v = np.full(d, lower)
        f = ~a
        if f.any():
            rhs = -(c[f] + q[np.ix_(f, a)] @ v[a])
            v[f] = np.linalg.solve(q[np.ix_(f, f)], rhs)
        grad = q @ v + c
        if np.all(v[f] >= lower - 1e-12) and np.all(grad[a] >= -1e-12):
            return v
    raise AssertionError("no KKT point")


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_cga_qp_solver_matches_exact_solution_and_kkt(d):
    rng = np.random.default_rng(d)
    for _ in range(5):
        m = rng.normal(size=(d, 30))
        g = rng.normal(size=30)
        q = m @ m.T + 1e-12 * np.eye(d)
        c = m @ g
        v = np.asarray(solve_box_qp(jnp.asarray(q), jnp.asarray(c), 0.5, sweeps=500), np.float64)
        exact = exact_box_qp(q, c)
        np.testing.assert_allclose(v, exact, atol=1e-4)
        grad = q @ v + c
        assert np.all(v >= 0.5 - 1e-7)                                  # primal feasibility
        active = np.isclose(v, 0.5, atol=1e-6)
        assert np.all(grad[active] >= -1e-3)                              # dual feasibility
        assert np.allclose(grad[~active], 0, atol=1e-3 * (1 + np.abs(c).max()))  # stationarity


@pytest.mark.parametrize("strategy", ["unrolled", "vmap", "chunked"])  # chunked: a loop over one compiled agent
def test_cga_step(setup, strategy):
    ds, pre, model, v, idx = setup
    hood = Neighbourhood.from_matrix(W_DS)
    x = stacked_flat(v["params"])
    new = run_one_step("cga", setup, W_DS, qp_sweeps=500, strategy=strategy)
    want = []
    for i in range(N):
        p, st = agent(v["params"], i), agent(v["batch_stats"], i)
        g_own = grads_of(model, pre, p, st, ds, idx[i])
        nbrs = [(int(hood.nbr[i, k]), float(hood.weight[i, k])) for k in range(hood.num_slots) if hood.mask[i, k]]
        g_nb = [grads_of(model, pre, p, st, ds, idx[j]) for j, _ in nbrs]
        leaves = []
        for li, g0_leaf in enumerate(jax.tree.leaves(g_own)):
            gvec = W_DS[i, i] * g0_leaf.ravel()
            m = np.stack([wij * jax.tree.leaves(gj)[li].ravel() for (_, wij), gj in zip(nbrs, g_nb)])
            q = m @ m.T + 1e-12 * np.eye(len(nbrs))
            vstar = exact_box_qp(q, m @ gvec)
            leaves.append(gvec + m.T @ vstar)
        gt = np.concatenate(leaves)
        mom = gt  # zero initial momentum
        want.append(W_DS[i] @ x - 0.1 * (gt + 0.9 * mom))
    np.testing.assert_allclose(stacked_flat(new.params), np.stack(want), atol=1e-4)


def test_swarmsgd_pair_step_and_average(setup):
    ds, pre, model, v, idx = setup
    v0 = jax.tree.map(jnp.copy, v)  # the step donates its state
    state = agents.AgentState(params=v0["params"], batch_stats=v0["batch_stats"], opt_state=NoState())
    step = make_swarm_step(model, pre)
    pair = np.array([1, 3], np.int32)
    new, _ = step(state, jnp.asarray(ds.x_train), jnp.asarray(ds.y_train), jnp.asarray(pair),
                  jnp.asarray(idx[pair]), jax.random.PRNGKey(0), jnp.float32(0.1))
    x = stacked_flat(v["params"])
    g = oracle_grads(setup)
    avg = ((x[1] - 0.1 * g[1]) + (x[3] - 0.1 * g[3])) / 2
    got = stacked_flat(new.params)
    np.testing.assert_allclose(got[1], avg, atol=2e-5)
    np.testing.assert_allclose(got[3], avg, atol=2e-5)
    np.testing.assert_array_equal(got[[0, 2]], x[[0, 2]])  # the others do not move
    bs_old, bs_new = stacked_flat(v["batch_stats"]), stacked_flat(new.batch_stats)
    np.testing.assert_array_equal(bs_new[[0, 2]], bs_old[[0, 2]])
    assert not np.allclose(bs_new[1], bs_new[3])  # BatchNorm statistics stay each agent's own


def test_swarmsgd_reference_heavy_ball_steps_average_only_when_told(setup):
    """The reference variant: heavy-ball buffers per agent; a step without averaging leaves the pair
    apart, a step with averaging gives both the pair's mean; momentum buffers are never averaged."""
    ds, pre, model, v, idx = setup
    v0 = jax.tree.map(jnp.copy, v)
    mom0 = jax.tree.map(jnp.zeros_like, v0["params"])
    state = agents.AgentState(params=v0["params"], batch_stats=v0["batch_stats"], opt_state=MomentumState(mom0))
    step = make_swarm_step(model, pre, momentum=0.9)
    pair = np.array([2, 0], np.int32)
    args = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train), jnp.asarray(pair), jnp.asarray(idx[pair]))
    x, g = stacked_flat(v["params"]), oracle_grads(setup)
    s1, _ = step(state, *args, jax.random.PRNGKey(0), jnp.float32(0.1), jnp.bool_(False))
    got = stacked_flat(s1.params)
    for a in pair:  # m = g, x <- x - lr m, no averaging
        np.testing.assert_allclose(got[a], x[a] - 0.1 * g[a], atol=2e-5)
    np.testing.assert_array_equal(got[[1, 3]], x[[1, 3]])
    m1 = stacked_flat(s1.opt_state.momentum)
    np.testing.assert_allclose(m1[pair], g[pair], atol=2e-5)
    assert not m1[[1, 3]].any()
    # second step, averaging: m <- 0.9 m + g(x1); both take mean(x1 - lr m)
    ds_, pre_, model_, _, _ = setup
    g1 = np.stack([flat(grads_of(model_, pre_, agent(s1.params, a), agent(v["batch_stats"], a), ds_, idx[a]))
                   for a in range(N)])
    m2 = 0.9 * m1 + g1
    want = ((got[2] - 0.1 * m2[2]) + (got[0] - 0.1 * m2[0])) / 2
    s2, _ = step(s1, *args, jax.random.PRNGKey(0), jnp.float32(0.1), jnp.bool_(True))
    got2 = stacked_flat(s2.params)
    np.testing.assert_allclose(got2[2], want, atol=5e-5)
    np.testing.assert_allclose(got2[0], want, atol=5e-5)
    np.testing.assert_allclose(stacked_flat(s2.opt_state.momentum)[pair], m2[pair], atol=5e-5)


def test_swarmsgd_reference_pairs_and_schedule():
    from dimat_jax.algorithms.swarm import averages_at, neighbour_lists, node_then_neighbour
    # path graph 0-1-2-3: node-then-neighbour picks edge (0,1) with probability 1/4 + 1/8 = 3/8,
    # (1,2) with 1/8 + 1/8 = 1/4 (a uniform edge would be 1/3 each)
    w = np.array([[.5, .5, 0, 0], [.25, .5, .25, 0], [0, .25, .5, .25], [0, 0, .5, .5]])
    nbrs = neighbour_lists(w)
    assert [list(n) for n in nbrs] == [[1], [0, 2], [1, 3], [2]]
    rng = np.random.default_rng(0)
    draws = [tuple(sorted(node_then_neighbour(rng, nbrs))) for _ in range(40000)]
    freq = {e: draws.count(e) / len(draws) for e in [(0, 1), (1, 2), (2, 3)]}
    assert freq[(0, 1)] == pytest.approx(3 / 8, abs=0.01) and freq[(1, 2)] == pytest.approx(1 / 4, abs=0.01)
    # I1 = 10, I2 = 20: interactions 0..9 of every 30 do not average, 10..29 do (t mod 30 >= 10)
    flags = [averages_at(t, 10, 20) for t in range(60)]
    assert flags == ([False] * 10 + [True] * 20) * 2


def test_undirected_edges():
    assert undirected_edges(W_DS).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]


# ------------------------------------------------------------------------ communication accounting
def tiny(algorithm, topology="ring", **kw):
    return tiny_config(**{"algorithm": algorithm, "topology": topology, "num_agents": 5, **kw})


def param_bytes(model_width=0.25):
    v = jax.eval_shape(lambda: build_model("cnn", 10, model_width).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
    return {k: sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(v[k])) for k in ("params", "batch_stats")}


@pytest.mark.parametrize("topology,per_merge", [("ring", 10), ("fc", 20)])
def test_dimat_messages_hand_count(tmp_path, topology, per_merge):
    train.run(tiny("dimat", topology), tmp_path / "w", log=lambda s: None)
    recs = report.read_metrics(tmp_path / "w")
    merged = [r for r in recs if r["phase"] == "merged"]
    sizes = param_bytes()
    for k, r in enumerate(merged, start=1):
        assert r["messages_sent_total"] == k * per_merge  # ring: 5 agents x 2 neighbours; fc: 5 x 4
        assert r["bytes_sent_total"] == k * per_merge * (sizes["params"] + sizes["batch_stats"])
        assert r["messages_sent_per_agent"] == [k * per_merge // 5] * 5
    assert [r["phase"] for r in recs] == ["trained", "merged", "trained", "merged"]  # last merge: no training


def test_fc_shortcut_messages(tmp_path):
    train.run(tiny("dimat", "fc", merge__fc_shortcut=True, rounds=1), tmp_path / "w", log=lambda s: None)
    r = report.read_metrics(tmp_path / "w")[-1]
    assert r["messages_sent_per_agent"] == [4, 1, 1, 1, 1] and r["messages_sent_total"] == 8
    assert len(set(r["per_agent_test_accuracy"])) == 1  # every agent holds agent 0's merge


@pytest.mark.parametrize("algorithm,over,steps,per_step", [
    ("cdsgd", {}, 2, 10), ("cga", {}, 2, 20),
    ("swarmsgd", {"baseline__swarm_variant": "uniform_edge"}, 5 * 2 // 2, 2),  # N * steps / 2 interactions
    # one pair per synchronised step (2 steps); I1 = I2 = 1: only the second interaction averages
    ("swarmsgd", {"baseline__swarm_i1": 1, "baseline__swarm_i2": 1}, 1, 2)])
def test_gossip_messages_hand_count(tmp_path, algorithm, over, steps, per_step):
    train.run(tiny(algorithm, "ring", rounds=1, **over), tmp_path / "w", log=lambda s: None)
    r = report.read_metrics(tmp_path / "w")[-1]
    assert r["messages_sent_total"] == steps * per_step  # one epoch
    assert r["bytes_sent_total"] == steps * per_step * param_bytes()["params"]


def test_pretrained_agents_are_shared_across_algorithms(tmp_path):
    cache = str(tmp_path / "cache")
    logs = []
    train.run(tiny("dimat", pretrain__cache_dir=cache), tmp_path / "a", log=logs.append)
    assert any("pre-trained agents saved" in line for line in logs)
    logs.clear()
    train.run(tiny("cdsgd", pretrain__cache_dir=cache), tmp_path / "b", log=logs.append)
    assert any("pre-trained agents loaded" in line for line in logs)
    r0a, r0b = report.read_metrics(tmp_path / "a")[0], report.read_metrics(tmp_path / "b")[0]
    assert r0a["per_agent_test_accuracy"] == r0b["per_agent_test_accuracy"] and r0a["epoch"] == r0b["epoch"] == 1
    # a different partition makes different pre-trained agents: not loaded from that cache entry
    logs.clear()
    train.run(tiny("wa", partition="noniid", pretrain__cache_dir=cache), tmp_path / "c", log=logs.append)
    assert any("pre-trained agents saved" in line for line in logs)
    # an explicit checkpoint made with other settings is refused
    from dimat_jax.checkpoint import CheckpointError, pretrain_cache_path
    path = str(pretrain_cache_path(tiny("dimat", pretrain__cache_dir=cache)))
    with pytest.raises(CheckpointError, match="partition"):
        train.run(tiny("wa", partition="noniid", pretrain__checkpoint=path), tmp_path / "d", log=lambda s: None)


def test_payload_bytes():
    tree = {"a": jnp.zeros((3, 4, 5)), "b": jnp.zeros((3, 2), jnp.int32)}
    assert comms.payload_bytes(tree) == 4 * 5 * 4 + 2 * 4
    assert comms.senders(W_DS).tolist() == [2, 1, 2, 2]


@pytest.mark.parametrize("variant", ["reference", "uniform_edge"])
def test_swarmsgd_continues_the_batch_streams_after_pretraining(variant):
    """SwarmSGD's first batches are the ones the other algorithms' first epoch after pre-training
    reads, not the streams' start (which pre-training already consumed)."""
    from dimat_jax.algorithms.swarm import Swarm
    from dimat_jax.data.pipeline import epoch_batches, stream_positions
    c = tiny("swarmsgd", pretrain_epochs=3, baseline__swarm_variant=variant)
    services = train.build_services(c, log=lambda s: None)
    sw = Swarm(services, train.build_topology(c))
    first = epoch_batches(services.data.shards, c.seed, c.pretrain_epochs, services.steps_per_epoch, c.batch_size)[0]
    rng = np.random.default_rng(0)
    pair, idx = sw._pair_and_batches(rng, c.pretrain_epochs, 0, 0, first[None])
    np.testing.assert_array_equal(idx, first[pair])
    if variant == "uniform_edge":  # each agent's own stream, read where pre-training stopped
        a = int(pair[0])
        np.testing.assert_array_equal(stream_positions(services.data.shards[a], c.seed, a, 3 * 2 * 16, 16), first[a])
