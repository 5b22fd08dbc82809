"""The Re-ID model over HTTP: a Ray Serve application with a FastAPI ingress (OpenAPI docs at /docs).

Two deployments compose the Ray-free core of ``reidloop.serving``:

* ``ReidApi`` (ingress, scalable: ``ingress.num_replicas`` or ``ingress.autoscaling``): reads the body up to
  ``max_body_bytes``, parses the upload (JSON nested at most ``MAX_JSON_DEPTH`` levels), decodes and resizes
  the images (pixel limit), maps every ``ServingError`` to a 4xx JSON ``{"error": "..."}``, and embeds
  ``POST /embed`` itself: the model lives in the ingress, so an embedding costs one hop (proxy → replica),
  not two. No answer holds a filesystem path: ``/version`` reports checkpoint ids, file names, times and
  error codes (``reidloop.serving.redact``).
* ``Gallery`` (one replica: it holds the index): ``/search`` and gallery maintenance, with its own copy of
  the model so that a swap re-embeds the gallery before the new model answers any search (see
  ``reidloop.serving.service``).

``/embed`` and ``/search`` batch continuously (``reidloop.serving.batcher``): a request runs as soon as the
model is free, together with those that arrived while it was busy (up to ``max_batch_size``).
Both deployments reload when the followed checkpoint changes (a watcher thread polling every
``watch_interval_s``) or when Serve calls ``reconfigure(user_config)`` with ``{"checkpoint": path}``.

    serve run services.serve_app:build_app config=tune_configs/serve.yaml checkpoint=runs/synthetic
    serve deploy tune_configs/serve_deploy.yaml
    python -m trainers.serve --config tune_configs/serve.yaml        # the one command
"""
import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from reidloop.config import from_dict, load_config, to_dict
from reidloop.config.serve import ServeConfig
from reidloop.serving import (ADMIN, MAX_JSON_DEPTH, Access, InputTransform, ReidService, ServingError, Upload,
                              check_request_pixels, make_entry, parse_id_list, parse_k, parse_meta, parse_upload,
                              redact_matches, redact_paths, require_admin)
from reidloop.serving.batcher import ContinuousBatcher

from .serve_front import check_cluster_front

log = logging.getLogger("reidloop.serve")
USER_CONFIG_KEYS = ("checkpoint", "watch_interval_s")


# ---------------------------------------------------------------- OpenAPI description
class ErrorBody(BaseModel):
    error: str


class EmbedBody(BaseModel):
    embedding: list[float]
    dim: int
    model_version: str


class Match(BaseModel):
    gallery_id: str
    person_id: Optional[int] = None  # admin callers only
    camera: Optional[int] = None  # admin callers only
    distance: float
    score: float
    model_version: str  # the model that embedded this entry (always the query's: stale entries are not searched)


class SearchBody(BaseModel):
    matches: list[Match]
    k: int
    gallery_size: int
    stale: int  # entries another model embedded, not searched until re-embedded or uploaded again
    model_version: str


class GalleryBody(BaseModel):
    ids: list[str]
    gallery_size: int
    model_version: str


ERROR_CASES = {
    400: "empty, truncated or undecodable image; malformed multipart body",
    401: "no bearer token, or a wrong one (when tokens are configured)",
    403: "a read-only token on a route that changes the gallery",
    404: "unknown gallery id",
    409: "gallery id already in use",
    413: "body larger than max_body_bytes, an image larger than max_pixels, or the request's images together "
         "larger than max_request_pixels",
    415: "content type is not an image type (nor multipart/form-data)",
    422: f"missing or unknown field, a bad value, more than max_files images (JSON nested deeper than "
         f"{MAX_JSON_DEPTH} levels too)",
    429: "more than max_in_flight requests at once (see Retry-After)",
    503: "not answered within request_timeout_s",
    507: "gallery full (max_gallery_size)",
}
COMMON_ERRORS = (401, 429, 503)


def errors(*codes: int) -> dict:
    """``responses=`` entries documenting the 4xx/5xx answers of an endpoint (and those of every route)."""
    return {c: {"model": ErrorBody, "description": ERROR_CASES[c]} for c in sorted({*codes, *COMMON_ERRORS})}


