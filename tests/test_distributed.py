"""Multi-device behaviour with forced CPU devices, in a subprocess so the rest of the suite keeps
one device: sharded runs equal unsharded ones, ring gossip compiles to collective-permutes and
fully connected gossip to an all-reduce / all-gather."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dimat_jax.distributed import ExchangePlan, collectives

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "distributed_check.py"), "4", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow  # one 4-device subprocess run shared by these tests (~90 s)
def test_four_devices_are_used(result):
    assert result["devices"] == 4


@pytest.mark.slow  # one 4-device subprocess run shared by these tests (~90 s)
@pytest.mark.parametrize("case", ["dimat-ring", "cdsgd-ring", "dimat-fc"])
def test_sharded_run_equals_single_device_run(result, case):
    r = result[case]
    assert r["records"] >= 2
    assert r["acc_diff"] <= 1e-6 and r["loss_diff"] < 1e-4


@pytest.mark.slow  # one 4-device subprocess run shared by these tests (~90 s)
def test_ring_gossip_is_collective_permute_and_fc_is_dense(result):
    ring, fc = result["hlo-ring"], result["hlo-fc"]
    assert not ring["dense_plan"] and ring["offsets"] == [1, 3]
    assert ring.get("collective-permute", 0) > 0
    assert "all-gather" not in ring and "all-reduce" not in ring  # no agent sees the whole stack
    assert fc["dense_plan"] and "collective-permute" not in fc
    assert fc.get("all-reduce", 0) + fc.get("all-gather", 0) > 0


@pytest.mark.slow  # one 4-device subprocess run shared by these tests (~90 s)
def test_indivisible_agent_count_is_refused(result):
    assert "not divisible by mesh.devices = 3" in result["indivisible"]


def test_exchange_plan_by_hand():
    # 8 agents on 4 devices (2 each), ring: device d needs blocks of d - 1 and d + 1 (offsets 3 and 1)
    nbr = np.array([[(i - 1) % 8, (i + 1) % 8] for i in range(8)])
    plan = ExchangePlan.build(nbr, 4)
    assert plan.offsets == (1, 3) and not plan.dense
    # agent 0 (device 0, local 0): neighbour 7 lives on device 3 = offset 3 -> block 2, row 1 -> 2*2+1
    # neighbour 1 is local row 1
    assert plan.cand[0].tolist() == [5, 1]
    # agent 3 (device 1, local 1): neighbour 2 local row 0; neighbour 4 on device 2 = offset 1 -> block 1, row 0
    assert plan.cand[3].tolist() == [0, 2]
    fc = ExchangePlan.build(np.array([[j for j in range(8) if j != i] for i in range(8)]), 4)
    assert fc.dense and fc.cand[0].tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_collective_counter():
    text = "%a = f32[2] collective-permute(%x)\n%b = f32[8] all-gather-start(%y)\n%c = f32[8] all-reduce(%z)"
    assert collectives(text) == {"collective-permute": 1, "all-gather": 1, "all-reduce": 1}
