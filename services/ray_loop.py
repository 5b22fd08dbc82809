"""The active-learning loop (DRAL Algorithm 1) on a Ray cluster.

:class:`RayActiveLearningLoop` is ``ActiveLearningLoop`` with its override points moved onto the cluster:

* the strategy lives in an :class:`~services.agent_service.AgentService` actor (acting and learning);
* the oracle, budget and Parquet answer log in a :class:`~services.labelling_service.LabellingService`
  actor (restarted by Ray from its log when it dies; its calls are retried and idempotent);
* each round's questions are asked by ``ray.env_workers`` environment workers in lock-step
  (``services/env_workers.py``): deterministic, and identical to the one-process loop with one worker;
* feature extraction runs as Ray tasks over shards, pre-training and fine-tuning through Ray Train
  (``trainers/ray_train.py``).

Round checkpoints, outputs and resume-by-replay are the core loop's: a killed driver started again
with the same config continues from the answer log and the last completed round. A restarted agent or
environment worker (lost in-memory state) is recovered inside the round: the agent's round-start
snapshot is reloaded and the round replayed from the log, so the run asks what it would have asked.
"""
from __future__ import annotations

import copy
import logging
import os
import uuid
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import RayActorError

from reidloop import atomic, crashpoints
from reidloop.active.finetune import FinetuneStats, finetune_data
from reidloop.active.loop import (ActiveLearningLoop, ReplayingOracle, ResumeDiverged, answered_pairs,
                                  nearest_candidates_all)
from reidloop.active.warmstart import WarmStartStats
from reidloop.config import ConfigError, LoopJob, RayConfig
from reidloop.pair_knowledge import PairKnowledge
from trainers.ray_train import fit_finetune, fit_pretrain

from .agent_service import AgentService, RemoteStrategy
from .embedding import embed_records
from .env_workers import EnvWorker, LostActorState, prepare_workers, run_lockstep
from .labelling_service import Question, ServiceOracle, pair_key, start_labelling_service
from .ray_calls import died

log = logging.getLogger(__name__)

ROUND_RECOVERIES = 3  # agent / env-worker restarts survived per round before giving up
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by `ray job submit` for the entrypoint


