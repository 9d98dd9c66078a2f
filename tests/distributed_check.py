"""Run by tests/test_distributed.py in a subprocess with forced CPU devices; prints one JSON line."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[1]}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from dimat_jax import agents, report, train  # noqa: E402
from dimat_jax.algorithms.gossip import init_opt_state, make_gossip_step  # noqa: E402
from dimat_jax.config import ConfigError, get_default_config  # noqa: E402
from dimat_jax.data.pipeline import Preprocess  # noqa: E402
from dimat_jax.distributed import ExchangePlan, collectives, make_mesh, replicate, shard_agents  # noqa: E402
from dimat_jax.merging.neighbours import Neighbourhood  # noqa: E402
from dimat_jax.models import build_model  # noqa: E402
from dimat_jax.topology import build  # noqa: E402

out_dir = sys.argv[2]
result = {"devices": jax.device_count()}


def tiny(algorithm, topology, devices):
    c = get_default_config()
    c.algorithm, c.topology, c.num_agents, c.width = algorithm, topology, 4, 0.25
    c.pretrain_epochs, c.rounds, c.local_epochs, c.batch_size = 1, 1, 1, 16
    c.data.steps_per_epoch, c.merge.batch_size, c.merge.num_batches = 3, 32, 1
    c.log.progress, c.log.plot, c.mesh.devices = False, False, devices
    return c


# 1. sharded over 4 devices == one device, end to end
for algorithm, topology in (("dimat", "ring"), ("cdsgd", "ring"), ("dimat", "fc")):
    runs = {}
    for devices in (1, 4):
        wd = f"{out_dir}/{algorithm}-{topology}-{devices}"
        train.run(tiny(algorithm, topology, devices), wd, log=lambda s: None)
        runs[devices] = report.read_metrics(wd)
    result[f"{algorithm}-{topology}"] = {
        "acc_diff": max(abs(a["mean_test_accuracy"] - b["mean_test_accuracy"]) for a, b in zip(runs[1], runs[4])),
        "loss_diff": max(abs(a["mean_test_loss"] - b["mean_test_loss"]) for a, b in zip(runs[1], runs[4])),
        "records": len(runs[4])}

# 2. the collectives the gossip step compiles to
mesh = make_mesh(4, 8)
model = build_model("cnn", 10, 0.25)
pre = Preprocess((0.3,), (0.4,), 16.0)
tx_state = agents.init_variables(model, (8, 8, 1), 8, 0)
x = replicate(jnp.zeros((64, 8, 8, 1), jnp.uint8), mesh)
y = replicate(jnp.zeros((64,), jnp.int32), mesh)
idx = jnp.arange(8 * 8, dtype=jnp.int32).reshape(8, 8)
for topology in ("ring", "fc"):
    w = build(topology, 8).matrix()
    hood = Neighbourhood.from_matrix(w)
    plan = ExchangePlan.build(hood.nbr, 4)
    step = make_gossip_step(model, pre, "cdsgd", mesh=mesh, plan=plan)
    state = shard_agents(agents.AgentState(params=tx_state["params"], batch_stats=tx_state["batch_stats"],
                                           opt_state=init_opt_state("cdsgd", tx_state["params"])), mesh)
    mixing = jnp.asarray(w, jnp.float32) if plan.dense else (jnp.asarray(hood.weight), jnp.asarray(hood.self_weight))
    hlo = step.lower(state, x, y, idx, jax.random.PRNGKey(0), mixing, jnp.float32(0.1)).compile().as_text()
    result[f"hlo-{topology}"] = {"dense_plan": plan.dense, "offsets": list(plan.offsets), **collectives(hlo)}

# 3. an agent count the mesh cannot split is refused before any work
try:
    c = tiny("dimat", "ring", 3)
    from dimat_jax.config import validate
    validate(c)
    result["indivisible"] = "accepted"
except ConfigError as e:
    result["indivisible"] = str(e)

print("RESULT " + json.dumps(result))
