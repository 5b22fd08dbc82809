"""A small ``multipart/form-data`` (RFC 7578) parser for request bodies already held in memory.

The service reads the body up to its size limit first, so an in-memory split is enough; header
parameters (``name``, ``filename``, RFC 2231 forms) are parsed by the standard library's email parser.
"""
from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Optional

from .errors import ServingError


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


def _header_params(content_type: str) -> Message:
    msg = Message()
    msg["content-type"] = content_type
    return msg


def is_multipart(content_type: Optional[str]) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "multipart/form-data"


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a ``multipart/form-data`` body into its parts, in order. Malformed input → ServingError 400."""
    boundary = _header_params(content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ServingError(400, f"multipart body: content type {content_type!r} has no boundary parameter")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    sections = (b"\r\n" + body).split(delimiter)
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise ServingError(400, f"multipart body: no closing boundary '--{boundary}--' "
                                "(truncated or not multipart/form-data)")
    parts = []
    for i, section in enumerate(sections[1:-1]):
        head, sep, data = section.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"\r\n"):
            raise ServingError(400, f"multipart body: part {i} has no header block")
        headers = BytesHeaderParser().parsebytes(head[2:] + b"\r\n\r\n")
        disposition = headers.get("content-disposition", "")
        name = headers.get_param("name", header="content-disposition")
        if not disposition.lower().startswith("form-data") or not isinstance(name, str):
            raise ServingError(400, f"multipart body: part {i} lacks 'Content-Disposition: form-data; name=...'")
        filename = headers.get_filename()
        parts.append(Part(name=name, filename=filename, content_type=headers.get("content-type"), data=data))
    return parts
