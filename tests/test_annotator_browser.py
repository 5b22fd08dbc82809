"""The annotator page in a real headless chromium (selenium) over a real server, Board, desk, oracle and log:
a thread plays the loop (``ask_batch``), the test answers by clicking and by keys (Y, N, S, U).

Synchronisation: selenium's WebDriverWait on what the page shows, ``wait_for`` on the desk; no sleeps.
"""
from __future__ import annotations

import pytest
from conftest import wait_for
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from test_annotator_app import JOIN_S, POOL, Run

from reidloop.annotation import Board, HumanOracle, QuestionDesk
from reidloop.answer_log import effective
from reidloop.config.schema import OracleConfig
from services.annotator_app import AnnotatorServer

pytestmark = pytest.mark.slow  # starts a browser: several seconds on a small machine

WAIT_S = 20.0


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path)
    yield r
    r.close()


def text(driver, id_):
    return driver.find_element(By.ID, id_).text


def question_id(driver):
    return driver.find_element(By.ID, "question").get_attribute("data-question-id")


def until(driver, predicate, what):
    """Wait until ``predicate(driver)`` is truthy; the failure names ``what`` and the page's last action."""
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(predicate)
    except Exception as e:
        pytest.fail(f"page: timed out waiting for {what} (question {question_id(driver)!r}, "
                    f"last action {text(driver, 'last-action')!r}, banner {text(driver, 'status-banner')!r}): {e}")


def shown(driver, qid):
    until(driver, lambda d: question_id(d) == str(qid), f"question {qid}")


def press(driver, key):
    ActionChains(driver).send_keys(key).perform()


def image_loaded(driver, id_):
    return driver.execute_script(
        "const i = document.getElementById(arguments[0]); "
        "return i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0;", id_)


def test_answer_by_click_and_keys(browser, run):
    d = browser
    d.get(run.url + "/")
    until(d, lambda d: "phase: asking" in text(d, "waiting"), "the waiting message")
    assert question_id(d) == ""
    assert d.find_element(By.ID, "annotator").get_attribute("value").startswith("annotator-")
    name = d.find_element(By.ID, "annotator")
    name.clear()
    name.send_keys("alice", Keys.TAB)
    assert d.execute_script("return localStorage.getItem('reidloop-annotator')") == "alice"

    run.ask([(0, 2, 0, 0), (0, 3, 0, 1), (0, 4, 0, 2)])
    shown(d, 0)  # the page polls /api/next until the loop has asked
    q = d.find_element(By.ID, "question")
    assert (q.get_attribute("data-query"), q.get_attribute("data-candidate")) == ("0", "2")
    until(d, lambda d: image_loaded(d, "query-img") and image_loaded(d, "candidate-img"), "the two images")
    marks = [li.get_attribute("data-mark") for li in d.find_elements(By.CSS_SELECTOR, "#ranked li")]
    assert marks == ["asking", "unanswered", "unanswered"]

    # A double click answers once: the buttons are disabled while the answer is in flight.
    d.execute_script("const b = document.getElementById('btn-same'); b.click(); b.click();")
    shown(d, 1)
    assert text(d, "last-action") == "answered same person for question 0"
    assert run.desk.status()["answered"] == 1

    press(d, "n")
    shown(d, 2)
    assert text(d, "last-action") == "answered different person for question 1"
    press(d, "u")
    shown(d, 1)  # the undone question is offered again, first
    assert text(d, "last-action").startswith("undid question 1")
    press(d, "Y")
    shown(d, 2)
    assert text(d, "last-action") == "answered same person for question 1"
    marks = [li.get_attribute("data-mark") for li in d.find_elements(By.CSS_SELECTOR, "#ranked li")]
    assert marks[2] == "asking"

    press(d, "s")
    until(d, lambda d: text(d, "last-action") == "skipped question 2", "the skip")
    shown(d, "")  # never offered again to who skipped it: waiting
    assert d.find_element(By.ID, "btn-same").get_attribute("disabled") is not None
    bob = run.next("bob")  # someone else answers it
    assert run.answer(bob["id"], "different", who="bob").json() == {"counted": True}

    assert run.returned() == [1, 1, -1]
    t = effective(run.log.read())
    assert t.column("annotator").to_pylist() == ["alice", "alice", "bob"]
    assert t.column("answer").to_pylist() == [1, 1, -1]
    until(d, lambda d: (text(d, "answers"), text(d, "budget"), text(d, "remaining")) == ("3", "5", "2"),
          "the budget shown")
    assert text(d, "round") == "0" and text(d, "phase") == "asking"


