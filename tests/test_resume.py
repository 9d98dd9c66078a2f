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
