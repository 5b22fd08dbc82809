"""Hyperparameter sweeps (Ray Tune) of the active-learning loop: typed, validated before launch.

A sweep file names a base :class:`~reidloop.config.schema.LoopJob` (``base:`` YAML and/or inline
``overrides:``) and a search ``space`` over its fields by dotted name, e.g. the DRAL hyperparameters
of paper §4.1 — ``dral.kmax`` (Kmax), ``dral.ns`` (ns), ``dral.kappa`` (κ of Eq. 5), ``dral.thred``
(Eq. 8), ``dral.margin`` (m of Eq. 9) — and the learning rates::

    space:
      dral.kmax:   {grid: [3, 5, 10]}
      dral.thred:  {uniform: [0.2, 0.6]}
      finetune.lr: {loguniform: [1.0e-6, 1.0e-4]}
      dral.kappa:  {randint: [5, 15]}        # both ends included
      dral.metric: {choice: [kissme, euclidean]}

:func:`load_sweep` rejects, before anything is launched, unknown keys and parameters, malformed
distributions, and every value or corner of the space that gives an invalid job (Kmax > ns, κ > ns,
thred outside [0, 1], m < 0, ...): each grid/choice value and both bounds of each range are combined
and run through LoopJob's own checks. Ray is not imported here (services/sweep.py builds the Tuner).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .loader import (ConfigError, apply_overrides, build_config, coerce, config_errors, field_type, from_dict,
                     read_yaml_mapping, set_dotted, to_dict)
from .schema import LoopJob, _check

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
RANGE_KINDS = ("uniform", "loguniform", "randint")
# Ray Tune searchers that need only their own package (BOHB also needs its own scheduler: not offered).
SEARCHERS = {"optuna": "optuna", "hyperopt": "hyperopt", "bayesopt": "bayes_opt", "hebo": "hebo",
             "ax": "ax", "nevergrad": "nevergrad", "zoopt": "zoopt"}
ALGORITHMS = ("grid", "random", *SEARCHERS)
METRIC_MODES = {"mAP": "max", "rank1": "max", "rank5": "max", "rank10": "max", "mINP": "max",
                "answers_to_target": "min"}
MAX_VALIDATED_COMBINATIONS = 50_000
RESERVED = ("output_dir",)  # set per trial
# Trials run in their own working directories: these paths are made absolute (from the launch folder).
PATH_FIELDS = ("data.root", "checkpoint", "model.weights", "ray.storage_path")


def _absolute(dotted: str, value: Any) -> Any:
    if dotted not in PATH_FIELDS or not isinstance(value, str) or value == "imagenet" or "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


@dataclass
class SearchConfig:
    """How points of the space are chosen (Ray Tune search algorithm)."""

    algorithm: str = "grid"  # grid (every point, needs grid-only spaces) | random | a Ray Tune searcher
    seed: Optional[int] = None  # random state of grid/random sampling
    options: dict = field(default_factory=dict)  # keyword arguments of the searcher, e.g. n_initial_points

    def __post_init__(self) -> None:
        _check(self.algorithm in ALGORITHMS, "search.algorithm", self.algorithm, f"is not one of {list(ALGORITHMS)}")
        _check(not self.options or self.algorithm in SEARCHERS, "search.options", self.options,
               f"are only for the searchers {list(SEARCHERS)}")
        pkg = SEARCHERS.get(self.algorithm)
        _check(pkg is None or importlib.util.find_spec(pkg) is not None, "search.algorithm", self.algorithm,
               f"needs the Python package {pkg!r}, which is not installed (pip install {pkg})")


@dataclass
class SchedulerConfig:
    """Early stopping between rounds: none, or ASHA (asynchronous successive halving) on rounds."""

    type: Literal["none", "asha"] = "none"
    grace_period: int = 1  # rounds every trial runs before it can be cut
    reduction_factor: float = 2.0  # keep the best 1/reduction_factor at each rung

    def __post_init__(self) -> None:
        _check(self.grace_period >= 1, "scheduler.grace_period", self.grace_period, "must be >= 1 round")
        _check(self.reduction_factor > 1, "scheduler.reduction_factor", self.reduction_factor, "must be > 1")


@dataclass
class ObjectiveConfig:
    """What a trial is judged by, reported after every round.

    ``mAP`` (or rank1, ...) at the final round — a fixed budget when ``oracle.budget`` is set — or
    ``answers_to_target``: the human answers used when mAP first reached ``target_map``
    (``unreached`` while it has not).
    """

    metric: str = "mAP"
    mode: Optional[Literal["max", "min"]] = None  # None: max for accuracies, min for answers_to_target
    target_map: Optional[float] = None  # in (0, 1]; needed by answers_to_target
    unreached: float = 1.0e6  # answers_to_target reported while the target mAP is not reached

    def __post_init__(self) -> None:
        _check(self.metric in METRIC_MODES, "objective.metric", self.metric, f"is not one of {list(METRIC_MODES)}")
        natural = METRIC_MODES[self.metric]
        self.mode = self.mode or natural
        _check(self.mode == natural, "objective.mode", self.mode,
               f"would pick the worst trial: {self.metric} is to {natural}imise")
        _check(self.target_map is None or 0 < self.target_map <= 1, "objective.target_map", self.target_map,
               "must be in (0, 1]")
        _check(self.metric != "answers_to_target" or self.target_map is not None, "objective.target_map",
               self.target_map, "must be set for metric answers_to_target")
        _check(self.unreached > 0, "objective.unreached", self.unreached, "must be > 0")


@dataclass
class TrialResources:
    """What one trial reserves on the cluster, and which loop it runs."""

    cpu: float = 1.0  # fractions pack several trials on a core (4 trials at 0.5 on 2 CPUs)
    gpu: float = 0.0  # a fraction shares a GPU between trials
    loop: Literal["local", "ray"] = "local"  # ray: services.ray_loop (env-worker actors, Ray Train fine-tuning)
    threads: Optional[int] = None  # torch/OpenMP threads in the trial (None: max(1, round(cpu)))

    def __post_init__(self) -> None:
        _check(self.cpu >= 0, "resources.cpu", self.cpu, "must be >= 0")
        _check(self.gpu >= 0 and (self.gpu <= 1 or float(self.gpu).is_integer()), "resources.gpu", self.gpu,
               "must be a fraction of one GPU or a whole number of GPUs")
        _check(self.cpu + self.gpu > 0, "resources", (self.cpu, self.gpu), "a trial needs some CPU or GPU")
        self.threads = self.threads or max(1, round(self.cpu))
        _check(self.threads >= 1, "resources.threads", self.threads, "must be >= 1")


@dataclass
class Distribution:
    """One swept parameter: ``grid``/``choice`` over values, or a ``uniform``/``loguniform``/``randint``
    range ``[lo, hi]`` (randint includes hi)."""

    kind: str
    values: list  # the listed values, or [lo, hi]: every one of them must give a valid job


@dataclass
class SweepConfig:
    """`python -m trainers.sweep --config tune_configs/sweep_synthetic.yaml [--resume]`."""

    name: str = "sweep"
    base: Optional[str] = None  # a LoopJob YAML, relative to this file's folder (or absolute)
    overrides: dict = field(default_factory=dict)  # LoopJob fields on top of base, as nested sections
    space: dict = field(default_factory=dict)  # dotted LoopJob field -> {grid|choice|uniform|loguniform|randint: ...}
    search: SearchConfig = field(default_factory=SearchConfig)
    num_samples: int = 1  # samples (random/searchers) or repeats of the whole grid
    max_concurrent_trials: Optional[int] = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    resources: TrialResources = field(default_factory=TrialResources)
    max_failures: int = 1  # retries of a failed trial from its last round checkpoint
    share_pretraining: bool = True  # pre-train once for all trials when no swept parameter changes it
    storage_path: str = "runs/sweeps"  # made absolute; the sweep lives in <storage_path>/<name>/

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", self.name, "must be a non-empty folder name")
        _check(self.num_samples >= 1, "num_samples", self.num_samples, "must be >= 1")
        _check(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "max_concurrent_trials",
               self.max_concurrent_trials, "must be >= 1")
        _check(self.max_failures >= 0, "max_failures", self.max_failures, "must be >= 0")
        _check("://" not in self.storage_path, "storage_path", self.storage_path,
               "must be a local or mounted shared folder (the sweep writes its tables and logs there)")
        self.storage_path = str(Path(self.storage_path).expanduser().resolve())
        _check(bool(self.space), "space", self.space, "must name at least one parameter")

    # ------------------------------------------------------------------ derived
    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage_path) / self.name

    def distributions(self) -> dict[str, Distribution]:
        return {k: parse_distribution(k, v) for k, v in self.space.items()}


# ---------------------------------------------------------------------- space parsing
def _field_type(dotted: str) -> Any:
    """Type of the swept LoopJob field ``dotted`` (e.g. ``dral.kmax``); ConfigError if it is no field's."""
    tp = field_type(LoopJob, dotted, f"space.{dotted}")
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"space.{dotted}: is a whole section; sweep its fields, e.g. {dotted}.<field>")
    return tp


