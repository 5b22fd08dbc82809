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
