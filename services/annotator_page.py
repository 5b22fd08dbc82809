"""The annotator page of a human-mode run (``oracle.mode: human``), opened by the driver when the run's board
exists (``ActiveLearningLoop(on_board=...)``) and closed when the run ends."""
from __future__ import annotations

from reidloop.config import AnnotatorConfig
from reidloop.serving.access import Access

from .annotator_app import AnnotatorServer


class AnnotatorPage:
    """``oracle.mode: human``: the annotator page, served by this process once the run's board exists."""

    def __init__(self, cfg: AnnotatorConfig) -> None:
        self.cfg = cfg
        self.access = Access.from_config(self.cfg)  # a host beyond loopback without a token fails here, first
        self.server = None

    def open(self, board) -> None:
        self.server = AnnotatorServer(board, self.cfg.host, self.cfg.port, self.access)
        self.server.start()
        print(f"annotator page: {self.server.url}  (the agent's questions wait there: Y same person, "
              "N different, S skip, U undo)", flush=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
