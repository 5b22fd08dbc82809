"""The HTTP front (``ServeConfig.front``): Ray's proxy actor or HAProxy (Ray's high-throughput mode)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from conftest import encode_image, wait_for, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_front_is_validated_on_load_naming_the_field(tmp_path):
    from reidloop.config import load_config
    from reidloop.config.loader import ConfigError
    from reidloop.config.serve import ServeConfig

    assert load_config(ServeConfig, str(ROOT / "tune_configs/serve.yaml"), ["front=haproxy"]).front == "haproxy"
    with pytest.raises(ConfigError, match=r"front.*'nginx'"):
        load_config(ServeConfig, str(ROOT / "tune_configs/serve.yaml"), ["front=nginx"])


def test_front_env_sets_only_what_is_missing(monkeypatch):
    from services.serve_front import HAPROXY_ENV, LOCAL_DRAIN_ENV, front_env, haproxy_folder, prepare_local_front

    assert front_env("ray", local=True, port=8000) == {}
    assert front_env("haproxy", local=False) == HAPROXY_ENV
    assert front_env("haproxy", local=True) == {**HAPROXY_ENV, **LOCAL_DRAIN_ENV}
    with pytest.raises(ValueError, match="front: 'h2o'"):
        front_env("h2o", local=True)
    # two local servers keep their HAProxy files apart (Ray's default is one /tmp/haproxy-serve for all)
    a, b = front_env("haproxy", local=True, port=8000), front_env("haproxy", local=True, port=8001)
    files = [k for k in a if k.startswith("RAY_SERVE_HAPROXY_")]
    assert len(files) == 5 and all(a[k].startswith(haproxy_folder(8000)) for k in files)
    assert all(a[k] != b[k] for k in files) and haproxy_folder(8000) != haproxy_folder(8001)
    for k in a:  # absent, and put back as they were after the test
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    drain = next(iter(LOCAL_DRAIN_ENV))
    monkeypatch.setenv(drain, "20")  # the user's value wins
    assert prepare_local_front("haproxy", 8000) == {k: v for k, v in a.items() if k != drain}
    assert os.environ[drain] == "20" and all(os.environ[k] == v for k, v in HAPROXY_ENV.items())
    assert prepare_local_front("ray", 8000) == {}


@pytest.mark.slow  # starts the session's Ray
def test_a_cluster_without_the_haproxy_variables_is_refused_naming_them(ray_session):
    from reidloop.config.loader import ConfigError
    from services.serve_front import FrontUnavailable, check_cluster_front

    check_cluster_front("ray", "the cluster at 10.0.0.9:6379")  # nothing needed
    with pytest.raises(FrontUnavailable) as info:  # the test session's Ray was started without them
        check_cluster_front("haproxy", "the cluster at 10.0.0.9:6379")
    assert isinstance(info.value, ConfigError)  # trainers.cli ends on it in one line
    assert "RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in str(info.value)
    assert "10.0.0.9:6379" in str(info.value) and "front: ray" in str(info.value)


def test_serve_deploy_builder_refuses_haproxy_where_its_ray_lacks_the_variables(monkeypatch):
    """``serve run`` / ``serve deploy`` build the app in a process of the Ray that will run it."""
    from services.serve_app import build_app
    from services.serve_front import HAPROXY_ENV, FrontUnavailable

    for k in HAPROXY_ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(FrontUnavailable, match="the Ray cluster running this app was not"):
        build_app({"config": "tune_configs/serve.yaml", "front": "haproxy"})
    for k, v in HAPROXY_ENV.items():
        monkeypatch.setenv(k, v)
    assert build_app({"config": "tune_configs/serve.yaml", "front": "haproxy"}) is not None


def _listener_pid(port: int) -> str | None:
    """The pid of the process listening on 127.0.0.1:``port`` (from /proc), or None."""
    want = f"0100007F:{port:04X}"
    inodes = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if line.split()[1] == want and line.split()[3] == "0A"}  # 0A: LISTEN
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
                if m and m.group(1) in inodes:
                    return proc.name
        except OSError:
            continue
    return None


def _listener(port: int) -> str | None:
    """The command name of the process listening on 127.0.0.1:``port``, or None."""
    pid = _listener_pid(port)
    try:
        return None if pid is None else (Path("/proc") / pid / "comm").read_text().strip()
    except OSError:  # it ended between the two reads: nothing listens now
        return None


def _listener_args(port: int) -> list[str]:
    """The command line of the process listening on 127.0.0.1:``port``."""
    return (Path("/proc") / _listener_pid(port) / "cmdline").read_bytes().decode().split("\0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from Linux's /proc")
def test_trainers_serve_with_front_haproxy_serves_through_haproxy_with_its_token(tmp_path):
    """The one command, in its own process with its own Ray: HAProxy holds the port and answers /embed."""
    import numpy as np

    from services.serve_front import haproxy_folder

    checkpoint = tmp_path / "model.pt"
    write_checkpoint(checkpoint, seed=0)
    port, token = _free_port(), "front-test-token-0123456789abcdef"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_SERVE_")}
    env.update(REIDLOOP_TOKEN=token, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainers.serve", "--config", "tune_configs/serve.yaml", "--set", f"port={port}",
         "--set", f"checkpoint={checkpoint}", "--set", "front=haproxy", "--set", "persist_gallery=false",
         "--set", "height=32", "--set", "width=16", "--set", "ingress.autoscaling=null",
         "--set", "ingress.num_cpus=0", "--set", "gallery.num_cpus=0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                ready.set()
        ready.set()  # ended without serving: the assertion below shows why

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(240) and proc.poll() is None, "".join(lines)
        assert any("front: haproxy" in line for line in lines), "".join(lines)
        assert _listener(port) == "haproxy"
        # its own files: Ray nests them per node, <folder>/<node id>/haproxy.cfg, and HAProxy runs on that one
        configs = list(Path(haproxy_folder(port)).glob("*/haproxy.cfg"))
        assert len(configs) == 1, sorted(map(str, Path(haproxy_folder(port)).rglob("*")))
        args = _listener_args(port)
        assert args[args.index("-f") + 1] == str(configs[0]), args
        image = encode_image((np.random.default_rng(0).random((32, 16, 3)) * 255).astype(np.uint8))
        url = f"http://127.0.0.1:{port}/embed"
        ok = requests.post(url, files={"image": ("a.png", image, "image/png")},
                           headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["embedding"]) > 0
        assert requests.post(url, files={"image": ("a.png", image, "image/png")}, timeout=60).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Serve and the local Ray shut down
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines)
    assert "Traceback" not in "".join(lines)
    wait_for(lambda: _listener(port) is None, "HAProxy to stop with its Ray")
