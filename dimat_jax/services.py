"""What an algorithm may use of a run: :class:`Services` (train, evaluate/emit, count) and the run's
counters (:class:`RunCounters`, saved whole in every checkpoint).

An algorithm (``algorithms/``) is an object with ``init(state) -> state`` and
``round(state, r, services) -> (state, diagnostics)``: it trains through ``services.train`` (or
its own loop plus ``services.advance``), records evaluations with ``services.emit`` and reports
communication with ``services.count``. It never touches the counters or the runner directly.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import ml_collections
import numpy as np

from dimat_jax import agents, report
from dimat_jax.costs import FlopCounter
from dimat_jax.data import AgentData
from dimat_jax.guards import divergence_limit
from dimat_jax.loop import train_epochs
from dimat_jax.optim import make_optimizer


@dataclasses.dataclass
class RunCounters:
    """Cumulative epochs, local steps (per agent), messages and bytes sent (per agent), and wall time
    spent before this process (a resumed run's clock continues)."""
    num_agents: int
    epoch: int = 0
    local_steps: int = 0
    messages: list = None
    bytes: list = None
    elapsed_s: float = 0.0

    def __post_init__(self):
        self.messages = list(self.messages or [0] * self.num_agents)
        self.bytes = list(self.bytes or [0] * self.num_agents)

    def count(self, per_agent_messages, message_bytes: int, times: int = 1) -> None:
        """Agent a sent ``per_agent_messages[a] * times`` messages of ``message_bytes`` each."""
        m = np.asarray(per_agent_messages, np.int64) * times
        self.messages = (np.asarray(self.messages, np.int64) + m).tolist()
        self.bytes = (np.asarray(self.bytes, np.int64) + m * int(message_bytes)).tolist()

    def advance(self, epochs: int, steps_per_epoch: int) -> None:
        self.epoch += epochs
        self.local_steps += epochs * steps_per_epoch

    def record(self) -> dict:
        """The communication and progress fields of a metrics record."""
        return {"local_steps": self.local_steps, "messages_sent_total": int(sum(self.messages)),
                "bytes_sent_total": int(sum(self.bytes)), "messages_sent_per_agent": list(self.messages),
                "bytes_sent_per_agent": list(self.bytes)}

    @classmethod
    def from_checkpoint(cls, meta: dict, num_agents: int) -> "RunCounters":
        """The counters of a checkpoint's meta (also the layout of checkpoints written before they
        were saved whole)."""
        if "counters" in meta:
            return cls(**meta["counters"])
        return cls(num_agents=num_agents, epoch=meta["epoch"], local_steps=meta["local_steps"],
                   messages=meta["messages"], bytes=meta["bytes"], elapsed_s=meta["wall_time_s"])


@dataclasses.dataclass
class Services:
    """The run's data, model and compiled steps, and the ways an algorithm acts on the run."""
    config: ml_collections.ConfigDict
    data: AgentData
    model: object
    steps_per_epoch: int
    x_train: object
    y_train: object
    test: agents.TestSet
    eval_step: Callable
    log: Callable[[str], None]
    counters: RunCounters
    mesh: object = None            # the agents mesh (distributed.py) or None on one device
    per_agent_data: bool = False   # several processes: x_train / y_train are agent-local [N, n_max, ...]
    writer: report.MetricsWriter | None = None
    flops: FlopCounter = dataclasses.field(default_factory=FlopCounter)
    started: float = dataclasses.field(default_factory=time.perf_counter)
    _steps: dict = dataclasses.field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return agents.resolve_strategy(self.config.agents.strategy, num_agents=self.data.num_agents,
                                       algorithm=self.config.algorithm)

    @property
    def loss_limit(self) -> float:
        """The largest acceptable mean training loss (guards.py)."""
        return divergence_limit(self.data.dataset.num_classes, self.config.guard.divergence_factor)

    def wall_time(self) -> float:
        return self.counters.elapsed_s + time.perf_counter() - self.started

    # ----------------------------------------------------------------- training
    def optimizer(self, phase: str):
        c = self.config
        name, lr, decay = self._optimizer_settings(phase)
        return make_optimizer(name, lr, momentum=c.optim.momentum, nesterov=c.optim.nesterov,
                              weight_decay=c.optim.weight_decay, lr_decay=decay, steps_per_epoch=self.steps_per_epoch)

    def _optimizer_settings(self, phase: str) -> tuple:
        c = self.config
        if phase == "pretrain":
            return (c.pretrain.optimizer, c.pretrain.lr, c.pretrain.lr_decay)
        return (c.optimizer, c.lr, c.optim.lr_decay)

    def train_step(self, phase: str, bn_mode: str = "ema"):
        """(optimizer, jitted step) for ``phase`` ('pretrain' | 'local'); identical settings share
        one compiled step."""
        key = self._optimizer_settings(phase) + (bn_mode,)
        if key not in self._steps:
            tx = self.optimizer(phase)
            self._steps[key] = (tx, agents.make_train_step(self.model, tx, self.data.preprocess, self.strategy,
                                                           bn_mode=bn_mode, mesh=self.mesh,
                                                           per_agent_data=self.per_agent_data))
        return self._steps[key]

    def train(self, state, step_fn, num_epochs: int, desc: str, extra_args: Callable | None = None):
        """``num_epochs`` epochs of training for all agents from the current epoch (loop.py); advances
        the epoch / step counters. Returns (state, training stats)."""
        c = self.config
        state, stats = train_epochs(state, step_fn, shards=self.data.shards, x_train=self.x_train,
                                    y_train=self.y_train, seed=c.seed, batch_size=c.batch_size,
                                    steps_per_epoch=self.steps_per_epoch, first_epoch=self.counters.epoch,
                                    num_epochs=num_epochs, desc=desc, extra_args=extra_args, flops=self.flops,
                                    progress=c.log.progress, per_agent_data=self.per_agent_data,
                                    loss_limit=self.loss_limit)
        self.advance(num_epochs)
        return state, stats

    def advance(self, num_epochs: int) -> None:
        """Count ``num_epochs`` epochs trained by an algorithm with its own loop."""
        self.counters.advance(num_epochs, self.steps_per_epoch)

    # ----------------------------------------------------------------- evaluation and records
    def evaluate(self, variables: dict) -> dict:
        """Per-agent test ``accuracy`` and ``loss`` over the whole test set."""
        return agents.evaluate(self.eval_step, variables, self.test)

    def emit(self, variables: dict, *, round_: int, phase: str, train: dict | None = None,
             extra: dict | None = None) -> dict:
        """Evaluate ``variables``, write one metrics record, print its progress line."""
        rec = report.make_record(self.config.algorithm, self.counters, round_=round_, phase=phase,
                                 ev=self.evaluate(variables), train=train, extra=extra, wall_time_s=self.wall_time())
        self.writer.write(rec)
        self.log(report.progress_line(rec, self.config.rounds))
        return rec

    def count(self, per_agent_messages, message_bytes: int, times: int = 1) -> None:
        """Agent a sent ``per_agent_messages[a] * times`` messages of ``message_bytes`` each."""
        self.counters.count(per_agent_messages, message_bytes, times)
