"""What a newcomer sees (issue 19): the main job's console (our progress lines, its outputs and the command that
serves them, none of Ray's own output unless --verbose) and the `curl` that `make serve` prints.

The job runs for real as a subprocess on a fresh local Ray (not the test session's: RAY_ADDRESS unset), with
Ray Train fine-tuning; the curl runs for real against a local HTTP server that records what it sends, which
then goes through the service's own request parsing and image decoding (Serve itself is not started).
"""
from __future__ import annotations

import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reidloop.config import save_config
from reidloop.config.serve import ServeConfig
from conftest import tiny_job

REPO = Path(__file__).resolve().parents[1]
# Lines Ray, Ray Train or Serve write themselves: a worker's or actor's output forwarded to the driver
# ("(TrainController pid=123) ..."), Ray's log format ("INFO worker.py:1234 -- ..."), the placement-group
# cleaner's warnings.
RAY_INTERNALS = re.compile(r"Ray Train Controller|PlacementGroupCleaner|worker\.py:\d+|INFO \S+\.py:\d+ -- |"
                           r"pid=\d+[,)]|Found multiple active Ray instances")
WORKER_LINE = re.compile(r" (?:WARNING|INFO) (?:reidloop|services)\S*: \((?:embedding shard|fine-tune worker|"
                         r"pre-training worker) \d+\) ")
ROUND = re.compile(r"round (\d+): \d+/\d+ answers  mAP \d+\.\d%  rank-1 \d+\.\d%  elapsed \d+m\d\ds$")  # (logged)


