"""Merge engine against independent oracles: function invariance, planted permutations, numpy
Pearson statistics, Π @ θ, exact BatchNorm statistics, weight matching, and a real merge."""
import flax.linen as nn
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from dimat_jax import agents
from dimat_jax.data import sources
from dimat_jax.data.pipeline import Preprocess, epoch_batches
from dimat_jax.merging import spec as S
from dimat_jax.merging.engine import Merger, merge_batches
from dimat_jax.merging.matching import weight_match_pair
from dimat_jax.merging.neighbours import ForwardPlan, Neighbourhood
from dimat_jax.models import build_model, permutation_spec
from dimat_jax.models.layers import BatchNorm
from dimat_jax.topology import build as build_topology


@pytest.fixture(scope="module")
def digits():
    ds = sources.load("digits")
    return ds, Preprocess(ds.mean, ds.std, ds.pixel_max)


def randomize_buffers(v, key):
    """Non-trivial BN statistics and biases, so that permuting them matters."""
    flat = S.flatten(v)
    keys = jax.random.split(key, len(flat))
    out = {}
    for k, (path, x) in zip(keys, flat.items()):
        if path.endswith("/var"):
            x = jax.random.uniform(k, x.shape, minval=0.5, maxval=2.0)
        elif path.endswith(("/mean", "/bias")) or path.endswith("/scale"):
            x = x + 0.3 * jax.random.normal(k, x.shape)
        out[path] = x
    return S.unflatten(out)


@pytest.mark.parametrize("name,shape", [("cnn", (8, 8, 1)), ("resnet20", (16, 16, 3)), ("vgg16", (32, 32, 3)),
                                        pytest.param("vgg16", (64, 64, 3), marks=pytest.mark.slow)])
def test_random_permutation_keeps_the_function(name, shape):
    m = build_model(name, 7, 0.25)
    x = jax.random.normal(jax.random.PRNGKey(3), (4,) + shape)
    v = randomize_buffers(m.init(jax.random.PRNGKey(0), x), jax.random.PRNGKey(1))
    spec = permutation_spec(name, v)
    assert len(spec.perms) == {"cnn": 4, "resnet20": 12, "vgg16": 13}[name]
    pv = S.permute(v, spec, S.random_permutations(spec, jax.random.PRNGKey(2)))
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(pv))]
    assert sum(changed) > len(changed) // 2  # the weights really moved
    np.testing.assert_allclose(m.apply(pv, x, train=False), m.apply(v, x, train=False), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name,shape", [("cnn", (8, 8, 1)), ("resnet20", (8, 8, 1)), ("vgg16", (64, 64, 3))])
def test_head_class_axis_is_never_permuted(name, shape):
    m = build_model(name, 5, 0.25)
    spec = permutation_spec(name, jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape))))
    assert spec.axes["params/head/kernel"][-1] is None and spec.axes["params/head/bias"] == (None,)


def test_spec_validation_names_the_problem():
    m = build_model("cnn", 10, 0.25)
    v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
    good = {**S.conv("conv1", None, "A", bias=True), **S.bn("bn1", "A"), **S.conv("conv2", "A", "B", bias=True),
            **S.bn("bn2", "B"), **S.conv("conv3", "B", "C", bias=True), **S.bn("bn3", "C"),
            **S.dense("fc1", "C", "D"), **S.dense("head", "D", None)}
    feats = {"A": "relu1", "B": "relu2", "C": "relu3", "D": "relu_fc1"}
    assert S.PermutationSpec.build(good, feats, v).sizes == {"A": 8, "B": 16, "C": 32, "D": 32}
    missing = {k: e for k, e in good.items() if not k.startswith("batch_stats/bn2")}
    with pytest.raises(S.SpecError, match="misses leaves.*bn2"):
        S.PermutationSpec.build(missing, feats, v)
    wrong = {**good, **S.dense("fc1", "B", "D")}  # fc1 reads 32 units, B has 16
    with pytest.raises(S.SpecError, match="'B' has size 16"):
        S.PermutationSpec.build(wrong, feats, v)
    with pytest.raises(S.SpecError, match="no feature point"):
        S.PermutationSpec.build(good, {k: f for k, f in feats.items() if k != "D"}, v)


