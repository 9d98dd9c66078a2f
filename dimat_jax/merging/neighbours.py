"""A mixing matrix as padded per-receiver neighbour lists, and the plan of forward passes for the
activation statistics.

Receiver i mixes ``Π[i, i] θ_i + Σ_k weight[i, k] · P_ik(θ_{nbr[i, k]})`` over D slots (D = the
largest number of neighbours); unused slots point at i itself with weight 0. All arrays are data
for the jitted passes, so a round with another matrix of the same D reuses the compiled code.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dimat_jax.topology import validate


@dataclasses.dataclass(frozen=True)
class Neighbourhood:
    nbr: np.ndarray          # int32 [N, D]: neighbour of receiver i in slot k (i itself when unused)
    weight: np.ndarray       # float32 [N, D]: Π[i, nbr[i, k]] (0 when unused)
    self_weight: np.ndarray  # float32 [N]: Π[i, i]
    mask: np.ndarray         # bool [N, D]: slot used

    @classmethod
    def from_matrix(cls, w, *, atol: float = 1e-12) -> "Neighbourhood":
        """Neighbour lists of a validated mixing matrix ``w`` [N, N] (rows sum to 1)."""
        w = validate(w, require_connected=False)
        n = w.shape[0]
        lists = [[j for j in range(n) if j != i and w[i, j] > atol] for i in range(n)]
        d = max((len(l) for l in lists), default=0)
        nbr = np.tile(np.arange(n, dtype=np.int32)[:, None], (1, d))
        weight = np.zeros((n, d), np.float32)
        mask = np.zeros((n, d), bool)
        for i, l in enumerate(lists):
            nbr[i, :len(l)] = l
            weight[i, :len(l)] = w[i, l]
            mask[i, :len(l)] = True
        return cls(nbr=nbr, weight=weight, self_weight=np.diag(w).astype(np.float32), mask=mask)

    @property
    def num_agents(self) -> int:
        return self.nbr.shape[0]

    @property
    def num_slots(self) -> int:
        return self.nbr.shape[1]

    @property
    def num_edges(self) -> int:
        return int(self.mask.sum())

    def edges(self) -> list[tuple[int, int, int]]:
        """(receiver i, neighbour j, slot k) of every used slot."""
        return [(i, int(self.nbr[i, k]), k) for i, k in zip(*np.nonzero(self.mask))]


@dataclasses.dataclass(frozen=True)
class ForwardPlan:
    """Which data each model is evaluated on in the statistics pass.

    Model m runs on the batches of agents ``blocks[m, :]`` (its own first, then every receiver that
    has m as a neighbour; padded with m). Receiver i's features of neighbour slot k are those of
    model ``nbr[i, k]`` on block ``src_block[i, k]`` (= i's data); its own are model i on block 0.
    With shared (global) data every model runs once: blocks [N, 1], src_block 0.
    """
    blocks: np.ndarray     # int32 [N, L]
    src_block: np.ndarray  # int32 [N, D]

    @classmethod
    def build(cls, hood: Neighbourhood, shared_data: bool) -> "ForwardPlan":
        n, d = hood.nbr.shape
        if shared_data:
            return cls(blocks=np.arange(n, dtype=np.int32)[:, None], src_block=np.zeros((n, d), np.int32))
        receivers = [[m] for m in range(n)]
        src = np.zeros((n, d), np.int32)
        for i, j, k in hood.edges():
            if i not in receivers[j]:
                receivers[j].append(i)
            src[i, k] = receivers[j].index(i)
        width = max(len(r) for r in receivers)
        blocks = np.array([r + [r[0]] * (width - len(r)) for r in receivers], np.int32)
        return cls(blocks=blocks, src_block=src)

    @property
    def blocks_per_model(self) -> int:
        return self.blocks.shape[1]
