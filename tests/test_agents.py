"""Stacked agents equal separately trained single agents; evaluation equals a numpy count."""
import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

from dimat_jax import agents
from dimat_jax.data import sources
from dimat_jax.data.pipeline import Preprocess, epoch_batches
from dimat_jax.models import build_model
from dimat_jax.optim import make_optimizer

N, B, STEPS, SEED = 3, 16, 3, 4


@pytest.fixture(scope="module")
def setup():
    ds = sources.load("digits")
    model = build_model("cnn", 10, 0.25)
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max, "crop", 1)
    shards = [np.arange(a, 300, N) for a in range(N)]
    idx = epoch_batches(shards, SEED, 0, STEPS, B)  # [STEPS, N, B]
    return ds, model, pre, idx


def separate_training(model, tx, pre, ds, idx, agent):
    """Independent oracle: one agent, plain model.apply + optax, no stacking."""
    params_key = jax.random.fold_in(jax.random.PRNGKey(SEED), agent)
    v = model.init(params_key, jnp.zeros((1, 8, 8, 1)), train=False)
    params, stats = v["params"], v["batch_stats"]
    opt = tx.init(params)
    x_all, y_all = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    @jax.jit
    def one_step(params, stats, opt, x, y):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

        (_, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), stats, opt

    for s in range(STEPS):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(99), s), agent)
        x = pre.train(key, x_all[idx[s, agent]])
        params, stats, opt = one_step(params, stats, opt, x, y_all[idx[s, agent]])
    return params, stats


def _close(got, want, atol=2e-5):
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        name = jax.tree_util.keystr(path)
        w = want
        for k in path:
            w = w[k.key]
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=atol, err_msg=name)


# Adam runs on ResNet-20 (convolutions without bias): a conv bias feeding BatchNorm has an exactly
# zero gradient in exact arithmetic, and Adam normalises its ~1e-9 float noise into steps of size lr,
# which makes that leaf (and the next BN's running mean) chaotic under any change of float order.
@pytest.mark.parametrize("strategy,opt,arch", [("unrolled", "msgd", "cnn"),
                                               pytest.param("vmap", "adam", "resnet20", marks=pytest.mark.slow),
                                               ("vmap", "msgd", "cnn"), pytest.param("map", "msgd", "cnn", marks=pytest.mark.slow),
                                               ("chunked", "msgd", "cnn")])
def test_stacked_equals_separate(setup, strategy, opt, arch, monkeypatch):
    ds, _, pre, idx = setup
    monkeypatch.setattr(agents, "CHUNK", 2)  # chunked: one scanned chunk of 2 agents and a remainder of 1
    model = build_model(arch, 10, 0.25)
    lr = 0.05 if opt == "msgd" else 1e-3
    tx = make_optimizer(opt, lr, momentum=0.9)
    # Adam divides by sqrt(v): elements with tiny gradients amplify float-order noise, so its
    # tolerance is a tenth of one step (a stacking bug moves most elements by about lr).
    atol = 2e-5 if opt == "msgd" else 0.1 * lr
    state = agents.init_state(model, tx, (8, 8, 1), N, SEED)
    step = agents.make_train_step(model, tx, pre, strategy)
    x_all, y_all = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    for s in range(STEPS):
        state, metrics = step(state, x_all, y_all, jnp.asarray(idx[s]), jax.random.fold_in(jax.random.PRNGKey(99), s))
    assert metrics["loss"].shape == (N,)
    for a in range(N):
        params, stats = separate_training(model, tx, pre, ds, idx, a)
        _close(jax.tree.map(lambda x: x[a], state.params), params, atol)
        _close(jax.tree.map(lambda x: x[a], state.batch_stats), stats, atol)


def test_agents_have_their_own_initialisation(setup):
    _, model, _, _ = setup
    v = agents.init_variables(model, (8, 8, 1), 3, seed=0)
    k = np.asarray(v["params"]["conv2"]["kernel"])
    assert not np.allclose(k[0], k[1]) and not np.allclose(k[1], k[2])
    again = agents.init_variables(model, (8, 8, 1), 3, seed=0)
    np.testing.assert_array_equal(k, np.asarray(again["params"]["conv2"]["kernel"]))


