"""Extraction speed: our pipeline against a torchreid-style fp32 eager loop, same images, same weights.

    .venv/bin/python benchmarks/extract_bench.py --cuhk01 ../shared/data/cuhk01 --out benchmarks/results/extract
    .venv/bin/python benchmarks/extract_bench.py --cuhk01 ../shared/data/cuhk01 --identities 20 --repeats 1 \
        --backbones mobilenet_v2 --height 64 --width 32                  # a smoke run (seconds)

Images: the CUHK01 test identities of split seed 0 (the first ``--identities`` of them; query camera A,
gallery camera B), real JPEGs decoded in each pass. Every pipeline embeds the same records with a copy of
the same model (MobileNetV2 with its ImageNet weights; ResNet-18/50 randomly initialised unless
``--resnet-weights`` names a local torchvision file: speed does not depend on the weights), and each row
reports the mAP its features give, so a faster pipeline that changed the answer would show.

Pipelines (interleaved within each repeat, so load hits them alike; median of ``--repeats``):
- **torchreid-style**: what torchreid's ``engine._feature_extraction`` does: a DataLoader over PIL images
  with torchvision's Resize((h, w)) + ToTensor + Normalize, batch 100 (torchreid's ``test_batch_size``),
  ``model.eval()`` and ``torch.no_grad()``, fp32, NCHW. ``num_workers=0`` as ours (2 cores: a worker
  process would compete with the forward pass for the same cores).
- **ours**: ``reidloop.engine.features.extract_features`` as shipped (``amp: auto``: bf16 autocast where the
  CPU has native bf16, else fp32; channels_last; ``inference_mode``; batch 64), and the same at batch 128.
- **ours + torch.compile**: the same loop over ``torch.compile(model)`` (inductor, frozen weights); its
  one-off compile time (both batch shapes, the last batch being smaller) is its own column.
"model only" is the forward pass alone over the already decoded batches (what decoding costs is the
difference). "% of peak" = images/s × the model's FLOPs per image (``torch.utils.flop_counter``) / this
machine's measured dense matmul rate in the same precision and thread count (a 2048² GEMM).
Prints a markdown table; writes extract.json / extract_rows.csv / extract.md to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import machine_meta, markdown_table, write_results  # noqa: E402
from reidloop.config import EvalConfig, ModelConfig  # noqa: E402
from reidloop.data.cuhk01 import read_cuhk01  # noqa: E402
from reidloop.data.records import ImageRecord  # noqa: E402
from reidloop.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from reidloop.engine.evaluate import evaluate_features  # noqa: E402
from reidloop.engine.features import embed_batches, extract_features, image_loader  # noqa: E402
from reidloop.engine.precision import Precision, checked_precision, resolve_precision  # noqa: E402
from reidloop.models import build_model  # noqa: E402

CPU = torch.device("cpu")


# ------------------------------------------------------------------ the torchreid-style loop
class PlainImages(Dataset):
    """torchreid's ImageDataset for testing: PIL open + convert("RGB"), then the transform."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable) -> None:
        self.records, self.transform = list(records), transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.records[i].path) as img:
            return self.transform(img.convert("RGB"))


