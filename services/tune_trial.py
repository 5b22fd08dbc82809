"""One Ray Tune trial of a sweep: the active-learning loop (DRAL Algorithm 1) with sampled hyperparameters.

The loop runs in ``<sweep>/trial_<id>/loop`` (the trial's folder in the sweep's storage), where it
resumes by itself after an interruption. After each round it has written its round checkpoint
(model, strategy, answer log, rounds.parquet); the trial then reports that round's metrics — answers
used, mAP, rank-1, ``answers_to_target`` — with ``tune.report`` and the loop folder as a
``tune.Checkpoint``. A trial that is resumed (paused, retried after a failure, or restored with
``Tuner.restore``) continues after its last completed round — from its loop folder, or from
``tune.get_checkpoint()`` where that holds a later round (e.g. the folder was lost) — so no round is
counted twice and no answer is bought twice.

Every start is appended to ``events.jsonl`` in the trial's folder of the sweep, with the round it
restored; the sweep table counts them (``starts``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
from ray import tune

from reidloop import atomic
from reidloop.lease import STALE_AFTER_S, Lease, clear_for_copy
from reidloop.config.sweep import job_for, rounds_of
from reidloop.sweeps.objective import completed_round, round_report


LEASE_WAIT_S = STALE_AFTER_S + 30.0  # a previous start of this trial ends, or its lease goes stale, within this


def loop_class(kind: str):
    """``local``: the in-process ActiveLearningLoop; ``ray``: services.ray_loop.RayActiveLearningLoop."""
    if kind == "local":
        from reidloop.active.loop import ActiveLearningLoop

        return ActiveLearningLoop
    if kind == "ray":
        if importlib.util.find_spec("services.ray_loop") is None:
            raise RuntimeError("resources.loop: ray needs services/ray_loop.py (RayActiveLearningLoop), "
                               "which this checkout does not have; use resources.loop: local")
        from services.ray_loop import RayActiveLearningLoop

        return RayActiveLearningLoop
    raise ValueError(f"resources.loop: {kind!r} is not one of ['local', 'ray']")


def restore(checkpoint: tune.Checkpoint | None, out: Path) -> int:
    """Put the reported round checkpoint in ``out`` unless ``out`` already holds a later round.

    The checkpoint is copied beside ``out`` and swapped in by renames, so a crash at any point leaves
    one whole loop folder: the old one or the restored one (``<out>.replaced`` is put back if the crash
    fell between the two renames).
    """
    staged, old = out.with_name(out.name + ".restoring"), out.with_name(out.name + ".replaced")
    if old.exists() and not out.exists():
        old.rename(out)
    shutil.rmtree(staged, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    if checkpoint is None:
        return completed_round(out)
    with checkpoint.as_directory() as ckpt:
        if completed_round(ckpt) > completed_round(out):
            shutil.copytree(ckpt, staged)
            clear_for_copy(staged)  # the reported folder's lease names the process that reported it
            if out.exists():
                out.rename(old)
            staged.rename(out)
            shutil.rmtree(old, ignore_errors=True)
    return completed_round(out)


def log_event(path: Path, **event) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")


def run_trial(config: dict, setup: dict) -> None:
    """The Tune function trainable. ``setup`` (from services.sweep.trial_setup) holds the base job tree,
    the swept parameter names, the objective's target, the thread count, the loop kind and the sweep
    folder."""
    import torch

    threads = int(setup["threads"])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    ctx = tune.get_context()
    trial_dir = Path(setup["experiment_dir"]) / Path(ctx.get_trial_dir()).name  # <storage>/<name>/trial_<id>
    out = trial_dir / "loop"
    events = trial_dir / "events.jsonl"
    job = job_for(setup["base"], {k: config[k] for k in setup["params"]}, output_dir=str(out))
    # A restarted trial may start while the killed one's actor is still being reaped (or, on another node,
    # until its lease goes stale): wait for it to end before touching the folder, then take the lease.
    if out.exists():
        Lease(out).acquire(wait_s=LEASE_WAIT_S).release()
    restored = restore(tune.get_checkpoint(), out)
    pretrained = setup.get("pretrained")
    if pretrained and job.checkpoint is None and not (out / "pretrained.pt").exists():
        out.mkdir(parents=True, exist_ok=True)
        atomic.link_or_copy(pretrained, out / "pretrained.pt")  # the sweep's shared pre-training, whole or not at all
    log_event(events, event="start", trial_id=ctx.get_trial_id(), restored_round=restored, pid=os.getpid())
    rounds_total = rounds_of(job)

    reported = []

    def on_round(row: dict, out_dir: Path, event: str = "round") -> None:
        rows = pq.read_table(Path(out_dir) / "rounds.parquet").to_pylist()
        report = round_report(rows, rounds_total, setup.get("target_map"), setup.get("unreached", 1.0e6))
        log_event(events, event=event, round=report["round"], answers=report["answers"])  # its checkpoint is on disk
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(out_dir)))
        reported.append(report["round"])

    loop = loop_class(setup["loop"])(job, progress=False, lease_wait_s=LEASE_WAIT_S)
    loop.on_round = on_round  # called after each round's checkpoint is written
    loop.run()
    if not reported and restored:
        # The loop had finished every round before this start (the driver died between the last round's
        # checkpoint and Tune recording its report): report that last round again, or Tune would count
        # the trial as stopped early.
        on_round({}, out, event="re-report")  # not a round run again
    log_event(events, event="done")
