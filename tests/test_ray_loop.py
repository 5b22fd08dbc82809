"""The loop on a real local Ray: actors, lock-step env workers, Ray Train, and runs that survive kills.

Everything runs for real (one Ray per session, `ray_session` of conftest): tiny synthetic data
(32×16 images, an untrained resnet18, 12 queries in 2 rounds). The runs that check failures keep
fine-tuning off (`finetune.epochs=0`) so they stay fast; the end-to-end run fine-tunes through
`TorchTrainer(num_workers=2)`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reidloop.active.loop import ActiveLearningLoop
from reidloop.answer_log import AnswerLog
from reidloop.config import save_config
from reidloop.models import load_checkpoint
from reidloop.pair_knowledge import PairKnowledge
from conftest import answered, implied_when_asked, tiny_job, wait_for

pytestmark = pytest.mark.slow

# Ray Train's controller polls its workers every 2 s by default (fine for real runs, slow for tiny ones)
# and starts a preemption watcher actor per run; the driver's environment reaches the controller.
FAST_TRAIN = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@pytest.fixture(scope="module", autouse=True)
def fast_ray_train():
    saved = {k: os.environ.get(k) for k in FAST_TRAIN}
    os.environ.update(FAST_TRAIN)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("rayloop")


def ray_job(work: Path, checkpoint: str, name: str, **over):
    """tiny_job on Ray: 2 env workers, 2 Train workers of half a CPU (2-CPU session), no fine-tuning."""
    sets = {"ray.env_workers": 2, "ray.train_workers": 2, "ray.cpus_per_train_worker": 0.5,
            "ray.storage_path": str(work / "storage"), "finetune.epochs": 0, **over}
    return tiny_job(work / name, checkpoint, work / "cache", **sets)


def log_rows(out: Path) -> list[tuple[int, int, int]]:
    t = AnswerLog(out / "answers").read()
    return list(zip(*(t.column(c).to_pylist() for c in ("query", "candidate", "answer"))))


def logged(out: Path) -> int:
    """Answers on disk now (a part deleted by a concurrent compaction is skipped)."""
    n = 0
    for part in (out / "answers").glob("part-*.parquet"):
        try:
            n += pq.ParquetFile(part).metadata.num_rows
        except (OSError, pa.ArrowException):
            pass
    return n


def pid_of(path: str) -> int:
    return int(re.match(r"(\d+)_", Path(path).name).group(1))


@pytest.fixture(scope="module")
def reference(ray_session, work, tiny_checkpoint):
    """An uninterrupted run (2 env workers) that the killed runs must reproduce."""
    from services.ray_loop import RayActiveLearningLoop

    job = ray_job(work, tiny_checkpoint, "reference")
    result = RayActiveLearningLoop(job, progress=False).run()
    return job, result, log_rows(work / "reference")


def test_loop_through_actors_and_ray_train(ray_session, work, tiny_checkpoint):
    from services.ray_loop import RayActiveLearningLoop

    job = ray_job(work, tiny_checkpoint, "e2e", **{"finetune.epochs": 1, "oracle.budget": 24})
    result = RayActiveLearningLoop(job, progress=False).run()
    out = work / "e2e"

    # what crossed from the labelling service: each answer logged once, correct, within the budget
    table = AnswerLog(out / "answers").read()
    assert table.column("question_id").to_pylist() == list(range(table.num_rows))
    pairs = {(min(q, c), max(q, c)) for q, c, _ in log_rows(out)}
    assert len(pairs) == table.num_rows == result.answers == 24  # the budget binds inside round 2
    truth = [1 if pid_of(a) == pid_of(b) else -1
             for a, b in zip(table.column("query_path").to_pylist(), table.column("candidate_path").to_pylist())]
    assert table.column("answer").to_pylist() == truth
    assert set(table.column("strategy").to_pylist()) == {"dral"}
    pool = pq.read_table(out / "pool.parquet")  # the indices of the log refer to it
    paths = pool.column("path").to_pylist()
    assert [paths[i] for i in table.column("query").to_pylist()] == table.column("query_path").to_pylist()
    assert np.bincount(table.column("query").to_numpy()).max() <= job.dral.kmax
    assert sorted(set(table.column("round").to_pylist())) == [1, 2]

    # what crossed from the agent: it learnt from every answered question
    strategy = torch.load(out / "strategy.pt", weights_only=True)
    assert strategy["steps"] >= result.answers and strategy["agent"]["replay"]["size"] == strategy["steps"]

    # metrics per round, round checkpoints, and Ray Train's checkpoints of each fine-tune
    rows = pq.read_table(out / "rounds.parquet").to_pylist()
    assert [r["round"] for r in rows] == [0, 1, 2] and [r["answers"] for r in rows] == [0, 18, 24]
    assert all(0.0 <= r["mAP"] <= 1.0 for r in rows) and all(r["finetune_seconds"] > 0 for r in rows[1:])
    # the budget ran out in round 2's 8th query (counted as browsed, as in the in-process loop: one engine)
    assert json.loads((out / "state.json").read_text()) == {"completed_round": 2, "answers": 24, "next_query": 8,
                                                            "checkpoint": "checkpoints/round-0002"}
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["round-0002"]  # the previous round's is pruned
    tag = f"e2e-{(out / 'ray_run_id').read_text()}"
    for r in (1, 2):
        ckpts = sorted((work / "storage" / f"{tag}-round{r}-finetune").glob("checkpoint_*/state.pt"))
        assert ckpts, f"no Ray Train checkpoint for round {r}"
        assert torch.load(ckpts[-1], weights_only=True)["epoch"] == 0
    trained, meta = load_checkpoint(out / "model.pt")
    init, _ = load_checkpoint(tiny_checkpoint)
    assert meta["round"] == 2 and not torch.equal(trained.state_dict()["backbone.conv1.weight"],
                                                  init.state_dict()["backbone.conv1.weight"])


def test_killed_labelling_service_restarts_and_the_run_asks_the_same(ray_session, work, tiny_checkpoint,
                                                                     reference):
    import ray

    from services.labelling_service import NAMESPACE, service_name
    from services.ray_loop import RayActiveLearningLoop

    job = ray_job(work, tiny_checkpoint, "kill-service")
    out = work / "kill-service"
    seen: dict = {}

    def killer():
        try:
            wait_for(lambda: logged(out) >= 5, "5 logged answers", 300)
            handle = ray.get_actor(service_name(str((out / "answers").resolve())), namespace=NAMESPACE)
            seen["before"] = ray.get(handle.pid.remote())
            ray.kill(handle, no_restart=False)
            seen["after"] = wait_for(lambda: (pid := ray.get(handle.pid.remote())) != seen["before"] and pid,
                                     "the restarted labelling service", 120)
        except BaseException as exc:  # reported by the main thread
            seen["error"] = exc

    thread = threading.Thread(target=killer)
    thread.start()
    result = RayActiveLearningLoop(job, progress=False).run()
    thread.join(60)
    assert "error" not in seen, seen.get("error")
    assert seen["before"] != seen["after"]  # the actor really died and was restarted
    rows = log_rows(out)
    assert len({(min(q, c), max(q, c)) for q, c, _ in rows}) == len(rows) == result.answers
    assert sorted(rows) == sorted(reference[2])


def test_killed_driver_resumes_and_asks_the_same(ray_session, work, tiny_checkpoint, reference):
    import ray

    job = ray_job(work, tiny_checkpoint, "kill-driver")
    out = work / "kill-driver"
    config = work / "kill-driver.yaml"
    save_config(job, config)
    cmd = [sys.executable, "-m", "trainers.run_job", "--config", str(config), "--quiet",
           "--set", f"ray.address={ray.get_runtime_context().gcs_address}"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with open(work / "kill-driver.log", "w") as stderr:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for(lambda: logged(out) >= 5 or first.poll() is not None, "5 logged answers", 300)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(60)
    assert first.returncode == -signal.SIGKILL, (work / "kill-driver.log").read_text()[-3000:]
    killed_at = len(log_rows(out))
    assert 5 <= killed_at < len(reference[2])
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = log_rows(out)
    assert len({(min(q, c), max(q, c)) for q, c, _ in rows}) == len(rows)
    assert sorted(rows) == sorted(reference[2])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers"] == reference[1].answers


TRACE = ("answers", "episodes", "questions", "same_answers", "episodes_stopped")


@pytest.mark.parametrize("name,over", [
    ("dral", {"strategy": "dral"}),
    # the paths the Ray loop once refused: rounds cut by answers, the links reward, the agent's stop
    ("stop", {"strategy": "dral", "dral.reward": "links", "dral.stop": "true", "dral.stop_pace_rate": 2.0,
              "infer_answers": "true", "rounds": "answers", "oracle.budget": 10}),
])
def test_one_env_worker_asks_exactly_what_the_in_process_loop_asks(ray_session, work, tiny_checkpoint, name, over):
    """The in-process loop and the Ray loop run one episode engine: the same questions, in the same order."""
    from services.ray_loop import RayActiveLearningLoop

    over = {"ray.env_workers": 1, **over}
    local = ActiveLearningLoop(ray_job(work, tiny_checkpoint, f"w1-local-{name}", **over), progress=False).run()
    remote = RayActiveLearningLoop(ray_job(work, tiny_checkpoint, f"w1-ray-{name}", **over), progress=False).run()
    assert log_rows(work / f"w1-ray-{name}") == log_rows(work / f"w1-local-{name}")  # same questions, same order
    assert remote.answers == local.answers > 0
    assert implied_when_asked(work / f"w1-ray-{name}") == 0  # settled pairs were revealed, not asked
    for a, b in zip(local.rounds, remote.rounds):
        assert a["mAP"] == pytest.approx(b["mAP"]) and a["answers"] == b["answers"]
    for a, b in zip(local.rounds[1:], remote.rounds[1:]):  # (round 0, the pre-trained model, asks nothing)
        assert {k: a[k] for k in TRACE} == {k: b[k] for k in TRACE}  # the same episodes, traced alike


def test_people_answer_a_ray_run_exactly_as_the_simulated_oracle_does(ray_session, work, tiny_checkpoint):
    """oracle.mode: human on Ray: the desk and the page live in the driver, the agent and env workers in actors;
    a truthful annotator's answers reach the agent as the labelling service's do."""
    from annotators import Annotator
    from services.ray_loop import RayActiveLearningLoop

    # two episodes in flight on two env workers; the in-process loop asks the same (the test above)
    over = {"ray.env_workers": 2, "episodes_in_flight": 2, "strategy": "dral"}
    simulated = ActiveLearningLoop(ray_job(work, tiny_checkpoint, "people-sim", **over), progress=False).run()
    people = []

    def on_board(board):
        people.append(Annotator(board, lambda i: pid_of(str(board.image_path(i))), name="bob"))
        people[-1].start()

    job = ray_job(work, tiny_checkpoint, "people", **over, **{"oracle.mode": "human"})
    try:
        human = RayActiveLearningLoop(job, progress=False, on_board=on_board).run()
    finally:
        for p in people:
            p.stop()
    assert log_rows(work / "people") == log_rows(work / "people-sim")  # the same questions, in the same order
    assert human.answers == simulated.answers == people[0].answers > 0
    assert [r["mAP"] for r in human.rounds] == pytest.approx([r["mAP"] for r in simulated.rounds])
    assert set(AnswerLog(work / "people" / "answers").read().column("annotator").to_pylist()) == {"bob"}


def test_episodes_in_flight_decide_the_questions_not_the_workers(ray_session, work, tiny_checkpoint, reference):
    """Two episodes in flight ask the same questions in one process, on one env worker and on two (the reference)."""
    from services.ray_loop import RayActiveLearningLoop

    ActiveLearningLoop(ray_job(work, tiny_checkpoint, "w2-local", episodes_in_flight=2), progress=False).run()
    RayActiveLearningLoop(ray_job(work, tiny_checkpoint, "w2-on-1", episodes_in_flight=2,
                                  **{"ray.env_workers": 1}), progress=False).run()
    assert reference[0].ray.env_workers == 2 and reference[0].episodes_in_flight is None
    assert log_rows(work / "w2-local") == log_rows(work / "w2-on-1") == reference[2]


def test_killed_agent_and_env_worker_are_recovered_by_replaying_the_round(ray_session, work, tiny_checkpoint,
                                                                          reference):
    import ray

    from services.ray_loop import RayActiveLearningLoop

    class KillingLoop(RayActiveLearningLoop):
        """Just before the 4th lock-step, kills the agent (round 1) or an env worker (round 2); Ray restarts
        the actor empty, and the loop must notice and replay the round."""

        def ask_round(self, round_, queries, features, metric, strategy, oracle, knowledge=None):
            step, calls = strategy.step, [0]

            def step_after_kill(*args):
                calls[0] += 1
                if calls[0] == 4:
                    ray.kill(strategy.handle if round_ == 1 else self.workers[1], no_restart=False)
                return step(*args)

            strategy.step = step_after_kill
            try:
                return super().ask_round(round_, queries, features, metric, strategy, oracle, knowledge)
            finally:
                strategy.step = step

    loop = KillingLoop(ray_job(work, tiny_checkpoint, "kill-actors"), progress=False)
    result = loop.run()
    assert [r.split(":")[0] for r in loop.recoveries] == ["round 1", "round 2"], loop.recoveries
    assert sorted(log_rows(work / "kill-actors")) == sorted(reference[2])
    assert result.answers == reference[1].answers and result.replayed_answers == 0


def test_agent_actor_warm_starts_exactly_like_the_core(ray_session):
    """dral.warmstart_passes on Ray runs in the agent actor: same transitions, same learnt agent."""
    import ray

    from reidloop.active.warmstart import warm_start
    from reidloop.strategies import build_strategy
    from services.agent_service import AgentService, RemoteStrategy
    from test_warmstart import CFG, labelled_set

    features, pids = labelled_set()
    handle = AgentService.remote("dral", CFG, 3)
    try:
        remote = RemoteStrategy(handle)
        assert remote.warm_starts
        stats = remote.warm_start(features, pids, CFG, 1, 0.5, 1)
        local = build_strategy("dral", CFG, seed=3)
        expected = warm_start(local, features, pids, CFG, passes=1, every=0.5, seed=1).to_dict()
        assert {k: v for k, v in stats.items() if k != "seconds"} == \
            {k: v for k, v in expected.items() if k != "seconds"}
        online = remote.state_dict()["agent"]["online"]
        assert all(torch.equal(online[k], v) for k, v in local.agent.online.state_dict().items())
    finally:
        ray.kill(handle, no_restart=True)


@pytest.mark.slow
def test_an_actor_that_crashes_on_every_call_ends_the_job_naming_it(ray_session, work, tiny_checkpoint):
    """The labelling service dies at its first answer-log write on every (re)start: the job must end, with
    one line naming the service and its last error, once its restarts are spent — not wait forever."""
    import ray

    job = ray_job(work, tiny_checkpoint, "always-crashing", **{"ray.actor_max_restarts": 1, "strategy": "random"})
    config = work / "always-crashing.yaml"
    save_config(job, config)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "REIDLOOP_CRASH_AT": "answers/part-N.parquet@1"}
    cmd = [sys.executable, "-m", "trainers.run_job", "--config", str(config), "--quiet",
           "--set", f"ray.address={ray.get_runtime_context().gcs_address}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # bounded: a hang fails here
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the labelling service") and "ray.actor_max_restarts=1" in last, done.stderr[-3000:]
    assert "its last error:" in last
    assert logged(work / "always-crashing") == 0  # every crash came before its part was published


def test_adaptation_runs_through_ray_train_like_the_core(ray_session, work, tiny_checkpoint):
    """``adapt`` on Ray: a Ray Train run (one worker) adapts the model before round 0, with the epochs'
    reports of the core's adapt_unsupervised, and the in-process loop's adaptation gives the same clusters;
    ``adapt.round_epochs`` re-adapts through Ray Train too, under the answers so far as constraints."""
    from services.ray_loop import RayActiveLearningLoop

    adapt = {"adapt.epochs": 1, "adapt.eps": 0.5, "adapt.min_samples": 2, "adapt.k1": 4, "adapt.k2": 2,
             "adapt.ids_per_batch": 2, "adapt.images_per_id": 2, "strategy": "random", "oracle.budget": 6}
    RayActiveLearningLoop(ray_job(work, tiny_checkpoint, "adapt-ray", **adapt, **{"adapt.round_epochs": 1}),
                          progress=False).run()
    rounds = json.loads((work / "adapt-ray" / "readapt.json").read_text())
    q, c, y = answered(work / "adapt-ray")
    last = rounds[max(rounds, key=int)]
    must, cannot = PairKnowledge(max(q + c) + 1, zip(q, c, y)).constraints()
    assert len(last["epochs"]) == 1 and (last["must_link"], last["cannot_link"]) == (len(must), len(cannot))
    ActiveLearningLoop(tiny_job(work / "adapt-local", tiny_checkpoint, work / "cache", **adapt), progress=False).run()
    remote = json.loads((work / "adapt-ray" / "adapt.json").read_text())["epochs"]
    local = json.loads((work / "adapt-local" / "adapt.json").read_text())["epochs"]
    assert len(remote) == 1 and remote[0]["steps"] > 0
    # epoch 0 clusters the source model's features: the same in the Train worker as in the driver
    keys = ("clusters", "clustered", "cross_camera", "purity", "pair_precision", "pair_recall", "steps")
    assert {k: remote[0][k] for k in keys} == {k: local[0][k] for k in keys}
    adapted, _ = load_checkpoint(work / "adapt-ray" / "adapted.pt")
    source, _ = load_checkpoint(tiny_checkpoint)
    assert any(not torch.equal(v, adapted.state_dict()[k]) for k, v in source.state_dict().items()
               if k in adapted.state_dict())
