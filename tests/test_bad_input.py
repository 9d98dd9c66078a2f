"""Bad or hostile input never becomes a result: each case reproduces a probe that once finished
with a wrong number or a traceback, and checks the clear error (exit 2) or the right behaviour."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dimat_jax import report, train
from dimat_jax.checkpoint import CheckpointError
from dimat_jax.config import ConfigError, validate
from dimat_jax.data import DataError, sources
from dimat_jax.workdir import WorkdirError, WorkdirLock
from tiny_config import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICK = ["--config", str(ROOT / "configs" / "quickstart.py")]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dimat_jax.main", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=kw.pop("timeout", 300), **kw)


# ------------------------------------------------------------------------------------ divergence
def test_finite_divergence_stops_the_run_and_keeps_the_good_checkpoint(tmp_path):
    """SGD at lr 1e4 with BatchNorm stays finite (loss ~1e16) and once finished as a normal run."""
    config = tiny_config(algorithm="local", optimizer="sgd", lr=1e4, pretrain_epochs=1, rounds=2,
                         agents__strategy="unrolled")
    with pytest.raises(train.DivergenceError, match=r"training diverged: agent\(s\) \[.*round 1/2.*lower the"):
        train.run(config, tmp_path / "w", log=lambda s: None)
    assert [r["round"] for r in report.read_metrics(tmp_path / "w")] == [0]
    assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == ["0"]  # only the good one
    assert not (tmp_path / "w" / "summary.json").exists()


@pytest.mark.slow
def test_divergence_in_pretraining_and_the_switch(tmp_path):
    with pytest.raises(train.DivergenceError, match="pretrain"):
        train.run(tiny_config(algorithm="local", pretrain__optimizer="sgd", pretrain__lr=1e4, pretrain_epochs=2),
                  tmp_path / "p", log=lambda s: None)
    try:  # off: training goes on (here until the evaluation meets a non-finite test loss)
        train.run(tiny_config(algorithm="local", optimizer="sgd", lr=1e4, rounds=1, guard__divergence_factor=0.0),
                  tmp_path / "off", log=lambda s: None)
    except train.NonFiniteError as e:
        assert not isinstance(e, train.DivergenceError) and "test loss" in str(e)


def test_divergence_limit_and_messages():
    from dimat_jax.guards import DivergenceError, NonFiniteError, check_losses, divergence_limit
    assert divergence_limit(10, 100.0) == pytest.approx(100 * np.log(10))
    assert divergence_limit(10, 0.0) == np.inf
    check_losses([2.3, 5.0, 200.0], "x", divergence_limit(10, 100.0))  # high but below 100 ln 10 = 230
    with pytest.raises(DivergenceError, match=r"agent\(s\) \[2\]"):
        check_losses([2.3, 5.0, 231.0], "x", divergence_limit(10, 100.0))
    with pytest.raises(NonFiniteError, match=r"non-finite training loss for agent\(s\) \[1\]"):
        check_losses([2.3, np.nan, 1e9], "x", divergence_limit(10, 100.0))


# ------------------------------------------------------------------------------------ .npz data
def _npz(path, **over):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), "y_train": np.arange(40) % 4,
              "x_test": rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), "y_test": np.arange(12) % 4}
    arrays.update(over)
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("over,message", [
    ({"x_train": np.where(np.arange(40 * 64).reshape(40, 8, 8) == 5, np.nan, 0.5).astype(np.float32),
      "x_test": np.full((12, 8, 8), 0.5, np.float32)}, r"x_train .* 1 non-finite pixel value"),
    ({"x_test": np.full((12, 8, 8), 0.5, np.float32)}, "x_train .* is uint8 but x_test is float32"),
    ({"x_train": np.full((40, 8, 8), 0.5), "x_test": np.full((12, 8, 8), 200.0)}, "different scales"),
    ({"y_train": np.r_[np.arange(39) % 4, 1000]}, r"5 distinct values but reach 1000.*data.num_classes"),
    ({"y_test": np.r_[np.arange(11) % 4, 7]}, r"y_test .* holds class\(es\) 7 that no training example has"),
    ({"x_test": np.zeros((12, 10, 10), np.uint8)}, r"images of shape \(8, 8, 1\) but x_test \(10, 10, 1\)"),
    ({"x_train": np.zeros((0, 8, 8), np.uint8), "y_train": np.zeros(0, int)}, "x_train .* holds no examples"),
])
def test_bad_npz_arrays_are_rejected_naming_the_array(tmp_path, over, message):
    with pytest.raises(DataError, match=message):
        sources.load("npz", data_path=_npz(tmp_path / "d.npz", **over))


def test_npz_class_count_stated_or_inferred(tmp_path):
    path = _npz(tmp_path / "d.npz", y_train=np.r_[np.arange(39) % 4, 5])  # class 4 has no training example
    ds = sources.load("npz", data_path=path)
    assert ds.num_classes == 6 and any("4" in n and "no training example" in n for n in ds.notes)
    ds = sources.load("npz", data_path=path, num_classes=8)
    assert ds.num_classes == 8
    with pytest.raises(DataError, match="data.num_classes = 5 allows 0..4"):
        sources.load("npz", data_path=path, num_classes=5)


def test_broken_npz_files(tmp_path):
    good = pathlib.Path(_npz(tmp_path / "good.npz")).read_bytes()
    (tmp_path / "trunc.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        sources.load("npz", data_path=str(tmp_path / "trunc.npz"))
    flipped = bytearray(good)
    flipped[len(good) // 2: len(good) // 2 + 64] = bytes(64)
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    try:  # zip CRCs catch it, or the arrays no longer parse; either way no silent load
        ds = sources.load("npz", data_path=str(tmp_path / "flip.npz"))
        raise AssertionError(f"loaded a corrupted archive: {ds.x_train.shape}")
    except DataError as e:
        assert "corrupt" in str(e) or "must" in str(e)
    (tmp_path / "text.npz").write_text("x_train,y_train\n1,2\n")
    with pytest.raises(DataError, match="not an .npz archive"):
        sources.load("npz", data_path=str(tmp_path / "text.npz"))
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npz").write_bytes((tmp_path / "one.npy").read_bytes())
    with pytest.raises(DataError, match="single .npy array"):
        sources.load("npz", data_path=str(tmp_path / "one.npz"))


# ------------------------------------------------------------------------------------ workdirs
def test_two_runs_on_one_workdir_are_refused(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    with WorkdirLock(w):  # another run holds the workdir
        with pytest.raises(WorkdirError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            train.run(tiny_config(algorithm="local"), w, log=lambda s: None)
    assert not (w / "metrics.jsonl").exists()
    train.run(tiny_config(algorithm="local", rounds=1), w, log=lambda s: None)  # released: runs
    assert [r["round"] for r in report.read_metrics(w)] == [0, 1]


def test_a_dead_runs_lock_does_not_block(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    code = f"from dimat_jax.workdir import WorkdirLock; import os; WorkdirLock({str(w)!r}); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert (w / ".lock").exists()  # left behind by a process that never released it
    train.run(tiny_config(algorithm="local", rounds=1), w, log=lambda s: None)


def test_unwritable_workdir_or_checkpoint_dir_stops_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WorkdirError, match="cannot write to"):
        train.run(tiny_config(algorithm="local"), tmp_path / "file" / "w", log=lambda s: None)
    w = tmp_path / "w"
    w.mkdir()
    (w / "checkpoints").write_text("not a directory")  # stands for a read-only checkpoint directory
    with pytest.raises(WorkdirError, match="checkpoints"):
        train.run(tiny_config(algorithm="local"), w, log=lambda s: None)
    assert not (w / "metrics.jsonl").exists() and not (w / "config.json").exists()


def test_a_failed_start_does_not_block_the_corrected_rerun(tmp_path):
    w = tmp_path / "w"
    with pytest.raises(DataError):
        train.run(tiny_config(dataset="npz", data_path=str(tmp_path / "missing.npz")), w, log=lambda s: None)
    assert (w / "config.json").exists()  # the start got that far, but produced nothing
    path = _npz(tmp_path / "d.npz", x_train=np.random.default_rng(0).integers(0, 256, (60, 8, 8), dtype=np.uint8),
                y_train=np.arange(60) % 4)
    train.run(tiny_config(dataset="npz", data_path=path, rounds=1), w, log=lambda s: None)
    assert [r["round"] for r in report.read_metrics(w)] == [0, 1]


def test_half_written_metrics_line_inside_the_checkpointed_part(tmp_path, monkeypatch):
    config = tiny_config(algorithm="local", rounds=3)
    from dimat_jax.algorithms import local
    real_round = local.Local.round

    def crash_at_3(self, state, r, services):
        if r == 3:
            raise KeyboardInterrupt
        return real_round(self, state, r, services)

    monkeypatch.setattr(local.Local, "round", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, tmp_path / "w", log=lambda s: None)
    monkeypatch.setattr(local.Local, "round", real_round)
    metrics = tmp_path / "w" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]
    metrics.write_text("\n".join(lines) + "\n")
    before = metrics.read_text()
    with pytest.raises(CheckpointError, match="line 2 .* not valid JSON"):
        train.run(config, tmp_path / "w", log=lambda s: None)
    assert metrics.read_text() == before


# ------------------------------------------------------------------------------------ checkpoints
def _flip_array_bytes(step_dir: pathlib.Path, count: int = 64) -> pathlib.Path:
    """Overwrite ``count`` bytes in the middle of the checkpoint's largest data file, in place."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.suffix not in (".json",)]
    victim = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    mid = len(data) // 2
    data[mid:mid + count] = bytes(b ^ 0xFF for b in data[mid:mid + count])
    victim.write_bytes(bytes(data))
    return victim


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys, threading
    from dimat_jax import checkpoint
    real_save = checkpoint.RunCheckpointer.save
    def save(self, round_, tree, meta):
        if round_ == int(os.environ["KILL_AT_SAVE"]):  # SIGKILL while orbax writes this checkpoint
            threading.Timer(0.01, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
        return real_save(self, round_, tree, meta)
    checkpoint.RunCheckpointer.save = save
    from dimat_jax.main import run_cli
    sys.argv = ["dimat_jax.main"] + sys.argv[1:]
    run_cli()
""")


def test_sigkill_during_a_save_then_byte_corruption_falls_back_to_the_intact_checkpoint(tmp_path):
    """The probe: SIGKILL during the save of round 3, then 64 bytes flipped inside checkpoint 2's
    array data. The rerun must not resume from the corrupt checkpoint (it once finished at 21.8 %
    instead of 37.3 %, and rotation deleted the good one): it resumes from round 1, keeps the
    corrupt checkpoint aside, and ends with the uninterrupted run's metrics."""
    w = tmp_path / "w"
    args = QUICK + [f"--workdir={w}", "--config.rounds=4", "--config.pretrain_epochs=1", "--config.width=0.25",
                    "--config.data.steps_per_epoch=2", "--config.log.plot=false", "--config.log.progress=false",
                    "--config.pretrain.cache_dir=", "--config.merge.num_batches=1"]
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "KILL_AT_SAVE": "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpts = w / "checkpoints"
    assert (ckpts / "2").is_dir() and (ckpts / "1").is_dir()
    _flip_array_bytes(ckpts / "2")
    snapshot = {p.relative_to(ckpts / "2"): p.read_bytes() for p in (ckpts / "2").rglob("*") if p.is_file()}
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint" in r.stdout and "corrupt" in r.stdout and "resuming" in r.stdout and "after round 1" in r.stdout
    moved = list((w / "checkpoints-corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("2-")
    assert {p.relative_to(moved[0]): p.read_bytes() for p in moved[0].rglob("*") if p.is_file()} == snapshot
    resumed = report.read_metrics(w)
    from dimat_jax.config import load_config_file
    straight = load_config_file(ROOT / "configs" / "quickstart.py", {
        "rounds": 4, "pretrain_epochs": 1, "width": 0.25, "data.steps_per_epoch": 2, "log.plot": False,
        "log.progress": False, "pretrain.cache_dir": "", "merge.num_batches": 1})
    train.run(straight, tmp_path / "straight", log=lambda s: None)
    want = report.read_metrics(tmp_path / "straight")
    assert [(x["round"], x["phase"]) for x in resumed] == [(x["round"], x["phase"]) for x in want]
    assert [x["round"] for x in want][-1] == 4
    for a, b in zip(resumed, want):
        np.testing.assert_allclose(a["per_agent_test_accuracy"], b["per_agent_test_accuracy"], atol=1e-9)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # tensorstore's reader threads
def test_every_checkpoint_corrupt_is_an_error_that_deletes_nothing(tmp_path, monkeypatch):
    config = tiny_config(algorithm="local", rounds=4)
    from dimat_jax.algorithms import local
    real_round = local.Local.round

    def crash_at_3(self, state, r, services):
        if r == 3:
            raise KeyboardInterrupt
        return real_round(self, state, r, services)

    monkeypatch.setattr(local.Local, "round", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, tmp_path / "w", log=lambda s: None)
    monkeypatch.setattr(local.Local, "round", real_round)
    ckpts = tmp_path / "w" / "checkpoints"
    _flip_array_bytes(ckpts / "1")
    files = [p for p in (ckpts / "2").rglob("*") if p.is_file() and p.stat().st_size > 0]
    max(files, key=lambda p: p.stat().st_size).write_bytes(b"\0" * 7)  # truncated: orbax cannot even read it
    snapshot = {p.relative_to(ckpts): p.read_bytes() for p in ckpts.rglob("*") if p.is_file()}
    logs = []
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        train.run(config, tmp_path / "w", log=logs.append)
    moved = tmp_path / "w" / "checkpoints-corrupt"
    assert sorted(p.name.split("-")[0] for p in moved.iterdir()) == ["1", "2"]
    kept = {}
    for d in moved.iterdir():  # byte for byte what was there
        kept.update({pathlib.Path(d.name.split("-")[0]) / p.relative_to(d): p.read_bytes()
                     for p in d.rglob("*") if p.is_file()})
    assert {k: v for k, v in kept.items()} == {k: v for k, v in snapshot.items() if k.parts[0] in ("1", "2")}
    assert sum("corrupt" in line for line in logs) == 2


# ------------------------------------------------------------------------------------ the command line
@pytest.mark.parametrize("args,message", [
    (QUICK + ["--config.seed=-1"], "seed must be >= 0"),
    (QUICK + ["--config.data_dir=/x"], 'did you mean "data.data_dir"'),
    (["--config", "configs/paper/dimat.py:bad-setting"], "paper setting 'bad-setting' must be"),
    (QUICK + ["--config.algorithm=sgp_pushsum", "--config.topology=file", "--config.topology_path=/tmp"],
     "is a directory"),
])
def test_cli_errors_are_one_clear_line(args, message, tmp_path):
    r = cli(*args, f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "w" / "config.json").exists()


def test_cli_config_file_errors(tmp_path):
    (tmp_path / "syntax.py").write_text("def get_config(:\n    pass\n")
    (tmp_path / "noget.py").write_text("X = 1\n")
    for name, message in (("syntax.py", "syntax error"), ("noget.py", "defines no get_config()")):
        r = cli("--config", str(tmp_path / name), f"--workdir={tmp_path / 'w'}")
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_cli_data_errors_exit_2(tmp_path):
    (tmp_path / "junk.npz").write_text("not an archive")
    r = cli(*QUICK, "--config.dataset=npz", f"--config.data_path={tmp_path / 'junk.npz'}", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2 and "not an .npz archive" in r.stderr and "Traceback" not in r.stderr
    env = {**os.environ, "HOME": str(tmp_path), "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    r = cli(*QUICK, "--config.dataset=cifar10", f"--workdir={tmp_path / 'c'}", env=env)
    assert r.returncode == 2 and "not prepared" in r.stderr and "--config.data.data_dir" in r.stderr
    assert "Traceback" not in r.stderr


def test_batch_larger_than_a_shard_is_said_once(tmp_path):
    logs = []
    train.run(tiny_config(algorithm="local", rounds=1, num_agents=3, data__max_train_examples=30, batch_size=16),
              tmp_path / "w", log=logs.append)
    notes = [line for line in logs if "larger than the shard" in line]
    assert len(notes) == 1 and "wrap around" in notes[0]


def test_validation_keys():
    for changes, message in (({"seed": -1}, "seed"), ({"guard.divergence_factor": -1.0}, "divergence_factor"),
                             ({"data.num_classes": 3}, "applies to dataset 'npz' only")):
        c = tiny_config(**{k.replace(".", "__"): v for k, v in changes.items()})
        with pytest.raises(ConfigError, match=message):
            validate(c)
