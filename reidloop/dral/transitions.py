"""DRAL state transition (§3.2.2, Eq. 6–8, Fig. 3) after the annotator answers about g_k.

The update works on the DENSE similarity matrix of Eq. 4; the state the agent
observes is ``kappa_reciprocal(S_dense)`` recomputed after every update ("the
k-reciprocal operation will also be adopted afterwards").  Updating the sparse
matrix instead would be wrong: κ-reciprocal sparsification zeroes most
``Sim(g_k, g_i)``, the very values Eq. 7 and 8 propagate.

Only row/column 0 (the query's similarities) changes; candidate–candidate
similarities are features of the images and stay as Eq. 4 gave them.
"""
from __future__ import annotations

import numpy as np


def apply_answer(S_dense: np.ndarray, k: int, y: int, thred: float, answered_mask: np.ndarray) -> np.ndarray:
    """Return a new dense similarity matrix after the answer ``y`` (±1) for candidate ``g_k``.

    ``k`` is the matrix index of g_k (1..ns; 0 is the query).  ``answered_mask``
    (ns,) bool marks the candidates g1..g_ns answered BEFORE this answer
    (``answered_mask[i-1]`` ↔ g_i); they keep their 1/0 similarity to q.

    * ``y = +1``: ``Sim(q, g_k) = 1`` (Eq. 6) and, for every other unanswered g_i,
      ``Sim(q, g_i) ← (Sim(q, g_i) + Sim(g_k, g_i)) / 2``: Eq. 7 as the text
      states it ("the average score between g_i with (q, g_k)").  The printed
      formula averages with ``Sim(q, g_k)``, which Eq. 6 has just set to 1; that
      would lift every candidate by the same rule regardless of its resemblance to
      the confirmed positive, contradicting the text and Fig. 3.
    * ``y = −1``: ``Sim(q, g_k) = 0`` (Eq. 6) and, for every other unanswered g_i
      with ``Sim(g_k, g_i) > thred``, ``Sim(q, g_i) ← max(Sim(q, g_i) − Sim(g_k, g_i), 0)``
      (Eq. 8; ``DralConfig.thred`` → ``thred``).

    Row 0 and column 0 are updated together, so the result stays symmetric.
    """
    S = np.array(S_dense, dtype=np.float64)  # a copy: the caller's matrix is never modified
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 2:
        raise ValueError(f"S_dense must be a square (ns+1, ns+1) matrix, got shape {S.shape}")
    ns = S.shape[0] - 1
    mask = np.asarray(answered_mask)
    if mask.shape != (ns,) or mask.dtype != bool:
        raise ValueError(f"answered_mask must be a bool array of shape ({ns},), got {mask.dtype} {mask.shape}")
    if not 1 <= k <= ns:
        raise ValueError(f"k must be a candidate's matrix index in [1, {ns}], got {k}")
    if mask[k - 1]:
        raise ValueError(f"candidate g_{k} (matrix index {k}) has already been answered")
    if y not in (1, -1):
        raise ValueError(f"answer y must be +1 or -1, got {y!r}")
    if not 0.0 <= thred <= 1.0:
        raise ValueError(f"thred must be in [0, 1], got {thred}")

    others = ~mask
    others[k - 1] = False
    idx = np.flatnonzero(others) + 1  # matrix indices of the g_i to re-score
    sim_k = S[k, idx]
    if y == 1:
        new = (S[0, idx] + sim_k) / 2.0  # Eq. 7 (text)
        S[0, k] = 1.0  # Eq. 6
    else:
        new = np.where(sim_k > thred, np.maximum(S[0, idx] - sim_k, 0.0), S[0, idx])  # Eq. 8
        S[0, k] = 0.0  # Eq. 6
    S[0, idx] = new
    S[idx, 0] = new
    S[k, 0] = S[0, k]
    return S
