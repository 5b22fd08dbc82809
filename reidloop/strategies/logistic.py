"""A small deterministic 1-D logistic regression, P(same | x) = σ(a + b·x), shared by QIU and QBC.

Ridge-penalised Newton steps (IRLS) on the standardised input, vectorised over several models
(rows of ``x``): a handful of (N,) array operations per step, so refitting after every answer
stays cheap.  The penalty on the standardised slope keeps the fit finite when the answers are
separable (the usual case early on: every "same" nearer than every "different").
"""
from __future__ import annotations

import numpy as np


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, init: np.ndarray | None = None,
                 l2: float = 1e-2, iters: int = 50, tol: float = 1e-9) -> np.ndarray:
    """(M, 2) coefficients (a, b) in ``x``'s units, one model per row of ``x`` (M, N).

    ``y`` (N,) is 1 for "same", 0 for "different"; ``w`` (M, N) example weights (e.g. bootstrap
    counts, default 1); ``init`` (M, 2) a warm start (e.g. the previous fit). ``l2`` penalises the
    slope on the standardised input (and a 1e-6 of it the intercept, so every step is solvable).
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64)
    sw = np.maximum(w.sum(1), 1e-12)
    mu = (w * x).sum(1) / sw
    sd = np.maximum(np.sqrt((w * (x - mu[:, None]) ** 2).sum(1) / sw), 1e-12)
    z = (x - mu[:, None]) / sd[:, None]
    t = np.zeros((len(x), 2))
    if init is not None:  # to standardised units: a' = a + b·mu, b' = b·sd
        init = np.asarray(init, dtype=np.float64).reshape(len(x), 2)
        t = np.stack([init[:, 0] + init[:, 1] * mu, init[:, 1] * sd], 1)
    la = 1e-6 * l2
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (t[:, :1] + t[:, 1:] * z)))  # σ, overflow-free
        r, h = w * (p - y), w * p * (1.0 - p)
        g0, g1 = r.sum(1) + la * t[:, 0], (r * z).sum(1) + l2 * t[:, 1]
        h00, h01, h11 = h.sum(1) + la, (h * z).sum(1), (h * z * z).sum(1) + l2
        det = h00 * h11 - h01 ** 2
        step = np.clip(np.stack([h11 * g0 - h01 * g1, h00 * g1 - h01 * g0], 1) / det[:, None], -5.0, 5.0)
        t -= step
        if np.abs(step).max() < tol:
            break
    return np.stack([t[:, 0] - t[:, 1] * mu / sd, t[:, 1] / sd], 1)
