"""Who may call the HTTP service: bearer tokens, an admin and a read-only role, loopback open by default.

Tokens come from a file (``token_file`` / ``read_token_file`` of the serve config) or the environment
(``$REIDLOOP_TOKEN`` / ``$REIDLOOP_READ_TOKEN``), never from a config value that could land in git. Only
their SHA-256 digests leave the process that read them (the replicas get :meth:`Access.to_dict`), and a
presented token is compared digest against digest with :func:`hmac.compare_digest` (constant time, every
candidate checked). Tokens are never logged.

* No token configured and the server bound to loopback: open, every caller is admin (a laptop).
* Bound anywhere else: an admin token is required to start at all.
* With any token configured: every route but ``/health`` needs ``Authorization: Bearer <token>``
  (401 without or with a wrong one); the read-only token may embed, search (answers without person ids
  and cameras) and read ``/version``; gallery changes need the admin token (403 otherwise).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config.loader import ConfigError
from .errors import ServingError

ADMIN, READ = "admin", "read"
TOKEN_ENV, READ_TOKEN_ENV = "REIDLOOP_TOKEN", "REIDLOOP_READ_TOKEN"
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh token (256 bits, hex)."""
    return secrets.token_hex(32)


def read_token(file: Optional[str], env: str, field: str) -> Optional[str]:
    """The token in ``file`` (its first line, stripped), else in ``$env``; None when neither is set."""
    if file:
        path = Path(file).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{field}: cannot read {path} ({exc.strerror or exc})") from None
        token = text.splitlines()[0].strip() if text else ""
        if not token:
            raise ConfigError(f"{field}: {path} is empty")
    else:
        token = os.environ.get(env, "").strip()
        if not token:
            return None
        field = f"${env}"
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{field}: the token is shorter than {MIN_TOKEN_CHARS} characters "
                          "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')")
    return token


@dataclass(frozen=True)
class Access:
    """The digests of the accepted tokens, by role (empty: open)."""

    admin: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg) -> "Access":
        """From a ServeConfig's token files / the environment; ConfigError when ``cfg.host`` is exposed
        without an admin token."""
        admin = read_token(cfg.token_file, TOKEN_ENV, "token_file")
        read = read_token(cfg.read_token_file, READ_TOKEN_ENV, "read_token_file")
        if admin is None and not is_loopback(cfg.host):
            raise ConfigError(f"host: {cfg.host!r} exposes the service beyond this machine, so it needs a token: "
                              f"set token_file (a file holding it, mode 0600) or ${TOKEN_ENV}")
        if admin is not None and admin == read:
            raise ConfigError("read_token_file: the read-only token equals the admin token")
        return cls(tuple([digest(admin)] if admin else []), tuple([digest(read)] if read else []))

    @property
    def open(self) -> bool:
        return not self.admin and not self.read

    def to_dict(self) -> dict:
        return {"admin": list(self.admin), "read": list(self.read)}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Access":
        d = d or {}
        return cls(tuple(d.get("admin", ())), tuple(d.get("read", ())))

    def role(self, authorization: Optional[str]) -> str:
        """The caller's role from its ``Authorization`` header; ServingError 401 when it has none that fits."""
        if self.open:
            return ADMIN
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServingError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        d = digest(token.strip())
        is_admin = any([hmac.compare_digest(d, a) for a in self.admin])  # a list: every candidate compared
        is_read = any([hmac.compare_digest(d, r) for r in self.read])
        if is_admin:
            return ADMIN
        if is_read:
            return READ
        raise ServingError(401, "invalid token")


def require_admin(role: str, what: str) -> None:
    if role != ADMIN:
        raise ServingError(403, f"{what} needs the admin token (this one is read-only)")


def redact_matches(matches: list[dict], role: str) -> list[dict]:
    """Search matches as ``role`` may see them: without ``person_id`` and ``camera`` unless admin."""
    if role == ADMIN:
        return matches
    return [{k: v for k, v in m.items() if k not in ("person_id", "camera")} for m in matches]
