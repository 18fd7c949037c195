"""Agents for tests, loaded through AGENT=agent_pipeline_tests.sample_agents:NAME."""

from __future__ import annotations

import math
import os
import time
from datetime import datetime
from decimal import Decimal

from agent_pipeline.agents.keywords import keywords_agent


def hostile(context):
    """Five good items among bad ones, with HTML and header tricks in the good ones."""
    yield {"title": "<b>Bold</b> & <script>alert(1)</script>", "score": 90, "url": "https://example.org/1"}
    yield {"title": "Second\r\nBcc: victim@example.com", "score": 80, "url": "javascript:alert(1)"}
    yield {"title": "Third", "score": 70, "id": "3", "summary": "<img src=x onerror=alert(1)>"}
    yield {"title": "Third again", "score": 60, "id": "3"}  # duplicate id, lower score
    yield {"title": "Fourth", "score": 50}
    yield {"title": "Fifth", "score": 40, "url": "https://example.org/5"}
    yield {"title": "Sixth", "score": 30}
    yield {"title": "no score"}
    yield {"title": "nan", "score": math.nan}
    yield "not a mapping"
    yield {"title": "", "score": 100}


def broken(context):
    raise RuntimeError("the agent fell over")


def hangs(context):
    """Stuck, as on a network call that never returns: only run monitoring ends it."""
    time.sleep(3600)
    return []


def nothing(context):
    return []


def not_a_list(context):
    return "a string is not a list of outcomes"


def slow_keywords(context):
    """The keywords agent after a pause of SLOW_AGENT_SECONDS: long enough to see overlap."""
    time.sleep(float(os.environ.get("SLOW_AGENT_SECONDS", "1")))
    yield from keywords_agent(context)


class Opaque:
    """Not JSON-able, and its repr is no help either."""

    def __repr__(self):
        raise RuntimeError("no repr for you")


UNDECODABLE = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")


def every_kind_of_bad(context):
    """Each kind of bad output at once, beside items that are fine once made safe."""
    yield {"title": "x" * 1_000_000, "score": 1}
    yield {
        "title": f"NUL\x00 and undecodable {UNDECODABLE}",
        "score": 2,
        "summary": f"\x00{UNDECODABLE}",
        "note": f"a\x00b{UNDECODABLE}",
        "nested": {"k\x00": [UNDECODABLE, 1.5, None]},
    }
    yield {
        "title": "values that are not JSON",
        "score": 3,
        "when": datetime(2026, 11, 26),
        "amount": Decimal("1.5"),
        "tags": {"a", "b"},
        "thing": Opaque(),
        "ratio": math.inf,
    }
    yield {"title": "a data: link", "score": 5, "url": "data:text/html,<script>alert(1)</script>"}
    yield {"title": "first copy", "score": 6, "id": "same"}
    yield {"title": "second copy", "score": 7, "id": "same"}
    yield {"title": "<script>alert(1)</script>", "score": 8, "summary": "<b>bold</b>"}
    yield {"title": "Subject\r\nBcc: victim@example.com", "score": 9}
    yield {"title": "Decimal score", "score": Decimal("10.5")}
    yield {"title": b"bytes title", "score": 4}
    yield {"title": "boolean score", "score": True}
    yield {"title": "infinite score", "score": math.inf}
    yield {"title": "string score", "score": "9"}
    yield {"title": "", "score": 1}
    yield {"score": 1}
    yield None
    yield "a string"
    yield Opaque()


def many(context):
    """100,000 items, scores 0-999."""
    for n in range(100_000):
        yield {"title": f"item {n:06d}", "score": n % 1000, "id": str(n)}


def hang_while_flagged(context):
    """Hangs while the file HANG_FLAG exists (five minutes at most), then is the keywords
    agent: a worker to kill half way, and a quick re-run once the flag is gone. With
    HANG_WINDOW set, only that window hangs: a schedule tick's run of another window goes
    through instead of holding the one run slot."""
    flag = os.environ.get("HANG_FLAG", "")
    if os.environ.get("HANG_WINDOW", context.partition_key) == context.partition_key:
        deadline = time.monotonic() + 300
        while flag and os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.2)
    yield from keywords_agent(context)


def broken_while_flagged(context):
    """Fails as an agent with an expired API key does while the file BROKEN_FLAG exists,
    then is the keywords agent: a broken agent that someone fixes."""
    if os.path.exists(os.environ["BROKEN_FLAG"]):
        raise RuntimeError("LLM API: 401 the API key has expired")
    yield from keywords_agent(context)


def huge_scores(context):
    """Two items scored 1e307 among ordinary ones."""
    yield {"title": "Overflowing", "score": 1e307}
    yield {"title": "Negative overflow", "score": -1e307}
    for n in range(6):
        yield {"title": f"Ordinary {n}", "score": n}


# Ten JSON fields of about 8 KB each, shared by every item as an agent's records often are.
FAT_FIELDS = {f"field{n}": {"text": "x" * 8_000} for n in range(10)}


def many_with_extras(context):
    """100,000 items with ten 8 KB extra fields, a 2 KB summary and a 2 KB URL each; the best
    one comes last."""
    summary, path = "s" * 2_000, "p" * 2_000
    for n in range(100_000):
        yield {"title": f"item {n:06d}", "score": n % 1000, "summary": summary,
               "url": f"https://example.org/{n}/{path}", **FAT_FIELDS}
    yield {"title": "the best, last", "score": 5_000, **FAT_FIELDS}