def _image_body(fields: dict[str, dict], many: bool = False) -> dict:
    """``openapi_extra`` for an endpoint reading an image upload from the raw request."""
    image = {"type": "string", "format": "binary"}
    props = {"image": {"type": "array", "items": image} if many else image, **fields}
    content = {"multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": props}}}
    if not many:
        content["image/*"] = {"schema": image}
    params = [{"name": n, "in": "query", "required": False, "schema": s, "description": "with a raw image/* body"}
              for n, s in fields.items()] if not many else []
    return {"requestBody": {"required": True, "content": content}, "parameters": params}


OPTIONAL_INT = {"type": ["integer", "null"]}
app = FastAPI(title="reidloop Re-ID service", version="1",
              description="Embeddings and gallery search with the current Re-ID model (DRAL, ICCV 2019).")


class Guard:
    """Pure ASGI middleware of the ingress: access (``reidloop.serving.access``), requests in flight, timeout.

    Its settings (``GuardSettings``) are set on ``app.state.guard`` by the ingress replica that owns this
    process's app. ``/health`` is always open and never counted. The caller's role is put in
    ``request.state.role`` for the routes that redact or refuse."""

    def __init__(self, app) -> None:
        self.app = app

    @staticmethod
    async def _send_error(send, status: int, message: str, headers: Optional[dict] = None) -> None:
        resp = JSONResponse({"error": message}, status_code=status, headers=headers)
        await send({"type": "http.response.start", "status": resp.status_code, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})

    async def __call__(self, scope, receive, send) -> None:
        settings = getattr(scope.get("app").state, "guard", None) if scope["type"] == "http" else None
        if settings is None:
            return await self.app(scope, receive, send)
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path == "/health":
            return await self.app(scope, receive, send)
        try:
            role = settings.access.role(dict(_headers(scope)).get("authorization"))
        except ServingError as exc:
            return await self._send_error(send, exc.status, exc.message, {"WWW-Authenticate": "Bearer"})
        scope.setdefault("state", {})["role"] = role
        if settings.in_flight >= settings.max_in_flight:
            return await self._send_error(send, 429, f"too many requests in flight (max_in_flight="
                                          f"{settings.max_in_flight}); retry shortly", {"Retry-After": "1"})
        settings.in_flight += 1
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), settings.timeout_s)
        except asyncio.TimeoutError:
            if not started:
                await self._send_error(send, 503, f"not answered within request_timeout_s={settings.timeout_s:g} "
                                       "(the request's work was cancelled)", {"Retry-After": "1"})
        finally:
            settings.in_flight -= 1


def _headers(scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]


class GuardSettings:
    def __init__(self, access: Access, max_in_flight: int, timeout_s: float) -> None:
        self.access, self.max_in_flight, self.timeout_s = access, max_in_flight, timeout_s
        self.in_flight = 0  # touched only on the replica's event loop


app.add_middleware(Guard)


def _role(request: Request) -> str:
    return getattr(request.state, "role", ADMIN)  # no guard settings: a test app, open


@app.exception_handler(ServingError)
async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    message = redact_paths(getattr(exc, "message", str(exc)))  # client input echoed back, never a server path
    return JSONResponse({"error": message}, status_code=getattr(exc, "status", 400))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"}, status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    why = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
    return JSONResponse({"error": why}, status_code=422)


@app.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


# ---------------------------------------------------------------- model replicas
class Refused(NamedTuple):
    """A client error (ServingError) a model replica returns instead of raising it: Serve logs every
    exception a replica method raises, with a traceback, and a duplicate or unknown id is no server fault.
    The ingress raises it again (``_answer``)."""

    status: int
    message: str


def _refusing(fn: Callable) -> Callable:
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except ServingError as exc:
            return Refused(exc.status, exc.message)
    return call


def _answer(result: Any) -> JSONResponse:
    if isinstance(result, Refused):
        raise ServingError(result.status, result.message)
    return JSONResponse(result)