def torchreid_transform(height: int, width: int) -> T.Compose:
    """torchreid.data.transforms.build_transforms' test transform."""
    return T.Compose([T.Resize((height, width)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def torchreid_style(model: torch.nn.Module, records: Sequence[ImageRecord], height: int, width: int,
                    batch_size: int = 100) -> np.ndarray:
    loader = DataLoader(PlainImages(records, torchreid_transform(height, width)), batch_size=batch_size,
                        shuffle=False, num_workers=0)
    model.eval()
    feats = []
    with torch.no_grad():
        for x in loader:
            feats.append(model(x).cpu().clone())
    return torch.cat(feats).numpy()


# ------------------------------------------------------------------ ours, as shipped and with torch.compile
def ours(model: torch.nn.Module, records, height: int, width: int, precision: Precision, batch_size: int) -> np.ndarray:
    return extract_features(model, records, height=height, width=width, precision=precision,
                            batch_size=batch_size, progress=False)


def compiled(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """``torch.compile`` with inductor's weight freezing (constant-folds the eval-mode BN into the convs)."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    return torch.compile(precision.prepare(model.eval()), dynamic=False)


def ours_compiled(model: torch.nn.Module, records, height: int, width: int, precision: Precision,
                  batch_size: int) -> np.ndarray:
    loader = image_loader(records, height, width, batch_size)
    return embed_batches(model, (b[0] for b in loader), precision).numpy()


# ------------------------------------------------------------------ machine and model figures
def matmul_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0, windows: int = 3) -> float:
    """Dense GEMM rate of this machine (GFLOP/s) in ``dtype`` with torch's current thread count: the best of
    ``windows`` timed windows (a peak: a window that other work slowed down is not the machine's rate)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(windows):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            reps += 1
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def gflop_per_image(model: torch.nn.Module, height: int, width: int) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.randn(1, 3, height, width))
    return counter.get_total_flops() / 1e9


def decoded_batches(records, height: int, width: int, batch_size: int, transform=None) -> list[torch.Tensor]:
    if transform is None:
        return [b[0] for b in image_loader(records, height, width, batch_size)]
    return list(DataLoader(PlainImages(records, transform), batch_size=batch_size, num_workers=0))


def forward_only(model: torch.nn.Module, batches: list[torch.Tensor], precision: Precision | None) -> None:
    model.eval()
    with torch.inference_mode():
        for x in batches:
            if precision is None:
                model(x)
            else:
                with precision.autocast():
                    model(precision.batch(x))


# ------------------------------------------------------------------ the run
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_backbone(backbone: str, args, query, gallery, peaks: dict) -> list[dict]:
    weights = "imagenet" if backbone == "mobilenet_v2" else args.resnet_weights
    torch.manual_seed(0)
    base = build_model(ModelConfig(backbone=backbone, weights=weights), num_classes=0).eval()
    h, w = args.height, args.width
    records = [*query, *gallery]
    precision = checked_precision(resolve_precision(args.amp, CPU), copy.deepcopy(base), h, w)
    flops = gflop_per_image(copy.deepcopy(base), h, w)
    models = {name: copy.deepcopy(base) for name in ("torchreid", "ours")}

    pipelines: dict[str, tuple[dict, Callable[[list], np.ndarray]]] = {
        "torchreid-style": ({"batch": 100, "precision": "cpu/fp32 (NCHW)"},
                            lambda recs: torchreid_style(models["torchreid"], recs, h, w)),
    }
    for bs in args.batches:
        pipelines[f"ours, batch {bs}"] = ({"batch": bs, "precision": precision.describe()},
                                          lambda recs, bs=bs: ours(models["ours"], recs, h, w, precision, bs))
    compile_s = None
    if args.compile:
        bs = args.batches[0]
        cmodel = compiled(copy.deepcopy(base), precision)
        # compiled once per batch shape: a full batch and the smaller last one of the records
        shapes = records[:bs] + ([] if len(records) % bs == 0 else records[: len(records) % bs])
        compile_s, _ = timed(lambda: ours_compiled(cmodel, shapes, h, w, precision, bs))
        pipelines[f"ours + torch.compile, batch {bs}"] = (
            {"batch": bs, "precision": precision.describe() + " + inductor"},
            lambda recs: ours_compiled(cmodel, recs, h, w, precision, bs))
    warm = records[: 2 * max(args.batches)]
    for fn in (p[1] for p in pipelines.values()):  # warm-up: oneDNN primitives, allocator, page cache
        fn(warm)

    # the forward pass alone over already decoded batches (the shipped batch size): NCHW fp32 vs our precision
    plain_batches = decoded_batches(records, h, w, 100, torchreid_transform(h, w))
    our_batches = decoded_batches(records, h, w, args.batches[0])
    model_only_runs = {"torchreid-style": lambda: forward_only(models["torchreid"], plain_batches, None),
                       f"ours, batch {args.batches[0]}": lambda: forward_only(models["ours"], our_batches, precision)}
    for fn in model_only_runs.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    model_only: dict[str, list[float]] = {name: [] for name in model_only_runs}
    feats: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):  # every measurement once per repeat, in turn: load drifts hit them alike
        for name, (_, fn) in pipelines.items():
            t, feats[name] = timed(lambda fn=fn: fn(records))
            seconds[name].append(t)
        for name, fn in model_only_runs.items():
            model_only[name].append(timed(fn)[0])

    cfg = EvalConfig()
    peak = peaks["bf16" if precision.dtype == torch.bfloat16 else "fp32"]
    ref = statistics.median(seconds["torchreid-style"])
    rows = []
    for name, (info, _) in pipelines.items():
        f = feats[name]
        m = evaluate_features(f[: len(query)], f[len(query):], query, gallery, cfg)
        med = statistics.median(seconds[name])
        ips = len(records) / med
        only = model_only.get(name)
        rows.append({
            "backbone": backbone, "input": f"{h}x{w}", "pipeline": name, **info,
            "images": len(records), "seconds": med, "seconds_all": seconds[name],
            "img_per_s": ips, "img_per_s_min": len(records) / max(seconds[name]),
            "img_per_s_max": len(records) / min(seconds[name]), "vs_torchreid": ref / med,
            "model_only_img_per_s": len(records) / statistics.median(only) if only else None,
            "gflop_per_image": flops, "peak_gflops": peak,
            "pct_of_peak": 100 * ips * flops / peak,
            "mAP": 100 * m["mAP"], "rank1": 100 * m["rank1"],
            "max_abs_diff_vs_ours": float(np.abs(f - feats[f"ours, batch {args.batches[0]}"]).max()),
            "compile_s": compile_s if "compile" in name else None,
            "weights": weights or "random init",
        })
    return rows


COLUMNS = [("backbone", "backbone", None), ("input", "input", None), ("pipeline", "pipeline", None),
           ("precision", "precision", None), ("img_per_s", "img/s", ".1f"),
           ("img_per_s_min", "min", ".1f"), ("img_per_s_max", "max", ".1f"),
           ("vs_torchreid", "× torchreid-style", ".2f"), ("model_only_img_per_s", "model only img/s", ".1f"),
           ("pct_of_peak", "% of matmul peak", ".1f"), ("mAP", "mAP", ".2f"), ("rank1", "rank-1", ".2f"),
           ("max_abs_diff_vs_ours", "max |Δ feature|", ".1e"), ("compile_s", "compile s", ".1f")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuhk01", required=True, help="the CUHK01 folder (holding campus/)")
    ap.add_argument("--seed", type=int, default=0, help="CUHK01 split seed (its test identities are used)")
    ap.add_argument("--identities", type=int, default=60, help="test identities (4 images each)")
    ap.add_argument("--backbones", nargs="+", default=["resnet50", "resnet18", "mobilenet_v2"])
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128],
                    help="our batch sizes; the first is the shipped one (compile, model only)")
    ap.add_argument("--amp", default="auto", help="our precision setting (auto | off | bf16)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile row")
    ap.add_argument("--resnet-weights", default=None, help="a local torchvision ResNet state dict (optional)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: one per CPU)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/extract"), help="results folder")
    args = ap.parse_args(argv)
    if args.identities < 2:
        ap.error(f"--identities: {args.identities} must be >= 2")
    torch.set_num_threads(args.threads or torch.get_num_threads())

    splits = read_cuhk01(args.cuhk01, seed=args.seed)
    keep = set(sorted({r.pid for r in splits.query})[: args.identities])
    query = [r for r in splits.query if r.pid in keep]
    gallery = [r for r in splits.gallery if r.pid in keep]
    peaks = {"fp32": matmul_gflops(torch.float32)}
    if resolve_precision(args.amp, CPU).dtype == torch.bfloat16:
        peaks["bf16"] = matmul_gflops(torch.bfloat16)
    print(f"{len(query)} query + {len(gallery)} gallery images, {args.identities} identities; "
          f"matmul peak {', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in peaks.items())}, "
          f"{torch.get_num_threads()} threads", flush=True)
    rows = []
    for backbone in args.backbones:
        rows += bench_backbone(backbone, args, query, gallery, peaks)
        print(markdown_table([r for r in rows if r["backbone"] == backbone], COLUMNS), flush=True)
    meta = {**machine_meta(), "matmul_peak_gflops": peaks, "identities": args.identities, "seed": args.seed,
            "repeats": args.repeats}
    text = markdown_table(rows, COLUMNS)
    print(text)
    for p in write_results(args.out, "extract", meta, {"rows": rows}, text):
        print(f"saved {p}")


if __name__ == "__main__":
    main()
