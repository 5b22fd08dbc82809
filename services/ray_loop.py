"""The active-learning loop (DRAL Algorithm 1) on a Ray cluster.

:class:`RayActiveLearningLoop` is ``ActiveLearningLoop`` with its override points moved onto the cluster:

* the strategy lives in an :class:`~services.agent_service.AgentService` actor (acting and learning);
* the oracle, budget and Parquet answer log in a :class:`~services.labelling_service.LabellingService`
  actor (restarted by Ray from its log when it dies; its calls are retried and idempotent);
* each round's questions are asked by the one episode engine (``reidloop.active.engine.run_round``, in the
  driver) over ``ray.env_workers`` environment workers in lock-step (``services/env_workers.py``):
  deterministic, and identical to the one-process loop with one worker;
* feature extraction runs as Ray tasks over shards, pre-training and fine-tuning through Ray Train
  (``services/ray_train.py``); their progress bars and our log lines made in them are shown by this driver
  (``services/progress.py``: the workers' own console output does not reach it, ``log_to_driver=False``).

Round checkpoints, outputs and resume-by-replay are the core loop's: a killed driver started again
with the same config continues from the answer log and the last completed round. A restarted agent or
environment worker (lost in-memory state) is recovered inside the round: the agent's round-start
snapshot is reloaded and the round replayed from the log, so the run asks what it would have asked.
"""
from __future__ import annotations

import copy
import logging
import uuid
from typing import Optional

import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import RayActorError

from reidloop import atomic
from reidloop.active.finetune import FinetuneStats, finetune_data
from reidloop.active.askers import ReplayingOracle, RoundQuota
from reidloop.active.loop import ActiveLearningLoop, answered_pairs
from reidloop.active.warmstart import WarmStartStats
from reidloop.answer_log import effective
from reidloop.config import LoopJob, RayConfig
from reidloop.pair_knowledge import PairKnowledge

from .agent_service import AgentService, RemoteStrategy
from .embedding import embed_records
from .env_workers import EnvWorker, LostActorState, RemoteSlots
from .labelling_service import ServiceOracle, start_labelling_service
from .progress import Relay
from .ray_calls import died
from .ray_start import start_or_join
from .ray_train import fit_adapt, fit_finetune, fit_pretrain

log = logging.getLogger(__name__)

ROUND_RECOVERIES = 3  # agent / env-worker restarts survived per round before giving up


def connect(cfg: RayConfig) -> None:
    """Join the cluster this job runs on (``ray.address``, else $RAY_ADDRESS as `ray job submit` sets it),
    or start a local Ray when there is none (:func:`services.ray_start.start_or_join`)."""
    start_or_join(cfg.address)


