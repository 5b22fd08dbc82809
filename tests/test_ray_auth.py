"""services/ray_auth.py: the local Ray's token file (created 0600 on first use, reused, never printed,
never in the repository) and the environment a local ``ray.init`` gets (RAY_AUTH_MODE=token). No Ray is
started; the one test that needs ``import ray`` runs in a subprocess, so the session's own Ray config
(tests keep token authentication off) is untouched."""
from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services import ray_auth

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_use_creates_a_0600_token_in_rays_default_file_and_never_prints_it(home, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    path = ray_auth.ensure_token()
    assert path == home / ".ray" / "auth_token"
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # secrets.token_hex(32)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["auth_token"]  # no temporary file left
    out = capsys.readouterr()
    assert token not in out.out + out.err + caplog.text
    assert str(path) in caplog.text  # the path is logged, the token is not


def test_second_use_reuses_the_token(home):
    first = ray_auth.ensure_token()
    token, inode = first.read_text(), first.stat().st_ino
    assert ray_auth.ensure_token() == first
    assert first.read_text() == token and first.stat().st_ino == inode


def test_a_token_others_can_read_is_made_0600_and_kept(home, caplog):
    path = home / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text("0123abcd")
    path.chmod(0o644)  # as `ray get-auth-token --generate` leaves it under umask 022
    assert ray_auth.ensure_token() == path
    assert mode(path) == 0o600 and path.read_text() == "0123abcd"
    assert "made it 0600" in caplog.text and "0123abcd" not in caplog.text


def test_an_empty_file_gets_a_token(home):
    path = home / ".ray" / "auth_token"
    path.parent.mkdir()
    path.touch()
    assert len(ray_auth.ensure_token().read_text()) == 64 and mode(path) == 0o600


def test_ray_auth_token_path_is_honoured(home, monkeypatch):
    custom = home / "secrets" / "ray.token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(custom))
    assert ray_auth.token_path() == custom and ray_auth.ensure_token() == custom
    assert mode(custom) == 0o600 and not (home / ".ray").exists()


def test_a_token_inside_the_repository_is_refused(home):
    with pytest.raises(ValueError, match="must not live inside the repository"):
        ray_auth.ensure_token(REPO / "runs" / "auth_token")
    assert not (REPO / "runs" / "auth_token").exists()


SCRIPT = """
import json, os
import ray  # imported first, as the entry points do: Ray has read RAY_AUTH_MODE=disabled by now
from ray._raylet import AuthenticationMode, get_authentication_mode
from services import ray_auth
path = ray_auth.use_token_auth()
print(json.dumps({"path": str(path), "mode": os.environ["RAY_AUTH_MODE"],
                  "token_path": os.environ["RAY_AUTH_TOKEN_PATH"],
                  "ray_sees_token_mode": get_authentication_mode() == AuthenticationMode.TOKEN}))
"""


def test_use_token_auth_sets_the_environment_and_rays_config(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    path = tmp_path / ".ray" / "auth_token"
    assert got == {"path": str(path), "mode": "token", "token_path": str(path), "ray_sees_token_mode": True}
    assert "RAY_AUTH_MODE=disabled ignored" in proc.stderr
    assert path.read_text() not in proc.stdout + proc.stderr


def test_the_command_line_prints_the_path_only(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    proc = subprocess.run([sys.executable, "-m", "services.ray_auth"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / ".ray" / "auth_token"
    assert proc.stdout == f"{path}\n" and mode(path) == 0o600
    assert path.read_text() not in proc.stdout + proc.stderr
