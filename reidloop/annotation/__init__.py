"""Human annotation (issue 18, ``oracle.mode: human``): the questions the agent asks, answered by people.

:class:`QuestionDesk` (``desk.py``) is the thread-safe queue people answer from (leases, idempotent answers,
skip, undo); :class:`HumanOracle` (``human_oracle.py``) is the oracle the loop asks through, answered from a
desk and logging every answer (who, when) and every retraction to the answer log. Neither imports Ray.
"""
from .board import Board
from .desk import (Answered, DeskEvent, NotOffered, QuestionDesk, Ticket, Undone, UnknownQuestion)
from .human_oracle import HumanOracle, Retraction

__all__ = ["Answered", "Board", "DeskEvent", "HumanOracle", "NotOffered", "QuestionDesk", "Retraction", "Ticket", "Undone",
           "UnknownQuestion"]
