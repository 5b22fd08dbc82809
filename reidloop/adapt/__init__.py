"""Unsupervised adaptation to a new camera network: pseudo-labels by clustering, camera-aware proxy memory.

Pure numpy/torch/scikit-learn (no Ray): :mod:`.clustering` (k-reciprocal Jaccard distance, DBSCAN with answer
constraints, camera-aware proxies) and :mod:`.memory` (CAP's intra/inter-camera contrastive memory).
"""
from __future__ import annotations

from .clustering import auto_eps, cluster, dbscan, jaccard_distance, proxies
from .memory import ClusterMemory

__all__ = ["ClusterMemory", "auto_eps", "cluster", "dbscan", "jaccard_distance", "proxies"]
