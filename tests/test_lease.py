"""One writer per run folder (reidloop.lease), and a resumed run's config checked in one place.

The lease cases run on real files and real processes: a second writer fails at once naming the holder,
a dead holder's lease (gone process, stale heartbeat) is taken over, two contenders for one dead lease
cannot both win, and a writer whose lease was taken over learns it before its next commit. The end-to-end
cases hold a real writer frozen at a known write (``REIDLOOP_STOP_AT``, SIGSTOP) while a second `--local`
process, or a second driver on the test session's Ray, tries the same folder.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reidloop.config import ConfigError, LoopJob, load_config, save_config
from reidloop.config.resume import OPERATIONAL, check_resume
from reidloop.lease import LEASE_FILE, Holder, Lease, LeaseHeld, LeaseLost

REPO = Path(__file__).resolve().parents[1]


def stale(path: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def foreign_lease(folder: Path, host: str = "another-host", pid: int = 4242) -> Holder:
    """A lease file written by a process on another machine (its liveness only known by its heartbeat)."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = Holder(id="f" * 32, pid=pid, host=host, since=time.time() - 10)
    (folder / LEASE_FILE).write_text(json.dumps(holder.__dict__))
    return holder


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ the lease itself
def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    with Lease(tmp_path) as first:
        info = json.loads((tmp_path / LEASE_FILE).read_text())
        assert (info["pid"], info["id"]) == (os.getpid(), first.me.id)
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match=rf"being written by pid {os.getpid()} on \S+ since .*last heartbeat"):
            Lease(tmp_path).acquire()
        assert time.monotonic() - t0 < 1.0  # at once, not after a timeout
        first.verify()
    assert not (tmp_path / LEASE_FILE).exists()  # released
    Lease(tmp_path).acquire().release()  # and free again


def test_a_live_foreign_holder_is_not_taken_over(tmp_path):
    foreign_lease(tmp_path)
    with pytest.raises(LeaseHeld, match="pid 4242 on another-host"):
        Lease(tmp_path).acquire()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["host"] == "another-host"  # untouched


def test_a_stale_lease_of_another_host_is_taken_over(tmp_path):
    dead = foreign_lease(tmp_path)
    stale(tmp_path / LEASE_FILE, 3600)
    lease = Lease(tmp_path).acquire()
    try:
        assert lease.took_over == dead
        assert json.loads((tmp_path / LEASE_FILE).read_text())["id"] == lease.me.id
        lease.verify()
    finally:
        lease.release()


def test_a_lease_whose_process_is_gone_is_taken_over_at_once(tmp_path):
    import socket

    dead = foreign_lease(tmp_path, host=socket.gethostname(), pid=dead_pid())  # fresh heartbeat, dead process
    lease = Lease(tmp_path).acquire()
    assert lease.took_over == dead
    lease.release()


def test_two_contenders_for_one_dead_lease_cannot_both_win(tmp_path):
    dead = foreign_lease(tmp_path)
    stale(tmp_path / LEASE_FILE)
    slow = Lease(tmp_path)
    seen, beat = slow.read()  # the slow contender has read the dead lease ...
    assert seen == dead and slow.dead_because(seen, beat)
    fast = Lease(tmp_path).acquire()  # ... when another one takes it over
    try:
        assert slow._break(seen) is False  # the slow one finds a fresh lease where the dead one was, and puts it back
        fast.verify()
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
            slow.acquire()
    finally:
        fast.release()


def test_a_holder_whose_lease_was_taken_over_stops_before_its_commit(tmp_path):
    frozen = Lease(tmp_path, heartbeat_s=3600, stale_after_s=7200).acquire()  # no heartbeat for the test's duration: a frozen holder
    try:
        stale(tmp_path / LEASE_FILE, 120)
        thief = Lease(tmp_path, stale_after_s=60).acquire()  # alive, but silent for 120 s: taken for dead
        assert thief.took_over == frozen.me
        with pytest.raises(LeaseLost, match="no longer holds the writer lease"):
            frozen.verify()
        frozen.release()  # never removes the new holder's lease
        thief.verify()
        thief.release()
    finally:
        frozen.release()


def test_the_heartbeat_keeps_the_lease_fresh(tmp_path):
    with Lease(tmp_path, heartbeat_s=0.05, stale_after_s=1.0) as lease:
        stale(tmp_path / LEASE_FILE, 30)
        deadline = time.monotonic() + 10
        while time.time() - (tmp_path / LEASE_FILE).stat().st_mtime > 5:  # the next beat touches it
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.01)  # polling a condition with a deadline
        lease.verify()


def test_an_unreadable_lease_is_refused_with_the_file_named(tmp_path):
    (tmp_path / LEASE_FILE).write_text("{half")
    with pytest.raises(LeaseHeld, match=f"{LEASE_FILE}: unreadable writer lease"):
        Lease(tmp_path).acquire()


