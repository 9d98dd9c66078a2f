"""Two local processes joined by jax.distributed on 127.0.0.1 (CPU collectives) run a tiny DIMAT
and CDSGD together, each holding half of the agents and only their data; the metrics written by
process 0 equal a single-process run's."""
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from dimat_jax import report, train
from dimat_jax.config import get_default_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny(algorithm, mesh_devices=1):
    c = get_default_config()
    c.algorithm, c.topology, c.num_agents, c.width = algorithm, "ring", 4, 0.25
    c.pretrain_epochs, c.rounds, c.local_epochs, c.batch_size = 1, 2, 1, 16
    c.data.steps_per_epoch, c.merge.batch_size, c.merge.num_batches = 3, 32, 1
    c.log.progress, c.log.plot, c.mesh.devices = False, False, mesh_devices
    # Sharded and unsharded reductions round differently; re-estimating BatchNorm before matching keeps
    # those float differences from reaching the merge (without it they grow to ~1e-4 in the loss).
    c.merge.bn_before = True
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two jax.distributed processes (~60 s each case)
@pytest.mark.parametrize("algorithm", ["dimat", "cdsgd"])
def test_two_processes_match_one(algorithm, tmp_path):
    port, workdir = free_port(), tmp_path / "two"
    cmd = lambda i: [sys.executable, str(ROOT / "tests" / "multiprocess_check.py"), str(i), str(port),  # noqa: E731
                     str(workdir), algorithm]
    env_cwd = dict(cwd=ROOT / "tests", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [subprocess.Popen(cmd(i), **env_cwd) for i in (0, 1)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
        assert f"process {i} done" in out
    assert "round" in outs[0] and "round" not in outs[1].replace("round(", "")  # only process 0 logs
    assert not (workdir / "metrics.jsonl.tmp").exists()
    train.run(tiny(algorithm), tmp_path / "one", log=lambda s: None)
    two, one = report.read_metrics(workdir), report.read_metrics(tmp_path / "one")
    assert len(two) == len(one) and [r["phase"] for r in two] == [r["phase"] for r in one]
    for a, b in zip(two, one):
        np.testing.assert_allclose(a["per_agent_test_accuracy"], b["per_agent_test_accuracy"], atol=1e-9)
        np.testing.assert_allclose(a["per_agent_test_loss"], b["per_agent_test_loss"], rtol=1e-4, atol=1e-5)
        assert a["messages_sent_total"] == b["messages_sent_total"]
    assert (workdir / "checkpoints" / "2").is_dir()  # orbax checkpoints written by both processes
