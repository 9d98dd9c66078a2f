"""``local`` (each agent trains alone, Π = I) and ``centralized`` (one model on all data).

Both continue from the pre-trained agents with the local optimizer (``optimizer``, ``lr``; fresh
at round 1, then kept) and evaluate every ``local_epochs`` epochs; nothing is communicated.
"""
from __future__ import annotations

from dimat_jax import agents
from dimat_jax.algorithms import Algorithm


class Local(Algorithm):
    def __init__(self, services, topology=None):
        self.tx, self.step = services.train_step("local")

    def init(self, state):
        return state.replace(opt_state=agents.init_opt_state(self.tx, state.params))

    def round(self, state, r: int, services):
        c = services.config
        state, stats = services.train(state, self.step, c.local_epochs, f"round {r}/{c.rounds}")
        services.emit(state.variables, round_=r, phase="trained", train=stats)
        return state, {}
