"""Hyperparameter sweeps of the active-learning loop with Ray Tune: the library behind ``trainers.sweep``.

:func:`run_sweep` takes a validated sweep (``reidloop.config.sweep.load_sweep``: the whole file is checked
before Ray is touched), joins or starts Ray (:func:`services.ray_start.start_or_join`: the cluster of
$RAY_ADDRESS, set by `ray job submit`, else a new local instance), builds the Tuner (:func:`make_tuner`:
search space, searcher, ASHA scheduler, the trainable ``services.tune_trial.run_trial`` with its resources)
and runs it. Each trial runs the loop and reports every round; ASHA can cut poor trials between rounds.
An interrupted sweep continues with ``resume=True`` (Tuner.restore): finished trials are kept, unfinished
ones resume from their last round checkpoint. With nothing swept that changes pre-training, the CNN is
pre-trained once, as a Ray task, for all trials (:func:`shared_pretraining`).

Writes to <storage_path>/<name>/: the Tune experiment (one trial_<id>/ folder per trial), sweep.yaml
(the resolved sweep), trials.parquet + trials.csv, objective_vs_params.png and best_config.yaml — a
complete LoopJob for `python -m trainers.run_job --config best_config.yaml`.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from reidloop.config import ConfigError, LoopJob
from reidloop.config.sweep import SEARCHERS, Distribution, Sweep
from reidloop.sweeps import best_trial, plot_objective, trial_status, trials_table, write_best_config, write_tables
from reidloop.sweeps.objective import METRICS

from .ray_start import start_or_join

log = logging.getLogger(__name__)

# Swept fields that change pre-training; with none of them swept, all trials share one pre-trained CNN.
PRETRAIN_FIELDS = ("data.", "model.", "pretrain.", "pretrain_fraction", "checkpoint", "seed")
# Resuming must not change what the finished trials were measured on.
FIXED_ON_RESUME = ("space", "search", "num_samples", "scheduler", "objective", "share_pretraining")
REPORTED = ("round", "rounds_total", "answers", *METRICS, "answers_to_target", "target_reached", "time_total_s")


@dataclass
class SweepOutputs:
    experiment_dir: Path
    table: Path
    csv: Path
    plot: Path
    best_config: Path | None
    best: dict | None


# ------------------------------------------------------------------------- Ray Tune pieces
def tune_space(space: dict[str, Distribution]) -> dict:
    """Our distributions → Ray Tune's (randint's high end is included, so Tune gets high + 1)."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(v[0], v[1] + 1)}
    return {k: make[d.kind](list(d.values)) for k, d in space.items()}


def search_algorithm(sweep: Sweep):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    s, o = sweep.config.search, sweep.config.objective
    if s.algorithm in SEARCHERS:
        try:
            return tune.create_searcher(s.algorithm, metric=o.metric, mode=o.mode, **s.options)
        except (TypeError, ValueError, ImportError) as exc:
            raise ConfigError(f"{sweep.source}: search.options: {s.algorithm} searcher: {exc}") from None
    return BasicVariantGenerator(random_state=s.seed, max_concurrent=sweep.config.max_concurrent_trials or 0)


def scheduler(sweep: Sweep):
    from ray.tune.schedulers import ASHAScheduler

    sc = sweep.config.scheduler
    if sc.type == "none":
        return None
    return ASHAScheduler(time_attr="round", max_t=sweep.rounds, grace_period=sc.grace_period,
                         reduction_factor=sc.reduction_factor)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


# ------------------------------------------------------------------------- the sweep
def trial_setup(sweep: Sweep, pretrained: str | None) -> dict:
    c = sweep.config
    return {"base": sweep.base, "params": list(sweep.space), "target_map": c.objective.target_map,
            "unreached": c.objective.unreached, "threads": c.resources.threads, "loop": c.resources.loop,
            "experiment_dir": str(c.experiment_dir), "pretrained": pretrained}


