"""Matchers: for every receiver i, neighbour slot k and permutation p, an index vector that aligns
neighbour ``nbr[i, k]`` to receiver i's units (docs/algorithm.md §2.3). Result: ``{p: int32 [N, D, C_p]}``.

A :class:`Matcher` is plain data: its ``match(ctx: MatchContext) -> perms`` function and whether the
engine must run the statistics pass first (``needs_activations``). Shipped in :data:`MATCHERS`:
``activation`` (DIMAT: LSA on activation correlations), ``weight`` (WM: Git Re-Basin weight
matching) and ``identity`` (WA: plain averaging).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from dimat_jax.merging.neighbours import Neighbourhood
from dimat_jax.merging.spec import PermutationSpec, flatten, invert, permuted_leaf


@dataclasses.dataclass
class MatchContext:
    spec: PermutationSpec
    hood: Neighbourhood
    variables: Mapping | None = None            # stacked {'params', 'batch_stats'} (host or device)
    correlations: Mapping | None = None         # p -> [N, D, C, C] (activation matching)
    seed: int = 0


class Matcher(NamedTuple):
    """How a merge finds its permutations."""
    name: str
    match: Callable[[MatchContext], dict]   # -> {p: int32 [N, D, C_p]}
    needs_activations: bool                 # the statistics pass must run first


def _identity_perms(ctx: MatchContext) -> dict[str, np.ndarray]:
    n, d = ctx.hood.nbr.shape
    return {p: np.tile(np.arange(c, dtype=np.int32), (n, d, 1)) for p, c in ctx.spec.sizes.items()}


def lsa(score: np.ndarray) -> np.ndarray:
    """Column assigned to each row maximising the total ``score`` [C, C] (``perm[row] = col``)."""
    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.empty(score.shape[0], np.int32)
    perm[rows] = cols
    return perm


def identity_matcher(ctx: MatchContext) -> dict[str, np.ndarray]:
    """No alignment: the merge becomes plain weighted averaging (WA)."""
    return _identity_perms(ctx)



def activation_matcher(ctx: MatchContext) -> dict[str, np.ndarray]:
    """``linear_sum_assignment(corr, maximize=True)`` per (edge, permutation) on the host. Exact per
    layer: features come from the unpermuted models, so no iteration is needed."""
    perms = _identity_perms(ctx)
    if ctx.hood.num_edges == 0:  # nobody to align (Π = I)
        return perms
    if ctx.correlations is None:
        raise ValueError("activation matching needs correlations from the statistics pass")
    for i, _, k in ctx.hood.edges():
        for p in ctx.spec.perms:
            perms[p][i, k] = lsa(ctx.correlations[p][i, k])
    return perms



# ----------------------------------------------------------------------------- weight matching
def _units_first(x: np.ndarray, axis: int, outer: int, c: int) -> np.ndarray:
    """Move ``axis`` (size outer*c, c fastest) to a leading [c, rest] matrix."""
    x = np.moveaxis(x, axis, 0)
    x = x.reshape((outer, c) + x.shape[1:])
    return np.moveaxis(x, 1, 0).reshape(c, -1)


def weight_match_pair(spec: PermutationSpec, a: Mapping, b: Mapping, *, max_sweeps: int = 100,
                      seed: int = 0, include_batch_stats: bool = False) -> dict[str, np.ndarray]:
    """Git Re-Basin weight matching: permutations of model ``b`` that best align its weights to ``a``.

    Coordinate descent: for each permutation in random order, solve the LSA on
    Σ_(leaf, axis) W_a · P_others(W_b)ᵀ with the other permutations fixed; stop after a sweep in
    which no permutation improves its objective. ``a``/``b``: one model's variables (numpy).
    """
    fa = {k: np.asarray(v, np.float64) for k, v in flatten(a).items()}
    fb = {k: np.asarray(v, np.float64) for k, v in flatten(b).items()}
    if not include_batch_stats:
        fa = {k: v for k, v in fa.items() if k.startswith("params/")}
    perms = {p: np.arange(c) for p, c in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        progress = False
        for p in rng.permutation(list(spec.sizes)):
            c = spec.sizes[p]
            score = np.zeros((c, c))
            for path, axis, outer in spec.touched(p):
                if path not in fa:
                    continue
                wb = permuted_leaf(fb[path], spec.axes[path], perms, except_axis=axis, xp=np)
                score += _units_first(fa[path], axis, outer, c) @ _units_first(wb, axis, outer, c).T
            new = lsa(score)
            if score[np.arange(c), new].sum() > score[np.arange(c), perms[p]].sum() + 1e-12:
                perms[p] = new
                progress = True
        if not progress:
            break
    return {p: v.astype(np.int32) for p, v in perms.items()}


def weight_matcher(ctx: MatchContext, max_sweeps: int = 100) -> dict[str, np.ndarray]:
    """Weight matching (WM) of every neighbour to its receiver, on the host."""
    if ctx.variables is None:
        raise ValueError("weight matching needs the agents' variables")
    import jax
    host = jax.tree.map(np.asarray, {k: ctx.variables[k] for k in ("params", "batch_stats") if k in ctx.variables})
    model = lambda a: jax.tree.map(lambda x: x[a], host)  # noqa: E731
    perms = _identity_perms(ctx)
    for i, j, k in ctx.hood.edges():
        found = weight_match_pair(ctx.spec, model(i), model(j), max_sweeps=max_sweeps, seed=ctx.seed + 7919 * i + j)
        for p, v in found.items():
            perms[p][i, k] = v
    return perms


MATCHERS: dict[str, Matcher] = {"activation": Matcher("activation", activation_matcher, True),
                                "weight": Matcher("weight", weight_matcher, False),
                                "identity": Matcher("identity", identity_matcher, False)}


# ----------------------------------------------------------------------------- a shared basis
def universe_permutations(hood: Neighbourhood, perms: Mapping, sizes: Mapping) -> dict[str, np.ndarray]:
    """One permutation per agent into a common ("universe") basis, from the pairwise matchings of a
    round (``perms[p][i, k]`` aligns neighbour ``nbr[i, k]`` to receiver i), {p: int32 [N, C_p]}.

    Along a breadth-first spanning tree of the graph, rooted at the smallest agent of each connected
    component (which keeps its own basis): a child c reached from parent q is aligned to q by the
    matching of that edge, then carried on by q's own permutation, U_c = M_{q<-c}[U_q]. Only the
    tree's edges are used, each known to its two ends, and the result is cycle-consistent by
    construction (P_ij = U_i^-1 U_j for every pair). A decentralised run computes the same by passing
    U down the tree, one small index message per edge.
    """
    n = hood.num_agents
    align = {}  # (q, c) -> for every p: c's units in q's order
    for i, j, k in hood.edges():
        align[(i, j)] = {p: np.asarray(perms[p][i, k]) for p in sizes}
    for (i, j) in list(align):  # a directed edge (only i heard j): j aligns i by inverting i's matching
        if (j, i) not in align:
            align[(j, i)] = {p: invert(m) for p, m in align[(i, j)].items()}
    universe = {p: np.tile(np.arange(c, dtype=np.int32), (n, 1)) for p, c in sizes.items()}
    seen = set()
    for root in range(n):
        if root in seen:
            continue
        seen.add(root)
        queue = [root]
        while queue:
            q = queue.pop(0)
            for c in range(n):
                if c in seen or (q, c) not in align:
                    continue
                seen.add(c)
                for p in sizes:
                    universe[p][c] = align[(q, c)][p][universe[p][q]]
                queue.append(c)
    return universe