def stack(*trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def test_planted_permutation_is_recovered_and_merge_returns_the_model(digits):
    ds, pre = digits
    m = build_model("resnet20", 10, 0.5)
    v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    spec = permutation_spec("resnet20", v)
    pi = S.random_permutations(spec, jax.random.PRNGKey(1))
    vb = S.permute(v, spec, pi)
    hood = Neighbourhood.from_matrix(np.full((2, 2), 0.5))
    merger = Merger(m, spec, pre, strategy="unrolled")
    batches = merge_batches([np.arange(500), np.arange(500, 1000)], "global", 100, 3)
    x_all = jnp.asarray(ds.x_train)
    corr = merger.correlations(stack(v, vb), x_all, hood, batches, shared_data=True)
    perms = merger.match(stack(v, vb), hood, corr)
    for p in spec.perms:
        np.testing.assert_array_equal(perms[p][0, 0], S.invert(pi[p]))  # agent 1 aligned to agent 0
        np.testing.assert_array_equal(perms[p][1, 0], np.asarray(pi[p]))  # and agent 0 to agent 1
        diag = corr[p][0, 0][np.arange(spec.sizes[p]), perms[p][0, 0]]
        live = diag != 0  # a unit dead on this data has no correlation to match on
        assert live.mean() > 0.9 and np.allclose(diag[live], 1.0, atol=1e-4)
    merged, info = merger.merge(stack(v, vb), hood, x_all, batches, shared_data=True,
                                reestimate_before=False, reestimate_after=False)
    for a, want in ((0, v), (1, vb)):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x[a], y, atol=1e-5), merged, want)
    assert info.data_passes == 1 and info.mean_matched_correlation["P_res1"] == pytest.approx(1.0, abs=1e-4)


def features_numpy(model, variables, x, path):
    _, st = model.apply(variables, x, train=False, mutable=["intermediates"])
    f = np.asarray(S.flatten(st["intermediates"])[path][0], np.float64)
    return f.reshape(-1, f.shape[-1])


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("strategy", ["vmap", "unrolled"])
def test_statistics_equal_naive_numpy_pearson(digits, shared, strategy):
    ds, pre = digits
    m = build_model("cnn", 10, 0.25)
    n = 3
    v = agents.init_variables(m, (8, 8, 1), n, seed=5)
    spec = permutation_spec("cnn", jax.tree.map(lambda x: x[0], v))
    w = np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])  # agent 0 hears 1 and 2; 1, 2 hear 0
    hood = Neighbourhood.from_matrix(w)
    shards = [np.arange(a, 900, n) for a in range(n)]
    batches = merge_batches(shards, "global" if shared else "local", 32, 2, seed=1)
    corr = Merger(m, spec, pre, strategy=strategy).correlations(v, jnp.asarray(ds.x_train), hood, batches, shared)
    for i, j, k in hood.edges():
        xi = pre.eval(jnp.asarray(ds.x_train[batches[:, i].ravel()]))  # i's data (2 batches)
        vi, vj = (jax.tree.map(lambda x: x[a], v) for a in (i, j))
        for p, path in spec.features.items():
            fi, fj = features_numpy(m, vi, xi, path), features_numpy(m, vj, xi, path)
            c = spec.sizes[p]
            with np.errstate(invalid="ignore", divide="ignore"):  # dead units: 0/0, zeroed below
                ref = np.corrcoef(fi.T, fj.T)[:c, c:]
            dead = (fi.std(0)[:, None] == 0) | (fj.std(0)[None, :] == 0)
            ref = np.where(dead, 0.0, ref)
            np.testing.assert_allclose(corr[p][i, k], ref, atol=2e-4, err_msg=f"{p} edge {i}<-{j}")