def run_job(tmp_path: Path, checkpoint: str, name: str, *flags: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m trainers.run_job`` (the Ray loop, Ray Train fine-tuning) on a tiny job, on its own new local Ray."""
    out = tmp_path / name
    job = tiny_job(out, checkpoint, tmp_path / "cache", **{
        "strategy": "random", "ray.env_workers": 1, "ray.train_workers": 1, "ray.cpus_per_train_worker": 0.5,
        "ray.storage_path": str(tmp_path / "storage")})
    config = tmp_path / f"{name}.yaml"
    save_config(job, config)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "REIDLOOP_VERBOSE", "REIDLOOP_PROGRESS")}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray_token"),
                # Ray Train's controller polls every 2 s by default; no preemption watcher for a tiny run
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"})
    done = subprocess.run([sys.executable, "-m", "trainers.run_job", "--config", str(config), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return done, out


@pytest.mark.slow
def test_the_main_job_prints_its_progress_and_outputs_and_ray_only_when_verbose(tmp_path, tiny_checkpoint):
    done, out = run_job(tmp_path, tiny_checkpoint, "quiet", "--progress")  # bars forced: stderr is no terminal
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(lines[-60:])
    noise = [line for line in lines if RAY_INTERNALS.search(line)]
    assert noise == [], "Ray's own output on the console:\n" + "\n".join(noise[:40])
    # the bars of the work done in Ray tasks and Ray Train workers, drawn by the driver (services/progress.py)
    drawn = bars(done.stderr)
    assert {"pool", "query", "gallery", "round 1 queries", "round 1 fine-tune", "round 2 fine-tune"} <= drawn, drawn
    assert re.search(r"round 2 fine-tune: 100%\|[^\r\n]*\| (\d+)/\1 \[", done.stderr), "the fine-tune bar never ends"
    # our log lines made in workers (e.g. the autocast fallback), forwarded by the driver, each once
    forwarded = [line.split(") ", 1)[1] for line in lines if WORKER_LINE.search(line)]
    assert len(forwarded) == len(set(forwarded)), forwarded
    rounds = [int(m.group(1)) for m in map(ROUND.search, lines) if m]  # one line a round (the loop's log)
    assert rounds == [1, 2], "\n".join(lines)
    stdout = done.stdout.splitlines()
    model = out / "model.pt"
    for label, path in (("summary:", out / "summary.json"), ("curve:", out / "curve.png"), ("model:", model)):
        assert f"{label:<9} {path}" in stdout, done.stdout
        assert path.exists()
    assert f"serve it: make serve CHECKPOINT={model} ARGS='--set height=32 --set width=16'" in stdout
    assert any(re.fullmatch(r"      or: \S*python\S* -m trainers\.serve --config tune_configs/serve\.yaml "
                            rf"--set checkpoint={re.escape(str(model))} --set height=32 --set width=16", line)
               for line in stdout), done.stdout

    loud, _ = run_job(tmp_path, tiny_checkpoint, "verbose", "--verbose")
    lines = (loud.stdout + loud.stderr).splitlines()
    assert loud.returncode == 0, "\n".join(lines[-60:])
    assert any(RAY_INTERNALS.search(line) for line in lines), "--verbose showed nothing of Ray:\n" + "\n".join(lines)
    assert sum(bool(ROUND.search(line)) for line in lines) == 2
    assert bars(loud.stderr) == set()  # not forced, and stderr is no terminal: no bar in a log


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records one POST (path, headers, body) and answers 200."""

    seen: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.seen.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_the_printed_curl_posts_an_image_of_the_run_that_embed_accepts(tmp_path):
    from reidloop.data.synthetic import synthetic_splits
    from reidloop.serving import InputTransform, parse_upload
    from services.serve_app import app
    from trainers.serve import curl_command, example_image

    # a run folder as the main job leaves it: its config.yaml names the data it learnt from
    job = tiny_job(tmp_path / "run", "", tmp_path / "cache")
    save_config(job, tmp_path / "run" / "config.yaml")
    synthetic_splits(job.data.synthetic, str(tmp_path / "cache"))
    image = example_image(str(tmp_path / "run" / "model.pt"))
    assert image is not None and Path(image).parent.name == "query"

    cfg = ServeConfig(checkpoint=str(tmp_path / "run" / "model.pt"), height=32, width=16)
    command = curl_command(cfg, image)
    argv = shlex.split(command)
    assert argv[0] == "curl" and argv[-1] == "http://127.0.0.1:8000/embed", command
    body_schema = app.openapi()["paths"]["/embed"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert argv[1:-1] == ["-s", "-F", f"image=@{image}"] and body_schema["required"] == ["image"]

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv[-1] = argv[-1].replace(":8000/", f":{server.server_port}/")
        subprocess.run(argv, check=True, timeout=60, capture_output=True)
    finally:
        server.shutdown()
    path, headers, body = Recorder.seen[-1]
    assert path == "/embed"
    upload = parse_upload(body, headers.get("Content-Type"), {})  # what ReidApi.embed does with the request
    ((_, data),) = upload.files
    assert data == Path(image).read_bytes()
    assert tuple(InputTransform(cfg.height, cfg.width)(data, max_pixels=cfg.max_pixels, what="image").shape)[-2:] \
        == (32, 16)


def test_a_taken_port_is_refused_in_one_line_before_ray_starts():
    import socket

    from trainers.cli import PortTaken, exit_message
    from trainers.serve import check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortTaken) as info:
            check_port_free("127.0.0.1", port)
    assert exit_message(info.value) == (f"error: port {port} on 127.0.0.1 is taken (another server, or a `make serve` "
                                        f"still running?): stop it, or serve on another port with --set port={port + 1}")
    check_port_free("127.0.0.1", port)  # free again once closed


def test_expected_errors_end_in_one_line_naming_what_to_do(monkeypatch, tmp_path):
    import errno

    from ray.exceptions import RayTaskError

    from reidloop.data.records import DatasetError
    from trainers.cli import exit_message

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    missing = DatasetError("/data/market: dataset root does not exist")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.pt"))
    cases = {
        missing: "error: /data/market: dataset root does not exist (check data.dataset and data.root in the config, "
                 "or pass --set data.root=PATH)",
        full: f"error: out of disk space writing {tmp_path / 'model.pt'}: free some space (or point output_dir / "
              "ray.storage_path elsewhere)",
        ConnectionError("Could not find any running Ray instance."):
            "error: cannot reach the Ray cluster (Could not find any running Ray instance.); RAY_ADDRESS=10.0.0.9:6379: "
            "unset it to start a local Ray",
    }
    for exc, line in cases.items():
        assert exit_message(exc) == line
    # raised in a Ray task: the task's error, without the remote traceback Ray's wrapper carries
    remote = RayTaskError("embed", "Traceback (most recent call last):\n  ...", full).as_instanceof_cause()
    assert exit_message(remote) == cases[full]
    assert exit_message(RuntimeError("a bug")) is None  # anything else keeps its traceback


# ------------------------------------------------------------------ progress bars (issue 19, Build 2)
BAR = re.compile(r"(?:^|\r)([^\r\n:]+?): +\d+%\|", re.M)  # a tqdm frame: "<desc>:  40%|████      | 2/5 [...]"


def bars(stderr: str) -> set[str]:
    """The descriptions of the tqdm bars drawn on ``stderr``."""
    return {m.group(1).strip() for m in BAR.finditer(stderr)}


def job_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "REIDLOOP_VERBOSE", "REIDLOOP_PROGRESS", "TQDM_DISABLE")}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray_token"), **extra})
    return env


