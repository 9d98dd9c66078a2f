"""Beyond the paper, on real images: DIMAT in a shared basis, with adaptive re-matching, compressed
(bf16 / int8 / top-k) messages and partial merges (docs/algorithm.md §8), in exactly the setting of
configs/sweeps/fashion_main.py (Fashion-MNIST 6k / 1k images padded to 32x32x3, ResNet-20 w=1,
5 agents, the same pre-trained agents, 3 rounds of 1 local epoch, local merge data, full passes),
so that sweep's DIMAT, WA, SGP, CGA and local cells are the baselines. Resumable (rerun to
continue); cells run most informative first, seed varying fastest, so a partial sweep already
gives its finished rows every seed:

  python -m dimat_jax.sweep --sweep configs/sweeps/fashion_beyond.py --workdir experiments/results/fashion_beyond/sweep
  python experiments/beyond_table.py --workdir experiments/results/fashion_beyond/sweep \
      experiments/results/fashion_main/sweep --out experiments/results/fashion_beyond

1. The compute question (IID, ring, ROUNDS_LONG rounds): per-round matching in each agent's own
   basis (the paper) against a shared basis with adaptive re-matching. The first merge always
   matches, so with R rounds adaptive re-matching costs at least 1/R of per-round matching:
   3 rounds cannot show a saving beyond 1/3.
2. The variants on the ring, non-IID then IID: shared basis (always / adaptive), bf16, int8 and
   top-k messages, half the edges per round.
3. Dirichlet(0.3) label skew on the ring: DIMAT, shared basis, WA, CGA and local training.
4. The fully connected graph (TOPOLOGIES): the basis and partial-merge variants, non-IID then IID.
5. Under label skew (non-IID on both graphs, Dirichlet on the ring): match once, then only
   average in the shared basis.
6. Compressed messages on the fully connected graph.
7. The non-IID ring over ROUNDS_LONG rounds: matching once against CGA.
8. Dirichlet(0.3) on the fully connected graph: DIMAT, WA, matching once.
"""
import pathlib

from dimat_jax.config import load_config_file

SEEDS = (0, 1)
TOPOLOGIES = ("ring", "fc")
ROUNDS_LONG = 6
THRESHOLD = 0.1  # adaptive re-matching (the default since 0.02 re-matched every round in a first sweep)
MATCH_ONCE = 2.0  # no probe gain exceeds it (correlations lie in [-1, 1]): the first merge matches, later ones average
KEYS = ("algorithm", "merge_data", "merge.basis", "merge.rematch", "merge.compression", "merge.edge_fraction")
DIMAT = ("dimat", "local", "own", "always", "none", 1.0)
SHARED = ("dimat", "local", "shared", "always", "none", 1.0)
ADAPTIVE = ("dimat", "local", "shared", "adaptive", "none", 1.0)
MESSAGES = [("dimat", "local", "own", "always", c, 1.0) for c in ("bf16", "int8", "topk")]
HALF_EDGES = ("dimat", "local", "own", "always", "none", 0.5)
VARIANTS = [SHARED, ADAPTIVE, *MESSAGES, HALF_EDGES]
CGA = ("cga", "local", "own", "always", "none", 1.0)
WA = ("wa", "local", "own", "always", "none", 1.0)
DIRICHLET = [DIMAT, SHARED] + [(a, "local", "own", "always", "none", 1.0) for a in ("wa", "cga", "local")]


def get_config():
    c = load_config_file(pathlib.Path(__file__).parent / "fashion_main.py")
    c.data.alpha = 0.3  # partition=dirichlet only
    return c


def _grids(variants, threshold=THRESHOLD, **fixed) -> list[dict]:
    """Grid dicts for these variants; adaptive re-matching carries its drift threshold in the cell."""
    plain = [v for v in variants if v[3] != "adaptive"]
    adaptive = [v for v in variants if v[3] == "adaptive"]
    fixed = {k: list(v) for k, v in fixed.items()}
    seeds = {"seed": list(SEEDS)}  # last: seed varies fastest
    return ([{**fixed, KEYS: plain, **seeds}] if plain else []) + (
        [{**fixed, KEYS: adaptive, "merge.rematch_threshold": [threshold], **seeds}] if adaptive else [])


def get_grid():
    ring, others = TOPOLOGIES[0], TOPOLOGIES[1:]
    grids = _grids([DIMAT, ADAPTIVE], partition=["iid"], topology=[ring], rounds=[ROUNDS_LONG])
    for part in ("noniid", "iid"):
        grids += _grids(VARIANTS, partition=[part], topology=[ring])
    grids += _grids(DIRICHLET, partition=["dirichlet"], topology=[ring])
    for part in ("noniid", "iid"):
        grids += _grids([SHARED, ADAPTIVE, HALF_EDGES], partition=[part], topology=list(others))
    # match once, then average in the shared basis: does re-matching agents that share a start help
    # under label skew, or does it scramble them?
    grids += _grids([ADAPTIVE], threshold=MATCH_ONCE, partition=["noniid"], topology=list(TOPOLOGIES))
    grids += _grids([ADAPTIVE], threshold=MATCH_ONCE, partition=["dirichlet"], topology=[ring])
    for part in ("noniid", "iid"):
        grids += _grids(MESSAGES, partition=[part], topology=list(others))
    # the non-IID ring over ROUNDS_LONG rounds: matching once against CGA, both still rising at round 3
    grids += _grids([ADAPTIVE], threshold=MATCH_ONCE, partition=["noniid"], topology=[ring], rounds=[ROUNDS_LONG])
    grids += _grids([CGA], partition=["noniid"], topology=[ring], rounds=[ROUNDS_LONG])
    # Dirichlet(0.3) on the fully connected graph: the paper's DIMAT, matching once, WA
    grids += _grids([DIMAT, WA], partition=["dirichlet"], topology=list(others))
    grids += _grids([ADAPTIVE], threshold=MATCH_ONCE, partition=["dirichlet"], topology=list(others))
    return grids