@pytest.mark.parametrize("shared", [pytest.param(False, marks=pytest.mark.slow), True])
def test_augmented_statistics_show_every_model_the_same_augmented_images(digits, shared):
    """merge.augment governs the statistics pass: the moments change with augmentation, yet a
    receiver and its neighbours see the same augmented images (permuted copies still correlate 1)."""
    ds, _ = digits
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max, "crop_flip", 2)
    m = build_model("cnn", 10, 0.5)
    v = randomize_buffers(m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))), jax.random.PRNGKey(4))
    spec = permutation_spec("cnn", v)
    copies = [v] + [S.permute(v, spec, S.random_permutations(spec, jax.random.PRNGKey(10 + a))) for a in (1, 2)]
    hood = Neighbourhood.from_matrix(build_topology("ring", 3).matrix())
    batches = merge_batches([np.arange(a, 900, 3) for a in range(3)], "global" if shared else "local", 64, 2)
    x_all = jnp.asarray(ds.x_train)
    plain = Merger(m, spec, pre).moments(stack(*copies), x_all, hood, batches, shared)
    augmented = Merger(m, spec, pre, augment=True)
    moved = augmented.moments(stack(*copies), x_all, hood, batches, shared)
    assert not np.allclose(plain.own_sum["P_conv1"], moved.own_sum["P_conv1"])  # the images were augmented
    corr = augmented.correlations(stack(*copies), x_all, hood, batches, shared)
    perms = augmented.match(stack(*copies), hood, corr)
    for i, j, k in hood.edges():
        for p in spec.perms:
            diag = corr[p][i, k][np.arange(spec.sizes[p]), perms[p][i, k]]
            live = diag != 0
            assert live.sum() >= 4 and np.allclose(diag[live], 1.0, atol=1e-4), (p, i, j)


def test_forward_plan_routes_neighbour_features_to_the_receivers_data():
    t = build_topology("one_peer_exponential", 8)  # directed: i hears i - 1
    hood = Neighbourhood.from_matrix(t.matrix(0))
    plan = ForwardPlan.build(hood, shared_data=False)
    for i, j, k in hood.edges():
        assert plan.blocks[j, plan.src_block[i, k]] == i
    assert (plan.blocks[:, 0] == np.arange(8)).all()


def leafwise(fn, *trees):
    return jax.tree.map(fn, *trees)


@pytest.mark.parametrize("matrix", [
    np.array([[0.2, 0.8, 0.0, 0.0], [0.1, 0.3, 0.6, 0.0], [0.0, 0.0, 0.5, 0.5], [0.7, 0.0, 0.0, 0.3]]),
    build_topology("ring", 5).matrix(), build_topology("fc", 3).matrix()])
def test_identity_permutations_make_the_merge_pi_times_theta(matrix):
    n = matrix.shape[0]
    m = build_model("cnn", 10, 0.25)
    v = randomize_buffers(agents.init_variables(m, (8, 8, 1), n, seed=2), jax.random.PRNGKey(9))
    spec = permutation_spec("cnn", jax.tree.map(lambda x: x[0], v))
    hood = Neighbourhood.from_matrix(matrix)
    merger = Merger(m, spec, None, matcher="identity")
    merged = merger.mix(v, hood, merger.match(v, hood))
    leafwise(lambda got, x: np.testing.assert_allclose(
        got, np.einsum("ij,j...->i...", matrix, np.asarray(x, np.float64)), atol=1e-5), merged, v)
    if np.allclose(matrix.sum(0), 1):  # doubly stochastic: the agent mean of every leaf is preserved
        leafwise(lambda got, x: np.testing.assert_allclose(np.mean(got, 0), np.mean(x, 0), atol=1e-5), merged, v)


