"""How well does clustering the CUHK01 learning pool find its people? Plain vs camera-centred features.

    .venv/bin/python benchmarks/adapt_clusters.py --cuhk01 ../shared/data/cuhk01 \
        [--checkpoint runs/cuhk03_source/model.pt] [--seed 0] [--eps-rho 1.6e-3 ...] --out benchmarks/results/adapt_clusters

The first step of unsupervised adaptation (``reidloop/adapt``) without any training: embed the pool of one
CUHK01 split (485 identities × 4 images, 2 cameras) with a model (the ImageNet MobileNetV2 by default, or
``--checkpoint``), compute the k-reciprocal Jaccard distance on the features as they are or centred per
camera (``adapt.camera_centring``), cluster with DBSCAN (min_samples 2) at several k1 and eps, and compare the
clusters with the true identities: how many clusters, the share of images clustered, the share of clusters
that span both cameras, purity, and pair precision / recall (same-cluster pairs that are one person; same-person
pairs put in one cluster). The truth is only read to score. Use it to choose ``adapt`` settings on seed 0.
Prints a markdown table; writes adapt_clusters.{json,md} and adapt_clusters_rows.csv to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import machine_meta, markdown_table, write_results  # noqa: E402
from reidloop.adapt.clustering import auto_eps, cluster, jaccard_distance  # noqa: E402
from reidloop.adapt.train import camera_centred, cluster_report, unit  # noqa: E402
from reidloop.config import ModelConfig  # noqa: E402
from reidloop.data.cuhk01 import read_cuhk01  # noqa: E402
from reidloop.engine.features import extract_features  # noqa: E402
from reidloop.engine.precision import resolve_precision  # noqa: E402
from reidloop.models import build_model, load_checkpoint  # noqa: E402

COLUMNS = [("features", "features", None), ("k1", "k1", "d"), ("eps_rho", "eps_rho", None), ("eps", "eps", ".3f"),
           ("clusters", "clusters", "d"),
           ("clustered", "clustered", ".2f"), ("cross_camera", "clusters spanning both cameras", ".2f"),
           ("purity", "purity", ".2f"), ("pair_precision", "pair precision", ".3f"),
           ("pair_recall", "pair recall", ".3f")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuhk01", required=True)
    ap.add_argument("--seed", type=int, default=0, help="CUHK01 split seed (tune on 0 only)")
    ap.add_argument("--checkpoint", default=None, help="a model.pt (default: the ImageNet MobileNetV2)")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--k1", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    ap.add_argument("--eps-rho", type=float, nargs="*", default=[],
                    help="also cluster at the radius adapt.eps_rho would choose (rho: share of the smallest distances)")
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--min-samples", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/adapt_clusters"))
    args = ap.parse_args(argv)

    splits = read_cuhk01(args.cuhk01, seed=args.seed)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
    else:
        model = build_model(ModelConfig(backbone="mobilenet_v2", weights="imagenet"), num_classes=0)
    feats = unit(extract_features(model, splits.train, height=args.height, width=args.width,
                                  precision=resolve_precision("off", torch.device("cpu")), progress=False))
    cameras = np.array([r.camid for r in splits.train])
    truth = np.array([r.pid for r in splits.train])
    rows = []
    for name, x in (("as they are", feats), ("camera-centred", camera_centred(feats, cameras))):
        for k1 in args.k1:
            dist = jaccard_distance(x, k1, args.k2)
            radii = [(eps, None) for eps in args.eps] + [(auto_eps(dist, rho), rho) for rho in args.eps_rho]
            for eps, rho in radii:
                rep = cluster_report(cluster(dist, eps, args.min_samples), cameras, truth)
                rows.append({"features": name, "k1": k1, "eps": eps, "eps_rho": rho, "min_samples": args.min_samples,
                             **rep})
                print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    text = markdown_table(rows, COLUMNS)
    print(text)
    meta = {**machine_meta(), "seed": args.seed, "model": args.checkpoint or "ImageNet MobileNetV2",
            "input": [args.height, args.width], "pool_images": len(splits.train)}
    for p in write_results(args.out, "adapt_clusters", meta, {"rows": rows}, text):
        print(f"saved {p}")


if __name__ == "__main__":
    main()
