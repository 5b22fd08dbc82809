"""The labelling service: a Ray actor owning the simulated oracle, the budget and the Parquet answer log.

It answers questions (q, g) with y = ±1 (DRAL Eq. 6) strictly in the order it is given them and is
*idempotent*: a pair already in the log is answered from the log, free of budget. Its state is the log
and the pool file (``pool.parquet``: index, person id, path) — the actor is created with
``max_restarts`` (``ray.actor_max_restarts``) and as many task retries, so when it dies Ray restarts it,
its constructor rebuilds oracle and budget from those files (``SimulatedOracle`` resumes from its log),
and the call that was in flight is retried and gets the same answers without being counted twice. Once
the restarts are spent the call fails and the job ends, naming the service (``services.ray_calls``).

Durability: each ``ask_batch`` is written as one Parquet part (temporary file, fsync, atomic rename)
*before* the reply leaves the actor, so no answer anyone has seen can be lost — the guarantee of
``flush_every=1`` at one fsync per batch instead of one per answer (5–13 ms each on this machine).

:class:`ServiceOracle` is the driver's view of the actor (oracle and answer log in one). This module
is imported by the actor's process: pyarrow and numpy, never torch.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from reidloop import atomic
from reidloop.answer_log import AnswerLog
from reidloop.config.schema import OracleConfig
from reidloop.oracle import BudgetExhausted, Question, SimulatedOracle

from .ray_calls import wait

NAMESPACE = "reidloop"


def pair_key(q: int, c: int) -> tuple[int, int]:
    return (q, c) if q < c else (c, q)


@ray.remote(num_cpus=0)
class LabellingService:
    """Oracle + budget + durable answer log in one actor; every method runs in arrival order."""

    def __init__(self, log_dir: str, pool_file: str, cfg: OracleConfig) -> None:
        pool = pq.read_table(pool_file)
        # No automatic flush: ask_batch writes one part per batch before replying.
        self.log = AnswerLog(log_dir, flush_every=sys.maxsize)
        self.oracle = SimulatedOracle(pool.column("pid").to_numpy(), cfg, log=self.log,
                                      paths=pool.column("path").to_pylist())

    def pid(self) -> int:
        return os.getpid()

    def known_batch(self, requests: list[tuple[int, Sequence[int]]]) -> list[list[Optional[int]]]:
        """The recorded answer of each request's (query, candidate) pairs, None where it was never asked."""
        return self.oracle.known_batch(requests)

    def ask_batch(self, questions: list[Question], strategy: str) -> list[Optional[int]]:
        """Answers in the given order; a logged pair returns its answer free; None from the first question
        the budget cannot pay for (and for all after it). The answers are durable when this returns."""
        out = self.oracle.ask_batch(questions, strategy)
        self.log.flush()
        return out

    def used(self) -> int:
        return self.oracle.used

    def remaining(self) -> Optional[int]:
        """Questions the budget can still pay for; None when unlimited."""
        return self.oracle.remaining

    def status(self) -> tuple[int, Optional[int]]:
        """(used, remaining) in one call."""
        return self.oracle.used, self.oracle.remaining

    def table(self) -> pa.Table:
        return self.log.read()

    def flush(self) -> None:
        self.log.flush()

    def compact(self) -> None:
        self.log.compact()

    def close(self) -> None:
        self.log.close()


def service_name(log_dir: str) -> str:
    """One writer per answer log: the actor's name is derived from the log's absolute path."""
    return f"labelling:{log_dir}"


class ServiceOracle:
    """The driver's handle on the labelling service, shaped like both the oracle and the answer log
    that ``ActiveLearningLoop.run`` uses (``used``, ``remaining``, ``known``, ``ask``; ``read``,
    ``flush``, ``compact``, ``close``), plus the batched calls of the lock-step."""

    def __init__(self, handle, timeout_s: float = 600.0, name: str = "labelling service") -> None:
        self.handle, self.timeout_s, self.name = handle, timeout_s, name

    def _get(self, ref, method: str):
        return wait(ref, self.timeout_s, f"{self.name}.{method}")

    @property
    def used(self) -> int:
        return self._get(self.handle.status.remote(), "status")[0]

    @property
    def remaining(self) -> Optional[int]:
        return self._get(self.handle.status.remote(), "status")[1]

    def known(self, query: int, candidate: int) -> Optional[int]:
        return self._get(self.handle.known_batch.remote([(int(query), [int(candidate)])]), "known_batch")[0][0]

    def known_batch(self, requests: list[tuple[int, Sequence[int]]]) -> list[list[Optional[int]]]:
        return self._get(self.handle.known_batch.remote(requests), "known_batch") if requests else []

    def ask_batch(self, questions: list[Question], strategy: str) -> list[Optional[int]]:
        return self._get(self.handle.ask_batch.remote(questions, strategy), "ask_batch") if questions else []

    def ask(self, query: int, candidate: int, *, round: int, step: int, strategy: str) -> int:
        y = self.ask_batch([(int(query), int(candidate), round, step)], strategy)[0]
        if y is None:
            raise BudgetExhausted("annotation budget is spent")
        return y

    def read(self) -> pa.Table:
        return self._get(self.handle.table.remote(), "table")

    def flush(self) -> None:
        self._get(self.handle.flush.remote(), "flush")

    def compact(self) -> None:
        self._get(self.handle.compact.remote(), "compact")

    def close(self) -> None:
        self._get(self.handle.close.remote(), "close")


def start_labelling_service(log_dir: str, pool_file: str, pids: np.ndarray, paths: Sequence[str],
                            cfg: OracleConfig, budget: int, max_restarts: int,
                            wait_s: float = 60.0, call_timeout_s: float = 600.0,
                            runtime_env: Optional[dict] = None) -> ServiceOracle:
    """Create the named service for ``log_dir`` once an earlier one (a killed driver's) is gone.

    The pool — pool index, person id, image path: what the answer log's indices refer to — is written
    to ``pool_file`` first; the actor reads it, so every restart rebuilds from files alone.
    """
    name = service_name(log_dir)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"another run is writing the answer log {log_dir} (actor {name!r} is alive)")
        time.sleep(0.2)  # a killed driver's actors are reaped by Ray within a few seconds
    atomic.write_parquet(pa.table({"index": np.arange(len(pids)), "pid": np.asarray(pids, dtype=np.int64),
                                   "path": list(paths)}), pool_file)
    # calls are idempotent, so each is retried across the (bounded) restarts of the actor
    handle = LabellingService.options(name=name, namespace=NAMESPACE, max_restarts=max_restarts,
                                      max_task_retries=max_restarts, runtime_env=runtime_env,
                                      ).remote(log_dir, pool_file, replace(cfg, budget=budget))
    return ServiceOracle(handle, call_timeout_s, f"the labelling service {name!r}")
