"""End to end on the embedded digits: outputs, metrics keys, centralized, safety of workdirs."""
import json
import math
import pathlib

import numpy as np
import pytest

from dimat_jax import report, train
from tiny_config import tiny_config

REQUIRED = {"round", "epoch", "algorithm", "mean_test_accuracy", "std_test_accuracy", "per_agent_test_accuracy",
            "mean_test_loss", "wall_time_s"}


def tiny(**kw):
    return tiny_config(**{"data__steps_per_epoch": 3, "log__plot": True, "agents__strategy": "auto", **kw})


def test_local_run_writes_outputs(tmp_path):
    logs = []
    summary = train.run(tiny(partition="dirichlet", data__alpha=1.0), tmp_path / "w", log=logs.append)
    w = tmp_path / "w"
    for f in ["config.json", "partition.json", "metrics.jsonl", "summary.json", "accuracy.png"]:
        assert (w / f).is_file(), f
    recs = report.read_metrics(w)
    assert [r["round"] for r in recs] == [0, 1, 2]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert [r["local_steps"] for r in recs] == [3, 6, 9]
    for r in recs:
        assert REQUIRED <= set(r)
        assert r["algorithm"] == "local" and len(r["per_agent_test_accuracy"]) == 3
        assert r["mean_test_accuracy"] == pytest.approx(np.mean(r["per_agent_test_accuracy"]))
        assert r["std_test_accuracy"] == pytest.approx(np.std(r["per_agent_test_accuracy"]))
        assert r["messages_sent_total"] == 0 and r["bytes_sent_total"] == 0
    part = json.loads((w / "partition.json").read_text())
    assert sum(part["shard_sizes"]) == 1433 and np.array(part["label_histograms"]).shape == (3, 10)
    assert json.loads((w / "config.json").read_text())["partition"] == "dirichlet"
    assert summary["final_mean_test_accuracy"] == recs[-1]["mean_test_accuracy"]
    assert any("label histogram" in line for line in logs) and "final accuracy per agent" in logs[-1]
    # the same workdir is never overwritten
    before = (w / "metrics.jsonl").read_text()
    with pytest.raises(train.WorkdirError, match="holds a run with other settings"):
        train.run(tiny(), w, log=lambda s: None)
    assert (w / "metrics.jsonl").read_text() == before


def test_training_learns_something(tmp_path):
    c = tiny(num_agents=2, width=0.5, pretrain_epochs=6, rounds=1, partition="iid")
    c.data.steps_per_epoch = 0
    train.run(c, tmp_path / "w", log=lambda s: None)
    recs = report.read_metrics(tmp_path / "w")
    assert recs[-1]["mean_test_accuracy"] > 0.6  # chance is 0.1
    assert recs[-1]["mean_train_loss"] < recs[0]["mean_train_loss"]


def test_centralized_is_one_model_on_all_data(tmp_path):
    train.run(tiny(algorithm="centralized", rounds=1), tmp_path / "c", log=lambda s: None)
    recs = report.read_metrics(tmp_path / "c")
    assert all(r["num_agents"] == 1 and len(r["per_agent_test_accuracy"]) == 1 for r in recs)
    assert all(r["std_test_accuracy"] == 0 for r in recs)
    part = json.loads((tmp_path / "c" / "partition.json").read_text())
    assert part["shard_sizes"] == [1433]


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    c = tiny(optimizer="sgd", lr=1e12, pretrain_epochs=0, rounds=2)
    with pytest.raises(train.NonFiniteError, match=r"agent\(s\) \[0, 1, 2\]"):
        train.run(c, tmp_path / "n", log=lambda s: None)
    recs = report.read_metrics(tmp_path / "n")  # still valid JSON lines
    assert [r["round"] for r in recs] == [0]
    assert all(math.isfinite(r["mean_test_loss"]) for r in recs)


def read_tensorboard_scalars(folder) -> dict:
    """{(tag, step): value} from every event file under ``folder`` — parsed here from the TFRecord
    framing (length, CRC, payload, CRC) with tensorboardX's Event protobuf, independently of the writer."""
    import struct

    from tensorboardX.proto import event_pb2
    out = {}
    for f in sorted(pathlib.Path(folder).rglob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out[(v.tag, event.step)] = v.simple_value
    return out


def test_tensorboard_events_carry_the_records(tmp_path):
    c = tiny(algorithm="dimat", num_agents=3, rounds=2, log__tensorboard=True, merge__num_batches=1,
             merge__batch_size=32)
    train.run(c, tmp_path / "w", log=lambda s: None)
    recs = report.read_metrics(tmp_path / "w")
    scalars = read_tensorboard_scalars(tmp_path / "w" / "tensorboard")
    for r in recs:
        assert scalars[(f"{r['phase']}/mean_test_accuracy", r["round"])] == pytest.approx(r["mean_test_accuracy"],
                                                                                          rel=1e-6)
        assert scalars[(f"{r['phase']}/bytes_sent_total", r["round"])] == pytest.approx(r["bytes_sent_total"])
    assert scalars[("merged/merge_gflops", 1)] == pytest.approx(recs[1]["merge_gflops"], rel=1e-6)


def test_a_workdir_from_an_earlier_version_resumes_when_new_settings_hold_their_defaults(tmp_path):
    """A run saved before a setting existed resumes if the setting is at its default (the earlier
    behaviour); at another value it is a different run and refused."""
    from dimat_jax import workdir as workdir_lib
    c = tiny()
    w = tmp_path / "w"
    (w / "checkpoints").mkdir(parents=True)
    saved = c.to_dict()
    del saved["merge"]["basis"], saved["merge"]["topk_fraction"]  # as written by a version without them
    (w / "config.json").write_text(json.dumps(saved))
    (w / "metrics.jsonl").write_text("")
    assert workdir_lib.check_workdir(w, c) == "resume"
    c.merge.basis = "shared"
    with pytest.raises(train.WorkdirError, match=r"merge.basis: None there, 'shared' now"):
        workdir_lib.check_workdir(w, c)