class RayActiveLearningLoop(ActiveLearningLoop):
    """``ActiveLearningLoop`` on Ray: actors for agent, labelling and episodes; Ray Train; sharded embedding."""

    def __init__(self, job: LoopJob, progress: bool = True, on_round=None, lease_wait_s: float = 0.0,
                 on_board=None) -> None:
        super().__init__(job, progress, on_round, lease_wait_s, on_board)
        self.agent: RemoteStrategy | None = None
        self.service: ServiceOracle | None = None
        self.workers: list = []
        self.recoveries: list[str] = []  # one line per round replayed after losing an actor's state
        self.relay = Relay()  # the workers' progress and log lines, shown here (services/progress.py)

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
        self.relay.close()

    @property
    def run_tag(self) -> str:
        """Names this run's Ray Train runs: stable across restarts of the driver, new for a new output_dir."""
        path = self.out / "ray_run_id"
        if not path.exists():
            atomic.write_text(path, uuid.uuid4().hex[:8])
        return f"{self.out.name}-{path.read_text().strip()}"

    # ---- the override points of ActiveLearningLoop
    def pretrain(self, model, labelled) -> None:
        with self.relay.watching("pre-training", "pre-training", self.job.pretrain.epochs, self.progress,
                                 unit="epoch") as reporter:
            history = fit_pretrain(model, labelled, self.job, name=f"{self.run_tag}-pretrain", reporter=reporter)
        if history:
            log.info("pre-trained %d epochs on %d images through Ray Train (%d workers): loss %.4f",
                     len(history), len(labelled), self.job.ray.train_workers, history[-1]["loss"])

    def adapt(self, model, pool, cfg=None, must_link=(), cannot_link=(), tag: str = "adapt") -> list[dict]:
        job = self.job
        cfg = cfg or job.adapt
        if job.ray.train_workers > 1:
            log.info("adaptation runs on 1 Ray Train worker (ray.train_workers=%d applies to training with labels)",
                     job.ray.train_workers)
        truth = np.array([r.pid for r in pool]) if job.oracle.mode == "simulated" else None
        with self.relay.watching("adaptation", "adaptation", cfg.epochs, self.progress,
                                 unit="epoch") as reporter:
            history = fit_adapt(model, pool, job, name=f"{self.run_tag}-{tag}", truth=truth, reporter=reporter,
                                cfg=cfg, must_link=must_link, cannot_link=cannot_link)
        if history:
            last = history[-1]
            log.info("adapted %d epochs to %d pool images through Ray Train: %d clusters, %.0f%% clustered",
                     len(history), len(pool), last["clusters"], 100 * last["clustered"])
        return history

    def make_strategy(self) -> RemoteStrategy:
        job = self.job
        restarts = job.ray.actor_max_restarts
        handle = AgentService.options(max_restarts=restarts, max_task_retries=0).remote(job.strategy, job.dral,
                                                                                      job.seed, job.adapt)
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
        if self.job.oracle.mode == "human":  # people answer the driver's annotator page; the log stays the truth
            return super().open_oracle(pids, budget, pool)
        out = self.out.resolve()
        self.service = start_labelling_service(str(out / "answers"), str(out / "pool.parquet"), pids,
                                               [r.path for r in pool], self.job.oracle, budget,
                                               self.job.ray.actor_max_restarts,
                                               call_timeout_s=self.job.ray.call_timeout_s)
        return self.service, self.service

    def embed(self, model, records, desc: str) -> np.ndarray:
        job, cfg = self.job, self.job.ray
        batches = -(-len(records) // job.eval.batch_size)
        with self.relay.watching(desc, "embedding", batches, self.progress) as reporter:
            return embed_records(model, records, height=job.data.height, width=job.data.width, amp=job.eval.amp,
                                 batch_size=job.eval.batch_size, num_workers=job.data.num_workers,
                                 shards=cfg.train_workers, num_cpus=cfg.cpus_per_train_worker,
                                 num_gpus=1 if cfg.use_gpu else 0, timeout_s=cfg.task_timeout_s, reporter=reporter)

    def finetune(self, model, pool, mode: str, round_: int, pairs: tuple, pids: np.ndarray,
                 truth: Optional[np.ndarray] = None):
        q, c, y = pairs
        data = finetune_data(len(pool), self.job.finetune, mode, queries=q, candidates=c, answers=y,
                             pool_labels=pids, truth=truth)
        if data is None or self.job.finetune.epochs == 0:
            return FinetuneStats(0, 0, 0.0, 0.0, 0.0)
        desc = f"round {round_} fine-tune"
        with self.relay.watching(desc, "fine-tuning", None, self.progress, unit="step") as reporter:
            return fit_finetune(model, pool, self.job, data, seed=self.job.seed + round_,
                                name=f"{self.run_tag}-round{round_}-finetune", reporter=reporter)

    def warm_start(self, strategy, features: np.ndarray, pids: np.ndarray) -> WarmStartStats:
        """The warm-up episodes run inside the agent actor, where the agent lives."""
        job = self.job
        return WarmStartStats(**strategy.warm_start(features, pids, job.dral, job.dral.warmstart_passes,
                                                    job.finetune.every, job.seed))

    def episode_slots(self, features: np.ndarray, metric) -> RemoteSlots:
        """The engine's slots are the env workers; they share the agent's copy of the round's (features, metric)."""
        ref = self.agent.context_for(features, metric) if self.agent is not None else None
        if ref is None:  # not what the agent's round began with: the workers get their own copy
            ref = ray.put((features, metric))
        job = self.job
        return RemoteSlots(self.workers, ref, job.episodes_in_flight or job.ray.env_workers, job.ray.call_timeout_s)

    def episode_agent(self, strategy: RemoteStrategy) -> RemoteStrategy:
        return strategy  # the agent actor's proxy is the engine's agent handle

    def ask_round(self, round_: int, queries: np.ndarray, features: np.ndarray, metric, strategy, oracle,
                  knowledge: Optional[PairKnowledge] = None) -> int:
        """The engine's round (``ActiveLearningLoop.ask_round``) on the env workers and the agent actor; a lost
        agent or worker state is recovered by restoring the agent's round start and replaying the round's log."""
        asker = oracle
        try:
            for attempt in range(ROUND_RECOVERIES + 1):
                try:  # a replayed round starts again from the round's knowledge
                    return super().ask_round(round_, queries, features, metric, strategy, asker,
                                             copy.deepcopy(knowledge))
                except (LostActorState, RayActorError) as exc:
                    if attempt == ROUND_RECOVERIES:
                        raise
                    log.warning("round %d: %s — restoring the agent and replaying the round from the log",
                                round_, exc)
                    self.recoveries.append(f"round {round_}: {type(exc).__name__}: {exc}")
                    strategy.restore_round_start()
                    asker = self._round_replay(round_, oracle)
        finally:
            replaying = oracle.asker if isinstance(oracle, RoundQuota) else oracle
            if asker is not oracle and isinstance(replaying, ReplayingOracle):
                replaying.pending.clear()  # the recovery replayed every logged answer of the round

    def _round_replay(self, round_: int, oracle):
        """The round's asker again, replaying every answer logged so far for this round (a round's share of the
        budget, ``rounds: answers``, cut at the same question)."""
        if isinstance(oracle, RoundQuota):
            return RoundQuota(self._round_replay(round_, oracle.asker), oracle.quota)
        service = oracle.oracle if isinstance(oracle, ReplayingOracle) else oracle
        table = effective(service.read())  # the answers in force (no retractions)
        rows = table.filter(pa.array(table.column("round").to_numpy() >= round_))
        return ReplayingOracle(service, list(zip(*answered_pairs(rows))))