def _is_numeric(tp: Any, want: type) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return any(a is want for a in args)


def parse_distribution(dotted: str, spec: Any) -> Distribution:
    """``{kind: values}`` → Distribution with values coerced to the field's type (ConfigError if bad)."""
    where = f"space.{dotted}"
    if dotted in RESERVED:
        raise ConfigError(f"{where}: cannot be swept (each trial sets it)")
    tp = _field_type(dotted)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one of {{{' | '.join(k + ': ...' for k in KINDS)}}}, got {spec!r}")
    (kind, values), = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r} (known: {', '.join(KINDS)})")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if kind in RANGE_KINDS:
        want = int if kind == "randint" else float
        if len(values) != 2:
            raise ConfigError(f"{where}.{kind}: expected [low, high], got {values!r}")
        if not _is_numeric(tp, want):
            raise ConfigError(f"{where}.{kind}: the field is {getattr(tp, '__name__', tp)}, "
                              f"{kind} draws {want.__name__}s" + ("; use randint or grid" if want is float else ""))
        lo, hi = (coerce(v, want, f"{where}.{kind}") for v in values)
        if not lo < hi:
            raise ConfigError(f"{where}.{kind}: low {lo!r} must be < high {hi!r}")
        if kind == "loguniform" and lo <= 0:
            raise ConfigError(f"{where}.{kind}: low {lo!r} must be > 0")
        return Distribution(kind, [lo, hi])
    coerced = [_absolute(dotted, coerce(v, tp, f"{where}.{kind}[{i}]")) for i, v in enumerate(values)]
    if len({repr(v) for v in coerced}) != len(coerced):
        raise ConfigError(f"{where}.{kind}: repeated values in {values!r}")
    return Distribution(kind, coerced)


