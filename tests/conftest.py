"""Shared fixtures. One real local Ray per test session (started on first use only)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also inherited by Ray workers: no oversubscription


def pytest_configure(config):
    # Tiny models on a 2-core machine shared with Ray workers: one intra-op thread avoids
    # OpenMP oversubscription, which slows small convolutions down several-fold.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray: 2 CPUs, no dashboard, 512 MiB object store (DEVELOPERS.md)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024 * 1024,
                 log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory):
    """A tiny synthetic Re-ID set (real PNG files), shared by the tests that train or serve."""
    from reidloop.config import SyntheticConfig
    from reidloop.data.synthetic import synthetic_splits

    cfg = SyntheticConfig(train_ids=12, test_ids=6, images_per_camera=2, height=32, width=16, seed=0)
    return synthetic_splits(cfg, str(tmp_path_factory.mktemp("synthetic")))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained resnet18 checkpoint (the loop's mechanics do not need a good model)."""
    import torch

    from reidloop.config import ModelConfig
    from reidloop.models import build_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "init.pt"
    save_checkpoint(path, build_model(ModelConfig(backbone="resnet18"), num_classes=0))
    return str(path)
