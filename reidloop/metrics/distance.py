"""Pairwise distances between feature matrices (numpy or torch), computed in row chunks.

Euclidean distances use the expansion ``||a-b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` and are clamped at 0 before
the square root, so round-off never yields negative squares or NaNs. Each row chunk is written straight into
the preallocated result, so peak memory is the output plus one chunk, even for a 20k x 20k gallery.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

Metric = Literal["euclidean", "sqeuclidean", "cosine"]
METRICS: tuple[str, ...] = ("euclidean", "sqeuclidean", "cosine")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def as_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` as a numpy array (torch tensors are detached and moved to CPU); ``name`` is used in errors."""
    if _is_torch(x):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc


def normalize(x: Any, axis: int = -1, eps: float = 1e-12) -> Any:
    """L2-normalise ``x`` along ``axis`` (numpy array or torch tensor; same type back).

    Vectors with norm below ``eps`` are divided by ``eps`` instead, so zero vectors stay zero (no NaN).
    """
    if _is_torch(x):
        import torch

        x = x if x.is_floating_point() else x.to(torch.get_default_dtype())
        return x / x.norm(dim=axis, keepdim=True).clamp_min(eps)
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def _check_pair(a: Any, b: Any, metric: str, chunk_size: int) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"features must be 2-D (n, dim); got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: a has {a.shape[1]}, b has {b.shape[1]}")


def _numpy_distance(a: np.ndarray, b: np.ndarray, metric: str, chunk_size: int) -> np.ndarray:
    dtype = np.result_type(a.dtype, b.dtype, np.float32)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    out = np.empty((a.shape[0], b.shape[0]), dtype=dtype)
    if metric == "cosine":
        a, b = normalize(a), normalize(b)
    else:
        a_sq = np.einsum("ij,ij->i", a, a)
        b_sq = np.einsum("ij,ij->i", b, b)
    bt = np.ascontiguousarray(b.T)
    for start in range(0, a.shape[0], chunk_size):
        stop = min(start + chunk_size, a.shape[0])
        block = out[start:stop]
        np.matmul(a[start:stop], bt, out=block)
        if metric == "cosine":
            np.subtract(1.0, block, out=block)
            np.clip(block, 0.0, 2.0, out=block)
            continue
        block *= -2.0
        block += a_sq[start:stop, None]
        block += b_sq[None, :]
        np.maximum(block, 0.0, out=block)
        if metric == "euclidean":
            np.sqrt(block, out=block)
    return out


def _torch_distance(a: Any, b: Any, metric: str, chunk_size: int) -> Any:
    import torch

    if a.device != b.device:
        raise ValueError(f"tensors are on different devices: {a.device} and {b.device}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    a, b = a.detach().to(dtype), b.detach().to(dtype)
    out = torch.empty((a.shape[0], b.shape[0]), dtype=dtype, device=a.device)
    if metric == "cosine":
        a, b = normalize(a), normalize(b)
    else:
        a_sq = (a * a).sum(dim=1)
        b_sq = (b * b).sum(dim=1)
    bt = b.T
    for start in range(0, a.shape[0], chunk_size):
        stop = min(start + chunk_size, a.shape[0])
        block = a[start:stop] @ bt
        if metric == "cosine":
            block = (1.0 - block).clamp_(0.0, 2.0)
        else:
            block.mul_(-2.0).add_(a_sq[start:stop, None]).add_(b_sq[None, :]).clamp_min_(0.0)
            if metric == "euclidean":
                block.sqrt_()
        out[start:stop] = block
    return out


def pairwise_distance(a: Any, b: Any, metric: Metric = "euclidean", *, chunk_size: int = 4096) -> Any:
    """Distance matrix ``D[i, j] = d(a[i], b[j])`` for ``a`` (n, dim) and ``b`` (m, dim).

    ``metric``: ``"euclidean"`` (``||a-b||``), ``"sqeuclidean"`` (``||a-b||^2``) or ``"cosine"``
    (``1 - cos(a, b)``, in [0, 2]). Numpy in -> numpy out, torch in -> torch out (same device, gradients
    detached). Float32 inputs stay float32; integer inputs are promoted to float64 (numpy) or torch's
    default float dtype. ``chunk_size`` rows of ``a`` are processed at a time.
    """
    if _is_torch(a) != _is_torch(b):
        raise TypeError(
            f"a and b must both be numpy arrays or both torch tensors, got {type(a).__name__} and {type(b).__name__}"
        )
    if not _is_torch(a):
        a, b = np.asarray(a), np.asarray(b)
    _check_pair(a, b, metric, chunk_size)
    if _is_torch(a):
        return _torch_distance(a, b, metric, chunk_size)
    return _numpy_distance(a, b, metric, chunk_size)
