"""The annotator service over real HTTP: a real uvicorn on 127.0.0.1 (port 0), a real Board, QuestionDesk,
HumanOracle and AnswerLog, real PNG files; a thread plays the loop (``ask_batch``) while the test answers.

Threads meet through the desk and HTTP (``wait_for`` polls), never sleeps; time for leases is a manual clock.
"""
from __future__ import annotations

import queue
import threading

import pytest
import requests
from conftest import wait_for, write_image

from reidloop.annotation import Board, HumanOracle, QuestionDesk
from reidloop.answer_log import AnswerLog, effective
from reidloop.config import ConfigError
from reidloop.config.schema import OracleConfig
from reidloop.serving.access import Access, digest
from services.annotator_app import AnnotatorServer, access_for

POOL = 8
JOIN_S = 10.0
ADMIN_TOKEN, READ_TOKEN = "a" * 32, "r" * 32


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Run:
    """A small human-mode run: 8 images, budget 5, a board with round 0 set, its server started."""

    def __init__(self, tmp_path, access=None) -> None:
        self.paths = [write_image(tmp_path / "pool" / f"{i}.png", seed=i) for i in range(POOL)]
        self.clock = Clock()
        self.desk = QuestionDesk(lease_s=30.0, clock=self.clock)
        self.log = AnswerLog(tmp_path / "answers")
        self.oracle = HumanOracle(POOL, self.desk, OracleConfig(budget=5, mode="human"), log=self.log,
                                  paths=self.paths, timeout_s=JOIN_S)
        self.curve_path = None
        self.board = Board(self.desk, self.oracle, self.paths, queries_total=2, curve=lambda: self.curve_path)
        self.board.set_round(0, [0, 1], [[2, 3, 4], [5, 6, 7]])
        self.server = AnnotatorServer(self.board, access=access or Access()).start()
        self.url = self.server.url
        self.results: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []

    def ask(self, questions) -> None:
        """The loop's side: ``ask_batch(questions)`` in a thread; its answers (or error) go to ``results``."""
        def run():
            try:
                self.results.put(self.oracle.ask_batch(questions, "dral"))
            except BaseException as e:  # noqa: BLE001 - reported to the test
                self.results.put(e)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def returned(self):
        got = self.results.get(timeout=JOIN_S)
        if isinstance(got, BaseException):
            raise got
        return got

    def post(self, path, headers=None, **body):
        return requests.post(self.url + path, json=body, headers=headers, timeout=5)

    def next(self, who="ann"):
        r = self.post("/api/next", annotator=who)
        assert r.status_code == 200, r.text
        return r.json()["question"]

    def wait_question(self, who="ann"):
        return wait_for(lambda: self.next(who), f"a question for {who}", deadline_s=JOIN_S)

    def answer(self, qid, word, who="ann"):
        return self.post("/api/answer", annotator=who, id=qid, answer=word)

    def close(self) -> None:
        self.server.stop()
        for t in self.threads:
            t.join(JOIN_S)
            assert not t.is_alive(), "the loop thread hung"


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path)
    yield r
    r.close()


def test_answer_flow_logs_the_annotator(run):
    assert requests.get(run.url + "/health", timeout=5).json() == {"status": "ok", "run_id": run.board.run_id}
    run.ask([(0, 2, 0, 0), (0, 3, 0, 1)])
    q = run.wait_question()
    assert (q["query"], q["candidate"]) == (0, 2)
    assert [(c["index"], c["rank"], c["asking"], c["answer"]) for c in q["ranked"]] == \
        [(2, 1, True, None), (3, 2, False, None), (4, 3, False, None)]
    assert run.answer(q["id"], "same").json() == {"counted": True}
    q2 = run.next()
    assert (q2["query"], q2["candidate"]) == (0, 3)
    assert q2["ranked"][0]["answer"] == 1  # shown from the desk before the loop (ask_batch) has it
    assert run.oracle.known(0, 2) is None
    assert run.answer(q2["id"], "different", who="ann").json() == {"counted": True}
    assert run.returned() == [1, -1]
    t = effective(run.log.read())
    assert t.column("annotator").to_pylist() == ["ann", "ann"]
    assert t.column("answer").to_pylist() == [1, -1]
    st = requests.get(run.url + "/api/status", timeout=5).json()
    assert (st["answers"], st["budget"], st["remaining"], st["phase"]) == (2, 5, 3, "asking")
    assert run.next() is None


