"""Acquisition strategies, one per file, behind :class:`reidloop.strategies.base.Strategy`."""
from __future__ import annotations

from ..config import AdaptConfig, DralConfig
from .base import RoundContext, Strategy, Transition, masked_argmax
from .baseline import BaselineStrategy
from .cluster import ClusterStrategy
from .dral import DralStrategy
from .farthest import FarthestStrategy
from .gd import GraphDensityStrategy
from .nearest import NearestStrategy
from .qbc import QBCStrategy
from .qiu import QIUStrategy
from .random import RandomStrategy
from .upperbound import UpperBoundStrategy

_SIMPLE = {cls.name: cls for cls in (RandomStrategy, QIUStrategy, QBCStrategy, GraphDensityStrategy, NearestStrategy,
                                     FarthestStrategy, BaselineStrategy, UpperBoundStrategy)}


def build_strategy(name: str, dral: DralConfig, seed: int = 0, adapt: AdaptConfig | None = None) -> Strategy:
    """The strategy called ``name`` (see reidloop.config.STRATEGIES). ``adapt``: the clustering settings the
    cluster-aware strategy shares with unsupervised adaptation (eps, eps_rho, min_samples, k1, k2, camera_centring;
    default: AdaptConfig's)."""
    if name == "cluster":
        a = adapt or AdaptConfig()
        return ClusterStrategy(seed=seed, eps=a.eps, min_samples=a.min_samples, k1=a.k1, k2=a.k2,
                               camera_centring=a.camera_centring, eps_rho=a.eps_rho)
    if name == "dral":
        return DralStrategy(dral, seed=seed)
    if name == "l2r":
        from .l2r import L2RStrategy  # the learned-loss ranker (L2R-AL), optional

        return L2RStrategy(dral, seed=seed)
    try:
        return _SIMPLE[name](seed=seed)
    except KeyError:
        known = sorted([*_SIMPLE, "dral", "l2r", "cluster"])
        raise ValueError(f"strategy: {name!r} is not one of {known}") from None


__all__ = ["RoundContext", "Strategy", "Transition", "masked_argmax", "build_strategy"]
