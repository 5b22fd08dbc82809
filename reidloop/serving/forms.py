"""Request bodies → validated uploads and parameters, with a 4xx ServingError for anything wrong.

An image arrives either as ``multipart/form-data`` (file field ``image``, other fields as text) or as
a raw body whose content type is ``image/*`` (the other parameters then come from the query string).
JSON (the ``meta`` field, the body of ``DELETE /gallery``) is nested at most ``MAX_JSON_DEPTH`` levels.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from .errors import ServingError
from .gallery import GalleryEntry, make_entry
from .images import check_image_content_type
from .multipart import is_multipart, parse_multipart

FILE_FIELD = "image"
# Nesting levels a JSON field or body may have (ours need 2: a list of objects). Deeper is a 422, whatever
# the depth: json.loads' own limit (the interpreter's recursion limit) is answered the same way.
MAX_JSON_DEPTH = 32


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether decoded JSON ``value`` nests lists / objects more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json(raw: str | bytes, what: str) -> Any:
    """``json.loads(raw)``, or a 422 ServingError saying why not: not JSON, not UTF-8, nested deeper than
    MAX_JSON_DEPTH."""
    too_deep = ServingError(422, f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(raw)
    except RecursionError:  # e.g. 100,000 '[': json's C decoder stops at the recursion limit, cleanly
        raise too_deep from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise ServingError(422, f"{what}: not valid JSON ({exc})") from None
    brackets = (b"[", b"{") if isinstance(raw, bytes) else ("[", "{")
    if sum(raw.count(b) for b in brackets) > MAX_JSON_DEPTH and _deeper_than(data, MAX_JSON_DEPTH):
        raise too_deep  # (fewer brackets than the limit cannot nest deeper: no walk for the usual body)
    return data


@dataclass
class Upload:
    files: list[tuple[str, bytes]]  # (name for messages, encoded image bytes)
    fields: dict[str, str] = field(default_factory=dict)


def parse_upload(body: bytes, content_type: Optional[str], query: Mapping[str, str], *,
                 allowed_fields: Sequence[str] = (), max_files: int = 1) -> Upload:
    """Extract 1..``max_files`` image files and the ``allowed_fields`` (form fields, else query parameters)."""
    if not body:
        raise ServingError(400, f"empty request body (send an image as multipart field {FILE_FIELD!r} "
                                "or as a raw image/* body)")
    fields: dict[str, str] = {k: v for k, v in query.items()}
    if is_multipart(content_type):
        parts = parse_multipart(body, content_type or "")
        files = []
        for p in parts:
            if p.name == FILE_FIELD:
                if p.content_type and not p.content_type.lower().startswith("application/octet-stream"):
                    check_image_content_type(p.content_type, f"field {FILE_FIELD!r} ({p.filename or 'no filename'})")
                files.append((f"{FILE_FIELD}[{len(files)}] {p.filename or ''}".strip(), p.data))
            elif p.filename is None:
                fields[p.name] = p.text()
            else:
                raise ServingError(422, f"file field {p.name!r} is not expected; send images in field {FILE_FIELD!r}")
        if not files:
            raise ServingError(422, f"multipart body has no file in field {FILE_FIELD!r} "
                                    f"(got fields {sorted({p.name for p in parts})})")
    else:
        check_image_content_type(content_type)
        files = [("body", body)]
    unknown = sorted(set(fields) - set(allowed_fields))
    if unknown:
        raise ServingError(422, f"unknown parameter {unknown[0]!r} (expected "
                                f"{', '.join([FILE_FIELD, *allowed_fields])})")
    if len(files) > max_files:
        what = "one image" if max_files == 1 else f"at most {max_files} images"
        raise ServingError(422, f"expected {what}, got {len(files)}")
    return Upload(files, fields)


def parse_k(raw: Optional[str], max_k: int, default: int = 10) -> int:
    """The ``k`` of /search: an integer in [1, max_k] (default ``min(default, max_k)``)."""
    if raw is None or raw == "":
        return min(default, max_k)
    try:
        k = int(raw)
    except ValueError:
        raise ServingError(422, f"k: expected an integer in [1, {max_k}], got {raw!r}") from None
    if not 1 <= k <= max_k:
        raise ServingError(422, f"k: {k} is out of range [1, {max_k}]")
    return k


def parse_meta(raw: Optional[str], n: int) -> list[GalleryEntry]:
    """The ``meta`` field of /gallery/batch: a JSON list of ``n`` objects (gallery_id, person_id, camera)."""
    if raw is None or raw == "":
        return [make_entry() for _ in range(n)]
    meta = parse_json(raw, "meta")
    if not isinstance(meta, list) or len(meta) != n or not all(isinstance(m, dict) for m in meta):
        raise ServingError(422, f"meta: expected a JSON list of {n} objects (one per image, in order) "
                                "with optional gallery_id, person_id, camera")
    entries = []
    for i, m in enumerate(meta):
        unknown = sorted(set(m) - {"gallery_id", "person_id", "camera"})
        if unknown:
            raise ServingError(422, f"meta[{i}]: unknown key {unknown[0]!r} (expected gallery_id, person_id, camera)")
        entries.append(make_entry(m.get("gallery_id"), m.get("person_id"), m.get("camera"), where=f"meta[{i}]"))
    return entries


def parse_id_list(body: bytes) -> list[str]:
    """The body of ``DELETE /gallery``: a JSON list of gallery ids, or ``{"ids": [...]}``."""
    data: Any = parse_json(body, "body") if body else None
    ids = data.get("ids") if isinstance(data, dict) else data
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ServingError(422, 'body: expected a non-empty JSON list of gallery ids, or {"ids": [...]}')
    return ids
