"""Scripted people for human-mode runs (``oracle.mode: human``): threads that work the run's real question desk."""
from __future__ import annotations

import threading


class Annotator(threading.Thread):
    """A person at the page: takes the desk's questions and answers them from the true identities
    (``pid_of(pool index)``).

    ``script(question, annotator) -> answer`` may answer otherwise (a mistake) or act first (an undo); it wakes on
    the desk's events (no polling) and stops when the run ends.
    """

    def __init__(self, board, pid_of, name="alice", script=None):
        super().__init__(daemon=True)
        self.board, self.pid_of, self.name, self.script = board, pid_of, name, script
        self.wake, self.stopping, self.answers = threading.Event(), threading.Event(), 0
        board.desk.on_change = lambda event: self.wake.set()

    def truth(self, q, c):
        return 1 if self.pid_of(q) == self.pid_of(c) else -1

    def run(self):
        while not self.stopping.is_set():
            self.wake.clear()  # before looking: an event after this wakes the wait below
            question = self.board.next(self.name)
            if question is None:
                self.wake.wait()
                continue
            q, c = question["query"], question["candidate"]
            y = self.script(question, self) if self.script is not None else self.truth(q, c)
            if self.board.answer(self.name, question["id"], y):
                self.answers += 1

    def stop(self):
        self.stopping.set()
        self.wake.set()
        self.join(timeout=30)
