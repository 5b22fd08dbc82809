"""The annotator web page of ``oracle.mode: human``: a small FastAPI app over a :class:`~reidloop.annotation.Board`.

``GET /`` and ``/static/*`` serve the page (``services/annotator_static/``: plain HTML/JS/CSS, nothing from the
network) and ``GET /health`` says the service is up; they hold no data and need no token. Every ``/api/*`` route
goes through :class:`~reidloop.serving.access.Access`: with tokens configured it needs
``Authorization: Bearer <token>`` (401 otherwise); the read-only token may GET (status, images, curve) and gets
403 on the POSTs (next, answer, undo). Images are served by pool index only (``Board.image_path``): a request
never names a path. Client errors are 4xx JSON ``{"detail": "..."}`` naming the field and value.

:class:`AnnotatorServer` runs the app with uvicorn in a daemon thread (quiet: warnings only, no access log).
"""
from __future__ import annotations

import logging
import mimetypes
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from reidloop.annotation import Board, NotOffered, UnknownQuestion
from reidloop.config.loader import ConfigError
from reidloop.serving.access import ADMIN, Access, is_loopback
from reidloop.serving.errors import ServingError

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("annotator_static")
ANSWERS = {"same": 1, "different": -1, "skip": None}


class Who(BaseModel):
    annotator: Any = None  # checked by the desk (a non-empty name), so its error names the value


class Reply(BaseModel):
    annotator: Any = None
    id: int
    answer: Any = None


def access_for(host: str, token_file: Optional[str] = None, read_token_file: Optional[str] = None) -> Access:
    """The Access of a server bound to ``host`` (tokens from the files or ``$REIDLOOP_TOKEN`` /
    ``$REIDLOOP_READ_TOKEN``); ConfigError when ``host`` is not loopback and there is no admin token."""
    return Access.from_config(SimpleNamespace(host=host, token_file=token_file, read_token_file=read_token_file))


def annotator_app(board: Board, access: Optional[Access] = None) -> FastAPI:
    """The page and its API over ``board``; ``access`` None: open (for a loopback server)."""
    access = access if access is not None else Access()
    app = FastAPI(title="reidloop annotator", docs_url=None, redoc_url=None, openapi_url=None)

    def reader(request: Request) -> str:
        try:
            return access.role(request.headers.get("authorization"))
        except ServingError as exc:
            raise HTTPException(exc.status, exc.message, headers={"WWW-Authenticate": "Bearer"}) from None

    def writer(role: str = Depends(reader)) -> str:
        if role != ADMIN:
            raise HTTPException(403, "answering needs the admin token (this one is read-only)")
        return role

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else \
            f"no such page: {request.method} {request.url.path}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        why = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                        f" (got {e.get('input')!r})" for e in exc.errors())
        return JSONResponse({"detail": why}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("annotator: unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    def desk_call(fn, *args):
        """A desk/board call with its client errors as 4xx (NotOffered is a ValueError: it comes first)."""
        try:
            return fn(*args)
        except UnknownQuestion as exc:
            raise HTTPException(404, str(exc)) from None
        except NotOffered as exc:
            raise HTTPException(409, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "run_id": board.run_id}

    @app.get("/api/status")
    def status(role: str = Depends(reader)) -> dict:
        return board.status()

    @app.post("/api/next")
    def next_question(body: Who, role: str = Depends(writer)) -> dict:
        return {"question": desk_call(board.next, body.annotator)}

    @app.post("/api/answer")
    def answer(body: Reply, role: str = Depends(writer)) -> dict:
        if not isinstance(body.answer, str) or body.answer not in ANSWERS:
            raise HTTPException(422, f"answer: {body.answer!r} must be one of {', '.join(map(repr, ANSWERS))}")
        return {"counted": desk_call(board.answer, body.annotator, body.id, ANSWERS[body.answer])}

    @app.post("/api/undo")
    def undo(body: Who, role: str = Depends(writer)) -> dict:
        return {"undone": desk_call(board.undo, body.annotator)}

    @app.get("/api/image/{index}")
    def image(index: int, role: str = Depends(reader)) -> FileResponse:
        try:
            path = board.image_path(index)
        except IndexError as exc:
            raise HTTPException(404, str(exc)) from None
        if not path.is_file():
            raise HTTPException(404, f"image index {index}: its file is missing")
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @app.get("/api/curve.png")
    def curve(role: str = Depends(reader)) -> FileResponse:
        path = board.curve() if board.curve is not None else None
        if path is None or not Path(path).is_file():
            raise HTTPException(404, "no learning curve yet (it is drawn after the first round)")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})

    return app


class _Server(uvicorn.Server):
    """uvicorn's server with an Event set once it accepts connections (or once it gave up starting)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()


class AnnotatorServer:
    """The annotator app on ``host:port`` (0: a free port) in a daemon thread; ``access`` None: tokens from
    ``$REIDLOOP_TOKEN`` / ``$REIDLOOP_READ_TOKEN``, if set. ConfigError for a non-loopback host without an
    admin token."""

    def __init__(self, board: Board, host: str = "127.0.0.1", port: int = 0, access: Optional[Access] = None,
                 start_timeout_s: float = 30.0) -> None:
        access = access if access is not None else access_for(host)
        if not access.admin and not is_loopback(host):
            raise ConfigError(f"host: {host!r} exposes the annotator page beyond this machine, so it needs a "
                              "token: set token_file (a file holding it, mode 0600) or $REIDLOOP_TOKEN")
        self.board, self.host, self.access, self.start_timeout_s = board, host, access, start_timeout_s
        self.app = annotator_app(board, access)
        self._port = port
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None
        self._bound = 0

    @property
    def port(self) -> int:
        return self._bound or self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "AnnotatorServer":
        """Bind, serve in a daemon thread, return once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the annotator server is already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"port: cannot bind {self.host}:{self._port} ({exc.strerror or exc})") from None
        sock.set_inheritable(True)
        self._sock, self._bound = sock, sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="annotator-http", daemon=True)
        self._thread.start()
        if not self._server.ready.wait(self.start_timeout_s) or not self._server.started:
            self.stop()
            raise RuntimeError(f"the annotator server on {self.url} did not start")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and join the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> "AnnotatorServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