@pytest.mark.slow
def test_the_in_process_job_draws_embedding_and_fine_tune_bars_when_forced(tmp_path, tiny_checkpoint):
    out = tmp_path / "local"
    config = tmp_path / "local.yaml"
    save_config(tiny_job(out, tiny_checkpoint, tmp_path / "cache", strategy="random"), config)
    done = subprocess.run([sys.executable, "-m", "trainers.run_job", "--config", str(config), "--local", "--progress"],
                          cwd=REPO, env=job_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    drawn = bars(done.stderr)
    assert {"pool", "query", "gallery", "round 1 queries", "round 1 fine-tune", "round 2 fine-tune"} <= drawn, drawn
    assert re.search(r"round 1 fine-tune: 100%\|[^\r\n]*\| (\d+)/\1 \[", done.stderr), "the fine-tune bar never ends"
    assert not BAR.search(done.stdout)  # bars go to stderr only


def test_bars_are_drawn_on_a_terminal_or_when_forced_never_into_a_file(monkeypatch, tmp_path):
    import io

    from reidloop.progress import PROGRESS_ENV, bar, shown

    monkeypatch.setenv(PROGRESS_ENV, "")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with open(tmp_path / "log", "w") as log_file:
        monkeypatch.setattr(sys, "stderr", log_file)
        assert not shown() and bar(3, "pool").disable  # a log file: no bar
        assert bar(3, "pool", enabled=False) is None  # --quiet
        monkeypatch.setenv(PROGRESS_ENV, "1")  # --progress
        assert shown() and not bar(3, "pool").disable
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert not shown()


def test_the_progress_flag_forces_bars_and_quiet_wins(monkeypatch):
    from reidloop.progress import PROGRESS_ENV, forced
    from trainers.cli import parser, progress

    for flags, on in ((["--progress"], True), (["--progress", "--quiet"], False), ([], False)):
        monkeypatch.setenv(PROGRESS_ENV, "")  # (restored after the test)
        progress(parser("").parse_args(flags))
        assert forced() is on, flags


@pytest.mark.slow
def test_our_log_lines_and_progress_in_a_ray_worker_reach_the_driver(ray_session, caplog):
    """The session's Ray has log_to_driver=False, as the entry points start it: a worker's output would be lost."""
    import logging

    import ray

    from services.progress import Relay

    @ray.remote(num_cpus=0)
    def work(reporter, steps):
        with reporter.forwarding("test worker"):
            for step in range(1, steps + 1):
                reporter.update("shard", step, steps, wait=step == steps)
            logging.getLogger("reidloop.engine.precision").warning("bf16 autocast computes ReidNet wrongly: using fp32")
            logging.getLogger("ray.train").warning("Ray's own line: not forwarded")
        return steps

    relay = Relay()
    seen: dict = {}
    try:
        with caplog.at_level(logging.INFO):
            with relay.watching("pool", "embedding", total=4, progress=False) as reporter:
                assert ray.get(work.remote(reporter, 4), timeout=120) == 4
            seen = ray.get(relay.handle.drain.remote(reporter.topic), timeout=60)
    finally:
        relay.close()
    forwarded = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if "test worker" in r.getMessage()]
    assert forwarded == [("reidloop.engine.precision", logging.WARNING,
                          "(test worker) bf16 autocast computes ReidNet wrongly: using fp32")]
    assert seen == ({}, [])  # read by the driver when the block ended, and forgotten


# ------------------------------------------------------------------ a cluster that does not answer (Build 5)
def closed_port() -> tuple:
    """A bound, not listening TCP socket on 127.0.0.1 (a connection to it is refused) and its port."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def test_an_address_nothing_answers_at_is_refused_at_once(monkeypatch):
    import time

    from services.ray_start import JOIN_WAITS, bound_join_waits, check_reachable

    sock, port = closed_port()
    with sock:
        for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
            start = time.monotonic()
            with pytest.raises(ConnectionError, match=rf"nothing answers at {re.escape(address)}: Connection refused"):
                check_reachable(address)
            assert time.monotonic() - start < 2
    check_reachable("auto")  # no port: Ray finds the cluster itself

    for name in JOIN_WAITS:  # (set, so that the test's changes are undone)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert bound_join_waits(None) == {}  # a local Ray: its GCS start is not to be cut short
    kept = "RAY_py_gcs_connect_timeout_s"
    monkeypatch.setenv(kept, "20")  # set by the user: kept
    assert bound_join_waits("10.0.0.9:6379") == {k: v for k, v in JOIN_WAITS.items() if k != kept}
    assert os.environ[kept] == "20"


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_the_main_job_on_an_unreachable_cluster_ends_in_one_line_within_seconds(tmp_path, scheme):
    import time

    config = tmp_path / "job.yaml"
    save_config(tiny_job(tmp_path / "out", "", tmp_path / "cache"), config)
    sock, port = closed_port()
    address = f"{scheme}127.0.0.1:{port}"
    with sock:
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "trainers.run_job", "--config", str(config)], cwd=REPO,
                              env={**job_env(tmp_path), "RAY_ADDRESS": address}, capture_output=True, text=True,
                              timeout=120)
        seconds = time.monotonic() - start
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1] == (
        f"error: cannot reach the Ray cluster (nothing answers at {address}: Connection refused); "
        f"RAY_ADDRESS={address}: unset it to start a local Ray")
    assert "Traceback" not in done.stderr, done.stderr
    assert seconds < 60, f"{seconds:.0f} s to give up"  # (the Python and torch imports are most of it)
