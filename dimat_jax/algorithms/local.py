"""``local`` (each agent trains alone, Π = I) and ``centralized`` (one model on all data).

Both continue from the pre-trained agents with the local optimizer (``optimizer``, ``lr``) and
evaluate every ``local_epochs`` epochs; nothing is communicated.
"""
from __future__ import annotations

from dimat_jax import agents


def run(ctx, state, topology=None):
    c = ctx.config
    if not c.rounds:
        return state
    tx, step = ctx.train_step("local")
    state = state.replace(opt_state=agents.init_opt_state(tx, state.params))
    for r in range(1, c.rounds + 1):
        state, stats = ctx.train(state, step, c.local_epochs, f"round {r}/{c.rounds}")
        ctx.emit(state.variables, round_=r, phase="trained", train=stats)
    return state