class _ModelReplica:
    """A ``ReidService`` that follows its checkpoint; model work runs off the replica's event loop."""

    def __init__(self, cfg: dict, store: bool = False) -> None:
        self.cfg = from_dict(ServeConfig, cfg)
        self.service = ReidService(self.cfg, store=store)
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="model")  # forward passes, one at a time
        self._admin_pool = ThreadPoolExecutor(1, thread_name_prefix="admin")  # add / remove
        self._reload_pool = ThreadPoolExecutor(1, thread_name_prefix="reload")  # reload (may re-embed a while)
        self._interval = self.cfg.watch_interval_s
        self._wake = threading.Event()
        threading.Thread(target=self._watch, name="checkpoint-watcher", daemon=True).start()

    def _watch(self) -> None:
        while True:
            self._wake.wait(self._interval if self._interval > 0 else None)
            self._wake.clear()
            if self._interval > 0:
                try:
                    self.service.reload()  # logs the swap, or the error it records for /version
                except Exception:  # reload records checkpoint errors itself; never let the watcher die
                    log.exception("checkpoint watcher")

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def reconfigure(self, user_config: dict) -> None:
        """Serve's user_config: ``{"checkpoint": file or folder, "watch_interval_s": seconds}`` (both optional)."""
        unknown = sorted(set(user_config or {}) - set(USER_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"user_config: unknown key {unknown[0]!r} (known: {', '.join(USER_CONFIG_KEYS)})")
        interval = (user_config or {}).get("watch_interval_s")
        if interval is not None:
            if not isinstance(interval, (int, float)) or interval < 0:
                raise ValueError(f"user_config.watch_interval_s: {interval!r} must be a number >= 0")
            self._interval = float(interval)
            self._wake.set()
        await self._run(self._reload_pool, self.service.reload, (user_config or {}).get("checkpoint"))

    def model_info(self) -> dict:
        return {**self.service.version_info(), "gallery_size": self.service.state.index.size}

    def version(self) -> dict:  # the Gallery's remote call (the ingress's /version route shadows it)
        return self.model_info()

    def _batcher(self, fn: Callable[[list], list]) -> Callable:
        """``fn`` (a list of requests → a list of answers) run in the model thread: continuously batched
        (``reidloop.serving.batcher``), or one request per call with ``batching: false``."""
        if not self.cfg.batching:
            async def one(item):
                return (await self._run(self._model_pool, fn, [item]))[0]
            return one
        return ContinuousBatcher(fn, self._model_pool, self.cfg.max_batch_size, self.cfg.batch_wait_timeout_s)


@serve.deployment(name="Gallery")
class Gallery(_ModelReplica):
    """Holds the gallery (durable in ``gallery_dir``, reloaded here on start)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg, store=True)
        self._search = self._batcher(self._search_many)
        if self.service.store is not None and self.service.store.keep_images and self.service.stale_ids():
            # entries stored by another model (the checkpoint changed while the server was down): re-embedded
            # in the background while the fresh ones are searched
            self._reload_pool.submit(self._catch_up)

    def _catch_up(self) -> None:
        try:
            log.info("gallery: %d entries re-embedded in the background", self.service.catch_up())
        except Exception:  # the stale entries stay stale (and counted); the server keeps serving the rest
            log.exception("gallery: background re-embedding failed")

    def __del__(self) -> None:  # Serve calls it on a graceful shutdown: give the gallery folder's lease back
        self.service.close()

    def _search_many(self, queries: list[tuple[torch.Tensor, int]]) -> list[dict]:
        results, version, size, stale = self.service.search([q for q, _ in queries], [k for _, k in queries])
        return [{"matches": m, "k": k, "gallery_size": size, "stale": stale, "model_version": version}
                for m, (_, k) in zip(results, queries)]

    async def search(self, image: torch.Tensor, k: int) -> dict:
        return await self._search((image, k))

    def _add(self, entries: list, images: list[torch.Tensor], raw: Optional[list[bytes]]) -> dict:
        state = self.service.add(entries, images, raw)
        return {"ids": [e.gallery_id for e in entries], "gallery_size": state.index.size,
                "model_version": state.model.version}

    async def add(self, entries: list, images: list[torch.Tensor], raw: Optional[list[bytes]] = None) -> dict | Refused:
        return await self._run(self._admin_pool, _refusing(self._add), entries, images, raw)

    def stale_ids(self) -> dict:
        return {"ids": self.service.stale_ids(), "model_version": self.service.state.model.version,
                "reembedding": self.service.reembedding}

    def _remove(self, gallery_ids: list[str]) -> dict:
        state = self.service.remove(gallery_ids)
        return {"removed": list(gallery_ids), "gallery_size": state.index.size, "model_version": state.model.version}

    async def remove(self, gallery_ids: list[str]) -> dict | Refused:
        return await self._run(self._admin_pool, _refusing(self._remove), gallery_ids)


# ---------------------------------------------------------------- HTTP ingress
@serve.deployment(name="ReidApi")
@serve.ingress(app)
class ReidApi(_ModelReplica):
    """The HTTP API; embeds ``/embed`` itself (its own copy of the model, following the checkpoint)."""

    def __init__(self, gallery: DeploymentHandle, cfg: dict, access: Optional[dict] = None) -> None:
        super().__init__(cfg)
        self.gallery = gallery
        self._embed = self._batcher(self._embed_many)
        self.transform = InputTransform(self.cfg.height, self.cfg.width)
        app.state.guard = GuardSettings(Access.from_dict(access), self.cfg.max_in_flight, self.cfg.request_timeout_s)

    async def _body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ServingError(413, f"body of {declared} bytes exceeds max_body_bytes={limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServingError(413, f"body exceeds max_body_bytes={limit}")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _upload(self, request: Request, fields: tuple[str, ...] = (), max_files: int = 1) -> Upload:
        return parse_upload(await self._body(request), request.headers.get("content-type"), request.query_params,
                            allowed_fields=fields, max_files=max_files)

    def _decode_all(self, files: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        check_request_pixels(files, self.cfg.max_request_pixels, self.cfg.max_pixels)
        return [self.transform(data, max_pixels=self.cfg.max_pixels, what=name) for name, data in files]

    def _raw(self, upload: Upload) -> Optional[list[bytes]]:
        """The uploaded bytes, for the Gallery to keep on disk (only with keep_images)."""
        return [data for _, data in upload.files] if self.cfg.keep_images else None

    async def _images(self, upload: Upload) -> list[torch.Tensor]:
        """Decoded and resized uint8 images (off the event loop: a large image takes a while)."""
        return await asyncio.to_thread(self._decode_all, upload.files)

    @app.post("/embed", summary="Embedding of one image", openapi_extra=_image_body({}),
              responses={200: {"model": EmbedBody}, **errors(400, 413, 415, 422)})
    async def embed(self, request: Request) -> JSONResponse:
        (image,) = await self._images(await self._upload(request))
        return JSONResponse(await self._embed(image))

    def _embed_many(self, images: list[torch.Tensor]) -> list[dict]:
        feats, version = self.service.embed(images)
        return [{"embedding": f.tolist(), "dim": int(feats.shape[1]), "model_version": version} for f in feats]

    @app.post("/search", summary="Top-k gallery matches of a query image",
              openapi_extra=_image_body({"k": {"type": "integer", "minimum": 1, "default": 10}}),
              responses={200: {"model": SearchBody}, **errors(400, 413, 415, 422)})
    async def search(self, request: Request) -> JSONResponse:
        upload = await self._upload(request, ("k",))
        k = parse_k(upload.fields.get("k"), self.cfg.max_k)
        (image,) = await self._images(upload)
        result = await self.gallery.search.remote(image, k)
        result["matches"] = redact_matches(result["matches"], _role(request))
        return JSONResponse(result)

    @app.post("/gallery", summary="Index one image",
              openapi_extra=_image_body({"gallery_id": {"type": "string"}, "person_id": OPTIONAL_INT,
                                         "camera": OPTIONAL_INT}),
              responses={200: {"model": GalleryBody}, **errors(400, 409, 413, 415, 422, 507)})
    async def gallery_add(self, request: Request) -> JSONResponse:
        require_admin(_role(request), "POST /gallery")
        upload = await self._upload(request, ("gallery_id", "person_id", "camera"))
        f = upload.fields
        entry = make_entry(f.get("gallery_id"), f.get("person_id"), f.get("camera"))
        return _answer(await self.gallery.add.remote([entry], await self._images(upload), self._raw(upload)))

    @app.post("/gallery/batch", summary="Index several images (all or none)",
              openapi_extra=_image_body({"meta": {"type": "string", "description": "JSON list, one object per "
                                         "image: {gallery_id, person_id, camera}, all optional"}}, many=True),
              responses={200: {"model": GalleryBody}, **errors(400, 409, 413, 415, 422, 507)})
    async def gallery_add_batch(self, request: Request) -> JSONResponse:
        require_admin(_role(request), "POST /gallery/batch")
        upload = await self._upload(request, ("meta",), max_files=self.cfg.max_files)
        entries = parse_meta(upload.fields.get("meta"), len(upload.files))
        return _answer(await self.gallery.add.remote(entries, await self._images(upload), self._raw(upload)))

    @app.delete("/gallery/{gallery_id}", summary="Remove one image", responses=errors(404))
    async def gallery_remove(self, gallery_id: str, request: Request) -> JSONResponse:
        require_admin(_role(request), "DELETE /gallery/{id}")
        return _answer(await self.gallery.remove.remote([gallery_id]))

    @app.delete("/gallery", summary="Remove several images (all or none)", responses=errors(404, 413, 422),
                openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "array", "items": {"type": "string"}}}}}})
    async def gallery_remove_batch(self, request: Request) -> JSONResponse:
        require_admin(_role(request), "DELETE /gallery")
        return _answer(await self.gallery.remove.remote(parse_id_list(await self._body(request))))

    @app.get("/gallery/stale", summary="Ids of the entries the serving model did not embed (not searched)",
             responses=errors(403))
    async def gallery_stale(self, request: Request) -> JSONResponse:
        require_admin(_role(request), "GET /gallery/stale")
        return JSONResponse(await self.gallery.stale_ids.remote())

    @app.get("/health", summary="Liveness of the ingress and both model deployments (no token needed)")
    async def health(self) -> dict:
        g, e = await self.gallery.version.remote(), self.model_info()
        return {"status": "ok", "model_version": g["model_version"], "embedder_version": e["model_version"],
                "gallery_size": g["gallery_size"], "stale": g["stale"], "reembedding": g["reembedding"]}

    @app.get("/version", summary="The served checkpoint: id, file name, metrics, load time, last reload error "
             "(a code and a time; never a path)")
    async def version(self) -> dict:
        g, e = await self.gallery.version.remote(), self.model_info()
        e.pop("gallery_size", None)
        return redact_paths({**g, "embedder": e})


# ---------------------------------------------------------------- building and starting
REPO_ROOT = Path(__file__).resolve().parents[1]


def _local_path(path: str) -> str:
    """``path`` made absolute: relative to the working directory if it exists there, else to the repository
    (``serve deploy`` builds the app in a Ray worker whose working directory is not the caller's)."""
    p = Path(path).expanduser()
    return str(p.resolve() if p.is_absolute() or p.exists() else (REPO_ROOT / p).resolve())


def build(cfg: ServeConfig, user_config: Optional[dict] = None):
    """The bound application for ``cfg`` (checkpoint made absolute, so replicas find it from any cwd).

    ``user_config`` (default: ``cfg``'s checkpoint and watch interval) goes to both model deployments;
    redeploying with only it changed reconfigures the running replicas: the gallery is kept and re-embedded.
    """
    if not cfg.checkpoint:
        raise ValueError("checkpoint: required (a .pt file or a training run's output folder, e.g. runs/synthetic)")
    access = Access.from_config(cfg)  # ConfigError: exposed without a token; only digests go to the replicas
    plain = to_dict(cfg)
    plain["checkpoint"] = _local_path(cfg.checkpoint)
    if cfg.gallery_dir:
        plain["gallery_dir"] = _local_path(cfg.gallery_dir)
    if user_config is None:
        user_config = {"checkpoint": plain["checkpoint"], "watch_interval_s": cfg.watch_interval_s}
    gallery = Gallery.options(user_config=user_config, **cfg.gallery.serve_options()).bind(plain)
    return ReidApi.options(user_config=user_config, **cfg.ingress.serve_options()).bind(gallery, plain,
                                                                                       access.to_dict())


def build_app(args: dict):
    """Application builder for ``serve run`` / ``serve deploy``: ``config`` names the YAML, any other
    key overrides a field (``checkpoint=runs/x``, ``ingress.num_replicas=2``)."""
    args = dict(args)
    path = args.pop("config", None)
    cfg = load_config(ServeConfig, path and _local_path(path), [f"{k}={v}" for k, v in args.items()])
    check_cluster_front(cfg.front, "the Ray cluster running this app", env=dict(os.environ))
    return build(cfg)


def deploy(cfg: ServeConfig, blocking: bool = False) -> str:
    """Start Serve on ``cfg.host:cfg.port`` (Ray must be initialised), deploy the app, return its URL. Serve's
    own logs (controller, proxy, replicas) are at WARNING unless --verbose (``services.ray_start.verbose``)."""
    from .ray_start import verbose

    if not verbose():  # `import ray.serve` set its driver-side logger to INFO ("Started Serve ...", "... is ready")
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": cfg.host, "port": cfg.port},
                logging_config={"log_level": "INFO" if verbose() else "WARNING"})
    serve.run(build(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=blocking)
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