def test_the_same_answer_twice_counts_once(run):
    run.ask([(1, 5, 0, 0)])
    q = run.wait_question()
    assert run.answer(q["id"], "different").json() == {"counted": True}
    assert run.answer(q["id"], "different").json() == {"counted": False}
    assert run.answer(q["id"], "same").json() == {"counted": False}
    assert run.returned() == [-1]
    assert len(effective(run.log.read())) == 1
    assert run.oracle.used == 1


def test_undo_offers_the_question_again(run):
    run.ask([(0, 2, 0, 0), (0, 3, 0, 1)])
    q = run.wait_question()
    assert run.answer(q["id"], "same").json()["counted"]
    assert run.next()["candidate"] == 3  # the next question is leased to ann now
    undone = run.post("/api/undo", annotator="ann").json()["undone"]
    assert (undone["id"], undone["candidate"], undone["answer"]) == (q["id"], 2, 1)
    again = run.next()
    assert again["id"] == q["id"]  # offered again, to the same annotator, first
    assert run.answer(again["id"], "different").json()["counted"]
    q2 = run.next()
    assert q2["candidate"] == 3
    assert run.answer(q2["id"], "different").json()["counted"]
    assert run.returned() == [-1, -1]
    assert run.post("/api/undo", annotator="nobody").json() == {"undone": None}


def test_an_expired_lease_goes_to_someone_else(run):
    run.ask([(1, 6, 0, 0)])
    q = run.wait_question("ann")
    assert run.next("bob") is None  # ann holds it
    run.clock.t += 31.0  # ann's 30 s lease runs out
    assert run.next("bob")["id"] == q["id"]
    assert run.answer(q["id"], "same", who="bob").json() == {"counted": True}
    assert run.answer(q["id"], "different", who="ann").json() == {"counted": False}  # first answer won
    assert run.returned() == [1]
    assert effective(run.log.read()).column("annotator").to_pylist() == ["bob"]


def test_skip_and_desk_counts(run):
    run.ask([(0, 4, 0, 0)])
    q = run.wait_question("ann")
    assert run.answer(q["id"], "skip").json() == {"counted": True}
    assert run.next("ann") is None  # never offered again to who skipped it
    st = requests.get(run.url + "/api/status", timeout=5).json()
    assert (st["desk"]["pending"], st["desk"]["skipped"]) == (1, 1)
    q = run.next("bob")
    assert run.answer(q["id"], "same", who="bob").json()["counted"]
    assert run.returned() == [1]