@pytest.mark.parametrize("strategy", ["unrolled", "vmap", "chunked"])
def test_evaluate_equals_numpy_count(setup, strategy, monkeypatch):
    ds, model, pre, _ = setup
    monkeypatch.setattr(agents, "CHUNK", 2)
    v = agents.init_variables(model, (8, 8, 1), N, seed=1)
    test = agents.TestSet(ds.x_test[:50], ds.y_test[:50], batch_size=16)  # 4 batches, last one padded
    assert test.x.shape[:2] == (4, 16) and float(test.mask.sum()) == 50
    ev = agents.evaluate(agents.make_eval_step(model, pre, strategy), v, test)
    for a in range(N):
        va = jax.tree.map(lambda x: x[a], v)
        logits = np.asarray(model.apply(va, pre.eval(jnp.asarray(ds.x_test[:50])), train=False), np.float64)
        acc = (logits.argmax(1) == ds.y_test[:50]).mean()
        logp = logits - logits.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        loss = -logp[np.arange(50), ds.y_test[:50]].mean()
        assert ev["accuracy"][a] == pytest.approx(acc, abs=1e-9)
        assert ev["loss"][a] == pytest.approx(loss, rel=1e-4)


def test_resolve_strategy():
    assert agents.resolve_strategy("auto", "cpu") == "unrolled"
    assert agents.resolve_strategy("auto", "cpu", num_agents=agents.MAX_UNROLLED) == "unrolled"
    assert agents.resolve_strategy("auto", "cpu", num_agents=agents.MAX_UNROLLED + 1) == "chunked"
    assert agents.resolve_strategy("auto", "gpu", num_agents=100) == "vmap"
    assert agents.resolve_strategy("auto", "gpu") == "vmap"
    assert agents.resolve_strategy("auto", "tpu") == "vmap"
    assert agents.resolve_strategy("map") == "map"
    assert agents.resolve_strategy("auto", "cpu", num_agents=5, algorithm="cga") == "chunked"  # one agent a program
    assert agents.resolve_strategy("auto", "gpu", num_agents=5, algorithm="cga") == "vmap"
    assert agents.resolve_strategy("auto", "cpu", num_agents=5, algorithm="sgp") == "unrolled"
    assert agents.resolve_strategy("unrolled", "cpu", algorithm="cga") == "unrolled"  # asked for: given
    with pytest.raises(ValueError, match="unknown agent strategy"):
        agents.resolve_strategy("pmap")


@pytest.mark.parametrize("bn_mode", ["ema", "cumulative", "frozen"])
def test_batchnorm_modes_of_the_training_step(setup, bn_mode):
    """ema: stat <- 0.9 stat + 0.1 batch; cumulative (the reference's DIMAT after a merge): the plain
    average of every batch since the re-estimation (``bn_count`` batches so far); frozen: unchanged.
    The oracle reads each batch's moments from the BatchNorm layers (the ``bn_moments`` collection)."""
    from dimat_jax.merging.spec import flatten
    ds, model, _, idx = setup
    pre = Preprocess(ds.mean, ds.std, ds.pixel_max)  # no augmentation: the oracle sees the same batch
    v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    grads = agents.make_agent_grads(model, pre, bn_mode)
    stats, want = v["batch_stats"], flatten(v["batch_stats"])
    count = 4  # pretend the re-estimation averaged 4 batches
    for t in range(3):
        x, y = jnp.asarray(ds.x_train[idx[t, 0]]), jnp.asarray(ds.y_train[idx[t, 0]])
        _, st = model.apply(v | {"batch_stats": stats}, pre.eval(x), train=True, mutable=["batch_stats", "bn_moments"])
        for path, mom in flatten(st["bn_moments"]).items():
            layer = path.rsplit("/moments", 1)[0]
            mean, sq = np.asarray(mom[0][0], np.float64), np.asarray(mom[0][1], np.float64)
            batch = {"mean": mean, "var": np.maximum(sq - mean ** 2, 0)}
            for s in ("mean", "var"):
                old = np.asarray(want[f"{layer}/{s}"], np.float64)
                want[f"{layer}/{s}"] = {"ema": 0.9 * old + 0.1 * batch[s], "frozen": old,
                                        "cumulative": old + (batch[s] - old) / (count + t + 1)}[bn_mode]
        _, stats, _, _ = grads(v["params"], stats, x, y, jax.random.PRNGKey(t), jnp.float32(count + t))
    for path, value in flatten(stats).items():
        np.testing.assert_allclose(np.asarray(value), want[path], rtol=2e-4, atol=1e-5, err_msg=path)
