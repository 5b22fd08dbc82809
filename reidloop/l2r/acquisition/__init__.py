"""Acquisition strategies of the classification experiment, one per file, behind :class:`Acquisition`."""
from __future__ import annotations

from typing import Optional

from ...config.l2r import ACQUISITIONS, LossModuleConfig
from ..sorter import GRUSorter
from .base import Acquisition, AcquisitionInputs, top_k
from .coreset import CoresetAcquisition, k_center_greedy
from .entropy import EntropyAcquisition, entropy
from .l2r import L2RAcquisition
from .ll4al import LL4ALAcquisition
from .random import RandomAcquisition


def build_acquisition(name: str, module: LossModuleConfig, sorter: Optional[GRUSorter] = None) -> Acquisition:
    """The strategy called ``name`` (one of reidloop.config.l2r.ACQUISITIONS); ``l2r`` needs the sorter."""
    if name == "l2r":
        if sorter is None:
            raise ValueError("strategy 'l2r' needs a trained sorter (sorter_path or the sorter section)")
        return L2RAcquisition(sorter, module.hidden, module.negative_slope, module.lr)
    if name == "ll4al":
        return LL4ALAcquisition(module.ll4al_hidden, module.ll4al_margin, module.ll4al_weight,
                                module.ll4al_detach_epoch, module.lr)
    simple = {"random": RandomAcquisition, "entropy": EntropyAcquisition, "coreset": CoresetAcquisition}
    if name not in simple:
        raise ValueError(f"strategy: {name!r} is not one of {list(ACQUISITIONS)}")
    return simple[name]()


__all__ = ["Acquisition", "AcquisitionInputs", "build_acquisition", "entropy", "k_center_greedy", "top_k",
           "RandomAcquisition", "EntropyAcquisition", "CoresetAcquisition", "LL4ALAcquisition", "L2RAcquisition"]
