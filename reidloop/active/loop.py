"""The active-learning loop of DRAL's Algorithm 1, in one process.

Per round (``1 / finetune.every`` rounds, paper: 4):
1. the current CNN embeds the unlabelled pool; the metric d is refitted on the
   answers so far (KISSME, or Euclidean before there are enough);
2. each query of the round (every pool image is browsed once as a query) gets
   its ns nearest candidates and a :class:`QueryEpisodeEnv`; the strategy asks
   up to Kmax of them, the oracle answers (and logs), the strategy learns;
3. all answered pairs so far fine-tune the CNN (triplet on verified pairs);
4. the new model is evaluated on the test split: one row of ``rounds.parquet``.

Pairs answered earlier (e.g. (g, q) when q was asked about g) are applied to the
state for free (``known``), so no pair is ever asked twice and the annotation cost
is counted exactly: at most n_queries · Kmax (paper §4.4). With ``infer_answers``
(the default) the same holds for every pair the answers imply by transitivity
(:mod:`reidloop.pair_knowledge`), at the start of an episode and after each answer.

The Ray service (``services/``) runs the same rounds with episodes spread over
environment workers; everything it needs is the public functions of this module.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import atomic
from ..adapt.cache import adapt_key, cached, store
from ..adapt.train import adapt_unsupervised
from ..answer_log import AnswerLog, effective
from ..config import LoopJob, save_config, to_dict
from ..config.resume import check_resume
from ..data.records import ImageRecord, ReidSplits
from ..data.registry import build_splits, split_identities
from ..dral.metric import Metric, fit_metric
from ..lease import Lease
from ..engine.evaluate import evaluate_features, format_metrics
from ..engine.features import extract_features
from ..engine.precision import resolve_device, resolve_precision
from ..engine.train import train_supervised
from ..models import build_model, load_checkpoint, save_checkpoint
from ..annotation import Board, HumanOracle, QuestionDesk
from ..annotation.journal import DeskJournal
from ..oracle import SimulatedOracle
from ..pair_knowledge import PairKnowledge
from ..progress import bar as progress_bar
from ..strategies import RoundContext, Strategy, build_strategy
from .askers import ReplayingOracle, ResumeDiverged, RoundQuota  # noqa: F401 (re-exported)
from .engine import Answers, EpisodeStats, LocalAgent, LocalSlots, run_round
from .episodes import nearest_candidates_all, round_slices, split_pairs  # noqa: F401 (re-exported)
from .checkpoints import commit_round, has_progress, load_round, prune, publish
from .finetune import finetune, upperbound_pairs
from .warmstart import WarmStartStats, warm_start

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- pieces
def answered_pairs(log_table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries, candidates, answers) arrays of an answer-log table."""
    return tuple(log_table.column(c).to_numpy().astype(np.int64) for c in ("query", "candidate", "answer"))