def connect(cfg: RayConfig) -> None:
    """Join the cluster this job runs on (``ray.address``, else $RAY_ADDRESS as `ray job submit` sets it),
    or start a local Ray when there is none. OMP_NUM_THREADS of the driver is passed on to the workers."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {}
    # fault injection (reidloop.crashpoints) reaches the actors too
    env = {**({"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]} if os.environ.get("OMP_NUM_THREADS") else {}),
           **crashpoints.fault_env()}
    if env and JOB_CONFIG_ENV not in os.environ:  # inside a submitted job the job's runtime env rules
        kwargs["runtime_env"] = {"env_vars": env}
    if address:
        ray.init(address=address, **kwargs)
    else:
        from .ray_auth import init_local  # a new local Ray with token authentication

        init_local(include_dashboard=False, **kwargs)


class RoundAsker:
    """Batched questions of one round through the service, replaying first when resuming.

    With a :class:`ReplayingOracle` the logged answers of the interrupted round are served back in
    their logged order, free; pairs still waiting to be replayed are not "known" yet (as at that point
    of the interrupted run); a pair answered earlier (e.g. by another episode of the same lock-step)
    is free as always. Anything else while replays are pending means the run diverged.

    With ``knowledge`` (``infer_answers``), "known" is everything the answers so far imply: it is
    answered here without a call, implied questions are never sent, and every answer is learnt.
    """

    def __init__(self, oracle, knowledge: Optional[PairKnowledge] = None) -> None:
        self.replay: Optional[ReplayingOracle] = oracle if isinstance(oracle, ReplayingOracle) else None
        self.service: ServiceOracle = oracle.oracle if self.replay is not None else oracle
        self.knowledge = knowledge

    def known_batch(self, requests: list[tuple[int, Sequence[int]]]) -> list[list[Optional[int]]]:
        if self.knowledge is not None:
            return [[self.knowledge.infer(q, int(c)) for c in cands] for q, cands in requests]
        out = self.service.known_batch(requests)
        if self.replay is not None and self.replay.pending:
            waiting = {pair_key(q, c) for q, c, _ in self.replay.pending}
            out = [[None if pair_key(q, int(c)) in waiting else y for c, y in zip(cands, ys)]
                   for (q, cands), ys in zip(requests, out)]
        return out

    def ask_batch(self, questions: list[Question], strategy: str) -> list[Optional[int]]:
        answers = self._ask_batch(questions, strategy)
        if self.knowledge is not None:
            for (q, c, _, _), y in zip(questions, answers):
                if y is not None:  # a pair paid once and served again in the same lock-step adds nothing
                    self.knowledge.add(q, c, y)
        return answers

    def _ask_batch(self, questions: list[Question], strategy: str) -> list[Optional[int]]:
        answers: list[Optional[int]] = []
        i = 0
        while self.replay is not None and self.replay.pending and i < len(questions):
            q, c, r, step = questions[i]
            hq, hc, _ = self.replay.pending[0]
            if pair_key(q, c) == pair_key(hq, hc):
                answers.append(self.replay.ask(q, c, round=r, step=step, strategy=strategy))
            else:
                y = self.replay.known(q, c)  # None for a pair still waiting: asked out of order
                if y is None:
                    raise ResumeDiverged(f"resumed run asked ({q}, {c}) where the log has ({hq}, {hc}); "
                                         "was the config or code changed between the runs?")
                answers.append(y)
            i += 1
        return answers + self.service.ask_batch(questions[i:], strategy)


class RayActiveLearningLoop(ActiveLearningLoop):
    """``ActiveLearningLoop`` on Ray: actors for agent, labelling and episodes; Ray Train; sharded embedding."""

    def __init__(self, job: LoopJob, progress: bool = True, on_round=None, lease_wait_s: float = 0.0) -> None:
        if job.dral.reward != "eq9":
            raise ConfigError(f"dral.reward: {job.dral.reward!r} runs in one process for now (run_job --local)")
        if job.rounds != "queries":
            raise ConfigError(f"rounds: {job.rounds!r} runs in one process for now (run_job --local); "
                              "the Ray loop cuts rounds by queries")
        super().__init__(job, progress, on_round, lease_wait_s)
        self.agent: RemoteStrategy | None = None
        self.service: ServiceOracle | None = None
        self.workers: list = []
        self.recoveries: list[str] = []  # one line per round replayed after losing an actor's state

    def close(self) -> None:
        self.shutdown()

    def run_rounds(self):
        try:
            return super().run_rounds()
        except RayActorError as exc:  # gone for good (restarts spent): the job ends naming the actor
            raise died(exc, self._roles(), self.job.ray.actor_max_restarts) from exc

    def _roles(self) -> dict[str, str]:
        """Actor id → what it is in this run, for error messages."""
        roles = {h.handle._actor_id.hex(): what for h, what in ((self.agent, "the agent actor (AgentService)"),
                                                                (self.service, "the labelling service (LabellingService)"))
                 if h is not None}
        roles.update({w._actor_id.hex(): f"env worker {i} (EnvWorker)" for i, w in enumerate(self.workers)})
        return roles

    def shutdown(self) -> None:
        """Stop this run's actors (the answer log and checkpoints stay)."""
        handles = [*self.workers, *(h.handle for h in (self.agent, self.service) if h is not None)]
        for handle in handles:
            ray.kill(handle, no_restart=True)
        self.workers, self.agent, self.service = [], None, None

    @property
    def run_tag(self) -> str:
        """Names this run's Ray Train runs: stable across restarts of the driver, new for a new output_dir."""
        path = self.out / "ray_run_id"
        if not path.exists():
            atomic.write_text(path, uuid.uuid4().hex[:8])
        return f"{self.out.name}-{path.read_text().strip()}"

    # ---- the override points of ActiveLearningLoop
    def pretrain(self, model, labelled) -> None:
        history = fit_pretrain(model, labelled, self.job, name=f"{self.run_tag}-pretrain")
        if history:
            log.info("pre-trained %d epochs on %d images through Ray Train (%d workers): loss %.4f",
                     len(history), len(labelled), self.job.ray.train_workers, history[-1]["loss"])

    def make_strategy(self) -> RemoteStrategy:
        job = self.job
        restarts = job.ray.actor_max_restarts
        handle = AgentService.options(max_restarts=restarts, max_task_retries=0).remote(job.strategy, job.dral,
                                                                                      job.seed)
        self.agent = RemoteStrategy(handle, job.ray.call_timeout_s, job.ray.task_timeout_s)
        # The env workers start alongside (process start-up overlaps); the ask rounds use them.
        self.workers = [EnvWorker.options(max_restarts=restarts, max_task_retries=0).remote(job.dral)
                        for _ in range(job.ray.env_workers)]
        if not self.agent.asks_questions:  # Baseline / UpperBound: no episodes to step
            for worker in self.workers:
                ray.kill(worker, no_restart=True)
            self.workers = []
        return self.agent

    def open_oracle(self, pids: np.ndarray, budget: int, pool):
        out = self.out.resolve()
        self.service = start_labelling_service(str(out / "answers"), str(out / "pool.parquet"), pids,
                                               [r.path for r in pool], self.job.oracle, budget,
                                               self.job.ray.actor_max_restarts,
                                               call_timeout_s=self.job.ray.call_timeout_s)
        return self.service, self.service

    def embed(self, model, records, desc: str) -> np.ndarray:
        job, cfg = self.job, self.job.ray
        return embed_records(model, records, height=job.data.height, width=job.data.width, amp=job.eval.amp,
                             batch_size=job.eval.batch_size, num_workers=job.data.num_workers,
                             shards=cfg.train_workers, num_cpus=cfg.cpus_per_train_worker,
                             num_gpus=1 if cfg.use_gpu else 0, timeout_s=cfg.task_timeout_s)

    def finetune(self, model, pool, mode: str, round_: int, pairs: tuple, pids: np.ndarray,
                 truth: Optional[np.ndarray] = None):
        q, c, y = pairs
        data = finetune_data(len(pool), self.job.finetune, mode, queries=q, candidates=c, answers=y,
                             pool_labels=pids, truth=truth)
        if data is None or self.job.finetune.epochs == 0:
            return FinetuneStats(0, 0, 0.0, 0.0, 0.0)
        return fit_finetune(model, pool, self.job, data, seed=self.job.seed + round_,
                            name=f"{self.run_tag}-round{round_}-finetune")

    def warm_start(self, strategy, features: np.ndarray, pids: np.ndarray) -> WarmStartStats:
        """The warm-up episodes run inside the agent actor, where the agent lives."""
        job = self.job
        return WarmStartStats(**strategy.warm_start(features, pids, job.dral, job.dral.warmstart_passes,
                                                    job.finetune.every, job.seed))

    def ask_round(self, round_: int, queries: np.ndarray, features: np.ndarray, metric, strategy, oracle,
                  knowledge: Optional[PairKnowledge] = None) -> None:
        """The round's episodes on the env workers in lock-step; recovers lost agent / worker state by replay."""
        job = self.job
        cands = nearest_candidates_all(features, metric, queries, job.dral.ns)
        ctx_ref = strategy.context_for(features, metric)
        if ctx_ref is None:  # not what the agent's round began with: the workers get their own copy
            ctx_ref = ray.put((features, metric))
        asker = oracle
        try:
            for attempt in range(ROUND_RECOVERIES + 1):
                try:
                    slots = prepare_workers(self.workers, ctx_ref, job.ray.call_timeout_s)
                    # a replayed round starts again from the round's knowledge
                    round_knowledge = copy.deepcopy(knowledge)
                    run_lockstep(slots, strategy, RoundAsker(asker, round_knowledge), queries, cands, round_,
                                 job.dral.kmax)
                    return
                except (LostActorState, RayActorError) as exc:
                    if attempt == ROUND_RECOVERIES:
                        raise
                    log.warning("round %d: %s — restoring the agent and replaying the round from the log",
                                round_, exc)
                    self.recoveries.append(f"round {round_}: {type(exc).__name__}: {exc}")
                    strategy.restore_round_start()
                    asker = self._round_replay(round_, oracle)
        finally:
            if asker is not oracle and isinstance(oracle, ReplayingOracle):
                oracle.pending.clear()  # the recovery replayed every logged answer of the round

    def _round_replay(self, round_: int, oracle) -> ReplayingOracle:
        """A ReplayingOracle over every answer logged so far for this round."""
        service = oracle.oracle if isinstance(oracle, ReplayingOracle) else oracle
        table = service.read()
        rows = table.filter(pa.array(table.column("round").to_numpy() >= round_))
        return ReplayingOracle(service, list(zip(*answered_pairs(rows))))
