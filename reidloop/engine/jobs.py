"""Single-process jobs behind the command line: pre-train, evaluate."""
from __future__ import annotations

import logging
import time

import torch
from dataclasses import asdict
from pathlib import Path

from ..atomic import write_json
from ..config import EvaluateJob, PretrainJob, save_config, to_dict
from ..data.registry import build_splits
from ..models import build_model, load_checkpoint, save_checkpoint
from .evaluate import evaluate_model, format_metrics
from .precision import checked_precision, resolve_device, resolve_precision
from .train import train_supervised

log = logging.getLogger(__name__)


def run_pretrain(job: PretrainJob, progress: bool = True) -> dict:
    """Train on the dataset's train split, save ``model.pt``, evaluate on query/gallery.

    Writes ``config.yaml``, ``model.pt``, ``history.json`` and ``metrics.json`` to job.output_dir.
    """
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(job, out / "config.yaml")
    splits = build_splits(job.data, cache_dir=job.data.root or ".cache")
    log.info("\n%s", splits.summary())
    device = resolve_device(job.train.device)
    torch.manual_seed(job.train.seed)  # the classifier's init: the same seed, the same model (on one CPU kind)
    model = build_model(job.model, num_classes=len(splits.train_pids))
    train_precision = checked_precision(resolve_precision(job.train.amp, device), model, job.data.height,
                                        job.data.width)
    log.info("training %s on %s (%s)", job.model.backbone, splits.name, train_precision.describe())
    eval_precision = resolve_precision(job.eval.amp, device)
    curve: dict[int, dict] = {}  # epoch -> held-out metrics (job.eval_every)

    def on_epoch(stats) -> None:
        if job.eval_every and (stats.epoch + 1) % job.eval_every == 0 and stats.epoch + 1 < job.train.epochs:
            curve[stats.epoch] = evaluate_model(model, splits.query, splits.gallery, height=job.data.height,
                                                width=job.data.width, cfg=job.eval, precision=eval_precision,
                                                num_workers=job.data.num_workers, progress=False)
            log.info("epoch %3d  held-out %s", stats.epoch,
                     format_metrics({"": curve[stats.epoch]}).splitlines()[1].strip())

    start = time.perf_counter()
    history = train_supervised(model, splits.train, height=job.data.height, width=job.data.width,
                               cfg=job.train, precision=train_precision, num_workers=job.data.num_workers,
                               skip_bad=job.data.skip_bad_images, progress=progress, on_epoch=on_epoch)
    train_s = time.perf_counter() - start  # includes the held-out evaluations of eval_every
    save_checkpoint(out / "model.pt", model, extra={
        "dataset": splits.name, "epochs": job.train.epochs, "model_config": to_dict(job.model)})
    metrics = evaluate_model(model, splits.query, splits.gallery, height=job.data.height, width=job.data.width,
                             cfg=job.eval, precision=eval_precision, num_workers=job.data.num_workers,
                             progress=progress)
    summary = {"dataset": splits.name, "backbone": job.model.backbone, "weights": job.model.weights,
               "epochs": job.train.epochs, "train_seconds": round(train_s, 1),
               "precision": train_precision.describe(), **metrics}
    write_json(out / "metrics.json", summary)
    curve[job.train.epochs - 1] = metrics
    write_json(out / "history.json", [{**asdict(h), **({"held_out": curve[h.epoch]} if h.epoch in curve else {})}
                                      for h in history])
    print(format_metrics({f"{job.model.backbone} ({job.train.epochs} ep)": metrics}))
    return summary


def run_evaluate(job: EvaluateJob, progress: bool = True) -> dict:
    """Evaluate a checkpoint, or the model the config describes (untrained / ImageNet) when none is given."""
    splits = build_splits(job.data, cache_dir=job.data.root or ".cache")
    device = resolve_device("auto")
    if job.checkpoint:
        model, meta = load_checkpoint(job.checkpoint)
        name = Path(job.checkpoint).name
    else:
        model = build_model(job.model, num_classes=0)
        name = f"{job.model.backbone} ({job.model.weights or 'random init'})"
    precision = checked_precision(resolve_precision(job.eval.amp, device), model, job.data.height, job.data.width)
    metrics = evaluate_model(model, splits.query, splits.gallery, height=job.data.height, width=job.data.width,
                             cfg=job.eval, precision=precision, num_workers=job.data.num_workers,
                             progress=progress)
    print(format_metrics({name: metrics}))
    summary = {"dataset": splits.name, "model": name, "rerank": job.eval.rerank,
               "precision": precision.describe(), **metrics}
    if job.output:
        Path(job.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(job.output), summary)
    return summary
