"""One DRAL query episode as a gymnasium environment (§3.2, Fig. 2, Algorithm 1).

The episode works on {q, g1..g_ns}: matrix index 0 is the query, 1..ns the
candidates nearest-first under the current metric.  Action ``a`` (0..ns−1)
asks the annotator about candidate position ``a`` = matrix index ``a + 1``.

Observation (float32, length (ns+1)² + ns)::

    concat(flatten(kappa_reciprocal(S_dense, κ)),  answers)

where ``S_dense`` starts as Eq. 4 and is updated by Eq. 6–8 after each answer
(see :mod:`reidloop.dral.transitions`), and ``answers[a]`` is +1/−1 for an
answered candidate, 0 otherwise.  The reward is Eq. 9 (:mod:`reidloop.dral.reward`).
An episode ends after ``kmax`` questions or when nothing is left to ask.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import gymnasium
import numpy as np
from gymnasium import spaces

from ..config.schema import DralConfig
from .metric import Metric
from .reward import query_reward
from .state import kappa_reciprocal, similarity_from_distance
from .transitions import apply_answer

AnswerFn = Callable[[int, int], int]


def nearest_candidates(D_pool: np.ndarray, query: int, ns: int,
                       exclude: Optional[Iterable[int]] = None) -> np.ndarray:
    """The ``ns`` pool items nearest to ``query``, nearest-first (ties: lower index first).

    ``D_pool`` is the (n, n) pool distance matrix or the query's (n,) row; the
    query itself and the indices in ``exclude`` are never returned.
    """
    D = np.asarray(D_pool, dtype=np.float64)
    if not (D.ndim == 1 or (D.ndim == 2 and D.shape[0] == D.shape[1])):
        raise ValueError(f"D_pool must be an (n, n) matrix or an (n,) row, got shape {D.shape}")
    n = D.shape[0]
    if not 0 <= query < n:
        raise ValueError(f"query index {query} is outside the pool [0, {n})")
    row = D if D.ndim == 1 else D[query]
    allowed = np.ones(n, dtype=bool)
    allowed[query] = False
    if exclude is not None:
        ex = np.asarray(list(exclude), dtype=np.int64)
        if ex.size and (ex.min() < 0 or ex.max() >= n):
            raise ValueError(f"exclude has indices outside the pool [0, {n}): {ex.tolist()}")
        allowed[ex] = False
    idx = np.flatnonzero(allowed)
    if idx.size < ns:
        raise ValueError(f"only {idx.size} pool items are available for query {query}, need ns={ns}")
    return idx[np.argsort(row[idx], kind="stable")[:ns]]


class QueryEpisodeEnv(gymnasium.Env):
    """DRAL environment over one query: ``reset`` with the query's candidate set, ``step`` asks a question.

    Hyperparameters come from ``DralConfig`` (ns, kmax, kappa, thred, margin).
    ``answer_fn(query, candidate_global_index) -> ±1`` is the annotator used by
    :meth:`step`; callers that obtain answers elsewhere call :meth:`step_with_answer`.

    ``reset(options=...)`` keys: ``query`` (global index), ``candidates`` (ns
    global indices, nearest-first), ``distances`` ((ns+1, ns+1) distances over
    [q, candidates]) and optionally ``known`` ({candidate position: ±1}: answers
    already known from earlier questions, applied to the state without cost or
    reward).  ``options`` None or ``{}`` replays the previous episode's options.
    """

    metadata = {"render_modes": []}

    def __init__(self, ns: int, kmax: int, kappa: int, thred: float, margin: float,
                 answer_fn: Optional[AnswerFn] = None, reward: str = "eq9") -> None:
        if ns < 2:
            raise ValueError(f"ns must be >= 2, got {ns}")
        if not 1 <= kmax <= ns:
            raise ValueError(f"kmax must be in [1, ns={ns}], got {kmax}")
        if not 1 <= kappa <= ns:
            raise ValueError(f"kappa must be in [1, ns={ns}], got {kappa}")
        if not 0.0 <= thred <= 1.0:
            raise ValueError(f"thred must be in [0, 1], got {thred}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if reward not in ("eq9", "links"):
            raise ValueError(f"reward must be 'eq9' or 'links', got {reward!r}")
        self.ns, self.kmax, self.kappa, self.thred, self.margin = ns, kmax, kappa, thred, margin
        self.reward_kind = reward  # what the agent learns from; ``step`` always returns Eq. 9 (see active.engine.run_round)
        self.answer_fn = answer_fn
        self.observation_space = spaces.Box(-1.0, 1.0, shape=((ns + 1) ** 2 + ns,), dtype=np.float32)
        self.action_space = spaces.Discrete(ns)
        self._options: Optional[dict[str, Any]] = None
        self.query = -1
        self.candidates = np.zeros(0, dtype=np.int64)
        self.distances = np.zeros((ns + 1, ns + 1))
        self._S = np.zeros((ns + 1, ns + 1))  # dense similarity, Eq. 4 updated by Eq. 6-8
        self.answers = np.zeros(ns, dtype=np.int8)
        self.positives: list[int] = []  # global indices answered/known +1 in this episode
        self.negatives: list[int] = []  # global indices answered/known -1 in this episode
        self.questions_asked = 0

    @classmethod
    def from_config(cls, cfg: DralConfig, answer_fn: Optional[AnswerFn] = None) -> "QueryEpisodeEnv":
        """Build from ``DralConfig`` (ns, kmax, kappa, thred, margin)."""
        return cls(cfg.ns, cfg.kmax, cfg.kappa, cfg.thred, cfg.margin, answer_fn=answer_fn, reward=cfg.reward)

    # ------------------------------------------------------------------ reset
    def _parse_options(self, options: dict[str, Any]) -> dict[str, Any]:
        ns = self.ns
        missing = {"query", "candidates", "distances"} - set(options)
        if missing:
            raise ValueError(f"reset options lack {sorted(missing)}")
        query = int(options["query"])
        cands = np.asarray(options["candidates"])
        if cands.shape != (ns,) or not np.issubdtype(cands.dtype, np.integer):
            raise ValueError(f"options['candidates'] must be an integer array of shape ({ns},), "
                             f"got {cands.dtype} {cands.shape}")
        if len(np.unique(cands)) != ns or query in cands:
            raise ValueError(f"options['candidates'] must be {ns} distinct indices other than the query {query}")
        D = np.asarray(options["distances"], dtype=np.float64)
        if D.shape != (ns + 1, ns + 1):
            raise ValueError(f"options['distances'] must have shape ({ns + 1}, {ns + 1}), got {D.shape}")
        try:
            S = similarity_from_distance(D)  # Eq. 4
        except ValueError as e:
            raise ValueError(f"options['distances']: {e}") from None
        known = dict(options.get("known") or {})
        for pos, y in known.items():
            if not (isinstance(pos, (int, np.integer)) and 0 <= pos < ns) or y not in (1, -1):
                raise ValueError(f"options['known'] entry {pos!r}: {y!r} must map a position in [0, {ns}) to +1/-1")
        return {"query": query, "candidates": cands.astype(np.int64), "distances": D, "similarity": S,
                "known": known}

    def reset(self, *, seed: Optional[int] = None,
              options: Optional[dict[str, Any]] = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options:
            self._options = self._parse_options(options)
        elif self._options is None:
            raise ValueError("the first reset needs options {'query', 'candidates', 'distances'[, 'known']}")
        opts = self._options
        self.query, self.candidates, self.distances = opts["query"], opts["candidates"], opts["distances"]
        self._S = opts["similarity"]  # Eq. 4; never modified in place (apply_answer returns new arrays)
        self.answers = np.zeros(self.ns, dtype=np.int8)
        self.positives, self.negatives = [], []
        self.questions_asked = 0
        for pos, y in opts["known"].items():  # free: no question counted, no reward
            self._record(int(pos), int(y))
        return self._obs(), self._info()

    # ------------------------------------------------------------------- step
    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Ask ``answer_fn`` about candidate position ``action``, then :meth:`step_with_answer`."""
        if self.answer_fn is None:
            raise RuntimeError("QueryEpisodeEnv has no answer_fn; call step_with_answer(action, y)")
        self._check_action(action)
        y = int(self.answer_fn(self.query, int(self.candidates[int(action)])))
        return self.step_with_answer(action, y)

    def step_with_answer(self, action: int, y: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the answer ``y`` (±1) for candidate position ``action``: Eq. 9 reward, Eq. 6–8 transition."""
        self._check_action(action)
        if y not in (1, -1):
            raise ValueError(f"answer y must be +1 or -1, got {y!r}")
        a = int(action)
        reward = query_reward(self.distances, a + 1, y,
                              positives=np.flatnonzero(self.answers == 1) + 1,
                              negatives=np.flatnonzero(self.answers == -1) + 1, margin=self.margin)
        self._record(a, y)
        self.questions_asked += 1
        terminated = self.questions_asked >= self.kmax or not self.action_mask.any()
        info = self._info()
        info.update(candidate=int(self.candidates[a]), answer=y)
        return self._obs(), reward, bool(terminated), False, info

    def reveal(self, known: dict[int, int]) -> tuple[np.ndarray, dict[str, Any]]:
        """Apply answers learnt without asking (e.g. implied by other answers) mid-episode: no question, no reward."""
        if self._options is None:
            raise RuntimeError("call reset(options=...) before reveal")
        for pos, y in known.items():
            if not (isinstance(pos, (int, np.integer)) and 0 <= pos < self.ns) or y not in (1, -1):
                raise ValueError(f"reveal entry {pos!r}: {y!r} must map a position in [0, {self.ns}) to +1/-1")
            if not self.action_mask[pos]:
                raise ValueError(f"reveal: candidate position {pos} is already answered")
        for pos, y in known.items():
            self._record(int(pos), int(y))
        return self._obs(), self._info()

    # ---------------------------------------------------------------- helpers
    @property
    def action_mask(self) -> np.ndarray:
        """(ns,) bool: candidates that may still be asked (not answered, not known)."""
        return self.answers == 0

    def _check_action(self, action: int) -> None:
        if self._options is None:
            raise RuntimeError("call reset(options=...) before step")
        if self.questions_asked >= self.kmax:
            raise RuntimeError(f"episode is over: kmax={self.kmax} questions asked; call reset")
        if not (isinstance(action, (int, np.integer)) and 0 <= action < self.ns):
            raise ValueError(f"action {action!r} is not a candidate position in [0, {self.ns})")
        if not self.action_mask[action]:
            raise ValueError(f"action {int(action)} is masked: candidate {int(self.candidates[action])} "
                             f"was already answered ({int(self.answers[action]):+d})")

    def _record(self, a: int, y: int) -> None:
        self._S = apply_answer(self._S, a + 1, y, self.thred, self.answers != 0)  # Eq. 6-8
        self.answers[a] = y
        (self.positives if y == 1 else self.negatives).append(int(self.candidates[a]))

    def _obs(self) -> np.ndarray:
        sparse = kappa_reciprocal(self._S, self.kappa)  # Eq. 5, after every update
        return np.concatenate([sparse.ravel(), self.answers]).astype(np.float32)

    def _info(self) -> dict[str, Any]:
        return {"action_mask": self.action_mask, "query": self.query, "questions_asked": self.questions_asked}


def reset_episode(env: QueryEpisodeEnv, query: int, candidates: np.ndarray, features: np.ndarray,
                  metric: Metric, known: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Start the query's episode on the metric's distances over [q, candidates] (Eq. 4); (obs, mask)."""
    idx = np.concatenate([[query], candidates])
    D = metric.pairwise(features[idx], features[idx])
    D = (D + D.T) / 2.0
    np.fill_diagonal(D, 0.0)
    obs, info = env.reset(options={"query": int(query), "candidates": candidates, "distances": D, "known": known})
    return obs, info["action_mask"]
