"""Agents for tests, loaded through AGENT=agent_pipeline_tests.sample_agents:NAME."""

from __future__ import annotations

import math
import os
import time

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


def nothing(context):
    return []


def not_a_list(context):
    return "a string is not a list of outcomes"


def slow_keywords(context):
    """The keywords agent after a pause of SLOW_AGENT_SECONDS: long enough to see overlap."""
    time.sleep(float(os.environ.get("SLOW_AGENT_SECONDS", "1")))
    yield from keywords_agent(context)