def test_images_by_index_only(run, tmp_path):
    r = requests.get(run.url + "/api/image/3", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (tmp_path / "pool" / "3.png").read_bytes()
    for bad in (POOL, 10_000, -1):
        r = requests.get(run.url + f"/api/image/{bad}", timeout=5)
        assert r.status_code == 404 and "out of range" in r.json()["detail"], (bad, r.text)
    assert requests.get(run.url + "/api/image/abc", timeout=5).status_code == 422
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    for path in ("../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..%2Fsecret.txt",
                 "../../secret.txt", "1.png", "0%00"):
        r = requests.get(run.url + "/api/image/" + path, timeout=5)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert "top secret" not in r.text and "root:" not in r.text
        assert r.json()["detail"]
    r = requests.get(run.url + "/static/../../tests/conftest.py", timeout=5)
    assert r.status_code == 404


def test_curve_and_page(run, tmp_path):
    assert requests.get(run.url + "/api/curve.png", timeout=5).status_code == 404
    assert requests.get(run.url + "/api/status", timeout=5).json()["curve"] is False
    run.curve_path = write_image(tmp_path / "curve.png")
    r = requests.get(run.url + "/api/curve.png", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert requests.get(run.url + "/api/status", timeout=5).json()["curve"] is True
    page = requests.get(run.url + "/", timeout=5)
    assert page.status_code == 200 and 'id="btn-same"' in page.text
    for f in ("app.js", "style.css"):
        assert requests.get(run.url + "/static/" + f, timeout=5).status_code == 200


def test_bad_input_is_4xx_naming_it(run):
    run.ask([(0, 2, 0, 0)])
    q = run.wait_question()
    r = run.answer(q["id"], "maybe")
    assert r.status_code == 422 and "'maybe'" in r.json()["detail"]
    r = run.answer(12345, "same")
    assert r.status_code == 404 and "12345" in r.json()["detail"]
    r = run.answer(q["id"], "same", who="bob")  # never handed to bob
    assert r.status_code == 409 and "bob" in r.json()["detail"]
    for who in ("", "   ", None, 7):
        r = run.post("/api/next", annotator=who)
        assert r.status_code == 422 and "annotator" in r.json()["detail"], (who, r.text)
    r = run.post("/api/answer", annotator="ann", id="x", answer="same")
    assert r.status_code == 422 and "id" in r.json()["detail"]
    r = requests.post(run.url + "/api/answer", data="not json", timeout=5)
    assert r.status_code == 422 and r.json()["detail"]
    assert run.answer(q["id"], "same").json() == {"counted": True}
    assert run.returned() == [1]


def test_tokens(tmp_path):
    run = Run(tmp_path, access=Access((digest(ADMIN_TOKEN),), (digest(READ_TOKEN),)))
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        read = {"Authorization": f"Bearer {READ_TOKEN}"}
        for path in ("/health", "/", "/static/app.js"):
            assert requests.get(run.url + path, timeout=5).status_code == 200, path
        r = requests.get(run.url + "/api/status", timeout=5)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and r.json()["detail"]
        r = requests.get(run.url + "/api/status", headers={"Authorization": "Bearer wrong-token"}, timeout=5)
        assert r.status_code == 401
        assert requests.get(run.url + "/api/image/0", timeout=5).status_code == 401
        assert run.post("/api/next", annotator="ann").status_code == 401
        assert requests.get(run.url + "/api/status", headers=admin, timeout=5).status_code == 200
        assert requests.get(run.url + "/api/status", headers=read, timeout=5).status_code == 200
        assert requests.get(run.url + "/api/image/0", headers=read, timeout=5).status_code == 200
        for path, body in (("/api/next", {"annotator": "ann"}), ("/api/undo", {"annotator": "ann"}),
                           ("/api/answer", {"annotator": "ann", "id": 0, "answer": "same"})):
            r = run.post(path, headers=read, **body)
            assert r.status_code == 403 and "read-only" in r.json()["detail"], path
        run.ask([(0, 2, 0, 0)])
        q = wait_for(lambda: run.post("/api/next", headers=admin, annotator="ann").json()["question"],
                     "a question", deadline_s=JOIN_S)
        assert run.post("/api/answer", headers=admin, annotator="ann", id=q["id"], answer="same").json()["counted"]
        assert run.returned() == [1]
    finally:
        run.close()


def test_exposed_host_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("REIDLOOP_TOKEN", raising=False)
    monkeypatch.delenv("REIDLOOP_READ_TOKEN", raising=False)
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(2)]
    desk = QuestionDesk()
    board = Board(desk, HumanOracle(2, desk, OracleConfig(mode="human")), paths)
    with pytest.raises(ConfigError, match="0.0.0.0"):
        AnnotatorServer(board, host="0.0.0.0")
    with pytest.raises(ConfigError, match="0.0.0.0"):
        AnnotatorServer(board, host="0.0.0.0", access=Access())
    with pytest.raises(ConfigError, match="annotator.example.org"):
        access_for("annotator.example.org")
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    assert access_for("0.0.0.0", token_file=str(token_file)).admin == (digest(ADMIN_TOKEN),)
    AnnotatorServer(board, host="0.0.0.0", access=access_for("0.0.0.0", token_file=str(token_file)))  # not started
    assert AnnotatorServer(board).access.open  # loopback, no token: open


def test_port_zero_and_restart(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(2)]
    desk = QuestionDesk()
    board = Board(desk, HumanOracle(2, desk, OracleConfig(mode="human")), paths)
    server = AnnotatorServer(board).start()
    port = server.port
    assert port > 0 and server.url == f"http://127.0.0.1:{port}"
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)

