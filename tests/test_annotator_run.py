"""A human-mode run end to end: ``python -m trainers.run_job --local`` with ``oracle.mode: human`` in a real
process, its questions answered in a real headless chromium by keys, the process killed (SIGKILL) mid-run and
started again while the page stays open. The page carries on by itself; the answer log holds every answer
the page was told counted, once each, and the run finishes with them.

Synchronisation: selenium's WebDriverWait on what the page shows; no sleeps.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import tiny_job, wait_for
from reidloop.answer_log import AnswerLog, effective
from reidloop.config import save_config

pytestmark = pytest.mark.slow  # a browser and two runs of the loop: about a minute on 2 cores

WAIT_S = 60.0  # a fresh process imports torch and evaluates before its first question
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "trainers.run_job", "--local", "--quiet", "--config", str(config),
           "--set", f"annotator.port={port}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def serving(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).ok
    except requests.ConnectionError:
        return False


def attr(d, name):
    return d.find_element(By.ID, "question").get_attribute(name)


def text(d, id_):
    return d.find_element(By.ID, id_).text


def until(d, predicate, what, log: Path):
    try:
        return WebDriverWait(d, WAIT_S, poll_frequency=0.05).until(predicate)
    except Exception as e:
        pytest.fail(f"page: timed out waiting for {what} (question {attr(d, 'data-question-id')!r}, last action "
                    f"{text(d, 'last-action')!r}, banner {text(d, 'status-banner')!r}); run log:\n"
                    f"{log.read_text()[-3000:]}\n{e}")


def answer_one(d, key: str, given: dict, log: Path) -> None:
    """Press ``key`` (y / n) on the question shown; note its pair and answer once the page says it counted."""
    until(d, lambda d: d.find_element(By.ID, "btn-same").is_enabled(), "the answer buttons", log)
    pair = (int(attr(d, "data-query")), int(attr(d, "data-candidate")))
    qid = attr(d, "data-question-id")
    ActionChains(d).send_keys(key).perform()
    until(d, lambda d: f"for question {qid}" in text(d, "last-action"), f"the answer to question {qid}", log)
    assert text(d, "last-action").startswith("answered"), text(d, "last-action")
    given[tuple(sorted(pair))] = 1 if key == "y" else -1


def test_a_killed_run_restarts_under_the_open_page_and_loses_no_answer(browser, tmp_path, tiny_checkpoint):
    d, port, log = browser, free_port(), tmp_path / "run.log"
    job = tiny_job(tmp_path / "run", tiny_checkpoint, tmp_path / "cache", strategy="nearest",
                   **{"oracle.mode": "human", "oracle.budget": 12, "max_queries": 6, "finetune.every": 0.5})
    save_config(job, tmp_path / "job.yaml")
    run = start(tmp_path / "job.yaml", port, log)
    given: dict[tuple[int, int], int] = {}
    try:
        wait_for(lambda: serving(port) or run.poll() is not None, "the run's annotator page", deadline_s=WAIT_S)
        assert run.poll() is None, log.read_text()[-3000:]
        d.get(f"http://127.0.0.1:{port}/")
        until(d, lambda d: attr(d, "data-question-id") not in (None, ""), "the first question", log)
        for i in range(5):  # by keys: same, different, ... (the truth does not matter here)
            until(d, lambda d: attr(d, "data-question-id") not in (None, ""), f"question {i + 1}", log)
            if i == 4 and os.environ.get("REIDLOOP_SCREENSHOT"):  # the README's picture: =path.png
                until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#ranked li img") and d.execute_script(
                    "return [...document.images].every(i => !i.src || (i.complete && i.naturalWidth > 0));"),
                    "the images of the question and its ranked list", log)
                d.save_screenshot(os.environ["REIDLOOP_SCREENSHOT"])
            answer_one(d, "yn"[i % 2], given, log)
        until(d, lambda d: text(d, "answers").startswith("5"), "the page to count 5 answers", log)

        run.send_signal(signal.SIGKILL)  # the driver, its desk and the page's server die at once
        run.wait(timeout=30)
        until(d, lambda d: "reconnecting" in text(d, "status-banner"), "the reconnecting banner", log)
        run = start(tmp_path / "job.yaml", port, log)  # the same command, as an operator would
        until(d, lambda d: "restarted" in text(d, "last-action") or not text(d, "status-banner"),
              "the page to reconnect", log)
        while run.poll() is None:  # answer until the budget is spent and the run ends
            until(d, lambda d: attr(d, "data-question-id") not in (None, "") or run.poll() is not None,
                  "a question after the restart", log)
            if run.poll() is not None:
                break
            try:
                answer_one(d, "yn"[len(given) % 2], given, log)
            except AssertionError:
                if run.poll() is None:  # (the last question can vanish with the finished run)
                    raise
        assert run.wait(timeout=WAIT_S) == 0, log.read_text()[-3000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    table = effective(AnswerLog(tmp_path / "run" / "answers").read())
    pairs = [tuple(sorted(p)) for p in zip(table.column("query").to_pylist(), table.column("candidate").to_pylist())]
    assert len(pairs) == len(set(pairs)) == 12  # the whole budget, no pair twice
    assert dict(zip(pairs, table.column("answer").to_pylist())) == given  # every answer counted, as given
    text_log = log.read_text()
    assert "annotator page: http://127.0.0.1" in text_log  # printed for the operator, by both processes
    assert "round 1 was interrupted: replaying its" in text_log, text_log[-3000:]  # (4 or 5: the 5th may be journaled only)
    assert "round 2:" in text_log  # and finished both rounds
