"""The main comparison on real images (the README's headline table): Fashion-MNIST, 6k / 1k images
(class-stratified) padded to 32x32x3, ResNet-20 w=1, 5 agents; IID and non-IID (the reference's
split: class c to agent c mod 5); ring and fully connected; DIMAT with local merge data and with
the reference's global merge data (full passes, BatchNorm re-estimated before matching, as the
reference), WA, SGP, CGA, CDSGD, local and centralized, all from the same pre-trained agents;
3 pre-training epochs, then 3 rounds of 1 local epoch; seeds 0 and 1. 54 cells of 1.5-20 minutes on
2 CPU cores (~5 hours; CGA and the global passes take longest). The workdir lives in the
repository: finished cells' metrics are committed, so the sweep resumes across sittings (rerun the
command; finished cells are skipped) and the table can be redrawn from a checkout:

  python -m dimat_jax.sweep --sweep configs/sweeps/fashion_main.py --workdir experiments/results/fashion_main/sweep
  python experiments/real_table.py --workdir experiments/results/fashion_main/sweep --out experiments/results/fashion_main
"""
import pathlib

from dimat_jax.config import load_config_file

SEEDS = (0, 1)
TOPOLOGIES = ("ring", "fc")
COMMUNICATING = [("dimat", "local"), ("wa", "local"), ("sgp", "local"), ("cga", "local"), ("cdsgd", "local")]
CENTRALIZED = True
GLOBAL_PARTITIONS = ("iid", "noniid")  # the reference's setting: ~3 full passes per merge, the dearest cells


def get_config():
    c = load_config_file(pathlib.Path(__file__).parents[1] / "real" / "fashion_mnist.py")
    c.data.train_subset, c.data.test_subset = 6000, 1000
    c.merge.num_examples, c.merge.num_batches, c.merge.bn_before = 0, 0, True  # full passes, as the reference
    c.log.progress = False
    c.log.plot = False
    c.pretrain.cache_dir = ""  # the sweep shares <workdir>/pretrained
    return c


def get_grid():
    """Most informative first, seed varying fastest (the last key), so that a partial sweep already
    gives every finished row all its seeds: the cheap cells (1.5-3 minutes on 2 cores) and the
    reference's global merge data (~8) on the ring, the cheap cells on the fully connected graph,
    CGA (~8 on the ring) on both, then global merge data on the fully connected graph."""
    seeds, parts = list(SEEDS), ["iid", "noniid"]
    dimat_wa_sgp, cga, cdsgd = COMMUNICATING[:3], COMMUNICATING[3:4], COMMUNICATING[4:]
    grids = []
    for i, topo in enumerate(TOPOLOGIES):
        grids.append({"partition": parts, "topology": [topo], ("algorithm", "merge_data"): dimat_wa_sgp,
                      "seed": seeds})
        if i == 0:  # local training and centralized ignore the graph: once
            grids.append({"partition": parts, "algorithm": ["local"], "seed": seeds})
        grids.append({"partition": parts, "topology": [topo], ("algorithm", "merge_data"): cdsgd, "seed": seeds})
        if i == 0 and CENTRALIZED:
            grids.append({"algorithm": ["centralized"], "seed": seeds})  # one model on all the data
        if i == 0:
            grids.append(global_data(topo))
    for topo in TOPOLOGIES:
        grids.append({"partition": parts, "topology": [topo], ("algorithm", "merge_data"): cga, "seed": seeds})
    grids.append(global_data(TOPOLOGIES[1]))
    return grids


def global_data(topo):
    return {"partition": list(GLOBAL_PARTITIONS), "topology": [topo],
            ("algorithm", "merge_data"): [("dimat", "global")], "seed": list(SEEDS)}
