"""Cache keys: a namespace plus a hash of the content that decides the cached value."""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_PREFIX = "agent_pipeline"


def content_hash(payload: Any) -> str:
    """SHA-256 of the payload's canonical JSON: equal content, equal hash, whatever the order
    of mapping keys."""
    canonical = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_key(namespace: str, payload: Any) -> str:
    """`agent_pipeline:cache:<namespace>:<hash>`; the namespace names what is cached."""
    if not namespace or ":" in namespace or any(ch.isspace() for ch in namespace):
        raise ValueError(f"cache namespace must be a non-empty word, got {namespace!r}")
    return f"{KEY_PREFIX}:cache:{namespace}:{content_hash(payload)}"


def stream_key(name: str) -> str:
    return f"{KEY_PREFIX}:queue:{name}"