def numpy_permute(flat_leaf, entries, perms):
    x = np.asarray(flat_leaf)
    for ax, e in enumerate(entries):
        if e is not None:
            idx = np.asarray(perms[e.perm])
            idx = (np.arange(e.outer)[:, None] * len(idx) + idx[None, :]).ravel()
            x = np.take(x, idx, axis=ax)
    return x


def test_mix_with_permutations_equals_numpy():
    matrix = build_topology("ring", 4).matrix()
    m = build_model("cnn", 10, 0.25)
    v = agents.init_variables(m, (8, 8, 1), 4, seed=3)
    spec = permutation_spec("cnn", jax.tree.map(lambda x: x[0], v))
    hood = Neighbourhood.from_matrix(matrix)
    rng = np.random.default_rng(0)
    perms = {p: np.stack([np.stack([rng.permutation(c) for _ in range(hood.num_slots)]) for _ in range(4)])
             for p, c in spec.sizes.items()}
    got = S.flatten(Merger(m, spec, None).mix(v, hood, perms))
    flat = S.flatten(v)
    for path, x in flat.items():
        x = np.asarray(x, np.float64)
        for i in range(4):
            want = hood.self_weight[i] * x[i]
            for k in range(hood.num_slots):
                j = hood.nbr[i, k]
                want = want + hood.weight[i, k] * numpy_permute(x[j], spec.axes[path],
                                                                {p: perms[p][i, k] for p in perms})
            np.testing.assert_allclose(np.asarray(got[path][i]), want, atol=1e-5, err_msg=path)


class ToyBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Conv(4, (3, 3), padding="VALID", name="conv")(x)
        h = nn.relu(BatchNorm(name="bn")(h, train))
        return nn.Dense(3, name="head")(h.mean((1, 2)))


def test_bn_reestimation_equals_exact_dataset_statistics():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 6, 6, 2)).astype(np.uint8)
    pre = Preprocess((0.5, 0.5), (0.25, 0.25), 255.0)
    model = ToyBN()
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    v = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 6, 6, 2))))(keys)
    shards = [np.arange(64), np.arange(64)]
    batches = epoch_batches(shards, 0, 0, 4, 16)  # 4 batches of 16 = one pass over 64 images
    merger = Merger(model, None, pre, strategy="vmap")
    new = merger.reestimate_bn({"params": v["params"], "batch_stats": v["batch_stats"]}, jnp.asarray(x), batches)
    xn = (x.astype(np.float64) / 255 - 0.5) / 0.25
    for a in range(2):
        k = np.asarray(v["params"]["conv"]["kernel"][a], np.float64)
        b = np.asarray(v["params"]["conv"]["bias"][a], np.float64)
        out = np.zeros((64, 4, 4, 4))
        for i in range(4):
            for j in range(4):
                out[:, i, j] = np.einsum("nhwc,hwcd->nd", xn[:, i:i + 3, j:j + 3], k) + b
        flat = out.reshape(-1, 4)
        np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"][a], flat.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(new["batch_stats"]["bn"]["var"][a], flat.var(0), rtol=1e-4, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, new["params"], v["params"])


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Dense(24, name="fc1")(x))
        x = nn.relu(nn.Dense(16, name="fc2")(x))
        return nn.Dense(5, name="head")(x)


def test_weight_matching_recovers_a_planted_permutation_of_an_mlp():
    model = MLP()
    v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10)))
    axes = {**S.dense("fc1", None, "P1"), **S.dense("fc2", "P1", "P2"), **S.dense("head", "P2", None)}
    spec = S.PermutationSpec.build(axes, {"P1": "fc1", "P2": "fc2"}, v)
    pi = S.random_permutations(spec, jax.random.PRNGKey(4))
    b = S.permute(v, spec, pi)
    found = weight_match_pair(spec, jax.tree.map(np.asarray, v), jax.tree.map(np.asarray, b))
    for p in spec.perms:
        np.testing.assert_array_equal(found[p], S.invert(pi[p]))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), S.permute(b, spec, found), v)


