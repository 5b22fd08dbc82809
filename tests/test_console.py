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
ROUND = re.compile(r"round (\d+): \d+/\d+ answers  mAP \d+\.\d%  rank-1 \d+\.\d%  elapsed \d+m\d\ds$")  # (logged)


def run_job(tmp_path: Path, checkpoint: str, name: str, *flags: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m trainers.run_job`` (the Ray loop, Ray Train fine-tuning) on a tiny job, on its own new local Ray."""
    out = tmp_path / name
    job = tiny_job(out, checkpoint, tmp_path / "cache", **{
        "strategy": "random", "ray.env_workers": 1, "ray.train_workers": 1, "ray.cpus_per_train_worker": 0.5,
        "ray.storage_path": str(tmp_path / "storage")})
    config = tmp_path / f"{name}.yaml"
    save_config(job, config)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "REIDLOOP_VERBOSE")}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray_token"),
                # Ray Train's controller polls every 2 s by default; no preemption watcher for a tiny run
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"})
    done = subprocess.run([sys.executable, "-m", "trainers.run_job", "--config", str(config), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return done, out


@pytest.mark.slow
def test_the_main_job_prints_its_progress_and_outputs_and_ray_only_when_verbose(tmp_path, tiny_checkpoint):
    done, out = run_job(tmp_path, tiny_checkpoint, "quiet")
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(lines[-60:])
    noise = [line for line in lines if RAY_INTERNALS.search(line)]
    assert noise == [], "Ray's own output on the console:\n" + "\n".join(noise[:40])
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
