"""The merge engine: permutation specs, activation statistics, matching, mixing, BatchNorm re-estimation.

Typical use (see the README's "Merging" section)::

    spec = permutation_spec("resnet20", one_model_variables)
    merger = Merger(model, spec, preprocess, matcher="activation")
    merged, info = merger.merge(stacked_variables, Neighbourhood.from_matrix(W), x_train, batches)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax.merging.engine import MERGE_DATA, MergeInfo, Merger, merge_batches
from dimat_jax.merging.matching import MATCHERS, MatchContext, Matcher, lsa, weight_match_pair
from dimat_jax.merging.neighbours import ForwardPlan, Neighbourhood
from dimat_jax.merging.spec import (PermAxis, PermutationSpec, SpecError, identity_permutations, invert, permute,
                                    permute_stacked, permuted_leaf, random_permutations)

__all__ = ["MATCHERS", "MERGE_DATA", "ForwardPlan", "MatchContext", "Matcher", "MergeInfo", "Merger", "Neighbourhood",
           "PermAxis", "PermutationSpec", "SpecError", "identity_permutations", "invert", "lsa", "match_pair",
           "merge_batches", "permute", "permute_stacked", "permuted_leaf", "random_permutations", "weight_match_pair"]


def match_pair(model, spec: PermutationSpec, preprocess, a: dict, b: dict, x, *, method: str = "activation",
               batch_size: int = 128, num_batches: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Permutations that align model ``b`` to model ``a`` (apply with ``permute(b, spec, perms)``).

    ``a``/``b``: one model's ``{'params', 'batch_stats'}``; ``x``: raw images [n, H, W, C] on which
    activations are compared (``method='activation'``; ``'weight'`` ignores ``x``).
    """
    stacked = jax.tree.map(lambda u, v: jnp.stack([u, v]), dict(a), dict(b))
    hood = Neighbourhood.from_matrix(np.array([[0.5, 0.5], [0.0, 1.0]]))  # agent 0 receives agent 1
    merger = Merger(model, spec, preprocess, matcher=method, seed=seed)
    corr = None
    if merger.matcher.needs_activations:
        batches = np.repeat(merge_batches([np.arange(len(x))], "global", batch_size, num_batches, seed), 2, axis=1)
        corr = merger.correlations(stacked, jnp.asarray(x), hood, batches, shared_data=True)
    perms = merger.match(stacked, hood, corr)
    return {p: v[0, 0] for p, v in perms.items()}