def test_activation_matching_beats_plain_averaging_of_independent_models(digits):
    """Two differently initialised CNNs trained separately on all digits: their activation-matched
    average keeps (here even exceeds) their accuracy; weight matching keeps much of it; their plain
    average collapses. Measured (2-core CPU): models 0.964 / 0.942; activation 0.975 / 0.978;
    weight 0.80 / 0.86; plain average 0.35 (experiments/merge_two_models.py)."""
    ds, _ = digits
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max, "crop", 1)
    m = build_model("cnn", 10, 1.0)
    from dimat_jax.optim import make_optimizer
    tx = make_optimizer("adam", 3e-3)
    state = agents.init_state(m, tx, (8, 8, 1), 2, seed=11)
    step = agents.make_train_step(m, tx, pre, "unrolled")
    shards = [np.arange(len(ds.y_train))] * 2
    x_all, y_all = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    for e in range(8):
        idx = epoch_batches(shards, 11, e, 22, 64)
        for s in range(22):
            state, _ = step(state, x_all, y_all, jnp.asarray(idx[s]), jax.random.PRNGKey(e * 100 + s))
    test = agents.TestSet(ds.x_test, ds.y_test, 364)
    ev = agents.make_eval_step(m, pre, "unrolled")
    before = agents.evaluate(ev, state.variables, test)["accuracy"]
    assert before.min() > 0.9
    spec = permutation_spec("cnn", jax.tree.map(lambda x: x[0], state.variables))
    hood = Neighbourhood.from_matrix(np.full((2, 2), 0.5))
    batches = merge_batches(shards, "local", 128, 0, seed=1)
    acc = {}
    for matcher in ("activation", "weight", "identity"):
        merged, _ = Merger(m, spec, pre, matcher=matcher).merge(state.variables, hood, x_all, batches)
        acc[matcher] = agents.evaluate(ev, merged, test)["accuracy"]
    assert acc["activation"].min() > before.min() - 0.05
    assert acc["activation"].min() > acc["identity"].max() + 0.4
    assert acc["weight"].min() > acc["identity"].max() + 0.2


def test_merge_budget_is_a_fresh_class_balanced_sample_and_num_batches_takes_precedence():
    labels = np.repeat(np.arange(4), [100, 100, 100, 20])  # class 3 is rare
    shards = [np.arange(0, 320, 2), np.arange(1, 320, 2)]   # 160 examples per agent, every class
    b = merge_batches(shards, "local", 50, num_examples=120, labels=labels, round_=0)
    assert b.shape == (3, 2, 50)  # 120 examples rounded up to whole batches of 50
    for a in range(2):
        picked = b[:, a].ravel()
        assert set(picked) <= set(shards[a]) and len(set(picked)) == 150  # distinct, from the agent's own shard
        counts = np.bincount(labels[picked], minlength=4)
        assert counts[3] == 10 and (counts[:3] >= 46).all()  # the rare class whole, the rest evened out
    again = merge_batches(shards, "local", 50, num_examples=120, labels=labels, round_=0)
    later = merge_batches(shards, "local", 50, num_examples=120, labels=labels, round_=1)
    np.testing.assert_array_equal(b, again)  # seeded
    assert set(later[:, 0].ravel()) != set(b[:, 0].ravel())  # a fresh sample every round
    whole = merge_batches(shards, "global", 50, num_examples=10_000, labels=labels)
    assert whole.shape == (7, 2, 50) and set(whole[:, 0].ravel()) == set(range(320))  # capped at the pool
    np.testing.assert_array_equal(whole[:, 0], whole[:, 1])  # global: every agent the same batch
    assert merge_batches(shards, "local", 50, num_batches=2, num_examples=120).shape == (2, 2, 50)
