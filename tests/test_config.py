"""Config validation and the command line: bad input fails early with the promised messages."""
import pathlib
import subprocess
import sys

import pytest
from dimat_jax.config import ConfigError, get_default_config, load_config_file, validate

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.py"))


def test_defaults_are_valid():
    validate(get_default_config())


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    load_config_file(path)


def test_stable_top_level_keys():
    c = get_default_config()
    for key in ["dataset", "data_path", "model", "width", "num_agents", "partition", "algorithm", "topology",
                "seed", "rounds", "local_epochs", "pretrain_epochs", "batch_size", "optimizer", "lr"]:
        assert key in c


def test_load_config_file_with_overrides():
    c = load_config_file(ROOT / "configs" / "quickstart.py", {"num_agents": 3, "data.alpha": 0.1})
    assert c.num_agents == 3 and c.data.alpha == 0.1
    with pytest.raises(ConfigError, match="unknown config key 'data.alhpa'"):
        load_config_file(ROOT / "configs" / "quickstart.py", {"data.alhpa": 0.1})
    with pytest.raises(ConfigError, match="not allowed"):
        load_config_file(ROOT / "configs" / "quickstart.py", {"model": "mlp"})


def test_locked_config_rejects_typos_with_hint():
    c = get_default_config()
    with pytest.raises(AttributeError, match="partition"):
        c.partiton = "iid"


def _bad(**changes):
    from dimat_jax.config import set_key
    c = get_default_config()
    for k, v in changes.items():
        set_key(c, k, v)
    return c


@pytest.mark.parametrize("changes,message", [
    ({"model": "resnet18"}, "'model' = 'resnet18' is not allowed; choose one of cnn, resnet20, vgg16"),
    ({"dataset": "imagenet"}, "choose one of digits, cifar10"),
    ({"partition": "pathological"}, "'partition'"),
    ({"algorithm": "fedavg"}, "'algorithm'"),
    ({"topology": "star"}, "'topology'"),
    ({"optimizer": "rmsprop"}, "'optimizer'"),
    ({"agents.strategy": "pmap"}, "'agents.strategy'"),
    ({"agents.conv_filter_grad": "im2col"}, "'agents.conv_filter_grad' = 'im2col' is not allowed; choose one of auto, xla, taps"),
    ({"num_agents": 0}, "num_agents must be >= 1"),
    ({"width": -1.0}, "width must be > 0"),
    ({"num_agents": 11, "partition": "noniid"}, "noniid"),
    ({"dataset": "npz"}, "data_path"),
    ({"dataset": "tiny_imagenet"}, "data_path"),
    ({"model": "vgg16"}, "32x32"),
    ({"model": "vgg16", "dataset": "fashion_mnist"}, "data.pad_to=32"),
    ({"topology": "bipartite", "num_agents": 2, "algorithm": "dimat"}, "bipartite"),
    ({"algorithm": "dimat", "num_agents": 1}, "num_agents >= 2"),
    ({"algorithm": "sgp_pushsum", "topology": "file", "topology_path": "/nonexistent.npy"}, "does not exist"),
    ({"merge.fc_shortcut": True, "algorithm": "dimat", "topology": "ring"}, "fc_shortcut"),
    ({"merge_data": "shared"}, "'merge_data'"),
    ({"topology": "file"}, "topology_path"),
    ({"data.alpha": 0.0}, "alpha"),
    ({"rounds": 0, "pretrain_epochs": 0}, "nothing to do"),
    ({"optim.lr_decay": 1.5}, "lr_decay"),
    ({"lr": 0.0}, "lr"),
    ({"pretrain.checkpoint": "/some/agents", "pretrain_epochs": 0}, "pretrain_epochs = 0; set pretrain_epochs"),
    ({"data.channels": 2}, "data.channels must be 0"),
    ({"data.train_subset": 10, "data.max_train_examples": 10}, "set only one"),
    ({"baseline.swarm_variant": "edge"}, "choose one of reference, uniform_edge"),
    ({"baseline.swarm_i2": 0}, "swarm_i2"),
])
def test_invalid_configs(changes, message):
    from dimat_jax.train import preflight  # the schema, then what needs implementations (the graph)
    with pytest.raises(ConfigError) as e:
        preflight(_bad(**changes))
    assert message in str(e.value)


def test_type_and_unknown_key_checks():
    import ml_collections
    c = get_default_config()
    with pytest.raises(TypeError):  # ConfigDict itself refuses a type change
        c.num_agents = "5"
    d = get_default_config().to_dict()
    d["num_agents"] = "5"  # a config built from a plain dict bypasses that: validate catches it
    with pytest.raises(ConfigError, match="'num_agents' must be of type int"):
        validate(ml_collections.ConfigDict(d))
    c = get_default_config()
    c.unlock()
    c.data.agumentation = "x"
    with pytest.raises(ConfigError, match="unknown config key 'data.agumentation'"):
        validate(c)
    c = get_default_config()
    c.unlock()
    c.width = 2  # an int where a float is expected is fine
    validate(c)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dimat_jax.main", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def test_cli_rejects_bad_input_before_any_work(tmp_path):
    r = cli("--config", "configs/quickstart.py", "--config.partiton=iid", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2 and 'Did you mean "partition"' in r.stderr
    r = cli("--config", "configs/quickstart.py", "--config.num_agents=abc", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2 and "num_agents" in r.stderr
    r = cli("--config", "configs/quickstart.py", "--config.model=vgg16", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2 and "32x32" in r.stderr
    r = cli("--config", "configs/missing.py")
    assert r.returncode == 2 and "missing.py" in r.stderr
    assert not (tmp_path / "w").exists()  # nothing was started
    r = cli("--config", "configs/quickstart.py", "--dry_run")
    assert r.returncode == 0 and "algorithm: dimat" in r.stdout
    r = cli("--help")
    assert r.returncode == 0 and "--config.<key>=<value>" in r.stdout


def test_paper_presets_follow_the_reference():
    """Cumulative-average BatchNorm only on DIMAT's path (the reference's WA and WM keep PyTorch's
    moving average); SwarmSGD's reference variant; global, augmented merge data."""
    from dimat_jax.presets import paper
    assert paper("dimat").merge.bn_cumulative is True
    assert paper("wa").merge.bn_cumulative is False and paper("wm").merge.bn_cumulative is False
    assert paper("wa").merge.bn_after is False and paper("wm").merge.bn_after is True
    sw = paper("swarmsgd").baseline
    assert (sw.swarm_variant, sw.swarm_i1, sw.swarm_i2, sw.momentum) == ("reference", 10, 20, 0.9)
    d = paper("dimat")
    assert d.merge_data == "global" and d.merge.augment is True