def shared_pretraining(sweep: Sweep) -> str | None:
    """Pre-train once for all trials (as a Ray task with one trial's resources) when nothing swept
    changes pre-training; returns the pretrained.pt that every trial starts from, or None."""
    import ray

    c = sweep.config
    if not c.share_pretraining or sweep.base.get("checkpoint") or \
            any(k.startswith(PRETRAIN_FIELDS) for k in sweep.space):
        return None
    folder = c.experiment_dir / "pretrained"
    path = folder / "pretrained.pt"
    if not path.exists():
        job = sweep.job({}, output_dir=str(folder))
        log.info("pre-training once for all trials in %s", folder)
        task = ray.remote(_pretrain).options(num_cpus=c.resources.cpu, num_gpus=c.resources.gpu, max_retries=0)
        ray.get(task.remote(job, c.resources.threads))
    return str(path)


def _pretrain(job: LoopJob, threads: int) -> None:
    import torch

    from reidloop.active.loop import ActiveLearningLoop

    torch.set_num_threads(threads)
    ActiveLearningLoop(job, progress=False).prepare()


def _check_resume(sweep: Sweep, saved: Path) -> None:
    before = yaml.safe_load(saved.read_text())
    now = yaml.safe_load(yaml.safe_dump(sweep.resolved(), sort_keys=False))
    pairs = [("base_job", before["base_job"], now["base_job"])] + \
            [(k, before["sweep"].get(k), now["sweep"].get(k)) for k in FIXED_ON_RESUME]
    for key, old, new in pairs:
        if old != new:
            raise ConfigError(f"{sweep.source}: {key} differs from the sweep being resumed ({saved}): "
                              f"{old!r} -> {new!r}; resume with the same settings or start a new name")


