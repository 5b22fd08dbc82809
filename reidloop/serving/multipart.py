"""``multipart/form-data`` (RFC 7578) request bodies, already held in memory, split into their parts.

The service reads the body up to its size limit first, then hands it in one piece to python-multipart's push
parser (the parser of Starlette and FastAPI); header parameters come from its ``parse_options_header``. Anything
malformed is a ServingError 400 that says what was wrong.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import Message
from typing import Optional

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ServingError

# The parser logs a warning for each malformed body before raising; the client gets the same words in its 400,
# so they stay out of the service's log (a logger of its own, outside the logging tree: no config re-enables it).
_QUIET = logging.Logger(f"{__name__}.parser", logging.CRITICAL + 1)


@dataclass(frozen=True)
class Part:
    name: str
    filename: Optional[str]  # None for plain form fields
    content_type: Optional[str]
    data: bytes

    def text(self) -> str:
        try:
            return self.data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ServingError(422, f"form field {self.name!r}: not UTF-8 text") from None


def is_multipart(content_type: Optional[str]) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "multipart/form-data"


def _text(raw: bytes) -> str:
    """A header parameter as text: UTF-8 (what browsers and HTTP clients send), else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Parts:
    """The callbacks of a MultipartParser that collect its parts, validating each header block as it ends."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self.begun = 0  # parts whose opening boundary the parser has passed
        self.in_headers = False
        self.ended = False
        self._headers: dict[str, bytes] = {}
        self._field: list[bytes] = []
        self._value: list[bytes] = []
        self._data: list[bytes] = []
        self._head: tuple[str, Optional[str], Optional[str]] = ("", None, None)

    def callbacks(self) -> dict:
        return dict(on_part_begin=self._part_begin, on_header_field=self._header_field,
                    on_header_value=self._header_value, on_header_end=self._header_end,
                    on_headers_finished=self._headers_finished, on_part_data=self._part_data,
                    on_part_end=self._part_end, on_end=self._end)

    def _part_begin(self) -> None:
        self.begun += 1
        self.in_headers = True
        self._headers, self._data = {}, []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field.append(data[start:end])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value.append(data[start:end])

    def _header_end(self) -> None:
        name = b"".join(self._field).decode("latin-1").lower()  # (the parser allows only token characters)
        self._headers.setdefault(name, b"".join(self._value).strip(b" \t"))  # the first of repeated headers
        self._field, self._value = [], []

    def _headers_finished(self) -> None:
        self.in_headers = False
        i = self.begun - 1
        if not self._headers:
            raise ServingError(400, f"multipart body: part {i} has no header block")
        disposition = self._headers.get("content-disposition", b"").decode("latin-1")
        kind, params = parse_options_header(disposition)
        if kind.strip().lower() != b"form-data" or b"name" not in params:
            raise ServingError(400, f"multipart body: part {i} lacks 'Content-Disposition: form-data; name=...'")
        filename = _text(params[b"filename"]) if b"filename" in params else None
        if filename is None and "filename*" in disposition.lower():
            # RFC 7578 section 4.2 forbids the RFC 2231 form and parse_options_header ignores it; a client
            # that sends only ``filename*=UTF-8''...`` still gets its file taken as a file, named as it meant.
            msg = Message()
            msg["content-disposition"] = disposition
            filename = msg.get_filename()
        content_type = self._headers.get("content-type")
        self._head = (_text(params[b"name"]), filename, None if content_type is None else _text(content_type))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def _part_end(self) -> None:
        name, filename, content_type = self._head
        self.parts.append(Part(name=name, filename=filename, content_type=content_type, data=b"".join(self._data)))
        self._data = []

    def _end(self) -> None:
        self.ended = True

    def error(self, body: bytes, exc: FormParserError) -> str:
        """What the parser's error ``exc`` means, in the terms of this module's other messages."""
        offset = getattr(exc, "offset", -1)
        if not self.begun:
            return f"multipart body: does not start with its boundary ({exc})"
        i = self.begun - 1
        if self.in_headers:
            if 0 <= offset < len(body) and body[offset:offset + 1] in (b" ", b"\t") \
                    and body[max(offset - 2, 0):offset] == b"\r\n":
                return (f"multipart body: part {i} has a folded header line (obsolete line folding, "
                        "RFC 9112 section 5.2, is not accepted)")
            return f"multipart body: part {i} has a malformed header block ({exc})"
        return f"multipart body: part {i}: {exc}"


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a ``multipart/form-data`` body into its parts, in order. Malformed input → ServingError 400."""
    boundary = parse_options_header(content_type or "")[1].get(b"boundary", b"")
    if not boundary:
        raise ServingError(400, f"multipart body: content type {content_type!r} has no boundary parameter")
    shown = boundary.decode("latin-1")
    closing = b"--" + boundary + b"--"
    no_closing = (f"multipart body: no closing boundary '--{shown}--' "
                  "(truncated or not multipart/form-data)")
    collected = _Parts()
    try:
        parser = MultipartParser(boundary, collected.callbacks())  # at most 8 headers a part
        parser.logger = _QUIET
    except FormParserError as exc:  # e.g. a boundary longer than the parser accepts (RFC 2046: 70 characters)
        raise ServingError(400, f"multipart body: {exc}") from None
    start = body.find(b"--" + boundary)
    if start > 0 and body[start - 2:start] == b"\r\n":
        # A preamble (RFC 2046 section 5.1.1) before the first boundary: skipped, as the parser only skips
        # blank lines there.
        body = body[start:]
    try:
        parser.write(body)
    except (FormParserError, ServingError) as exc:
        # A body cut short is the likelier story, whatever broke first in what did arrive.
        if not (body.startswith(closing) or b"\r\n" + closing in body):
            raise ServingError(400, no_closing) from None
        if isinstance(exc, ServingError):
            raise
        raise ServingError(400, collected.error(body, exc)) from None
    if not collected.ended:
        raise ServingError(400, no_closing)
    if not collected.parts:
        raise ServingError(400, f"multipart body: no part before its closing boundary '--{shown}--'")
    return collected.parts
