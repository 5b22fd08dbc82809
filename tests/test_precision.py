"""Precision selection and its effect: bf16 features must match fp32 ones (rank order preserved)."""
import numpy as np
import pytest
import torch

from reidloop.engine.precision import cpu_has_native_bf16, resolve_precision


def test_auto_on_cpu_follows_native_bf16_support():
    p = resolve_precision("auto", torch.device("cpu"))
    assert (p.dtype == torch.bfloat16) == cpu_has_native_bf16()
    assert resolve_precision("off", torch.device("cpu")).dtype is None
    assert resolve_precision("bf16", torch.device("cpu")).channels_last


def test_bad_amp_values_are_rejected():
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="'half' is not one of"):
        resolve_precision("half", torch.device("cpu"))


def test_bf16_embeddings_agree_with_fp32():
    from reidloop.config import ModelConfig
    from reidloop.engine.features import embed_batches
    from reidloop.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18"), num_classes=0).eval()
    base = torch.rand(6, 3, 64, 32)
    x = torch.cat([base, (base + 0.02 * torch.randn_like(base)).clamp(0, 1)])  # 6 near-duplicate pairs
    f32 = embed_batches(model, [x], resolve_precision("off", torch.device("cpu"))).numpy()
    b16 = embed_batches(model, [x], resolve_precision("bf16", torch.device("cpu"))).numpy()
    cos = (f32 * b16).sum(1) / (np.linalg.norm(f32, axis=1) * np.linalg.norm(b16, axis=1))
    assert cos.min() > 0.99
    # nearest neighbours (what retrieval uses) are unchanged
    def nn(f):
        d = ((f[:, None] - f[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return d.argmin(1)
    partner = np.r_[np.arange(6, 12), np.arange(6)]
    assert (nn(f32) == partner).all() and (nn(b16) == partner).all()


class Cancelling(torch.nn.Module):
    """Embeddings that are differences of two large, nearly equal numbers: bf16 autocast gets them wrong."""

    def __init__(self, n_in: int, dim: int = 8, scale: float = 300.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        v, u = torch.randn(dim, n_in, generator=gen), torch.randn(dim, n_in, generator=gen)
        self.first = torch.nn.Linear(n_in, 2 * dim, bias=False)
        self.second = torch.nn.Linear(2 * dim, dim, bias=False)
        with torch.no_grad():
            self.first.weight.copy_(torch.cat([scale * v + u, scale * v]))
            self.second.weight.copy_(torch.cat([torch.eye(dim), -torch.eye(dim)], 1))

    def forward(self, x):
        return self.second(self.first(x.flatten(1)))


def test_checked_precision_falls_back_to_fp32_when_autocast_is_wrong(caplog):
    from reidloop.engine.precision import checked_precision

    bf16 = resolve_precision("bf16", torch.device("cpu"))
    model = Cancelling(3 * 8 * 4).train()
    with caplog.at_level("WARNING"):
        p = checked_precision(bf16, model, 8, 4)
    assert p.dtype is None and p.channels_last  # fp32, everything else kept
    assert "autocast computes Cancelling wrongly at 8x4" in caplog.text
    assert model.training  # the probe ran in eval mode and restored the mode


def test_checked_precision_keeps_autocast_when_it_agrees():
    from reidloop.config import ModelConfig
    from reidloop.engine.precision import checked_precision
    from reidloop.models import build_model

    bf16 = resolve_precision("bf16", torch.device("cpu"))
    model = build_model(ModelConfig(backbone="resnet18"), num_classes=0)
    assert checked_precision(bf16, model, 64, 32) is bf16
    off = resolve_precision("off", torch.device("cpu"))
    assert checked_precision(off, model, 64, 32) is off


def test_features_at_a_tiny_input_are_finite_whatever_the_cpu():
    """torch 2.14.1's oneDNN bf16 conv returns ~1e37 garbage on AMX for a 4×2 map at stride 2 (ResNet at
    32×16); extract_features must still give the fp32 answer there."""
    from reidloop.config import ModelConfig
    from reidloop.engine.features import embed_batches
    from reidloop.engine.precision import checked_precision
    from reidloop.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18"), num_classes=0).eval()
    x = torch.rand(4, 3, 32, 16)
    p = checked_precision(resolve_precision("auto", torch.device("cpu")), model, 32, 16)
    f = embed_batches(model, [x], p).numpy()
    ref = embed_batches(model, [x], resolve_precision("off", torch.device("cpu"))).numpy()
    assert np.isfinite(f).all()
    cos = (f * ref).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.99
