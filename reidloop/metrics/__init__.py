"""Re-ID evaluation: pairwise distances, Market-1501 CMC/mAP/mINP, and k-reciprocal re-ranking."""
from reidloop.metrics.distance import normalize, pairwise_distance
from reidloop.metrics.rank import RankResult, evaluate_rank
from reidloop.metrics.rerank import k_reciprocal_rerank, rerank_from_features

__all__ = [
    "RankResult",
    "evaluate_rank",
    "k_reciprocal_rerank",
    "normalize",
    "pairwise_distance",
    "rerank_from_features",
]
