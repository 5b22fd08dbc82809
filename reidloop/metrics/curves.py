"""Comparing active learners at equal answers: points of a run's mAP-vs-answers curve.

A run gives one point per round: (answers used so far, metric after that round's fine-tune), starting
with the pre-trained model at 0 answers. Between two points the curve is taken as linear (a round's
answers all arrive before its fine-tune, so this is an interpolation, not a measurement: runs cut
by answers, ``rounds: answers``, have their points at the same answer counts and need none). Nothing is
extrapolated: a run that stopped before ``x`` answers has no value at ``x`` (None), unless it stopped with
budget left because it had nothing more to ask (``held_to_budget``): then its last value is what that
budget buys.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _curve(answers: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(answers, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError(f"a curve needs as many answers as values, at least one: got {x.shape} and {y.shape}")
    if np.any(np.diff(x) < 0):
        raise ValueError(f"answers must not decrease along a run: {x.tolist()}")
    return x, y


def gap_closure(value: float, baseline: float, upperbound: float) -> float:
    """(value − Baseline) / (UpperBound − Baseline): 0 at the Baseline, 1 at the UpperBound."""
    gap = upperbound - baseline
    if gap <= 0:
        raise ValueError(f"gap closure needs UpperBound > Baseline, got {upperbound} <= {baseline}")
    return (value - baseline) / gap


def held_to_budget(answers: Sequence[float], values: Sequence[float],
                   budget: float) -> tuple[list[float], list[float]]:
    """The curve of a run that ended with ``budget`` left unspent, extended level to its budget.

    A run that ended short of its budget (every query browsed, fewer answers asked than allowed, e.g. when
    answer inference settled some pairs) could not have spent more: given that budget, its last model is
    what it returns. So its last value holds up to the budget (never beyond it: a larger budget is another
    run). A run that spent its whole budget is returned as it is.
    """
    x, y = _curve(answers, values)
    if x[-1] >= budget:
        return x.tolist(), y.tolist()
    return [*x.tolist(), float(budget)], [*y.tolist(), float(y[-1])]


def value_at(answers: Sequence[float], values: Sequence[float], x: float) -> float | None:
    """The curve's value at ``x`` answers (linear between rounds); None beyond the run's last point.

    Where several points share an answer count (a round that asked nothing), the last one counts.
    """
    ax, ay = _curve(answers, values)
    if x < ax[0] or x > ax[-1]:
        return None
    i = int(np.searchsorted(ax, x, side="right")) - 1  # last point at or before x
    if ax[i] == x or i == len(ax) - 1:
        return float(ay[i])
    x0, x1, y0, y1 = ax[i], ax[i + 1], ay[i], ay[i + 1]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def mean_up_to(answers: Sequence[float], values: Sequence[float], upto: float) -> float | None:
    """Area under the curve from 0 to ``upto`` answers divided by ``upto``: the mean value over that span.

    Rewards reaching a value early. None when the run stopped before ``upto`` or did not start at 0.
    """
    ax, ay = _curve(answers, values)
    if upto <= 0 or ax[0] != 0 or upto > ax[-1]:
        return None
    keep = ax < upto
    i = int(np.searchsorted(ax, upto, side="left"))  # the curve's left limit at upto: its first point there
    end = float(ay[i]) if ax[i] == upto else value_at(ax, ay, upto)
    xs = np.concatenate([ax[keep], [upto]])
    ys = np.concatenate([ay[keep], [end]])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / upto)


def answers_to_reach(answers: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """Fewest answers at which the curve first reaches ``target`` (linear between rounds); None if never."""
    ax, ay = _curve(answers, values)
    if ay[0] >= target:
        return float(ax[0])
    for i in range(1, len(ax)):
        if ay[i] >= target:
            x0, x1, y0, y1 = ax[i - 1], ax[i], ay[i - 1], ay[i]
            return float(x0 + (x1 - x0) * (target - y0) / (y1 - y0))
    return None