# ---------------------------------------------------------------------- jobs from points of the space
def _plain(value: Any) -> Any:
    """numpy scalars (as Ray Tune samples them) → Python values."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def job_for(base: dict, params: dict, output_dir: str | None = None) -> LoopJob:
    """The LoopJob of one trial: ``base`` (a to_dict tree) with ``params`` (dotted → value) applied."""
    tree = copy.deepcopy(base)
    for k, v in params.items():
        set_dotted(tree, k, _plain(v))
    if output_dir is not None:
        tree["output_dir"] = str(output_dir)
    return from_dict(LoopJob, tree)


def _rounds(every: float) -> int:
    return max(1, math.ceil(round(1.0 / every, 9)))


def rounds_of(job: LoopJob) -> int:
    """Rounds of the loop (one fine-tune + evaluation each): ceil(1 / finetune.every)."""
    return _rounds(job.finetune.every)


def _validate_space(dists: dict[str, Distribution], base: dict) -> int:
    """Every combination of values/bounds must give a valid LoopJob; returns the most rounds of any.

    Checks never span sections (κ ≤ ns is DralConfig's, root-vs-dataset DataConfig's), so the
    combinations are formed per top-level section, each built alone; top-level fields with the whole job.
    """
    groups: dict[str, list[str]] = {}
    for k in dists:
        groups.setdefault(k.split(".")[0] if "." in k else "", []).append(k)
    hints = typing.get_type_hints(LoopJob)
    everies = [base["finetune"]["every"]]
    for section, keys in groups.items():
        combos = list(itertools.product(*(dists[k].values for k in keys)))
        if len(combos) > MAX_VALIDATED_COMBINATIONS:
            raise ConfigError(f"space: {len(combos)} value combinations of {section or 'top-level'} fields to "
                              f"check (> {MAX_VALIDATED_COMBINATIONS}); use ranges instead of long grids")
        for combo in combos:
            params = dict(zip(keys, combo))
            try:
                if section:
                    tree = copy.deepcopy(base[section])
                    for k, v in params.items():
                        set_dotted(tree, k.split(".", 1)[1], v)
                    built = from_dict(hints[section], tree, section)
                    if section == "finetune":
                        everies.append(built.every)
                else:
                    job_for(base, params)
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
                raise ConfigError(f"space: the point {{{shown}}} gives an invalid job: {exc}") from None
    return max(_rounds(e) for e in everies)


def _check_search(cfg: SweepConfig, dists: dict[str, Distribution], rounds: int) -> None:
    algo = cfg.search.algorithm
    for k, d in dists.items():
        if algo == "grid" and d.kind != "grid":
            raise ConfigError(f"space.{k}: search.algorithm grid tries every point and needs {{grid: [...]}}, "
                              f"got {d.kind}; use search.algorithm random to sample distributions")
        if algo in SEARCHERS and d.kind == "grid":
            raise ConfigError(f"space.{k}: the {algo} searcher cannot take a grid; use {{choice: [...]}}")
    if cfg.scheduler.type == "asha" and cfg.scheduler.grace_period > rounds:
        raise ConfigError(f"scheduler.grace_period: {cfg.scheduler.grace_period} exceeds the {rounds} rounds "
                          "of the longest trial (1 / finetune.every)")


# ---------------------------------------------------------------------- loading
def base_tree(cfg: SweepConfig, folder: Path | None) -> dict:
    """The base LoopJob (``base`` file plus ``overrides``, validated together) as a to_dict tree."""
    tree: dict = {}
    label = "overrides"
    if cfg.base is not None:
        path = Path(cfg.base).expanduser()
        if not path.is_absolute() and folder is not None:
            path = folder / path
        label = f"base {path} with overrides"
        with config_errors("base"):
            tree = read_yaml_mapping(path)
    out = to_dict(build_config(LoopJob, tree, cfg.overrides, label))
    for dotted in PATH_FIELDS:
        section, _, key = dotted.rpartition(".")
        node = out[section] if section else out
        node[key] = _absolute(dotted, node[key])
    return out


@dataclass
class Sweep:
    """A loaded sweep: the config, its base job tree, parsed space and the number of loop rounds."""

    config: SweepConfig
    base: dict
    space: dict[str, Distribution]
    rounds: int
    source: str = "<defaults>"

    def job(self, params: dict, output_dir: str | None = None) -> LoopJob:
        return job_for(self.base, params, output_dir)

    def resolved(self) -> dict:
        """Everything that defines the sweep (saved next to it; a resumed sweep must match it)."""
        return {"sweep": to_dict(self.config), "base_job": self.base}


def _space_overrides(tree: dict, overrides: list[str]) -> list[str]:
    """Apply ``space.<dotted field>=<spec>`` (an empty spec drops the parameter); return the others."""
    rest = []
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not (eq and key.strip().startswith("space.")):
            rest.append(item)
            continue
        param = key.strip()[len("space."):]
        space = tree.setdefault("space", {})
        if raw.strip():
            space[param] = yaml.safe_load(raw)
        else:
            space.pop(param, None)
    return rest


def load_sweep(path: str | Path | None, overrides: list[str] | None = None) -> Sweep:
    """Load and fully validate a sweep file; any problem is a ConfigError naming the file and field."""
    label, tree, folder = "<defaults>", {}, None
    if path is not None:
        p = Path(path)
        label, folder = str(p), p.resolve().parent
        tree = read_yaml_mapping(p, "sweep file")
    with config_errors(label):
        cfg = from_dict(SweepConfig, apply_overrides(tree, _space_overrides(tree, overrides or [])))
        base = base_tree(cfg, folder)
        dists = cfg.distributions()
        mode = base.get("oracle", {}).get("mode", "simulated")
        _check(mode == "simulated" and "oracle.mode" not in dists, "oracle.mode", mode if mode != "simulated"
               else cfg.space.get("oracle.mode"), "must be 'simulated' in a sweep: trials run unattended, and "
               "a human-mode run would serve one annotator page per trial")
        rounds = _validate_space(dists, base)
        _check_search(cfg, dists, rounds)
    return Sweep(cfg, base, dists, rounds, label)
