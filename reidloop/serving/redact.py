"""What a client may see of the server: never a filesystem path.

A path in an answer tells a client where the service keeps its files and, through the error a
missing or unreadable one gives, which files exist. Answers therefore carry ids, names, times and
error codes; ``redact_paths`` is the last filter on anything else that reaches a client (a checkpoint's
``extra`` may hold the local weights file it was initialised from, for instance).
"""
from __future__ import annotations

import re
from typing import Any

REDACTED = "<path>"

# A rooted path: "/..." or "~/..." or "C:\..." or "\\host\...", at the start of the text or after a
# space, quote, bracket or separator, up to a space, quote, bracket or separator (a final ":" or "." is
# the sentence's). "image/png", "cpu/fp32" or "1/2" do not start one; a URL's "//host/..." does, which
# hides the host too.
ROOTED_PATH = re.compile(r"""(?:^|(?<=[\s'"(\[{=:,;]))(?:~|[A-Za-z]:)?[/\\][^\s'"()\[\]{},;]*[^\s'"()\[\]{},;:.]""")


def redact_paths(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every rooted path in a string (keys
    included) replaced by ``REDACTED``."""
    if isinstance(value, str):
        return ROOTED_PATH.sub(REDACTED, value)
    if isinstance(value, dict):
        return {redact_paths(k): redact_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_paths(v) for v in value]
    return value
