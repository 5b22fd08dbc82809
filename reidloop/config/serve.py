"""Typed configuration of the HTTP Re-ID service (``services/serve_app.py``, ``python -m trainers.serve``).

Loaded like every other job config: ``load_config(ServeConfig, "tune_configs/serve.yaml", overrides)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from .loader import ConfigError

AUTOSCALING_KEYS = ("min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests",
                    "upscale_delay_s", "downscale_delay_s", "metrics_interval_s", "look_back_period_s",
                    "upscaling_factor", "downscaling_factor")


def _check(cond: bool, name: str, value, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {value!r} {why}")


@dataclass
class DeploymentConfig:
    """Ray Serve options of one deployment (replicas, autoscaling, concurrency, resources)."""

    num_replicas: int = 1
    # Serve's autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...);
    # when set it replaces num_replicas.
    autoscaling: Optional[dict] = None
    # Requests a replica accepts at once; must be >= max_batch_size for batches to fill.
    max_ongoing_requests: int = 64
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        _check(self.num_replicas >= 1, "num_replicas", self.num_replicas, "must be >= 1")
        _check(self.max_ongoing_requests >= 1, "max_ongoing_requests", self.max_ongoing_requests, "must be >= 1")
        _check(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus/num_gpus", (self.num_cpus, self.num_gpus),
               "must be >= 0")
        if self.autoscaling is not None:
            unknown = sorted(set(self.autoscaling) - set(AUTOSCALING_KEYS))
            _check(not unknown, "autoscaling", unknown, f"unknown keys (known: {', '.join(AUTOSCALING_KEYS)})")
            lo, hi = self.autoscaling.get("min_replicas", 1), self.autoscaling.get("max_replicas", 1)
            _check(isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1,
                   "autoscaling.min_replicas/max_replicas", (lo, hi), "need ints 0 <= min <= max, max >= 1")

    def serve_options(self) -> dict:
        """Keyword arguments for ``Deployment.options``."""
        opts: dict = {"max_ongoing_requests": self.max_ongoing_requests,
                      "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}}
        if self.autoscaling is not None:
            opts["autoscaling_config"] = dict(self.autoscaling)
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


@dataclass
class ServeConfig:
    """`python -m trainers.serve` — the current Re-ID model over HTTP."""

    # A checkpoint file (save_checkpoint format) or a training run's output folder: its model.pt
    # (else pretrained.pt) is followed and reloaded whenever it changes.
    checkpoint: Optional[str] = None
    watch_interval_s: float = 2.0  # seconds between checks of the checkpoint (0: only reload on reconfigure)
    host: str = "127.0.0.1"  # the HTTP proxy binds here; 0.0.0.0 exposes it beyond this machine
    port: int = 8000
    # The HTTP front on host:port (services/serve_front.py): ray, Serve's proxy actor (one Ray call per
    # request); haproxy, Ray's high-throughput mode (HAProxy forwards to the ingress replicas' own HTTP
    # servers, one Ray hop fewer; they bind host too: several nodes need host 0.0.0.0 and so a token).
    front: Literal["ray", "haproxy"] = "ray"
    app_name: str = "reidloop"
    route_prefix: str = "/"
    # Model input: the size the network was trained at (data.height / data.width of the run).
    height: int = 256
    width: int = 128
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 only where the hardware has it
    torch_threads: Optional[int] = None  # torch intra-op threads per model replica (None: torch's default)
    metric: Literal["euclidean", "cosine"] = "euclidean"  # distance of /search
    # Request batching of /embed and /search (reidloop/serving/batcher.py): a request runs as soon as the
    # model is free, with those that arrived while it was busy (up to max_batch_size); batch_wait_timeout_s
    # > 0 makes a batch with room wait that long for more first (Ray Serve's @serve.batch behaviour: every
    # lone request pays it). Off: one forward pass per request.
    batching: bool = True
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.0
    # The gallery on disk (reidloop/serving/store.py): Parquet parts reloaded on start. gallery_dir None:
    # gallery/ in the served run folder (or beside the served checkpoint file). persist_gallery false:
    # in memory only, lost on restart.
    gallery_dir: Optional[str] = None
    persist_gallery: bool = True
    # Keep each uploaded image (its bytes, on disk in gallery_dir/images/) so that a model swap re-embeds the
    # gallery in the background. Off: only embeddings are kept, and after a swap the entries the new model
    # did not embed are stale (not searched) until uploaded again. Images of people: keep them only if allowed.
    keep_images: bool = False
    # Access (reidloop/serving/access.py). Tokens come from files or the environment, never from this config:
    # admin (everything) from token_file or $REIDLOOP_TOKEN, read-only (/embed, /search without person ids
    # and cameras, /version) from read_token_file or $REIDLOOP_READ_TOKEN. With a token configured every
    # route but /health needs "Authorization: Bearer <token>"; a host other than loopback needs one.
    token_file: Optional[str] = None
    read_token_file: Optional[str] = None
    # Input limits (bad input gets a 4xx, never an exception in the replica).
    max_body_bytes: int = 10 * 1024 * 1024  # per request: 413 beyond it (bodies are read up to it, no further)
    max_pixels: int = 4096 * 4096  # per image, width × height read from the header before decoding: 413
    max_request_pixels: int = 64 * 1024 * 1024  # all images of one request together: 413
    max_files: int = 64  # images per POST /gallery/batch: 422 beyond it
    max_k: int = 100
    max_gallery_size: int = 100_000  # 507 beyond it
    # Requests each ingress replica handles at once (bodies being read included); beyond it 429 with
    # Retry-After. Bounds the memory of buffered bodies to about max_in_flight × max_body_bytes.
    max_in_flight: int = 32
    request_timeout_s: float = 60.0  # a request not answered in this time gets 503 (its work is cancelled)
    # The ingress (ReidApi) parses, decodes and embeds /embed with its own copy of the model: scale the
    # embedding work with its num_replicas / autoscaling (one CPU per replica by default).
    ingress: DeploymentConfig = field(default_factory=lambda: DeploymentConfig(num_cpus=1.0, max_ongoing_requests=256))
    gallery: DeploymentConfig = field(default_factory=DeploymentConfig)  # holds the index: one replica

    REMOVED: ClassVar[dict[str, str]] = {
        "embedder": "the Embedder deployment is gone: the ingress embeds /embed itself (one hop fewer); "
                    "move its settings to ingress (num_replicas, autoscaling, num_cpus, num_gpus)"}

    def __post_init__(self) -> None:
        _check(self.watch_interval_s >= 0, "watch_interval_s", self.watch_interval_s, "must be >= 0")
        _check(bool(self.host), "host", self.host, "must be a host name or address")
        _check(0 <= self.port <= 65535, "port", self.port, "must be in [0, 65535]")
        _check(self.route_prefix.startswith("/"), "route_prefix", self.route_prefix, "must start with '/'")
        _check(self.height >= 16 and self.width >= 8, "height/width", (self.height, self.width), "too small")
        _check(self.torch_threads is None or self.torch_threads >= 1, "torch_threads", self.torch_threads,
               "must be >= 1")
        _check(self.max_batch_size >= 1, "max_batch_size", self.max_batch_size, "must be >= 1")
        _check(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s", self.batch_wait_timeout_s, "must be >= 0")
        _check(self.request_timeout_s > 0, "request_timeout_s", self.request_timeout_s, "must be > 0")
        _check(self.max_in_flight <= self.ingress.max_ongoing_requests, "max_in_flight", self.max_in_flight,
               f"must be <= ingress.max_ongoing_requests={self.ingress.max_ongoing_requests} (else Serve queues "
               "what should be refused)")
        for name in ("max_body_bytes", "max_pixels", "max_request_pixels", "max_files", "max_k",
                     "max_gallery_size", "max_in_flight"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("ingress", "gallery"):
            dep = getattr(self, name)
            _check(not self.batching or dep.max_ongoing_requests >= self.max_batch_size,
                   f"{name}.max_ongoing_requests", dep.max_ongoing_requests,
                   f"must be >= max_batch_size={self.max_batch_size} so batches can fill")
        _check(self.gallery.num_replicas == 1 and self.gallery.autoscaling is None, "gallery.num_replicas",
               self.gallery.num_replicas, "must be 1 without autoscaling (the replica holds the gallery index)")
