"""Validation and ranking of what an agent returns. Plain functions: no Dagster here."""

from __future__ import annotations

import itertools
import json
import math
import numbers
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from agent_pipeline.errors import AgentOutputError
from agent_pipeline.text import storable_text

TOP_N = 5
MAX_TITLE_CHARS = 300
MAX_SUMMARY_CHARS = 2_000
MAX_URL_CHARS = 2_048
MAX_EXTRA_FIELDS = 20
MAX_EXTRA_JSON_CHARS = 10_000
# Past this many items the agent's output is cut (with a warning), which bounds the memory
# and time of a run whatever the agent does.
MAX_ITEMS = 100_000
# What one agent_runs row keeps: the schedule writes 52,560 rows a year.
MAX_STORED_OUTCOMES = 100
MAX_STORED_DROPS = 50
PREVIEW_CHARS = 200

KNOWN_FIELDS = ("title", "score", "url", "summary", "id")
# C0/C1 control characters, CR and LF included: none of them belongs in a one-line title,
# and CR/LF is how a value breaks out of an email header.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True)
class Dropped:
    index: int
    reason: str
    preview: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "preview": self.preview}


@dataclass
class Validation:
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    # Fixes made to kept items (a URL removed, a title cut), one line each.
    warnings: list[str] = field(default_factory=list)
    # What the agent reported about its work (AgentContext.stats).
    agent_stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ranking:
    ranked: list[dict[str, Any]]
    top: list[dict[str, Any]]
    duplicates_removed: int
    already_sent_left_out: int = 0


def collect_outcomes(raw: Any, limit: int = MAX_ITEMS) -> tuple[list[Any], bool]:
    """The agent's return value as a list of at most limit items, and whether it was cut; or
    AgentOutputError if it is no list of items at all."""
    if raw is None:
        raise AgentOutputError("the agent returned None; expected an iterable of mappings")
    if isinstance(raw, str | bytes | bytearray | Mapping):
        raise AgentOutputError(
            f"the agent returned a {type(raw).__name__}; expected an iterable of mappings"
        )
    try:
        iterator = iter(raw)
    except TypeError:
        raise AgentOutputError(
            f"the agent returned a {type(raw).__name__}, which is not iterable; "
            "expected an iterable of mappings"
        ) from None
    items = list(itertools.islice(iterator, limit + 1))
    return items[:limit], len(items) > limit


