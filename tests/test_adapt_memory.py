"""CAP's camera-aware proxy memory: the loss's value and training signal, outliers, the momentum update."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidloop.adapt import ClusterMemory

# 4 clusters × 2 cameras × 3 images in 8-D, with 4 outliers (-1) at the end
IDS = np.concatenate([np.repeat(np.arange(4), 6), [-1] * 4])
CAMS = np.concatenate([np.tile(np.repeat([0, 1], 3), 4), [0, 1, 0, 1]])


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """assert_close without torch.testing (whose first use costs a second of imports)."""
    assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a, b)


def pool(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, 8, generator=g) * 2
    return centres[np.where(IDS >= 0, IDS, 4)] + torch.randn(len(IDS), 8, generator=g)


def test_loss_matches_the_definition_on_a_tiny_case():
    # two clusters × two cameras, unit proxies along the axes; one sample of cluster 0 on camera 0
    feats = torch.eye(4)
    mem = ClusterMemory(feats, [0, 0, 1, 1], [0, 1, 0, 1], temperature=0.5, inter_temperature=0.25,
                        hard_negatives=1, inter_weight=0.5)
    x = F.normalize(torch.tensor([[1.0, 0.5, 0.2, 0.4]]), dim=1)
    s = x[0]  # similarities to the 4 proxies
    intra = -(s[0] / 0.5 - torch.logsumexp(s[[0, 2]] / 0.5, 0))  # camera 0: proxies 0 and 2
    chosen = s[[0, 1, 3]] / 0.25  # positives 0, 1 and the hardest negative (3: 0.4 > 0.2)
    inter = -(chosen[:2] - torch.logsumexp(chosen, 0)).mean()
    assert mem.loss(x, torch.tensor([0])).item() == pytest.approx((intra + 0.5 * inter).item(), rel=1e-6)
    # with no hard negatives the inter term only spreads over the positives
    mem0 = ClusterMemory(feats, [0, 0, 1, 1], [0, 1, 0, 1], temperature=0.5, inter_temperature=0.25,
                         hard_negatives=0, inter_weight=1.0)
    inter0 = -(s[:2] / 0.25 - torch.logsumexp(s[:2] / 0.25, 0)).mean()
    assert mem0.loss(x, torch.tensor([0])).item() == pytest.approx((intra + inter0).item(), rel=1e-6)


def test_proxies_and_centroids():
    f = pool()
    mem = ClusterMemory(f, IDS, CAMS)
    assert mem.proxies.shape == (8, 8) and mem.num_clusters == 4
    close(mem.proxies.norm(dim=1), torch.ones(8))
    close(mem.proxies[3], F.normalize(F.normalize(f[9:12], dim=1).mean(0), dim=0))
    assert mem.sample_proxy[-4:].eq(-1).all() and mem.sample_proxy[9].item() == 3
    cent = mem.centroids()
    close(cent[1], F.normalize(mem.proxies[2] + mem.proxies[3], dim=0))


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    inputs = pool(1)
    model = torch.nn.Linear(8, 8)
    mem = ClusterMemory(F.normalize(model(inputs), dim=1).detach(), IDS, CAMS)
    idx = torch.arange(len(IDS))
    losses = []
    for _ in range(15):
        feats = F.normalize(model(inputs), dim=1)
        loss = mem.loss(feats, idx)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():  # plain SGD (torch.optim's first use costs seconds of imports)
            for p in model.parameters():
                p -= 0.1 * p.grad
        mem.update(feats.detach(), idx)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_outliers_contribute_nothing():
    f = pool().requires_grad_(True)
    mem = ClusterMemory(f.detach(), IDS, CAMS)
    out = torch.arange(24, 28)
    loss = mem.loss(f[out], out)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() == 0
    mixed = torch.tensor([0, 24, 25, 7])
    assert mem.loss(f[mixed], mixed).item() == pytest.approx(mem.loss(f[[0, 7]], torch.tensor([0, 7])).item())


def test_update_moves_proxies_toward_the_batch_and_keeps_unit_norm():
    f = pool()
    mem = ClusterMemory(f, IDS, CAMS, momentum=0.2)
    before = mem.proxies.clone()
    new = F.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    mem.update(new, torch.tensor([0, 1]))  # both on proxy 0 (cluster 0, camera 0)
    expected = F.normalize(0.2 * before[0] + 0.8 * new.mean(0), dim=0)
    close(mem.proxies[0], expected)
    assert (mem.proxies[0] @ new.mean(0)) > (before[0] @ new.mean(0))
    close(mem.proxies[1:], before[1:])  # only the batch's proxies move
    close(mem.proxies.norm(dim=1), torch.ones(8))
    mem.update(new, torch.tensor([24, 25]))  # outliers: nothing
    close(mem.proxies[0], expected)


def test_buffers_follow_device_and_dtype():
    mem = ClusterMemory(pool(), IDS, CAMS)
    meta = ClusterMemory(pool(), IDS, CAMS).to("meta")
    assert {b.device.type for b in meta.buffers()} == {"meta"}
    mem = mem.to(torch.float64)
    assert mem.proxies.dtype == torch.float64 and mem.proxy_cluster.dtype == torch.int64
    f = pool().double()
    assert mem.loss(f[:6], torch.arange(6)).dtype == torch.float64
    assert set(dict(mem.named_buffers())) >= {"proxies", "proxy_cluster", "proxy_camera", "sample_proxy"}


def test_bad_arguments_are_named():
    f = pool()
    with pytest.raises(ValueError, match="temperature must be a positive finite number, got 0"):
        ClusterMemory(f, IDS, CAMS, temperature=0)
    with pytest.raises(ValueError, match="momentum must be in"):
        ClusterMemory(f, IDS, CAMS, momentum=1.5)
    with pytest.raises(ValueError, match="labels must have shape"):
        ClusterMemory(f, IDS[:3], CAMS)
    mem = ClusterMemory(f, IDS, CAMS)
    with pytest.raises(ValueError, match=r"feats must have shape \(B, 8\)"):
        mem.loss(f[:, :4], torch.arange(28))
    with pytest.raises(ValueError, match=r"idx has pool indices outside \[0, 28\)"):
        mem.loss(f[:2], torch.tensor([0, 28]))
