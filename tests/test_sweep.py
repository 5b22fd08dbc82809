"""Ray Tune sweeps of the active-learning loop on a real local Ray, on tiny synthetic data."""
from __future__ import annotations

import filecmp
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from reidloop.config import ConfigError, LoopJob, ModelConfig, load_config
from reidloop.config.sweep import load_sweep
from reidloop.models import build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = {  # test_active_loop's tiny_job with fewer queries and no fine-tuning epochs (sweep mechanics only)
    "data": {"height": 32, "width": 16,
             "synthetic": {"train_ids": 8, "test_ids": 4, "images_per_camera": 2, "height": 32, "width": 16}},
    "model": {"backbone": "resnet18"},
    "pretrain": {"epochs": 1, "ids_per_batch": 2, "images_per_id": 2},
    "dral": {"ns": 6, "kmax": 3, "kappa": 3, "batch_size": 8, "replay_size": 64},
    "finetune": {"lr": 1e-4, "every": 0.5, "epochs": 0, "queries_per_batch": 4},
    "eval": {"batch_size": 64}, "max_queries": 8,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A base LoopJob YAML on a cached tiny synthetic set, and an untrained resnet18 checkpoint."""
    import torch

    root = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(0)
    save_checkpoint(root / "init.pt", build_model(ModelConfig(backbone="resnet18"), num_classes=0))
    tree = json.loads(json.dumps(TINY))
    tree["data"]["root"] = str(root / "cache")
    (root / "base.yaml").write_text(yaml.safe_dump(tree))
    return root


def write_sweep(folder: Path, name: str, **fields) -> Path:
    tree = {"name": name, "storage_path": str(folder / "sweeps"), "base": "base.yaml",
            "space": {"dral.kmax": {"grid": [2, 3]}, "dral.thred": {"grid": [0.3, 0.5]}},
            "search": {"algorithm": "grid"}, "resources": {"cpu": 0.5, "threads": 1},
            "objective": {"metric": "mAP", "target_map": 0.05}} | fields
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def events(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "events.jsonl").read_text().splitlines()]


def test_tune_space_search_and_scheduler_follow_the_config(workdir):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from services.sweep import scheduler, search_algorithm, tune_space

    sweep = load_sweep(write_sweep(workdir, "pieces", search={"algorithm": "random", "seed": 1},
                                   space={"dral.kappa": {"randint": [2, 3]}, "finetune.lr": {"loguniform": [1e-5, 1e-3]},
                                          "dral.kmax": {"grid": [2, 3]}, "dral.metric": {"choice": ["kissme", "euclidean"]}},
                                   scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3}))
    space = tune_space(sweep.space)
    assert {space["dral.kappa"].sample() for _ in range(200)} == {2, 3}  # randint includes its high end
    assert all(1e-5 <= space["finetune.lr"].sample() <= 1e-3 for _ in range(50))
    assert space["dral.kmax"] == {"grid_search": [2, 3]}
    assert isinstance(search_algorithm(sweep), BasicVariantGenerator)
    asha = scheduler(sweep)
    assert isinstance(asha, ASHAScheduler) and asha._max_t == sweep.rounds == 2 and asha._reduction_factor == 3


@pytest.mark.slow
def test_sweep_of_four_trials_writes_table_plot_and_a_best_config_the_job_runs(ray_session, workdir, tmp_path):
    from trainers import run_job
    from services.sweep import run_sweep

    # no checkpoint in the base: the sweep pre-trains once and every trial starts from that CNN
    sweep = load_sweep(write_sweep(workdir, "four", max_concurrent_trials=4))
    out = run_sweep(sweep, verbose=0)

    table = pq.read_table(out.table).to_pylist()
    assert len(table) == 4 and len({r["trial_id"] for r in table}) == 4
    assert {(r["dral.kmax"], r["dral.thred"]) for r in table} == {(2, 0.3), (2, 0.5), (3, 0.3), (3, 0.5)}
    for r in table:
        assert r["status"] == "completed" and r["round"] == r["rounds_total"] == 2 and r["starts"] == 1
        assert 0 <= r["mAP"] <= 1 and 0 < r["answers"] <= 8 * r["dral.kmax"]  # budget n_queries · Kmax
        assert "answers_to_target" in r and "rank1" in r
        loop = Path(r["path"]) / "loop"
        assert filecmp.cmp(loop / "pretrained.pt", out.experiment_dir / "pretrained" / "pretrained.pt", shallow=False)
        assert [e["round"] for e in events(Path(r["path"])) if e["event"] == "round"] == [1, 2]
    assert out.csv.read_text().count("\n") == 5
    assert Image.open(out.plot).size[0] >= 800  # one panel per swept parameter

    best = max(table, key=lambda r: r["mAP"])
    assert out.best["mAP"] == best["mAP"]
    job = load_config(LoopJob, out.best_config)  # a complete LoopJob file, loaded unchanged
    assert (job.dral.kmax, job.dral.thred) == (best["dral.kmax"], best["dral.thred"])
    run_job.main(["--config", str(out.best_config), "--quiet", "--local"])  # the job entry point, file as is
    rounds = pq.read_table(Path(job.output_dir) / "rounds.parquet").to_pylist()
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[-1]["answers"] <= 8 * job.dral.kmax
    trial_rounds = pq.read_table(Path(best["path"]) / "loop" / "rounds.parquet").to_pylist()
    assert rounds[0]["mAP"] == trial_rounds[0]["mAP"]  # it starts from the sweep's shared pre-trained CNN


def terminated_trials(exp: Path) -> set[str]:
    """Trial ids the sweep's saved experiment state lists as finished (what Tuner.restore will see)."""
    from ray.tune import ExperimentAnalysis

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # trials without results yet
    try:
        trials = ExperimentAnalysis(str(exp)).trials
    except Exception:  # not written yet, or caught mid-write: poll again
        return set()
    return {t.trial_id for t in trials if t.status == "TERMINATED"}


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_to_completion_without_running_a_trial_twice(ray_session, workdir, tmp_path):
    from services.sweep import make_tuner, run_sweep

    # 1-round trials finish first while the 8-round ones are between rounds: the driver is SIGKILLed
    # once two trials are saved as finished and another has a round checkpoint
    path = write_sweep(workdir, "resumed", max_concurrent_trials=4,
                       overrides={"checkpoint": str(workdir / "init.pt"), "finetune.epochs": 1},
                       space={"dral.kmax": {"grid": [2, 3]}, "finetune.every": {"grid": [1.0, 0.125]}})
    exp = load_sweep(path).config.experiment_dir
    # Tune saves its experiment state every second here ("auto" can wait longer), so the finished trials
    # show up while the 8-round ones (each round a small fine-tune) are still between rounds
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "trainers.sweep", "--config", str(path), "--quiet"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    finished: set[str] = set()
    midway: list[Path] = []
    try:
        while len(finished) < 2 or not midway:
            assert time.monotonic() < deadline, "the sweep did not reach the interruption point in time"
            try:
                rc = driver.wait(timeout=0.5)
                pytest.fail(f"the sweep ended (rc={rc}) before it was interrupted: "
                            f"{(tmp_path / 'driver.log').read_text()[-2000:]}")
            except subprocess.TimeoutExpired:
                finished = terminated_trials(exp)
                midway = [d for d in exp.glob("trial_*") if d.name.removeprefix("trial_") not in finished
                          and (d / "events.jsonl").exists() and any(e["event"] == "round" for e in events(d))]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    sweep = load_sweep(path)
    with pytest.raises(ConfigError, match="--resume"):
        make_tuner(sweep, resume=False)
    with pytest.raises(ConfigError, match="space differs from the sweep being resumed"):
        make_tuner(load_sweep(path, ["space.dral.kmax={grid: [2, 4]}"]), resume=True)

    out = run_sweep(sweep, resume=True, verbose=0)

    table = pq.read_table(out.table).to_pylist()
    assert len(table) == 4 and len({r["trial_id"] for r in table}) == 4  # each trial once
    assert {(r["dral.kmax"], r["finetune.every"]) for r in table} == {(2, 1.0), (2, 0.125), (3, 1.0), (3, 0.125)}
    for r in table:
        assert r["status"] == "completed" and r["round"] == r["rounds_total"] == (1 if r["finetune.every"] == 1 else 8)
        log_ = events(Path(r["path"]))
        starts = [e for e in log_ if e["event"] == "start"]
        if r["trial_id"] in finished:  # finished before the interruption: not run again
            assert len(starts) == r["starts"] == 1
        rounds = [e["round"] for e in log_ if e["event"] == "round"]
        assert len(rounds) == len(set(rounds)) and set(rounds) <= set(range(1, r["rounds_total"] + 1))  # none twice
        loop_rounds = pq.read_table(Path(r["path"]) / "loop" / "rounds.parquet").column("round").to_pylist()
        assert loop_rounds == list(range(r["rounds_total"] + 1))
    for d in midway:  # killed between rounds: resumed after its last round, not from scratch
        starts = [e for e in events(d) if e["event"] == "start"]
        assert len(starts) == 2 and starts[1]["restored_round"] >= 1


def process_state(pid: int) -> str:
    """The kernel's state letter of ``pid`` ("T": stopped), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


@pytest.mark.slow
def test_a_sweep_killed_between_a_round_commit_and_its_report_resumes_exactly(ray_session, workdir, tmp_path):
    """The deterministic form of the interruption above, at its riskiest point: each trial is frozen just
    after its loop committed round 2 and before Tune recorded that round (``REIDLOOP_STOP_AT``), then the
    driver is SIGKILLed. Tune's last checkpoint of every trial is round 1 while its loop folder holds round 2:
    the resumed trials must restore nothing older, run no round twice, buy no answer twice, and report
    round 2 once."""
    from services.sweep import run_sweep

    path = write_sweep(workdir, "frozen", max_concurrent_trials=2,
                       overrides={"checkpoint": str(workdir / "init.pt")},
                       space={"dral.kmax": {"grid": [2, 3]}}, objective={"metric": "mAP"})
    exp = load_sweep(path).config.experiment_dir
    # the top-level rounds.parquet is published right after state.json commits a round (reidloop.crashpoints)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "REIDLOOP_STOP_AT": "rounds.parquet@2"}
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "trainers.sweep", "--config", str(path), "--quiet"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def frozen() -> list[int]:
        starts = [e["pid"] for d in exp.glob("trial_*") if (d / "events.jsonl").exists()
                  for e in events(d) if e["event"] == "start"]
        return starts if len(starts) == 2 and all(process_state(p) == "T" for p in starts) else []

    deadline = time.monotonic() + 300
    try:
        while not (pids := frozen()):
            assert driver.poll() is None, f"the sweep ended first: {(tmp_path / 'driver.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the trials did not reach round 2's commit in time"
            time.sleep(0.1)  # polling the trials' process state with a deadline
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    for d in exp.glob("trial_*"):  # what the interrupted run left: round 2 committed, round 1 reported
        assert json.loads((d / "loop" / "state.json").read_text())["completed_round"] == 2
        assert [e["round"] for e in events(d) if e["event"] == "round"] == [1]
    answers_before = {d.name: pq.read_table(d / "loop" / "answers").num_rows for d in exp.glob("trial_*")}

    out = run_sweep(load_sweep(path), resume=True, verbose=0)  # the frozen trials' actors are still being reaped

    table = pq.read_table(out.table).to_pylist()
    assert len(table) == 2
    for r in table:
        d = Path(r["path"])
        assert r["status"] == "completed" and r["round"] == r["rounds_total"] == 2
        log_ = events(d)
        starts = [e for e in log_ if e["event"] == "start"]
        assert len(starts) == 2 and starts[1]["restored_round"] == 2 and starts[0]["pid"] in pids
        assert [e["round"] for e in log_ if e["event"] == "round"] == [1]  # no round run again ...
        assert [e["round"] for e in log_ if e["event"] == "re-report"] == [2]  # ... round 2 reported once
        assert pq.read_table(d / "loop" / "rounds.parquet").column("round").to_pylist() == [0, 1, 2]
        assert pq.read_table(d / "loop" / "answers").num_rows == answers_before[d.name]  # no answer bought again
        assert not (d / "loop" / "writer.lease").exists()
