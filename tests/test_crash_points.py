"""Fault injection: a run killed at every durable write of a round resumes to the uninterrupted run.

Each case runs the tiny loop in a real subprocess that ends itself with ``os._exit`` (no cleanup, no
flush: a SIGKILL at a chosen instant) at one crash point of :mod:`reidloop.crashpoints`, then resumes
it (in the test's process); the answers (same pairs, same order, same rounds) and the final metrics must equal those of a run
that was never interrupted. A write the run reaches that ``POINTS`` does not list fails the first test,
so a new write comes with its crash case.

Run as a script (``python tests/test_crash_points.py OUT CHECKPOINT CACHE``) it is the subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_job

REPO = Path(__file__).resolve().parents[1]


def job(out, checkpoint, cache):
    return tiny_job(out, checkpoint, cache, strategy="dral")


def run(out: Path, checkpoint: str, cache: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, str(out), checkpoint, str(cache)], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def outcome(out: Path) -> dict:
    """What a run ends with: its answers in order (with their rounds) and its metrics per round."""
    import pyarrow.parquet as pq

    from reidloop.answer_log import AnswerLog

    log = AnswerLog(out / "answers").read()
    rounds = pq.read_table(out / "rounds.parquet").to_pylist()
    return {"answers": list(zip(*(log.column(c).to_pylist() for c in ("query", "candidate", "answer", "round")))),
            "rounds": [(r["round"], r["answers"], r["mAP"], r["rank1"]) for r in rounds],
            "summary": json.loads((out / "summary.json").read_text())["final"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_checkpoint):
    """The uninterrupted run, with the crash points it reaches in order."""
    root = tmp_path_factory.mktemp("crash_ref")
    trace = root / "trace.txt"
    done = run(root / "full", tiny_checkpoint, root / "cache", REIDLOOP_CRASH_TRACE=str(trace))
    assert done.returncode == 0, done.stderr[-3000:]
    return outcome(root / "full"), trace.read_text().split(), root / "cache"


def crash_arrival(trace: list[str], point: str) -> int:
    """Which arrival at ``point`` to crash at: the first after round 1 was committed (else the first)."""
    first_commit = trace.index("state.json")
    arrivals = [i for i, p in enumerate(trace) if p == point]
    later = [k for k, i in enumerate(arrivals, start=1) if i > first_commit]
    return later[0] if later else 1


@pytest.mark.slow
def test_every_write_of_a_run_is_a_listed_crash_point(reference):
    from reidloop.crashpoints import POINTS

    _, trace, _ = reference
    assert set(trace) - set(POINTS) == set(), "a new durable write: list it in reidloop.crashpoints.POINTS"
    assert set(POINTS) - set(trace) == set(), "POINTS lists a write the run no longer makes"
    assert trace.count("state.json") == 2  # two rounds, each committed once


@pytest.mark.slow
@pytest.mark.parametrize("point", __import__("reidloop.crashpoints", fromlist=["POINTS"]).POINTS)
def test_a_run_killed_at_a_write_resumes_to_the_same_answers_and_metrics(tmp_path, tiny_checkpoint, reference,
                                                                          point):
    from reidloop.active.loop import ActiveLearningLoop
    from reidloop.crashpoints import CRASH_EXIT

    expected, trace, cache = reference
    out = tmp_path / "run"
    nth = crash_arrival(trace, point)
    crashed = run(out, tiny_checkpoint, cache, REIDLOOP_CRASH_AT=f"{point}@{nth}")
    assert crashed.returncode == CRASH_EXIT, f"did not die at {point}@{nth}: {crashed.stderr[-3000:]}"
    ActiveLearningLoop(job(out, tiny_checkpoint, cache), progress=False).run()  # resumed, here
    assert outcome(out) == expected
    assert not list(out.rglob("*.tmp"))  # what the crash left half-written is gone
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["round-0002"]


if __name__ == "__main__":
    import torch

    from reidloop.active.loop import ActiveLearningLoop

    torch.set_num_threads(1)
    out, checkpoint, cache = sys.argv[1:4]
    ActiveLearningLoop(job(out, checkpoint, cache), progress=False).run()