def test_a_question_whose_lease_ran_out_goes_to_someone_else_and_the_late_answer_does_not_count(browser, run):
    d = browser
    d.get(run.url + "/")
    run.ask([(1, 6, 0, 0)])
    shown(d, 0)  # the page's annotator holds it for lease_s (30 s of the desk's manual clock)
    who = d.find_element(By.ID, "annotator").get_attribute("value")
    assert run.next("bob") is None
    run.clock.t += 31.0  # the page's annotator went for coffee: the lease ran out, back to the queue
    bob = run.next("bob")
    assert bob["id"] == 0 and run.answer(0, "same", who="bob").json() == {"counted": True}
    press(d, "n")  # back from coffee: too late
    until(d, lambda d: text(d, "last-action") == "question 0 was already answered (not counted again)",
          "the late answer refused")
    assert run.returned() == [1]
    assert effective(run.log.read()).column("annotator").to_pylist() == ["bob"] and who != "bob"


def test_reconnects_after_a_restart(browser, run, tmp_path):
    d = browser
    d.get(run.url + "/")
    until(d, lambda d: "phase: asking" in text(d, "waiting"), "the waiting message")
    port = run.server.port
    run.server.stop()
    until(d, lambda d: "reconnecting" in text(d, "status-banner"), "the reconnecting banner")
    assert d.find_element(By.ID, "btn-undo").get_attribute("disabled") is not None

    # The service comes back on the same port with a new run (a new run_id, a fresh desk).
    desk = QuestionDesk()
    oracle = HumanOracle(POOL, desk, OracleConfig(budget=3, mode="human"), timeout_s=JOIN_S)
    board = Board(desk, oracle, run.paths, queries_total=1)
    board.set_round(1, [5], [[6, 7]])
    board.add_round({"round": 0, "answers": 0, "mAP": 0.25, "rank1": 0.5})
    run.server = AnnotatorServer(board, port=port).start()
    until(d, lambda d: not d.find_element(By.ID, "status-banner").is_displayed(), "the banner to go")
    until(d, lambda d: text(d, "round") == "1" and text(d, "budget") == "3", "the new run's status")
    assert "0.250" in text(d, "metrics")
    run.oracle = oracle
    run.ask([(5, 7, 1, 0)])
    shown(d, 0)
    d.find_element(By.ID, "btn-different").click()
    assert run.returned() == [-1]
    wait_for(lambda: desk.status()["answered"] == 1, "the answer on the new desk")


def test_token_from_the_url_or_the_field(browser, tmp_path):
    from reidloop.serving.access import Access, digest
    from test_annotator_app import ADMIN_TOKEN

    run = Run(tmp_path, access=Access((digest(ADMIN_TOKEN),)))
    try:
        d = browser
        d.get(run.url + "/")
        until(d, lambda d: d.find_element(By.ID, "token-form").is_displayed(), "the token field")
        assert "token" in text(d, "status-banner")
        field = d.find_element(By.ID, "token")
        field.send_keys(ADMIN_TOKEN, Keys.ENTER)
        until(d, lambda d: text(d, "phase") == "asking", "the status with the typed token")
        assert not d.find_element(By.ID, "token-form").is_displayed()

        d.execute_script("sessionStorage.clear()")
        d.get(run.url + f"/?token={ADMIN_TOKEN}")
        until(d, lambda d: text(d, "phase") == "asking", "the status with the token from the URL")
        assert "token" not in d.current_url  # kept in sessionStorage, not in the address bar
        run.ask([(0, 3, 0, 0)])
        shown(d, 0)
        until(d, lambda d: image_loaded(d, "candidate-img"), "the candidate image (fetched with the token)")
        press(d, "y")
        assert run.returned() == [1]
    finally:
        run.close()
