"""Every algorithm runs from the CPU preset, and DIMAT runs on every topology (tiny sizes)."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dimat_jax import report, train
from dimat_jax.algorithms import ALGORITHMS
from dimat_jax.config import ConfigError, load_config_file, validate
from tiny_config import tiny_config
from dimat_jax.topology import TOPOLOGIES

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "cpu" / "dimat.py"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pretrained"))


def tiny(cache, **overrides):
    """The CPU preset at test size: 4 agents (a torus and the bipartite hubs need them)."""
    over = {"num_agents": 4, "pretrain__cache_dir": cache, "data__max_test_examples": 100,
            **{k.replace(".", "__"): v for k, v in overrides.items()}}
    return validate(tiny_config(load_config_file(PRESET), **over))


# wm, cdmsgd and sgp_pushsum share code with dimat / cga / the CLI test; the slow set runs them everywhere
@pytest.mark.parametrize("algorithm", [pytest.param(a, marks=pytest.mark.slow) if a in ("wm", "cdmsgd") else a for a in ALGORITHMS])
def test_every_algorithm_runs(algorithm, cache, tmp_path):
    # swarmsgd's reference variant averages only after the first 10 interactions of a cycle: start at once
    over = {"baseline.swarm_i1": 1} if algorithm == "swarmsgd" else {}
    train.run(tiny(cache, algorithm=algorithm, **over), tmp_path / "w", log=lambda s: None)
    recs = report.read_metrics(tmp_path / "w")
    assert recs[0]["round"] == 0 and recs[-1]["round"] == 2
    assert all(r["algorithm"] == algorithm for r in recs)
    if algorithm in ("dimat", "wa", "wm"):
        assert [r["phase"] for r in recs] == ["trained", "merged", "trained", "merged"]
    if algorithm in ("local", "centralized"):
        assert recs[-1]["messages_sent_total"] == 0
    else:
        assert recs[-1]["messages_sent_total"] > 0 and recs[-1]["bytes_sent_total"] > 0
    assert all(np.isfinite(r["mean_test_loss"]) for r in recs)


# every topology for every algorithm is in the slow set; the default run keeps a user's matrix file
@pytest.mark.parametrize("topology", [t if t == "file" else pytest.param(t, marks=pytest.mark.slow)
                                      for t in TOPOLOGIES])
def test_dimat_runs_on_every_topology(topology, cache, tmp_path):
    over = {"algorithm": "dimat", "topology": topology, "rounds": 1}
    if topology == "file":
        np.savetxt(tmp_path / "w.txt", np.full((4, 4), 0.25))
        over["topology_path"] = str(tmp_path / "w.txt")
    train.run(tiny(cache, **over), tmp_path / "w", log=lambda s: None)
    topo = report.read_metrics(tmp_path / "w")[-1]
    assert topo["phase"] == "merged"
    summary = (tmp_path / "w" / "topology.json").read_text()
    assert '"spectral_gap"' in summary


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a not in ("local", "centralized")])
@pytest.mark.parametrize("topology", [t for t in TOPOLOGIES if t != "file"])
def test_every_algorithm_on_every_topology(algorithm, topology, cache, tmp_path):
    if algorithm == "swarmsgd" and topology == "disconnected":
        with pytest.raises(ConfigError, match="no edges"):
            train.preflight(tiny(cache, algorithm=algorithm, topology=topology))
        return
    train.run(tiny(cache, algorithm=algorithm, topology=topology, rounds=1), tmp_path / "w", log=lambda s: None)
    assert report.read_metrics(tmp_path / "w")[-1]["round"] == 1


def test_the_command_line_runs_a_baseline(tmp_path):
    args = [sys.executable, "-m", "dimat_jax.main", "--config", str(PRESET), f"--workdir={tmp_path / 'w'}",
            "--config.algorithm=sgp_pushsum", "--config.topology=one_peer_exponential", "--config.width=0.25",
            "--config.pretrain_epochs=1", "--config.rounds=1", "--config.local_epochs=1",
            "--config.data.steps_per_epoch=2", f"--config.pretrain.cache_dir={tmp_path / 'cache'}"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "=== sgp_pushsum on digits" in r.stdout and "messages" in r.stdout