def progress_callback():
    """A Tune callback printing one line per trial report (round, answers, mAP, rank-1) and per trial end:
    the sweep's progress when Tune's own status table is off (``verbose=0``, the default of trainers.sweep)."""
    from ray import tune

    class Progress(tune.Callback):
        ended = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            print(f"trial {trial.trial_id} round {result.get('round')}/{result.get('rounds_total')}: "
                  f"{result.get('answers')} answers  mAP {100 * result.get('mAP', float('nan')):.1f}%  "
                  f"rank-1 {100 * result.get('rank1', float('nan')):.1f}%", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended += 1
            print(f"trial {trial.trial_id} finished ({self.ended} of {len(trials)} trials ended)", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.ended += 1
            print(f"trial {trial.trial_id} failed, its error is in {trial.path} ({self.ended} of {len(trials)} "
                  "trials ended)", flush=True)

    return Progress()


def make_tuner(sweep: Sweep, resume: bool, verbose: int = 1, progress: bool = False):
    from ray import tune

    from .tune_trial import run_trial  # pickled by reference: workers import services.tune_trial

    c = sweep.config
    exp = c.experiment_dir
    saved = exp / "sweep.yaml"
    restorable = tune.Tuner.can_restore(str(exp))
    if restorable and not resume:
        raise ConfigError(f"{exp} holds a sweep already: pass --resume to continue it, or choose another name")
    if resume and restorable and saved.exists():
        _check_resume(sweep, saved)
    if c.resources.loop == "ray" and importlib.util.find_spec("services.ray_loop") is None:
        raise ConfigError(f"{sweep.source}: resources.loop: ray needs services/ray_loop.py, which this "
                          "checkout does not have; use resources.loop: local")
    searcher, sched = search_algorithm(sweep), scheduler(sweep)
    exp.mkdir(parents=True, exist_ok=True)
    pretrained = shared_pretraining(sweep)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=trial_setup(sweep, pretrained)),
                                    {"cpu": c.resources.cpu, "gpu": c.resources.gpu})
    if resume and restorable:
        log.info("resuming the sweep in %s", exp)
        return tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=True,
                                  restart_errored=False)
    if resume:
        log.info("nothing to resume in %s: starting the sweep", exp)
    saved.write_text(yaml.safe_dump(sweep.resolved(), sort_keys=False))
    return tune.Tuner(
        trainable,
        param_space=tune_space(sweep.space),
        tune_config=tune.TuneConfig(
            metric=c.objective.metric, mode=c.objective.mode, search_alg=searcher,
            scheduler=sched, num_samples=c.num_samples,
            max_concurrent_trials=c.max_concurrent_trials if c.search.algorithm in SEARCHERS else None,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=c.name, storage_path=c.storage_path, verbose=verbose,
            callbacks=[progress_callback()] if progress else None,
            # Keep every round checkpoint: with num_to_keep, a driver killed after Tune pruned a checkpoint
            # but before its next experiment-state snapshot resumes with a manager that still lists the
            # pruned one, and the next prune fails on the missing folder (FileNotFoundError, seen in CI).
            # A trial's checkpoint is its small loop folder; the loop folder itself is the resume point.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=c.max_failures)),
    )


def starts(experiment_dir: Path, trial_id: str) -> int:
    """How many times a trial's function started (events.jsonl written by the trial)."""
    path = experiment_dir / f"trial_{trial_id}" / "events.jsonl"
    if not path.exists():
        return 0
    return sum(json.loads(line)["event"] == "start" for line in path.read_text().splitlines() if line)


def records(sweep: Sweep, results) -> list[dict]:
    """One flat record per trial of a ResultGrid: id, status, parameters, last reported metrics."""
    out = []
    for r in results:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or Path(r.path).name.removeprefix("trial_")
        config = r.config or {}
        rec = {"trial_id": trial_id, **{k: config.get(k) for k in sweep.space},
               **{k: m.get(k) for k in REPORTED if k in m},
               "status": trial_status(m.get("round"), m.get("rounds_total") or sweep.rounds, r.error is not None),
               "error": None if r.error is None else str(r.error).strip().splitlines()[-1][:300],
               "starts": starts(sweep.config.experiment_dir, trial_id), "path": r.path}
        out.append(rec)
    return out


def write_outputs(sweep: Sweep, recs: list[dict]) -> SweepOutputs:
    c = sweep.config
    exp = c.experiment_dir
    params = list(sweep.space)
    table = trials_table(recs, params, [c.objective.metric, *REPORTED])
    parquet, csv = write_tables(table, exp)
    o = c.objective
    plot = plot_objective(table, params, o.metric, o.mode, exp / "objective_vs_params.png",
                          log_params=[k for k, d in sweep.space.items() if d.kind == "loguniform"],
                          unreached=o.unreached if o.metric == "answers_to_target" else None,
                          title=f"sweep {c.name}: {o.metric} ({o.mode}) per trial")
    best = best_trial(table, o.metric, o.mode)
    best_path = None
    if best is not None:
        run_dir = exp / "best_run"
        job = sweep.job({k: best[k] for k in params}, output_dir=str(run_dir))
        shared = exp / "pretrained" / "pretrained.pt"
        if shared.exists() and job.checkpoint is None:  # the same pre-trained CNN as the trials
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(shared, run_dir / "pretrained.pt")
        chosen = ", ".join(f"{k}={best[k]!r}" for k in params)
        best_path = write_best_config(job, exp / "best_config.yaml", comment=(
            f"Best trial {best['trial_id']} of sweep {c.name}: {o.metric}={best[o.metric]:.4g} ({o.mode})\n"
            f"{chosen}\npython -m trainers.run_job --config {exp / 'best_config.yaml'}"))
    return SweepOutputs(exp, parquet, csv, plot, best_path, best)


def run_sweep(sweep: Sweep, resume: bool = False, verbose: int = 1, num_cpus: int | None = None,
              progress: bool = False) -> SweepOutputs:
    """Run (or resume) the sweep to the end on Ray (joined or started here; ``num_cpus`` sizes a local
    Ray only), then write its outputs. ``verbose``: Tune's own console output (``tune.RunConfig(verbose)``:
    0 silent, 1 its status table, ...); ``progress``: our one line per trial report instead."""
    start_or_join(num_cpus=num_cpus, env_vars={"OMP_NUM_THREADS": str(sweep.config.resources.threads)})
    results = make_tuner(sweep, resume, verbose, progress).fit()
    out = write_outputs(sweep, records(sweep, results))
    log.info("%d trials: table %s, plot %s, best config %s", len(results), out.table, out.plot, out.best_config)
    return out
