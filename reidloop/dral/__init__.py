"""DRAL environment maths (§3.2): metric d, state (Eq. 4–5), transitions (Eq. 6–8), reward (Eq. 9), query env."""
from .env import QueryEpisodeEnv, nearest_candidates
from .metric import EuclideanMetric, KissmeMetric, Metric, fit_metric
from .reward import query_reward, uncertainty_reward
from .state import build_distance_matrix, kappa_reciprocal, similarity_from_distance
from .transitions import apply_answer

__all__ = [
    "EuclideanMetric", "KissmeMetric", "Metric", "QueryEpisodeEnv", "apply_answer", "build_distance_matrix",
    "fit_metric", "kappa_reciprocal", "nearest_candidates", "query_reward", "similarity_from_distance",
    "uncertainty_reward",
]
