"""Communication accounting: messages and bytes sent, per agent and in total.

A message is one model-sized payload from one agent to another. Π[i, j] > 0 (i ≠ j) means agent j
sends to agent i. Bytes are the real byte size of the payload (parameters, plus BatchNorm
statistics for the merge family, which mixes them too).
"""
from __future__ import annotations

import numpy as np


def payload_bytes(tree) -> int:
    """Bytes of one agent's slice of a stacked pytree (leaves [N, ...])."""
    import jax
    leaves = jax.tree.leaves(tree)
    return sum(int(np.prod(x.shape[1:])) * np.dtype(x.dtype).itemsize for x in leaves)


def senders(w: np.ndarray) -> np.ndarray:
    """[N] messages each agent sends when every agent pulls from its neighbours once: the number
    of other agents i with Π[i, j] > 0, per column j."""
    w = np.asarray(w)
    off = (w > 0) & ~np.eye(w.shape[0], dtype=bool)
    return off.sum(0)


class Counter:
    """Cumulative messages and bytes sent per agent."""

    def __init__(self, num_agents: int):
        self.messages = np.zeros(num_agents, np.int64)
        self.bytes = np.zeros(num_agents, np.int64)

    def add(self, per_agent_messages, message_bytes: int, times: int = 1) -> None:
        m = np.asarray(per_agent_messages, np.int64) * times
        self.messages += m
        self.bytes += m * int(message_bytes)

    def record(self) -> dict:
        return {"messages_sent_total": int(self.messages.sum()), "bytes_sent_total": int(self.bytes.sum()),
                "messages_sent_per_agent": self.messages.tolist(), "bytes_sent_per_agent": self.bytes.tolist()}
