"""Pre-training and fine-tuning through Ray Train (``TorchTrainer``).

* ``ScalingConfig(num_workers=ray.train_workers, use_gpu=ray.use_gpu)``, ``cpus_per_train_worker``
  CPUs each; DDP via ``ray.train.torch.prepare_model`` (NCCL on GPUs, gloo on CPUs).
* Data sharded per worker: every worker builds the same epoch batch list (the P×K sampler of
  Eq. 1–3 for pre-training, the answered-pair batches of §3.3 / Eq. 2–3 for fine-tuning; both seeded
  by (seed, epoch) only) and takes every world_size-th batch, the list padded by wrap-around so all
  workers take the same number of DDP steps (as ``DistributedSampler`` pads).
* Mixed precision per worker device (``resolve_precision``): bf16/fp16 autocast on GPUs, a GradScaler
  for fp16; fp32 on CPUs without native bf16.
* A checkpoint (model, optimizer, scaler, epoch, stats) reported every epoch to an absolute
  ``storage_path`` (or a pyarrow filesystem URI); ``FailureConfig(max_failures)`` restarts failed
  workers, and the loop continues from ``ray.train.get_checkpoint()``'s epoch. A run started again
  under the same name resumes from the checkpoints in storage the same way.
* Ray Train's console logs (``RunConfig(logging_config=LoggingConfig(log_level=...))``): WARNING, or INFO
  with ``--verbose`` (``services.ray_start.verbose``).
* The model goes in as an object ref of its CPU state dict; the final checkpoint's weights are loaded
  back into the driver's model.
* Progress and our log lines: rank 0 reports its steps (fine-tuning) or epochs (pre-training), and every
  worker forwards the records of our loggers, to a ``services.progress.Reporter`` the driver watches (the
  workers' own console output stays in Ray's log files: ``log_to_driver=False``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import asdict, replace
from typing import Callable, Optional, Sequence

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch.utils.data import DataLoader

from reidloop.adapt.train import adapt_unsupervised
from reidloop.active.finetune import (FinetuneData, FinetuneStats, epoch_batches, epoch_seed, finetune_step,
                                      prepare_finetune)
from reidloop.config import LoopJob, RayConfig
from reidloop.data.images import ReidImageDataset
from reidloop.data.records import ImageRecord
from reidloop.data.transforms import build_transforms
from reidloop.engine.precision import checked_precision, resolve_precision
from reidloop.engine.train import make_optimizer, train_epoch, train_loader, warmup_factor
from reidloop.models import ReidNet
from .embedding import model_from_payload, model_payload
from .progress import Reporter
from .ray_start import verbose

STATE_FILE = "state.pt"


# ------------------------------------------------------------------ helpers
def storage_uri(path: str) -> str:
    """Ray Train needs an absolute storage path; URIs (s3://, gs://, ...) pass through."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def shard(batches: Sequence, rank: int, world: int) -> list:
    """Every world-th batch from ``rank``; the list is padded by wrap-around to a multiple of ``world``."""
    n = len(batches)
    if n == 0 or world == 1:
        return list(batches)
    total = -(-n // world) * world
    return [batches[i % n] for i in range(rank, total, world)]


def _worker_context() -> tuple[int, int, torch.device]:
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    return ctx.get_world_rank(), ctx.get_world_size(), device


def _restore(raw: torch.nn.Module, optimizer, scaler, device) -> tuple[int, Optional[dict]]:
    """Load the latest checkpoint of this run if there is one; returns (first epoch to run, its extra)."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, None
    with ckpt.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
    raw.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1, state["extra"]


def _report(metrics: dict, epoch: int, raw: torch.nn.Module, optimizer, scaler, extra: dict, rank: int) -> None:
    """Every worker reports (a barrier); rank 0 attaches the checkpoint of the epoch just finished."""
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            torch.save({"model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
                        "optimizer": optimizer.state_dict() if optimizer is not None else None,
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "epoch": epoch, "extra": extra}, os.path.join(d, STATE_FILE))
            checkpoint = Checkpoint.from_directory(d)
        ray.train.report({"epoch": epoch, **metrics}, checkpoint=checkpoint)


def _scaler(precision):
    return torch.amp.GradScaler("cuda") if precision.needs_grad_scaler else None


# ------------------------------------------------------------ the per-worker loops
def _forwarding(config: dict, what: str):
    """Our log lines of this worker to the driver (``config["reporter"]``, :mod:`services.progress`)."""
    reporter = config.get("reporter")
    if reporter is None:
        return contextlib.nullcontext()
    return reporter.forwarding(f"{what} worker {ray.train.get_context().get_world_rank()}")


def finetune_loop(config: dict) -> None:
    """Fine-tuning on answered pairs (or all labels), one Ray Train worker's share; rank 0 reports its steps
    to ``config["reporter"]`` (if any)."""
    with _forwarding(config, "fine-tune"):
        _finetune_loop(config)


def pretrain_loop(config: dict) -> None:
    """Supervised P×K training (CE + batch-hard triplet, Eq. 1–3), one Ray Train worker's share; rank 0 reports
    its epochs to ``config["reporter"]`` (if any)."""
    with _forwarding(config, "pre-training"):
        _pretrain_loop(config)


def adapt_loop(config: dict) -> None:
    """Unsupervised adaptation (``reidloop.adapt``) in one Ray Train worker; rank 0 reports its epochs."""
    with _forwarding(config, "adaptation"):
        _adapt_loop(config)


def _adapt_loop(config: dict) -> None:
    _, _, device = _worker_context()
    cfg = config["cfg"]
    raw = model_from_payload(ray.get(config["model"]))
    reporter = config.get("reporter")

    def epoch_done(stats) -> None:
        if reporter is not None:
            reporter.update(0, stats.epoch + 1, cfg.epochs, wait=True)

    history = adapt_unsupervised(raw, config["records"], height=config["height"], width=config["width"], cfg=cfg,
                                 precision=resolve_precision(config["amp"], device), truth=config["truth"],
                                 must_link=config.get("must_link", ()), cannot_link=config.get("cannot_link", ()),
                                 num_workers=config["num_workers"], progress=False, on_epoch=epoch_done)
    _report({}, cfg.epochs - 1, raw, None, None, {"history": [h.to_dict() for h in history]}, 0)


def _finetune_loop(config: dict) -> None:
    rank, world, device = _worker_context()
    cfg, data, seed = config["cfg"], config["data"], config["seed"]
    raw = model_from_payload(ray.get(config["model"]))
    precision = checked_precision(resolve_precision(cfg.amp, device), raw, config["height"], config["width"])
    raw, optimizer = prepare_finetune(raw, data, cfg, precision, seed)
    scaler = _scaler(precision)
    start, extra = _restore(raw, optimizer, scaler, device)
    stats = FinetuneStats(**extra) if extra else FinetuneStats(0, 0, 0.0, 0.0, 0.0)
    model = ray.train.torch.prepare_model(raw, parallel_strategy_kwargs={"find_unused_parameters": True})
    dataset = ReidImageDataset(config["pool"], build_transforms(config["height"], config["width"], train=True))
    reporter = config.get("reporter") if rank == 0 else None  # the steps are every rank's, in lock-step
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(epoch_seed(seed, epoch, rank))
        mine = shard(epoch_batches(data, cfg, seed, epoch), rank, world)
        total = stats.batches + len(mine) * (cfg.epochs - epoch)  # (later epochs' sizes guessed from this one's)
        for batch in mine:
            stats.add(len(batch[0]), *finetune_step(model, dataset, batch, data, cfg, precision, optimizer, scaler,
                                                    step=stats.batches))
            if reporter is not None:
                reporter.update(0, stats.batches, total)
        if reporter is not None:
            reporter.update(0, stats.batches, stats.batches if epoch == cfg.epochs - 1 else total, wait=True)
        _report({"batches": stats.batches}, epoch, raw, optimizer, scaler, asdict(stats), rank)
    if start >= cfg.epochs:  # restored from the final checkpoint: register it again as this run's result
        _report({"batches": stats.batches}, cfg.epochs - 1, raw, optimizer, scaler, asdict(stats), rank)


def _pretrain_loop(config: dict) -> None:
    rank, world, device = _worker_context()
    cfg = config["cfg"]
    raw = model_from_payload(ray.get(config["model"]))
    precision = checked_precision(resolve_precision(cfg.amp, device), raw, config["height"], config["width"])
    raw = precision.prepare(raw)
    optimizer = make_optimizer(raw, cfg)
    scaler = _scaler(precision)
    start, extra = _restore(raw, optimizer, scaler, device)
    history = list(extra["history"]) if extra else []
    model = ray.train.torch.prepare_model(raw)
    loader, sampler, _ = train_loader(config["records"], config["height"], config["width"], cfg,
                                      config["num_workers"], config["skip_bad"])
    size = cfg.ids_per_batch * cfg.images_per_id
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank))
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = shard([order[i:i + size] for i in range(0, len(order), size)], rank, world)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * warmup_factor(epoch, cfg)
        mine = DataLoader(loader.dataset, batch_sampler=batches, num_workers=config["num_workers"])
        stats = train_epoch(model, mine, optimizer, cfg, precision, epoch, scaler, progress=False)
        history.append(asdict(stats))
        if rank == 0 and config.get("reporter") is not None:
            config["reporter"].update(0, epoch + 1, cfg.epochs, wait=True)
        _report(asdict(stats), epoch, raw, optimizer, scaler, {"history": history}, rank)
    if start >= cfg.epochs:
        _report({}, cfg.epochs - 1, raw, optimizer, scaler, {"history": history}, rank)


# ------------------------------------------------------------------ the driver side
def trainer(loop: Callable[[dict], None], config: dict, ray_cfg: RayConfig, name: str) -> TorchTrainer:
    threads = os.environ.get("OMP_NUM_THREADS")
    return TorchTrainer(
        loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=ray_cfg.train_workers, use_gpu=ray_cfg.use_gpu,
                                     resources_per_worker={"CPU": ray_cfg.cpus_per_train_worker}),
        torch_config=TorchConfig(backend="nccl" if ray_cfg.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_uri(ray_cfg.storage_path),
                             failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # Ray Train's own `ray.train` logs: warnings only unless --verbose
                             logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
                             worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": threads}} if threads else None))


def _fit(loop, config: dict, ray_cfg: RayConfig, name: str) -> dict:
    result = trainer(loop, config, ray_cfg, name).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name!r} ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)


def _load_weights(model: ReidNet, state: dict) -> None:
    """The trained weights into the driver's model, whose classifier (if any) has the same size."""
    model.load_state_dict({k: v for k, v in state.items() if model.classifier is not None
                           or not k.startswith("classifier.")})


def fit_finetune(model: ReidNet, pool: Sequence[ImageRecord], job: LoopJob, data: FinetuneData, seed: int,
                 name: str, reporter: Optional[Reporter] = None) -> FinetuneStats:
    """Fine-tune ``model`` in place through Ray Train; same batches and seeds as ``reidloop.active.finetune``.
    ``reporter``: where the workers report their steps and forward our log lines (:mod:`services.progress`)."""
    start = time.perf_counter()
    model.reset_classifier(0)
    config = {"model": ray.put(model_payload(model)), "cfg": job.finetune, "data": data, "seed": seed,
              "pool": list(pool), "height": job.data.height, "width": job.data.width, "reporter": reporter}
    state = _fit(finetune_loop, config, job.ray, name)
    _load_weights(model, state["model"])
    model.eval()
    return FinetuneStats(**state["extra"]).finish(time.perf_counter() - start)


def fit_adapt(model: ReidNet, records: Sequence[ImageRecord], job: LoopJob, name: str, truth=None,
              reporter: Optional[Reporter] = None, cfg=None, must_link=(), cannot_link=()) -> list[dict]:
    """Unsupervised adaptation of ``model`` to ``records`` in place, in a Ray Train run of one worker (the
    cluster memory is one replica's: data-parallel adaptation is not implemented); the epochs' reports.
    ``cfg``: the ``adapt`` section (the job's by default); ``must_link`` / ``cannot_link``: constraints on
    the clustering (index pairs into ``records``)."""
    config = {"model": ray.put(model_payload(model)), "cfg": cfg or job.adapt, "records": list(records),
              "truth": truth, "must_link": np.asarray(must_link, dtype=np.int64).reshape(-1, 2),
              "cannot_link": np.asarray(cannot_link, dtype=np.int64).reshape(-1, 2),
              "amp": job.pretrain.amp, "height": job.data.height, "width": job.data.width,
              "num_workers": job.data.num_workers, "reporter": reporter}
    state = _fit(adapt_loop, config, replace(job.ray, train_workers=1), name)
    _load_weights(model, state["model"])
    model.eval()
    return state["extra"]["history"]


def fit_pretrain(model: ReidNet, records: Sequence[ImageRecord], job: LoopJob, name: str,
                 reporter: Optional[Reporter] = None) -> list[dict]:
    """Supervised pre-training of ``model`` (classifier over the records' ids) in place; the epoch history.
    ``reporter``: as :func:`fit_finetune`'s (epochs)."""
    config = {"model": ray.put(model_payload(model)), "cfg": job.pretrain, "records": list(records),
              "height": job.data.height, "width": job.data.width, "num_workers": job.data.num_workers,
              "skip_bad": job.data.skip_bad_images, "reporter": reporter}
    state = _fit(pretrain_loop, config, job.ray, name)
    _load_weights(model, state["model"])
    return state["extra"]["history"]

