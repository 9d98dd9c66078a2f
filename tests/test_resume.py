"""Kill and resume: a run interrupted after round r and resumed equals an uninterrupted run."""
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dimat_jax import report, train
from dimat_jax.config import load_config_file
from dimat_jax.services import Services
from tiny_config import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING_KEYS = {"wall_time_s", "merge_time_s", "merge_stage_s", "train_time_s"}


def tiny(**kw):
    return tiny_config(**{"rounds": 4, **kw})


def same_metrics(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in ra:
            if k in TIMING_KEYS:
                continue
            if isinstance(ra[k], (float, list)) and k not in ("messages_sent_per_agent", "bytes_sent_per_agent"):
                np.testing.assert_allclose(ra[k], rb[k], rtol=1e-6, atol=1e-7, err_msg=k)
            else:
                assert ra[k] == rb[k], k


class Crash(Exception):
    pass


@pytest.mark.parametrize("algorithm", ["dimat", "local", pytest.param("cdmsgd", marks=pytest.mark.slow),
                                       pytest.param("swarmsgd", marks=pytest.mark.slow)])
def test_crash_and_resume_equals_uninterrupted(algorithm, tmp_path, monkeypatch):
    config = tiny(algorithm=algorithm, topology="ring")
    train.run(config, tmp_path / "straight", log=lambda s: None)

    real_emit = Services.emit

    def crashing_emit(self, variables, *, round_, phase, **kw):
        if round_ == 3 and phase == "trained":
            raise Crash  # dies inside round 3 (after dimat's 'merged' record of round 3 was written)
        return real_emit(self, variables, round_=round_, phase=phase, **kw)

    monkeypatch.setattr(Services, "emit", crashing_emit)
    with pytest.raises(Crash):
        train.run(config, tmp_path / "resumed", log=lambda s: None)
    monkeypatch.setattr(Services, "emit", real_emit)
    assert not (tmp_path / "resumed" / "summary.json").exists()
    logs = []
    train.run(config, tmp_path / "resumed", log=logs.append)
    assert any("resuming" in line and "after round 2" in line for line in logs)
    same_metrics(report.read_metrics(tmp_path / "straight"), report.read_metrics(tmp_path / "resumed"))
    if algorithm == "dimat":  # the merged record of round 3 from the crashed attempt was set aside
        discarded = report.read_metrics(tmp_path / "resumed" / "metrics.discarded.jsonl")
        assert [(r["round"], r["phase"]) for r in discarded] == [(3, "merged")]
    # a finished run says so and changes nothing
    before = (tmp_path / "resumed" / "metrics.jsonl").read_text()
    logs.clear()
    train.run(config, tmp_path / "resumed", log=logs.append)
    assert "already finished" in logs[0] and (tmp_path / "resumed" / "metrics.jsonl").read_text() == before


@pytest.mark.slow  # two CLI runs (the in-process crash tests and the SIGKILL test cover resume by default)
def test_sigint_checkpoints_then_the_same_command_resumes(tmp_path):
    workdir = tmp_path / "w"
    args = [sys.executable, "-m", "dimat_jax.main", "--config", str(ROOT / "configs" / "quickstart.py"),
            f"--workdir={workdir}", "--config.rounds=8", "--config.pretrain_epochs=1", "--config.width=0.25",
            "--config.data.steps_per_epoch=25", "--config.log.plot=false", "--config.algorithm=local",
            "--config.partition=noniid", "--config.pretrain.cache_dir="]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "Rerun the same command to resume" in err
    done = len(report.read_metrics(workdir))
    assert 2 <= done < 9
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout
    resumed = report.read_metrics(workdir)
    assert [x["round"] for x in resumed] == list(range(9))
    # the same run, uninterrupted, in-process
    c = load_config_file(ROOT / "configs" / "quickstart.py", {
        "rounds": 8, "pretrain_epochs": 1, "width": 0.25, "data.steps_per_epoch": 25, "log.plot": False,
        "log.progress": False, "algorithm": "local", "partition": "noniid", "pretrain.cache_dir": ""})
    train.run(c, tmp_path / "straight", log=lambda s: None)
    same_metrics(report.read_metrics(tmp_path / "straight"), resumed)


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny(algorithm="local", optimizer="sgd", lr=1e12)
    with pytest.raises(train.NonFiniteError, match=r"agent\(s\) \[[0-9, ]+\].*round 1"):
        train.run(config, tmp_path / "w", log=lambda s: None)
    assert [r["round"] for r in report.read_metrics(tmp_path / "w")] == [0]
    assert (tmp_path / "w" / "checkpoints" / "0").is_dir()


def test_other_settings_in_the_same_workdir_are_refused(tmp_path):
    train.run(tiny(algorithm="local", rounds=1), tmp_path / "w", log=lambda s: None)
    with pytest.raises(train.WorkdirError, match="rounds: 1 there, 2 now"):
        train.run(tiny(algorithm="local", rounds=2), tmp_path / "w", log=lambda s: None)
    train.run(tiny(algorithm="local", rounds=1, log__progress=True), tmp_path / "w", log=lambda s: None)  # log.* ok
    train.run(tiny(algorithm="local", rounds=1, runtime__compile_cache="off"), tmp_path / "w",
              log=lambda s: None)  # runtime.* (speed only) ok


def test_a_checkpoint_of_another_state_layout_stops_the_run_and_stays_in_place(tmp_path, monkeypatch):
    """A version that adds an optimizer-state array cannot resume an older run's checkpoint. It must
    say so (naming the array), not call the checkpoint corrupt, and move or delete nothing."""
    import jax
    import jax.numpy as jnp

    from dimat_jax import agents
    from dimat_jax.checkpoint import CheckpointLayoutError
    config = tiny(algorithm="local", rounds=3)
    real_emit = Services.emit

    def crashing_emit(self, variables, *, round_, phase, **kw):
        if round_ == 2:
            raise Crash
        return real_emit(self, variables, round_=round_, phase=phase, **kw)

    monkeypatch.setattr(Services, "emit", crashing_emit)
    with pytest.raises(Crash):
        train.run(config, tmp_path / "w", log=lambda s: None)
    monkeypatch.setattr(Services, "emit", real_emit)
    before = {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.is_file() and "lock" not in p.name}
    real_init = agents.init_opt_state

    def newer_layout(tx, params):
        num_agents = jax.tree.leaves(params)[0].shape[0]
        return (*real_init(tx, params), {"drift": jnp.zeros((num_agents, 3))})  # one more chained state

    monkeypatch.setattr(agents, "init_opt_state", newer_layout)
    named = r"lacks \(1\): opt_state\.\d\.drift\).*another dimat_jax version"
    with pytest.raises(CheckpointLayoutError, match=named) as e:
        train.run(config, tmp_path / "w", log=lambda s: None)
    assert "corrupt" not in str(e.value) and "left in place" in str(e.value)
    assert not (tmp_path / "w" / "checkpoints-corrupt").exists()
    after = {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.is_file() and "lock" not in p.name}
    assert after == before


def test_layout_difference_names_missing_extra_and_reshaped_arrays():
    from dimat_jax.checkpoint import layout_difference
    saved = {"params.w": (5, 3), "params.b": (5,), "opt_state.0.mu.w": (5, 3)}
    assert layout_difference(saved, dict(saved)) == ""
    want = {"params.w": (5, 4), "params.b": (5,), "opt_state.0.nu.w": (5, 3)}
    diff = layout_difference(saved, want)
    assert "lacks (1): opt_state.0.nu.w" in diff and "only in the checkpoint (1): opt_state.0.mu.w" in diff
    assert "shape of params.w: saved (5, 3), now (5, 4)" in diff


def test_pretrained_agents_of_another_layout_are_named_not_called_corrupt(tmp_path):
    import numpy as np

    from dimat_jax.checkpoint import CheckpointLayoutError, restore_tree, save_tree
    tree = {"params": {"conv": {"kernel": np.ones((2, 3, 3, 1, 4), np.float32)}}, "batch_stats": {}}
    save_tree(tmp_path / "agents", tree, {"fingerprint": {}})
    renamed = {"params": {"conv_0": {"kernel": np.ones((2, 3, 3, 1, 4), np.float32)}}, "batch_stats": {}}
    with pytest.raises(CheckpointLayoutError, match=r"lacks \(1\): params\.conv_0\.kernel.*pretrain\.cache_dir"):
        restore_tree(tmp_path / "agents", renamed)
    wider = {"params": {"conv": {"kernel": np.ones((2, 3, 3, 1, 8), np.float32)}}, "batch_stats": {}}
    with pytest.raises(CheckpointLayoutError, match=r"shape of params\.conv\.kernel: saved \(2, 3, 3, 1, 4\), now"):
        restore_tree(tmp_path / "agents", wider)
    got, meta = restore_tree(tmp_path / "agents", tree)  # still there, and intact
    np.testing.assert_array_equal(got["params"]["conv"]["kernel"], tree["params"]["conv"]["kernel"])