def settled_link_share(answered: tuple, pids: np.ndarray) -> float:
    """Share of the pool's same-person pairs that the answers settle (directly or by transitivity).

    A measurement only: it reads the true identities, which no strategy ever sees.
    """
    q, c, y = answered
    roots = PairKnowledge(len(pids), zip(q.tolist(), c.tolist(), y.tolist()), strict=False).roots()
    _, per_pid = np.unique(pids, return_counts=True)
    _, per_group = np.unique(np.stack([pids, roots], 1), axis=0, return_counts=True)
    total = float((per_pid * (per_pid - 1) // 2).sum())
    return float((per_group * (per_group - 1) // 2).sum()) / total if total else float("nan")


# ------------------------------------------------------------------- resuming
@dataclass
class LoopResult:
    rounds: list[dict] = field(default_factory=list)
    answers: int = 0
    output_dir: str = ""
    resumed_from_round: int | None = None
    replayed_answers: int = 0
    undo_replays: int = 0  # oracle.mode: human: rounds asked again because an annotator undid an answer

    def final(self) -> dict:
        return self.rounds[-1] if self.rounds else {}


# ------------------------------------------------------------------------ the loop
def elapsed(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


def round_line(row: dict, budget: int | None = None) -> str:
    """One round of the run, for a person: ``round 2: 30/60 answers  mAP 41.2%  rank-1 55.0%  elapsed 1m12s``."""
    answers = f"{row['answers']}/{budget}" if budget is not None else f"{row['answers']}"
    return (f"round {row['round']}: {answers} answers  mAP {100 * row['mAP']:.1f}%  "
            f"rank-1 {100 * row['rank1']:.1f}%  elapsed {elapsed(row['elapsed_seconds'])}")


class ActiveLearningLoop:
    """Algorithm 1 on one machine. ``run()`` writes everything under job.output_dir and resumes from it.

    The answer log and the per-round checkpoints are the run's truth: a run killed at any point and
    started again with the same config continues where it stopped, with no answer lost, none asked twice,
    the budget never exceeded, and — replaying the interrupted round — the same questions asked.
    """

    def __init__(self, job: LoopJob, progress: bool = True,
                 on_round: Callable[[dict, Path], None] | None = None, lease_wait_s: float = 0.0,
                 on_board: Callable[[Board], None] | None = None) -> None:
        self.job = job
        self.progress = progress
        self.on_round = on_round  # called with (metrics row, output dir) after each round's checkpoint
        # oracle.mode: human: called once with the run's Board when its oracle opens (the entry point serves
        # the annotator page over it); the board is also ``self.board``
        self.on_board = on_board
        self.board: Board | None = None
        self.out = Path(job.output_dir)
        # One writer per run folder (reidloop.lease): a live holder fails the start at once, unless it is
        # given this long to end (a restarted Tune trial waits for the killed one's actor to go)
        self.lease_wait_s = lease_wait_s
        self.lease: Lease | None = None
        self.budget: int | None = None  # the run's answer budget, and the queries after this round's: set by run()
        self.queries_after = 0
        self.queries_total = 0  # the queries the run browses at most
        self.queries_before = 0  # the queries earlier rounds browsed
        self.device = resolve_device(job.pretrain.device)

    # ---- setup
    def prepare(self) -> tuple[ReidSplits, list[ImageRecord], torch.nn.Module]:
        job = self.job
        self.out.mkdir(parents=True, exist_ok=True)
        for folder in (self.out, self.out / "answers"):  # what a crash left half-written (this is the one writer)
            atomic.remove_temps(folder)
        if has_progress(self.out) and (self.out / "config.yaml").exists():
            check_resume(self.out / "config.yaml", job)  # a resume: the same experiment, or a refusal naming what changed
        save_config(job, self.out / "config.yaml")
        splits = build_splits(job.data, cache_dir=job.data.root or ".cache")
        self.labelled: list[ImageRecord] = []  # the pre-training identities (none when from a checkpoint)
        if job.checkpoint:
            model, _ = load_checkpoint(job.checkpoint)
            pool = list(splits.train)
            if job.warmstart_root is not None and job.dral.warmstart_passes:
                self.labelled = self._warmstart_source()
        else:
            # the split is a property of the data (data.seed); job.seed varies the active-learning randomness
            self.labelled, pool = split_identities(splits.train, job.pretrain_fraction, seed=job.data.seed)
            model = self._pretrained(self.labelled)
        if job.dral.ns >= len(pool):
            raise ValueError(f"dral.ns={job.dral.ns} must be smaller than the unlabelled pool "
                             f"({len(pool)} images of {splits.name})")
        if job.adapt.epochs:
            model = self._adapted(model, pool)
        return splits, pool, model

    def _adapted(self, model, pool: Sequence[ImageRecord]) -> torch.nn.Module:
        """``adapt``: the model adapted to the pool without answers, once per output_dir (``adapted.pt``), and
        once per ``adapt.cache_dir`` for the same model, pool, settings and precision (``adapt.json`` says
        which entry a run reused)."""
        job = self.job
        path = self.out / "adapted.pt"
        if path.exists():  # resume: adaptation is done once per output_dir
            return load_checkpoint(path)[0]
        model.reset_classifier(0)
        key = None
        if job.adapt.cache_dir:
            precision = resolve_precision(job.pretrain.amp, self.device).describe()
            key = adapt_key(model, [r.path for r in pool], job.adapt, job.data.height, job.data.width, precision)
            hit = cached(job.adapt.cache_dir, key)
            if hit is not None:
                try:
                    reused = load_checkpoint(hit[0])[0]
                except ValueError as exc:  # a damaged entry is a miss: adapt again (store replaces it)
                    log.warning("adapted-model cache entry unusable, adapting again and replacing it: %s", exc)
                else:
                    log.info("adapted model reused from %s (same model, pool, adapt settings and precision)", hit[0])
                    atomic.link_or_copy(hit[0], path)
                    atomic.write_json(self.out / "adapt.json", {**hit[1], "config": to_dict(job.adapt),
                                                                "reused": str(hit[0])})
                    return reused
        history = self.adapt(model, pool)
        record = {"config": to_dict(job.adapt), "epochs": history}
        atomic.write_json(self.out / "adapt.json", record)
        save_checkpoint(path, model, extra={"adapted_on": len(pool), "adapt": to_dict(job.adapt)})
        if key is not None:
            store(job.adapt.cache_dir, key, path, {**record, "made_in": str(self.out)})
        return model

    def _warmstart_source(self) -> list[ImageRecord]:
        """The labelled images the agent warms up on when the run starts from a checkpoint."""
        job = self.job
        source = replace(job.data, dataset=job.warmstart_dataset, root=job.warmstart_root)
        records = list(build_splits(source, cache_dir=job.warmstart_root).train)
        pids = np.unique([r.pid for r in records])
        if job.warmstart_max_ids is not None and job.warmstart_max_ids < len(pids):
            keep = set(np.random.default_rng(job.data.seed).choice(pids, job.warmstart_max_ids, replace=False).tolist())
            records = [r for r in records if r.pid in keep]
        return records

    def _pretrained(self, labelled: Sequence[ImageRecord]) -> torch.nn.Module:
        path = self.out / "pretrained.pt"
        if path.exists():  # resume: pre-training is done once per output_dir
            return load_checkpoint(path)[0]
        job = self.job
        torch.manual_seed(job.pretrain.seed)  # the new classifier's init: the same seed, the same CNN
        model = build_model(job.model, num_classes=len({r.pid for r in labelled}))
        self.pretrain(model, labelled)
        model.reset_classifier(0)
        save_checkpoint(path, model, extra={"pretrained_on": len(labelled), "model_config": to_dict(job.model)})
        return model

    # ---- override points (the Ray loop of services/ray_loop.py replaces these)
    def pretrain(self, model, labelled: Sequence[ImageRecord]) -> None:
        """Supervised pre-training of ``model`` (classifier over the labelled ids) in place."""
        job = self.job
        precision = resolve_precision(job.pretrain.amp, self.device)
        log.info("pre-training %s on %d images (%s)", job.model.backbone, len(labelled), precision.describe())
        train_supervised(model, labelled, height=job.data.height, width=job.data.width, cfg=job.pretrain,
                         precision=precision, num_workers=job.data.num_workers, progress=self.progress)

    def adapt(self, model, pool: Sequence[ImageRecord], cfg=None, must_link=(), cannot_link=(),
              tag: str = "adapt") -> list[dict]:
        """Unsupervised adaptation of ``model`` to ``pool`` in place (``reidloop.adapt``; ``cfg``: the ``adapt``
        section, the job's by default; ``must_link`` / ``cannot_link``: pool index pairs the clustering
        respects; ``tag``: names the run where one is named, as on Ray); the epochs' reports. With the
        simulated oracle the reports also say how well the clusters match the truth (never used)."""
        job = self.job
        cfg = cfg or job.adapt
        precision = resolve_precision(job.pretrain.amp, self.device)
        log.info("adapting %s to the %d pool images (%d epochs, %s)",
                 getattr(model, "backbone_name", job.model.backbone), len(pool), cfg.epochs, precision.describe())
        truth = np.array([r.pid for r in pool]) if job.oracle.mode == "simulated" else None
        history = adapt_unsupervised(model, pool, height=job.data.height, width=job.data.width, cfg=cfg,
                                     precision=precision, must_link=must_link, cannot_link=cannot_link, truth=truth,
                                     num_workers=job.data.num_workers, progress=self.progress)
        return [h.to_dict() for h in history]

    def readapt(self, model, pool: Sequence[ImageRecord], answered: tuple, round_: int) -> list[dict]:
        """``adapt.round_epochs``: adapt ``model`` to ``pool`` again, its clustering constrained by the answers
        so far and what they settle (an answer contradicting earlier ones is left out); the epochs' reports,
        also in ``readapt.json`` per round."""
        job = self.job
        knowledge = PairKnowledge(len(pool), zip(*(a.tolist() for a in answered)), strict=False)
        must, cannot = knowledge.constraints()
        log.info("round %d: re-adapting to the pool under %d must-link and %d cannot-link constraints (%d epochs)",
                 round_, len(must), len(cannot), job.adapt.round_epochs)
        cfg = replace(job.adapt, epochs=job.adapt.round_epochs, seed=job.adapt.seed + round_)
        history = self.adapt(model, pool, cfg, must, cannot, tag=f"round{round_}-adapt")
        path = self.out / "readapt.json"
        done = json.loads(path.read_text()) if path.exists() else {}
        done = {k: v for k, v in done.items() if int(k) < round_}  # a later round of an older attempt is gone
        done[str(round_)] = {"must_link": len(must), "cannot_link": len(cannot), "conflicts": knowledge.conflicts,
                             "epochs": history}
        atomic.write_json(path, done)
        return history

    def make_strategy(self) -> Strategy:
        return build_strategy(self.job.strategy, self.job.dral, seed=self.job.seed, adapt=self.job.adapt)

    def open_oracle(self, pids: np.ndarray, budget: int, pool: Sequence[ImageRecord]):
        """(answer log, oracle): the log is read / flushed / compacted by ``run``, the oracle asked."""
        answer_log = AnswerLog(self.out / "answers", flush_every=self.job.oracle.flush_every)
        cfg = replace(self.job.oracle, budget=budget)
        paths = [r.path for r in pool]
        if cfg.mode == "human":  # people answer from the annotator page; the log is the truth, as always
            oracle = HumanOracle(len(pool), QuestionDesk(lease_s=cfg.lease_s), cfg, log=answer_log, paths=paths,
                                 journal=DeskJournal(self.out / "desk-journal.jsonl"))
            curve = self.out / "curve.png"
            self.board = Board(oracle.desk, oracle, paths, budget=budget, queries_total=self.queries_total,
                               curve=lambda: curve if curve.exists() else None)
            if self.on_board is not None:
                self.on_board(self.board)
            return answer_log, oracle
        return answer_log, SimulatedOracle(pids, cfg, log=answer_log, paths=paths)

    def embed(self, model, records, desc: str) -> np.ndarray:
        return extract_features(model, records, height=self.job.data.height, width=self.job.data.width,
                                precision=resolve_precision(self.job.eval.amp, self.device),
                                batch_size=self.job.eval.batch_size, num_workers=self.job.data.num_workers,
                                progress=self.progress, desc=desc)

    def evaluate(self, model, splits: ReidSplits) -> dict:
        qf = self.embed(model, splits.query, "query")
        gf = self.embed(model, splits.gallery, "gallery")
        return evaluate_features(qf, gf, splits.query, splits.gallery, self.job.eval)

    def finetune(self, model, pool, mode: str, round_: int, pairs: tuple, pids: np.ndarray,
                 truth: np.ndarray | None = None):
        """Fine-tune on ``pairs`` = (queries, candidates, answers); ``truth`` labels every pair (UpperBound)."""
        q_all, c_all, y_all = pairs
        return finetune(model, pool, self.job.finetune, height=self.job.data.height, width=self.job.data.width,
                        precision=resolve_precision(self.job.finetune.amp, self.device), mode=mode,
                        seed=self.job.seed + round_, queries=q_all, candidates=c_all, answers=y_all,
                        pool_labels=pids, truth=truth, progress=self.progress, desc=f"round {round_} fine-tune")

    def training_pairs(self, strategy: Strategy, answered: tuple, features: np.ndarray, pids: np.ndarray,
                       browsed: np.ndarray) -> tuple[str, tuple, np.ndarray | None]:
        """(mode, (queries, candidates, answers), truth) of this round's fine-tune.

        The learners train on the answer log. The UpperBound trains on every label ("full"), or with
        ``finetune.upperbound: learners`` on the learners' batches over the ``browsed`` queries, every pair
        labelled from the true identities (:func:`upperbound_pairs`).
        """
        if strategy.finetune == "full" and self.job.finetune.upperbound == "learners":
            return "pairs", upperbound_pairs(features, pids, browsed, self.job.dral.kmax), pids
        return strategy.finetune, answered, None

    def warm_start(self, strategy: Strategy, features: np.ndarray, pids: np.ndarray) -> WarmStartStats:
        """Warm the agent up on the labelled images (``dral.warmstart_passes``; the Ray loop runs it in the actor)."""
        job = self.job
        return warm_start(strategy, features, pids, job.dral, job.dral.warmstart_passes, job.finetune.every,
                          seed=job.seed)

    def episode_slots(self, features: np.ndarray, metric: Metric):
        """Where the round's episodes run (``engine.Slots``): here, ``episodes_in_flight`` at once (default 1)
        (the Ray loop: on env workers)."""
        return LocalSlots(self.job.dral, features, metric, width=self.job.episodes_in_flight or 1)

    def episode_agent(self, strategy: Strategy):
        """The handle the engine steps the strategy through (the Ray loop's strategy is one already)."""
        return LocalAgent(strategy)

    def ask_round(self, round_: int, queries: np.ndarray, features: np.ndarray, metric: Metric,
                  strategy: Strategy, oracle, knowledge: PairKnowledge | None = None) -> int:
        """Run the episodes of one round's queries in order through the episode engine (``engine.run_round``).

        ``knowledge`` (None when ``infer_answers`` is off) holds every answer so far and learns each new one.
        Returns how many of ``queries`` were browsed: all of them, unless the asker's budget ran out (the
        query whose episode it cut counts as browsed).
        """
        job = self.job
        cands = nearest_candidates_all(features, metric, queries, job.dral.ns)
        if self.board is not None:
            self.board.set_round(round_, queries, cands)
        self.round_stats = stats = EpisodeStats()  # the paper's gamma, whatever the agent's: rows compare
        bar = progress_bar(len(queries), f"round {round_} queries", enabled=self.progress)

        def answers_left() -> int:
            return oracle.remaining if self.budget is None else self.budget - oracle.used

        def started(n: int) -> None:  # n of the round's queries have started
            if bar is not None:
                bar.update(n - bar.n)
            if self.board is not None:
                self.board.set_queries_done(self.queries_before + n)

        try:
            return run_round(self.episode_slots(features, metric), self.episode_agent(strategy),
                             Answers(oracle, knowledge), queries, cands, round_, job.dral.kmax,
                             reward_kind=job.dral.reward, stats=stats, answers_left=answers_left,
                             queries_after=self.queries_after,
                             progress=lambda n: started(n))
        finally:
            if bar is not None:
                bar.close()

    # ---- main
    def run(self) -> LoopResult:
        """Every round, under the run folder's writer lease; :meth:`close` and the lease's release on any exit."""
        self.lease = Lease(self.out).acquire(wait_s=self.lease_wait_s)
        try:
            return self.run_rounds()
        except BaseException as exc:
            if self.board is not None:  # the page says so instead of waiting for ever
                self.board.set_phase("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            try:
                self.close()
            finally:
                self.lease.release()

    def close(self) -> None:
        """Release what the run started (the Ray loop stops its actors here), before the lease goes."""

    def run_rounds(self) -> LoopResult:
        job = self.job
        splits, pool, model = self.prepare()
        pids = np.array([r.pid for r in pool])
        cameras = np.array([r.camid for r in pool])  # what a real system knows: which camera took each image
        n = len(pool)
        order = np.random.default_rng(job.seed).permutation(n)[: job.max_queries or n]
        budget = job.oracle.budget if job.oracle.budget is not None else len(order) * job.dral.kmax
        if job.dral.epsilon_decay_fraction is not None:  # ε's schedule sized to this run's budget
            self.job = job = replace(job, dral=replace(
                job.dral, epsilon_decay_steps=max(1, round(job.dral.epsilon_decay_fraction * budget))))
        strategy = self.make_strategy()
        self.budget, self.queries_total = budget, len(order)
        answer_log, oracle = self.open_oracle(pids, budget, pool)
        # a page's undo appends to the log from another thread: the log is read and written under its lock
        log_lock = oracle.lock if isinstance(oracle, HumanOracle) else contextlib.nullcontext()
        result = LoopResult(output_dir=str(self.out))
        start = time.perf_counter()

        done_round, cursor = self._load_state(model, strategy, result)
        if done_round == 0:
            self._warm_start_once(model, strategy)
        if done_round == 0 and not result.rounds:
            metrics = self.evaluate(model, splits)
            result.rounds.append({**self._row(0, 0, metrics, start, 0.0),  # (a resumed round 1 has answers logged)
                                  "links_settled": 0.0})
            log.info("round 0 (pre-trained): %s", format_metrics({job.strategy: metrics}).splitlines()[1])
        if self.board is not None:
            for row in result.rounds:
                self.board.add_round(row)
        features = self.embed(model, pool, "pool")
        slices = round_slices(len(order), job.finetune.every)
        table = None
        by_answers = job.rounds == "answers"
        for r, sl in enumerate(slices, start=1):
            if r <= done_round:
                continue
            if by_answers and cursor >= len(order):
                log.info("every query browsed after round %d with %d of %d answers spent", r - 1, oracle.used, budget)
                break
            if table is None:  # else the log as the last round left it, read once at its end
                with log_lock:
                    table = effective(answer_log.read())  # the answers in force (no retractions)
            rounds_col = table.column("round").to_numpy()
            before, pending = table.filter(pa.array(rounds_col < r)), table.filter(pa.array(rounds_col >= r))
            q_all, c_all, y_all = answered_pairs(before)
            pos, neg = split_pairs(q_all, c_all, y_all)
            metric = fit_metric(job.dral.metric, features, pos, neg)
            strategy.begin_round(RoundContext(r, features, metric, pos, neg, cameras=cameras))
            asker = replaying = oracle
            if pending.num_rows:  # the round was interrupted: replay it
                asker = replaying = ReplayingOracle(oracle, list(zip(*answered_pairs(pending))))
                result.resumed_from_round = r
                log.info("round %d was interrupted: replaying its %d logged answers", r, pending.num_rows)
            queries = order[sl]
            if by_answers:  # this round's share of the budget, from where the last round stopped browsing
                quota = round(r * budget / len(slices)) - before.num_rows
                asker, queries = RoundQuota(asker, quota), order[cursor:]
            def knowledge_at_start():  # a fresh copy for each attempt at the round
                return PairKnowledge(n, zip(q_all.tolist(), c_all.tolist(), y_all.tolist())) \
                    if job.infer_answers else None
            self.round_stats = None  # set by ask_round
            browsed = len(queries)
            self.queries_after = len(order) - (cursor if by_answers else sl.start) - len(queries)  # later rounds'
            self.queries_before = cursor if by_answers else sl.start  # earlier rounds' (for the page's progress)
            if not strategy.asks_questions:  # the learners' UpperBound browses as one spending Kmax per query
                share = round(r * budget / len(slices)) - round((r - 1) * budget / len(slices))
                browsed = min(len(queries), -(-share // job.dral.kmax)) if by_answers else len(queries)
            elif asker.remaining:
                if isinstance(oracle, HumanOracle):
                    browsed, replaying = self.ask_round_undoable(r, queries, features, metric, strategy, oracle,
                                                                 asker, knowledge_at_start, result)
                else:
                    browsed = self.ask_round(r, queries, features, metric, strategy, asker, knowledge_at_start())
            else:
                browsed = 0
            if isinstance(oracle, HumanOracle):
                oracle.close_round(r)  # no answer of this round can be undone once the CNN learns from it
            if not oracle.remaining:
                log.info("annotation budget of %d questions spent in round %d", budget, r)
            cursor = (cursor if by_answers else sl.start) + browsed
            if isinstance(replaying, ReplayingOracle):
                if replaying.pending and not replaying.lenient:
                    raise ResumeDiverged(f"round {r} ended with {len(replaying.pending)} logged answers not "
                                         "replayed; was the config or code changed between the runs?")
                result.replayed_answers += replaying.replayed
            with log_lock:
                answer_log.flush()
                table = effective(answer_log.read())  # the answers in force, read once for what follows and next round
            answered_now = answered_pairs(table)
            ft_seconds = 0.0
            if self.board is not None:
                self.board.set_queries_done(cursor)
                self.board.set_phase("fine-tuning" if strategy.finetune != "none" else "evaluating")
            if strategy.finetune != "none":
                if job.adapt.round_epochs and strategy.asks_questions:
                    self.readapt(model, pool, answered_now, r)
                mode, pairs, truth = self.training_pairs(strategy, answered_now, features, pids, order[:cursor])
                stats = self.finetune(model, pool, mode, r, pairs, pids, truth)
                ft_seconds = stats.seconds
                features = self.embed(model, pool, "pool")  # the new CNN re-initialises the states
            if self.board is not None:
                self.board.set_phase("evaluating")
            metrics = self.evaluate(model, splits)
            result.rounds.append({**self._row(r, oracle.used, metrics, start, ft_seconds, self.round_stats),
                                  "links_settled": settled_link_share(answered_now, pids)})
            log.info("%s", round_line(result.rounds[-1], budget))
            if self.board is not None:  # the page shows each round's metrics and the curve so far
                self.board.add_round(result.rounds[-1])
                plot_curve(result.rounds, self.out / "curve.png", title=f"{job.strategy} on {splits.name}")
            self._save_state(r, model, strategy, result, oracle.used, cursor)
            with log_lock:
                answer_log.compact()
            if self.on_round is not None:
                self.on_round(result.rounds[-1], self.out)
        with log_lock:
            answer_log.close()
        result.answers = oracle.used
        self._write_summary(result, splits, len(pool), len(order), budget)
        if self.board is not None:
            self.board.set_phase("done")
        return result

    def ask_round_undoable(self, r: int, queries: np.ndarray, features: np.ndarray, metric: Metric,
                           strategy: Strategy, oracle: HumanOracle, asker, knowledge_at_start, result: LoopResult):
        """Round ``r`` asked of people, replayed from its start while annotators undo answers the agent had
        already learnt from (``oracle.mode: human``); (queries browsed, the asker of the last attempt).

        The oracle's round is closed before the retractions are read (none can come later); a replay restores
        the strategy to the round's start and serves the round's answers in force in their order, leniently
        (``ReplayingOracle(lenient=True)``): the agent sees one consistent history in which the undone answer
        is asked again, and answers given after it are free where it asks them again.
        """
        start = copy.deepcopy(strategy.state_dict())
        quota = asker.quota if isinstance(asker, RoundQuota) else None
        while True:
            mark = oracle.retractions
            browsed = self.ask_round(r, queries, features, metric, strategy, asker, knowledge_at_start())
            oracle.close_round(r)
            undone = oracle.retracted_since(mark)
            if not undone:
                return browsed, asker.asker if isinstance(asker, RoundQuota) else asker
            log.info("round %d: %d answer(s) undone by %s; replaying the round from its start", r, len(undone),
                     ", ".join(sorted({u.annotator for u in undone})))
            result.undo_replays += 1
            strategy.load_state_dict(copy.deepcopy(start))
            table = effective(oracle.read())
            mine = table.filter(pa.array(table.column("round").to_numpy() >= r))
            asker = ReplayingOracle(oracle, list(zip(*answered_pairs(mine))), lenient=True)
            if quota is not None:
                asker = RoundQuota(asker, quota)

    def _warm_start_once(self, model, strategy: Strategy) -> None:
        """``dral.warmstart_passes`` on the pre-trained CNN; its result is kept, so a resumed run reloads it."""
        passes = self.job.dral.warmstart_passes
        if not passes:
            return
        if not strategy.warm_starts:
            log.info("dral.warmstart_passes=%d ignored: strategy %r learns no policy to warm up", passes, strategy.name)
            return
        path = self.out / "strategy_warm.pt"
        if path.exists():
            strategy.load_state_dict(torch.load(path, weights_only=True))
            log.info("warm-started agent reloaded from %s", path)
            return
        features = self.embed(model, self.labelled, "labelled")
        stats = self.warm_start(strategy, features, np.array([r.pid for r in self.labelled]))
        atomic.torch_save(strategy.state_dict(), path)
        atomic.write_json(self.out / "warmstart.json", stats.to_dict())
        log.info("agent warm-started on %d labelled images x %d passes: %d questions (%d same), mean reward "
                 "%.3f, %.0f s", len(self.labelled), passes, stats.questions, stats.same, stats.mean_reward,
                 stats.seconds)

    # ---- checkpoints and outputs
    def _save_state(self, r: int, model, strategy: Strategy, result: LoopResult, answers: int,
                    next_query: int) -> None:
        """Round r's checkpoint (model, strategy, metrics), written whole, then made current
        (:mod:`reidloop.active.checkpoints`)."""
        def write(folder: Path) -> None:
            save_checkpoint(folder / "model.pt", model, extra={"round": r, "answers": answers,
                                                               **{k: result.rounds[-1][k] for k in METRIC_KEYS}})
            atomic.torch_save(strategy.state_dict(), folder / "strategy.pt")
            atomic.write_parquet(pa.Table.from_pylist(result.rounds), folder / "rounds.parquet")

        if self.lease is not None:
            self.lease.verify()  # a writer whose lease was taken over stops before its commit
        commit_round(self.out, r, {"answers": answers, "next_query": next_query}, write)

    def _load_state(self, model, strategy: Strategy, result: LoopResult) -> tuple[int, int]:
        """Restore the last completed round's checkpoint; returns (its number, the next query's position
        in the query order); (0, 0) for a fresh start."""
        try:
            found = load_round(self.out)
            if found is None:
                return 0, 0
            state, folder = found
            r = int(state["completed_round"])
            trained, extra = load_checkpoint(folder / "model.pt")
            rounds = pq.read_table(folder / "rounds.parquet").to_pylist()
            if extra.get("round") != r or not rounds or rounds[-1]["round"] != r:
                raise ValueError(f"{folder}: model.pt is of round {extra.get('round')} and rounds.parquet ends at "
                                 f"round {rounds[-1]['round'] if rounds else None}, but state.json says round {r}")
            # a round's model has no classifier (the fine-tune drops it); a source checkpoint may have one
            model.reset_classifier(0 if trained.classifier is None else trained.classifier.out_features)
            model.load_state_dict(trained.state_dict())
            strategy.load_state_dict(torch.load(folder / "strategy.pt", weights_only=True))
            result.rounds = rounds
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{self.out}: cannot resume from round checkpoint ({exc}); "
                             "move the folder away to start afresh (the answer log is kept in answers/)") from exc
        if folder != self.out:  # what a crash after the commit left undone
            publish(self.out, folder)
            prune(self.out, folder)
        log.info("resuming %s after round %d (%d answers logged)", self.out, r, state.get("answers", -1))
        return r, int(state.get("next_query", 0))

    def _row(self, r: int, answers: int, metrics: dict, start: float, ft_seconds: float,
             stats: EpisodeStats | None = None) -> dict:
        """One row of rounds.parquet; the episode trace (nan where none: round 0, the Ray loop, references)."""
        trace = (stats or EpisodeStats()).row()
        if stats is None:
            trace = {k: float("nan") for k in trace}
        return {"round": r, "answers": answers, "strategy": self.job.strategy, "seed": self.job.seed,
                **{k: float(v) for k, v in metrics.items()}, "finetune_seconds": round(ft_seconds, 2),
                "elapsed_seconds": round(time.perf_counter() - start, 2), **{k: float(v) for k, v in trace.items()}}

    def _write_summary(self, result: LoopResult, splits: ReidSplits, pool: int, queries: int, budget: int) -> None:
        first, last = result.rounds[0], result.rounds[-1]
        summary = {"strategy": self.job.strategy, "dataset": splits.name, "seed": self.job.seed,
                   "pool_images": pool, "queries": queries, "budget": budget, "answers": result.answers,
                   "annotation_fraction_of_all_pairs": result.answers / max(pool * (pool - 1) / 2, 1),
                   "initial": {k: first[k] for k in METRIC_KEYS}, "final": {k: last[k] for k in METRIC_KEYS},
                   "config": to_dict(self.job)}
        atomic.write_json(self.out / "summary.json", summary)
        plot_curve(result.rounds, self.out / "curve.png", title=f"{self.job.strategy} on {splits.name}")


METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def plot_curve(rows: list[dict], path: Path, title: str = "") -> None:
    """mAP and rank-1 against the number of answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["answers"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(x, [100 * r["mAP"] for r in rows], "o-", label="mAP")
    ax.plot(x, [100 * r["rank1"] for r in rows], "s--", label="rank-1")
    ax.set_xlabel("answers (human verifications)")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as f:  # a reader (the annotator page) never sees half a file
        fig.savefig(f, format="png")
    plt.close(fig)
