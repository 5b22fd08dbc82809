"""Device and mixed-precision selection.

``amp="auto"`` picks what is fast *and* safe on the hardware at hand:
- CUDA: bf16 autocast where the GPU supports it, else fp16 with a GradScaler;
- CPU: bf16 autocast only when the CPU has native bf16 matrix units (AMX or
  AVX512-BF16). On CPUs without them (e.g. AVX2-only EPYC) bf16 is *emulated*
  and several times slower than fp32, so auto stays fp32.
channels_last is used everywhere: oneDNN's convolutions prefer it even in fp32
(measured on an AVX2 EPYC: ResNet-50 inference 69 vs 53 img/s, training equal).

Autocast is trusted only after :func:`checked_precision` has compared it with fp32 on the model
and input size at hand: torch 2.14.1's oneDNN bf16 kernels on AMX CPUs return garbage (|x| ~ 1e37)
for some shapes, e.g. a stride-2 3×3 convolution 128→256 channels on a 4×2 map, which ResNets hit at
32×16 inputs. Where the check fails, that model and size run in fp32, with a warning.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    capability = ""
    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # pragma: no cover - very old torch
        pass
    if "AMX" in capability or "BF16" in capability:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available on this machine")
    return device


@dataclass(frozen=True)
class Precision:
    """What autocast to use on which device."""

    device: torch.device
    dtype: torch.dtype | None  # None: full fp32
    channels_last: bool

    @property
    def needs_grad_scaler(self) -> bool:
        return self.device.type == "cuda" and self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def describe(self) -> str:
        dt = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return f"{self.device.type}/{dt}{'+channels_last' if self.channels_last else ''}"


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """Map the ``amp`` setting (auto | off | bf16 | fp16) to a Precision for ``device``."""
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"amp: {amp!r} is not one of auto, off, bf16, fp16")
    if amp == "off":
        return Precision(device, None, True)
    if device.type == "cuda":
        if amp == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return Precision(device, dtype, True)
    # CPU
    if amp == "fp16":
        raise ValueError("amp: fp16 autocast is for CUDA; on CPU use bf16 or auto")
    if amp == "bf16" or cpu_has_native_bf16():
        return Precision(device, torch.bfloat16, True)
    return Precision(device, None, True)


_CHECKED: dict[tuple, bool] = {}
MIN_COSINE = 0.9  # final embeddings, autocast vs fp32 (a trained net reaches ~0.99 on noise inputs)
MAX_LAYER_ERROR = 0.05  # per conv/linear layer: max |autocast − fp32| / max |fp32|


def _layer_errors(model: torch.nn.Module, x: torch.Tensor, precision: Precision) -> tuple[torch.Tensor, dict]:
    """Autocast forward of ``x``; each conv/linear output is compared with fp32 on the same input.

    Layer by layer, because a kernel that leaves part of its output unwritten (what oneDNN does here)
    returns whatever the memory held: the final embedding may then look plausible by chance.
    """
    errors: dict[str, float] = {}

    def hook(name):
        def check(module, inputs, out):
            with torch.autocast(precision.device.type, enabled=False):
                w = module.weight.float()
                b = None if module.bias is None else module.bias.float()
                xin = inputs[0].float()
                if isinstance(module, torch.nn.Conv2d):
                    ref = module._conv_forward(xin, w, b)
                else:
                    ref = torch.nn.functional.linear(xin, w, b)
                err = (out.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-6)
            errors[name] = float(err) if torch.isfinite(err) else float("inf")
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        out = _forward(model, x, precision)
    finally:
        for h in handles:
            h.remove()
    return out, errors


def _forward(model: torch.nn.Module, x: torch.Tensor, precision: Precision) -> torch.Tensor:
    with precision.autocast():
        out = model(precision.batch(x))
    out = out.features if hasattr(out, "features") else out
    return out.float().flatten(1)


def checked_precision(precision: Precision, model: torch.nn.Module, height: int, width: int) -> Precision:
    """``precision``, or its fp32 twin when autocast computes ``model`` wrongly at ``height``×``width``.

    Two seeded random images go through the model in eval mode under autocast; every conv/linear
    layer's output must match fp32 on the same input (max error ≤ 5% of the layer's largest value)
    and every final embedding must be finite with a cosine ≥ 0.9 to the fp32 model's (the layer check
    catches broken kernels; this one, errors that only add up over depth). Otherwise fp32
    is returned and a warning names the layer. Checked once per (architecture, input size, dtype,
    device) per process; the model's train/eval mode is restored.
    """
    if precision.dtype is None:
        return precision
    arch = (type(model).__name__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))
    key = (arch, height, width, precision.dtype, precision.device.type)
    if key not in _CHECKED:
        was_training = model.training
        model = precision.prepare(model).eval()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, height, width, generator=gen)
        try:
            with torch.no_grad():
                ref = _forward(model, x, replace(precision, dtype=None))
                low, errors = _layer_errors(model, x, precision)
        finally:
            model.train(was_training)
        cos = torch.nn.functional.cosine_similarity(low, ref, dim=1)
        bad = {n: e for n, e in errors.items() if not e <= MAX_LAYER_ERROR}
        ok = bool(not bad and torch.isfinite(low).all() and (cos >= MIN_COSINE).all())
        if not ok:
            worst = sorted(bad.items(), key=lambda kv: -kv[1])[:3]
            log.warning("%s autocast computes %s wrongly at %dx%d (layers off by %s; embedding cosine to fp32 %s): "
                        "using fp32", precision.describe(), type(model).__name__, height, width,
                        {n: f"{e:.3g}" for n, e in worst} or "none",
                        [round(float(c), 3) for c in torch.nan_to_num(cos, nan=-1.0)])
        _CHECKED[key] = ok
    return precision if _CHECKED[key] else replace(precision, dtype=None)
