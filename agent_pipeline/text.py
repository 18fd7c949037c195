"""Text that every store accepts: Postgres rejects NUL characters in TEXT and JSONB, and lone
surrogates (what undecodable bytes become with errors="surrogateescape") in any UTF-8 text."""

from __future__ import annotations

import re

_SURROGATES = re.compile(r"[\ud800-\udfff]")


def storable_text(text: str) -> str:
    """text without NUL characters, each lone surrogate replaced by U+FFFD."""
    return _SURROGATES.sub("\ufffd", text.replace("\x00", ""))
