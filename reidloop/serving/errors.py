"""The one exception type of the serving core: a client error with its HTTP status."""
from __future__ import annotations


class ServingError(ValueError):
    """Bad client input (or a request the current state cannot satisfy).

    ``status`` is the HTTP status the service answers with (4xx) and ``message`` says what was wrong.
    Picklable, so it crosses Ray process boundaries with both attributes intact.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message