def clean_text(value: str, limit: int) -> str:
    """One line of text: control characters become spaces, whitespace collapses, and the
    result is cut to limit characters."""
    text = " ".join(_CONTROL_CHARS.sub(" ", storable_text(value)).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def safe_url(value: Any) -> str | None:
    """The URL if it is an absolute http(s) URL fit for a link, else None."""
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        return None
    url = value.strip()
    if url != storable_text(url) or _CONTROL_CHARS.search(url) or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url


def _preview(item: Any) -> str:
    try:
        text = repr(item)
    except Exception:  # a hostile __repr__ must not break validation
        text = f"<{type(item).__name__}>"
    return clean_text(text, PREVIEW_CHARS)


def parse_score(score: Any) -> float | str:
    """The score as a finite float, or the reason it is not one."""
    if isinstance(score, bool):
        return "score is a boolean, not a number"
    if not isinstance(score, numbers.Real | Decimal):
        return f"score is a {type(score).__name__}, not a number"
    try:
        value = float(score)
    except (OverflowError, ValueError):
        return "score is out of range"
    if not math.isfinite(value):
        return f"score is {value}, not a finite number"
    return value


class _NotStorable(Exception):
    pass


def _storable(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON value that Postgres can store (see text.py), or _NotStorable."""
    if depth > 20:
        raise _NotStorable("nested too deep")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotStorable("not a finite number")
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list | tuple):
        return [_storable(item, depth + 1) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise _NotStorable("keys that are not text")
        return {storable_text(k): _storable(v, depth + 1) for k, v in value.items()}
    raise _NotStorable(f"a {type(value).__name__}")


def storable_json(value: Any) -> Any:
    """value made storable and at most MAX_EXTRA_JSON_CHARS as JSON; _NotStorable if not."""
    stored = _storable(value)
    if len(json.dumps(stored)) > MAX_EXTRA_JSON_CHARS:
        raise _NotStorable(f"over {MAX_EXTRA_JSON_CHARS:,} characters as JSON")
    return stored


def validate_outcome(item: Any, index: int, warnings: list[str]) -> dict[str, Any] | str:
    """The cleaned outcome, or the reason it is dropped. Fixes are appended to warnings."""
    if not isinstance(item, Mapping):
        return f"item is a {type(item).__name__}, not a mapping"
    if "title" not in item:
        return "missing title"
    title = item["title"]
    if not isinstance(title, str):
        return f"title is a {type(title).__name__}, not text"
    title = clean_text(title, MAX_TITLE_CHARS)
    if not title:
        return "empty title"
    if "score" not in item:
        return "missing score"
    score = parse_score(item["score"])
    if isinstance(score, str):
        return score

    outcome: dict[str, Any] = {"title": title, "score": score}
    if item.get("url") is not None:
        url = safe_url(item["url"])
        if url is None:
            warnings.append(f"item {index}: url removed (only absolute http(s) URLs are kept)")
        else:
            outcome["url"] = url
    if item.get("summary") is not None:
        if isinstance(item["summary"], str):
            outcome["summary"] = clean_text(item["summary"], MAX_SUMMARY_CHARS)
        else:
            warnings.append(f"item {index}: summary removed (not text)")
    if item.get("id") is not None:
        item_id = item["id"]
        if isinstance(item_id, str | int) and not isinstance(item_id, bool):
            outcome["id"] = clean_text(str(item_id), MAX_TITLE_CHARS)
        else:
            warnings.append(f"item {index}: id removed (not text or an integer)")
    extras = 0
    for key, value in item.items():
        if key in KNOWN_FIELDS:
            continue
        name = clean_text(key, 100) if isinstance(key, str) else ""
        # A key such as "title\x00" must not come back as "title" over the checked value.
        if not name or name in KNOWN_FIELDS or name in outcome:
            warnings.append(f"item {index}: field {_preview(key)} removed (bad or clashing name)")
        elif extras >= MAX_EXTRA_FIELDS:
            warnings.append(
                f"item {index}: field {_preview(key)} removed (over {MAX_EXTRA_FIELDS} fields)"
            )
        else:
            try:
                outcome[name] = storable_json(value)
                extras += 1
            except _NotStorable as problem:
                warnings.append(
                    f"item {index}: field {_preview(key)} removed (not JSON-able: {problem})"
                )
    return outcome


def validate_outcomes(items: Iterable[Any]) -> Validation:
    """Every item checked on its own: kept (cleaned), or dropped with its reason."""
    validation = Validation()
    for index, item in enumerate(items):
        checked = validate_outcome(item, index, validation.warnings)
        if isinstance(checked, str):
            validation.dropped.append(Dropped(index, checked, _preview(item)))
        else:
            validation.outcomes.append(checked)
    return validation


def dedupe_key(outcome: Mapping[str, Any]) -> str:
    """Same item: same id, else same URL, else same title (case-insensitive)."""
    if outcome.get("id"):
        return f"id:{outcome['id']}"
    if outcome.get("url"):
        return f"url:{outcome['url']}"
    return f"title:{outcome['title'].casefold()}"


def rank_outcomes(
    outcomes: list[dict[str, Any]],
    top_n: int = TOP_N,
    already_sent: frozenset[str] | set[str] = frozenset(),
) -> Ranking:
    """Deduplicated (the best-scored copy wins) and sorted by score, highest first; ties go
    by title, then by the agent's order, so equal input always ranks the same. The top leaves
    out items whose dedupe key is in already_sent (sent in earlier windows' emails)."""
    if not outcomes:
        return Ranking(ranked=[], top=[], duplicates_removed=0)
    frame = pd.DataFrame(
        {
            "position": range(len(outcomes)),
            "score": [outcome["score"] for outcome in outcomes],
            "title": [outcome["title"].casefold() for outcome in outcomes],
            "key": [dedupe_key(outcome) for outcome in outcomes],
        }
    )
    frame = frame.sort_values(
        ["score", "title", "position"], ascending=[False, True, True], kind="mergesort"
    )
    unique = frame.drop_duplicates("key", keep="first")
    ranked = [outcomes[position] for position in unique["position"]]
    new = [outcome for outcome in ranked if dedupe_key(outcome) not in already_sent]
    return Ranking(
        ranked=ranked,
        top=new[:top_n],
        duplicates_removed=len(frame) - len(unique),
        already_sent_left_out=len(ranked) - len(new),
    )


def build_result(validation: Validation, ranking: Ranking) -> dict[str, Any]:
    """The bounded JSON document stored in agent_runs.result."""
    return {
        "top_five": ranking.top,
        "outcomes": ranking.ranked[:MAX_STORED_OUTCOMES],
        "outcomes_total": len(ranking.ranked),
        "duplicates_removed": ranking.duplicates_removed,
        "already_sent_left_out": ranking.already_sent_left_out,
        "dropped": [dropped.as_dict() for dropped in validation.dropped[:MAX_STORED_DROPS]],
        "dropped_total": len(validation.dropped),
        "warnings": validation.warnings[:MAX_STORED_DROPS],
        "warnings_total": len(validation.warnings),
        "agent_stats": validation.agent_stats,
    }


def _markdown_cell(text: str) -> str:
    # Pipes end a cell and brackets or angle brackets could form links or HTML.
    return re.sub(r"([\\|\[\]<>`*_])", r"\\\1", text)


def drop_reasons_markdown(dropped: list[Dropped]) -> str:
    """Why items were dropped, most common reason first, as a Markdown table for the UI."""
    if not dropped:
        return "_Nothing dropped._"
    counts = Counter(item.reason for item in dropped).most_common()
    lines = ["| reason | items |", "| --- | --- |"]
    lines += [f"| {_markdown_cell(reason)} | {count} |" for reason, count in counts]
    return "\n".join(lines)


def top_five_markdown(top: list[dict[str, Any]]) -> str:
    """The top five as a Markdown table for the Dagster UI; cells are escaped."""
    if not top:
        return "_No outcomes._"
    cell = _markdown_cell
    lines = ["| # | score | title | url |", "| --- | --- | --- | --- |"]
    for rank, outcome in enumerate(top, start=1):
        url = outcome.get("url")
        lines.append(
            f"| {rank} | {outcome['score']:g} | {cell(outcome['title'])} | "
            f"{cell(url) if url else ''} |"
        )
    return "\n".join(lines)