# ------------------------------------------------------------------ resuming with a changed config
def tiny(out, **over) -> LoopJob:
    sets = [f"output_dir={out}", "strategy=dral", "dral.kmax=3"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(LoopJob, None, sets)


def test_a_changed_config_is_refused_naming_every_changed_field(tmp_path):
    save_config(tiny(tmp_path), tmp_path / "config.yaml")
    check_resume(tmp_path / "config.yaml", tiny(tmp_path))  # the same: fine
    # the fine-tune's learning rate does not change the replayed questions, and is refused all the same
    with pytest.raises(ConfigError, match=r"changed config \(dral.kmax: 3 -> 5; finetune.lr: 5e-06 -> 0.001\)"):
        check_resume(tmp_path / "config.yaml", tiny(tmp_path, **{"finetune.lr": 1e-3, "dral.kmax": 5}))
    # where things are and how fast they run may change
    moved = tiny(tmp_path / "moved", **{"data.root": "/elsewhere", "eval.batch_size": 7, "ray.train_workers": 4})
    check_resume(tmp_path / "config.yaml", moved)
    assert {"output_dir", "data.root", "eval.batch_size"} <= OPERATIONAL


def test_an_operational_field_no_longer_valid_does_not_block_a_resume(tmp_path):
    save_config(tiny(tmp_path), tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text.replace("actor_max_restarts: 3", "actor_max_restarts: -1"))
    check_resume(tmp_path / "config.yaml", tiny(tmp_path))  # (-1 was the default before restarts were bounded)


def test_a_run_on_a_real_dataset_resumes_and_its_dataset_may_move(tmp_path):
    # data.root is required for every dataset but the synthetic one: the check must read it, not drop it
    first = tiny(tmp_path, **{"data.dataset": "cuhk01", "data.root": "/data/cuhk01"})
    save_config(first, tmp_path / "config.yaml")
    check_resume(tmp_path / "config.yaml", first)
    check_resume(tmp_path / "config.yaml", tiny(tmp_path, **{"data.dataset": "cuhk01", "data.root": "/mnt/cuhk01"}))
    with pytest.raises(ConfigError, match=r"changed config \(data.dataset: 'cuhk01' -> 'cuhk03'\)"):
        check_resume(tmp_path / "config.yaml", tiny(tmp_path, **{"data.dataset": "cuhk03", "data.root": "/data/c3"}))


def test_a_saved_config_that_no_longer_loads_is_refused_naming_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("dral: {no_such_key: 1}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: the resumed run's saved config cannot be read"):
        check_resume(tmp_path / "config.yaml", tiny(tmp_path))


# ------------------------------------------------------------------ two real writers on one folder
def freeze_at(cmd: list[str], point: str, env: dict, log: Path) -> subprocess.Popen:
    """Start ``cmd`` and return once it has stopped itself at ``point`` (holding the lease)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**env, "REIDLOOP_STOP_AT": f"{point}@1"}, stdout=f,
                                stderr=subprocess.STDOUT)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)  # blocks until the process is stopped (or ends)
    assert os.WIFSTOPPED(status), f"the writer ended before its first write: {log.read_text()[-3000:]}"
    return proc


def finish(proc: subprocess.Popen, log: Path) -> None:
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(600) == 0, log.read_text()[-3000:]


def assert_every_answer_kept(out: Path) -> None:
    from reidloop.answer_log import AnswerLog

    t = AnswerLog(out / "answers").read()
    pairs = list(zip(t.column("query").to_pylist(), t.column("candidate").to_pylist()))
    summary = json.loads((out / "summary.json").read_text())
    assert len(pairs) == summary["answers"] > 0
    assert len({(min(q, c), max(q, c)) for q, c in pairs}) == len(pairs)  # none twice
    assert not (out / LEASE_FILE).exists()


def write_job(tmp_path: Path, tiny_checkpoint: str, name: str, **over) -> tuple[Path, Path]:
    from conftest import tiny_job

    out = tmp_path / name
    job = tiny_job(out, tiny_checkpoint, tmp_path / "cache", strategy="random", **over)
    config = tmp_path / f"{name}.yaml"
    save_config(job, config)
    return config, out


@pytest.mark.slow
def test_a_second_local_process_on_a_run_folder_fails_naming_the_first(tmp_path, tiny_checkpoint):
    config, out = write_job(tmp_path, tiny_checkpoint, "two-local")
    cmd = [sys.executable, "-m", "trainers.run_job", "--config", str(config), "--quiet", "--local"]
    first = freeze_at(cmd, "config.yaml", dict(os.environ), tmp_path / "first.log")
    try:
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and f"being written by pid {first.pid} on " in last, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
    finally:
        finish(first, tmp_path / "first.log")
    assert_every_answer_kept(out)


@pytest.mark.slow
def test_a_second_driver_on_the_same_ray_fails_naming_the_first(ray_session, tmp_path, tiny_checkpoint):
    from services.ray_loop import RayActiveLearningLoop

    config, out = write_job(tmp_path, tiny_checkpoint, "two-drivers", **{
        "ray.env_workers": 1, "ray.train_workers": 1, "ray.cpus_per_train_worker": 0.5,
        "ray.storage_path": str(tmp_path / "storage"), "finetune.epochs": 0})
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "trainers.run_job", "--config", str(config), "--quiet"]
    first = freeze_at(cmd, "config.yaml", env, tmp_path / "first.log")
    try:
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match=f"being written by pid {first.pid} on "):
            RayActiveLearningLoop(load_config(LoopJob, config), progress=False).run()
        assert time.monotonic() - t0 < 30  # at once: not the labelling service's wait for a dead driver's actor
    finally:
        finish(first, tmp_path / "first.log")
    assert_every_answer_kept(out)


def test_unbounded_actor_restarts_are_refused():
    with pytest.raises(ConfigError, match=r"actor_max_restarts.*-1.*must be >= 0 \(unbounded restarts"):
        tiny("x", **{"ray.actor_max_restarts": -1})
