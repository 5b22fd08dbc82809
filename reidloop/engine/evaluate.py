"""Evaluate an embedding model on query/gallery records (CMC, mAP, mINP; optional re-ranking)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import EvalConfig
from ..data.records import ImageRecord
from ..metrics.distance import pairwise_distance
from ..metrics.rank import evaluate_rank
from ..metrics.rerank import k_reciprocal_rerank
from .features import extract_features
from .precision import Precision


def evaluate_features(qf: np.ndarray, gf: np.ndarray, query: Sequence[ImageRecord],
                      gallery: Sequence[ImageRecord], cfg: EvalConfig) -> dict:
    """Metrics from precomputed features (Euclidean distance; k-reciprocal re-ranking if cfg.rerank)."""
    q_pids = np.array([r.pid for r in query]); g_pids = np.array([r.pid for r in gallery])
    q_cams = np.array([r.camid for r in query]); g_cams = np.array([r.camid for r in gallery])
    qg = pairwise_distance(qf, gf)
    if cfg.rerank:
        qg = k_reciprocal_rerank(qg, pairwise_distance(qf, qf), pairwise_distance(gf, gf),
                                 k1=cfg.rerank_k1, k2=cfg.rerank_k2, lambda_value=cfg.rerank_lambda)
    result = evaluate_rank(qg, q_pids, g_pids, q_cams, g_cams, max_rank=max(cfg.max_rank, 10))
    return result.as_dict()


def evaluate_model(model: torch.nn.Module, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], *,
                   height: int, width: int, cfg: EvalConfig, precision: Precision,
                   num_workers: int = 0, progress: bool = True) -> dict:
    kw = dict(height=height, width=width, precision=precision, batch_size=cfg.batch_size,
              num_workers=num_workers, progress=progress)
    qf = extract_features(model, query, desc="query", **kw)
    gf = extract_features(model, gallery, desc="gallery", **kw)
    return evaluate_features(qf, gf, query, gallery, cfg)


def format_metrics(rows: dict[str, dict]) -> str:
    """A plain-text table: one row per model/run, columns rank-1/5/10, mAP, mINP (in %)."""
    cols = ["rank1", "rank5", "rank10", "mAP", "mINP"]
    width = max([len(k) for k in rows] + [5])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{c:>7}" for c in cols)]
    for name, m in rows.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{100 * m[c]:>7.2f}" for c in cols))
    return "\n".join(lines)
