"""Validation and ranking of what an agent returns. Plain functions: no Dagster here."""

from __future__ import annotations

import itertools
import json
import math
import numbers
import operator
import reprlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent_pipeline.errors import AgentOutputError
from agent_pipeline.text import (
    MAX_SUMMARY_CHARS,
    MAX_TITLE_CHARS,
    clean_text,
    safe_url,
    storable_text,
)

TOP_N = 5
MAX_EXTRA_FIELDS = 20
MAX_EXTRA_JSON_CHARS = 10_000
# All of one outcome's extra fields together: what one outcome may add to the stored row.
MAX_EXTRAS_CHARS_PER_ITEM = 10_000
# Scores are finite numbers within this bound; an item scored past it is dropped (its score
# means nothing next to the others', and 100 * 1e307 overflows where the email scales it).
MAX_ABS_SCORE = 1e12
# An agent's output is read up to this many items (an endless generator stops here, said in
# the log); of the valid ones, the best MAX_OUTCOMES_KEPT by score are kept and checked in
# full, the rest counted. Memory and time stay bounded and the top is never cut off.
MAX_ITEMS_READ = 1_000_000
MAX_OUTCOMES_KEPT = 1_000
# What one agent_runs row keeps: the schedule writes 52,560 rows a year.
MAX_STORED_OUTCOMES = 100
MAX_STORED_DROPS = 50
MAX_RESULT_BYTES = 1_000_000
PREVIEW_CHARS = 200
# An agent's stats: at most this many keys are kept.
MAX_STATS_KEYS = 50
# Distinct drop reasons counted by name; any further ones are counted together.
MAX_DROP_REASONS = 50
OTHER_REASONS = "other reasons"

KNOWN_FIELDS = ("title", "score", "url", "summary", "id")


@dataclass(frozen=True)
class Dropped:
    index: int
    reason: str
    preview: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "preview": self.preview}


@dataclass
class Validation:
    """What came of an agent's output: the kept outcomes, cleaned, and an account of the
    rest. Everything in it is bounded, whatever the agent returned."""

    # The best valid outcomes by score, at most MAX_OUTCOMES_KEPT, in the agent's order.
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    # Valid outcomes the agent returned, kept or not.
    valid_total: int = 0
    # The first MAX_STORED_DROPS dropped items; every drop is counted by reason.
    dropped: list[Dropped] = field(default_factory=list)
    dropped_reasons: Counter[str] = field(default_factory=Counter)
    # Fixes made to kept items (a URL removed, a title cut), one line each, the first
    # MAX_STORED_DROPS of them.
    warnings: list[str] = field(default_factory=list)
    warnings_total: int = 0
    # The agent went on past MAX_ITEMS_READ items: the rest were not read.
    read_cut: bool = False
    # Valid outcomes left out as copies of a better-ranked one, or as sent in earlier
    # windows' emails.
    duplicates_removed: int = 0
    already_sent_left_out: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped_reasons.values())

    @property
    def not_kept(self) -> int:
        """Valid, new and distinct, but below the best MAX_OUTCOMES_KEPT."""
        return (self.valid_total - len(self.outcomes) - self.duplicates_removed
                - self.already_sent_left_out)

    def drop(self, index: int, reason: str, item: Any) -> None:
        if reason not in self.dropped_reasons and len(self.dropped_reasons) >= MAX_DROP_REASONS:
            reason = OTHER_REASONS
        self.dropped_reasons[reason] += 1
        if len(self.dropped) < MAX_STORED_DROPS:  # a preview costs a repr: only those kept
            self.dropped.append(Dropped(index, reason, _preview(item)))

    def warn(self, warning: str) -> None:
        self.warnings_total += 1
        if len(self.warnings) < MAX_STORED_DROPS:
            self.warnings.append(warning)


@dataclass(frozen=True)
class Ranking:
    ranked: list[dict[str, Any]]
    top: list[dict[str, Any]]
    duplicates_removed: int
    already_sent_left_out: int = 0
    # Items left out of the top for scoring under the digest's minimum: they match nothing.
    below_min_score: int = 0
    min_score: float | None = None


def iterate_outcomes(raw: Any) -> Iterator[Any]:
    """The agent's return value as an iterator of items, or AgentOutputError if it is no
    list of items at all."""
    if raw is None:
        raise AgentOutputError("the agent returned None; expected an iterable of mappings")
    if isinstance(raw, str | bytes | bytearray | Mapping):
        raise AgentOutputError(
            f"the agent returned a {type(raw).__name__}; expected an iterable of mappings"
        )
    try:
        return iter(raw)
    except TypeError:
        raise AgentOutputError(
            f"the agent returned a {type(raw).__name__}, which is not iterable; "
            "expected an iterable of mappings"
        ) from None


class _PreviewRepr(reprlib.Repr):
    """reprlib's bounded repr (a huge or deeply nested item costs little), with a failing
    __repr__ shown as the type's name."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = PREVIEW_CHARS
        self.maxlevel = 3

    def repr_instance(self, obj: Any, level: int) -> str:
        try:
            text = repr(obj)
        except Exception:  # a hostile __repr__ must not break validation
            return f"<{type(obj).__name__}>"
        return text if len(text) <= self.maxother else text[: self.maxother] + "..."


_PREVIEW = _PreviewRepr()


def _preview(item: Any) -> str:
    try:
        return clean_text(_PREVIEW.repr(item), PREVIEW_CHARS)
    except Exception:  # e.g. an int of more digits than Python will print
        return f"<{type(item).__name__}>"


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
    if abs(value) > MAX_ABS_SCORE:
        return f"score is outside ±{MAX_ABS_SCORE:g}"
    return value


class _NotStorable(Exception):
    pass


def _storable(value: Any, room: list[int], depth: int = 0) -> Any:
    """A copy of a JSON value that Postgres can store (see text.py), or _NotStorable. room
    holds the characters still allowed: a huge value is refused part way, not copied whole."""
    if depth > 20:
        raise _NotStorable("nested too deep")
    room[0] -= len(value) + 2 if isinstance(value, str) else 1
    if room[0] < 0:
        raise _NotStorable("too large")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > 64:  # JSON readers lose it, and 4,300 digits do not print
            raise _NotStorable("an integer too large")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotStorable("not a finite number")
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list | tuple):
        return [_storable(item, room, depth + 1) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise _NotStorable("keys that are not text")
        return {storable_text(k): _storable(v, room, depth + 1) for k, v in value.items()}
    raise _NotStorable(f"a {type(value).__name__}")


def storable_json(value: Any, limit: int = MAX_EXTRA_JSON_CHARS) -> tuple[Any, int]:
    """value made storable and its length as JSON, at most limit; _NotStorable if not."""
    over = _NotStorable(f"over {limit:,} characters as JSON")
    try:
        stored = _storable(value, [limit])
    except _NotStorable as problem:
        raise over if str(problem) == "too large" else problem from None
    except RecursionError:
        raise _NotStorable("nested too deep") from None
    size = len(json.dumps(stored))
    if size > limit:
        raise over
    return stored, size


def storable_stats(stats: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """An agent's account of its work made storable key by key, within limit characters as
    JSON in all: a value that cannot be stored, or does not fit in what is left, is replaced
    by the reason, and the other keys are kept (LLM calls and cost must not be lost to one
    long list of failed sources)."""
    kept: dict[str, Any] = {}
    room = limit - 100  # what the closing "stats_truncated" may need
    try:
        entries = list(itertools.islice(stats.items(), MAX_STATS_KEYS + 1))
    except Exception as exc:  # an agent's own mapping type that fails to list its items
        return {"stats_not_stored": f"unreadable ({type(exc).__name__})"}
    for position, (key, value) in enumerate(entries):
        if room <= 0 or position == MAX_STATS_KEYS:
            kept["stats_truncated"] = f"the entries after the first {position} left out"
            break
        try:
            name = clean_text(str(key), 100) or f"stat {position}"
        except Exception:
            name = f"stat {position}"
        try:
            kept[name], size = storable_json(value, max(room - len(name) - 4, 0))
        except Exception as problem:  # a custom agent's stats must not cost the run
            reason = problem if isinstance(problem, _NotStorable) else type(problem).__name__
            kept[name] = f"not stored: {reason}"
            size = len(kept[name]) + 2
        room -= size + len(name) + 4
    return kept


def screen_outcome(item: Any) -> tuple[str, float] | str:
    """The cleaned title and the score, or the reason the item is dropped: the checks every
    item gets, cheap whatever else it carries."""
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
    return title, parse_score(item["score"])


def complete_outcome(
    item: Mapping[str, Any], index: int, title: str, score: float, validation: Validation
) -> dict[str, Any]:
    """The cleaned outcome of a screened item: its optional and extra fields checked, fixes
    noted in validation's warnings."""
    outcome: dict[str, Any] = {"title": title, "score": score}
    if item.get("url") is not None:
        url = safe_url(item["url"])
        if url is None:
            validation.warn(f"item {index}: url removed (only absolute http(s) URLs are kept)")
        else:
            outcome["url"] = url
    if item.get("summary") is not None:
        if isinstance(item["summary"], str):
            outcome["summary"] = clean_text(item["summary"], MAX_SUMMARY_CHARS)
        else:
            validation.warn(f"item {index}: summary removed (not text)")
    if item.get("id") is not None:
        item_id = item["id"]
        if isinstance(item_id, str | int) and not isinstance(item_id, bool):
            outcome["id"] = clean_text(str(item_id), MAX_TITLE_CHARS)
        else:
            validation.warn(f"item {index}: id removed (not text or an integer)")
    extras = extras_chars = 0
    for key, value in item.items():
        if key in KNOWN_FIELDS:
            continue
        name = clean_text(key, 100) if isinstance(key, str) else ""
        # A key such as "title\x00" must not come back as "title" over the checked value.
        if not name or name in KNOWN_FIELDS or name in outcome:
            validation.warn(f"item {index}: field {_preview(key)} removed (bad or clashing name)")
            continue
        if extras >= MAX_EXTRA_FIELDS:
            validation.warn(
                f"item {index}: field {_preview(key)} removed (over {MAX_EXTRA_FIELDS} fields)"
            )
            continue
        room = MAX_EXTRAS_CHARS_PER_ITEM - extras_chars
        try:
            stored, size = storable_json(value, min(MAX_EXTRA_JSON_CHARS, room))
        except _NotStorable as problem:
            why = f"not JSON-able: {problem}"
            if str(problem).startswith("over "):
                why = str(problem) if room >= MAX_EXTRA_JSON_CHARS else (
                    f"the item's extra fields would pass {MAX_EXTRAS_CHARS_PER_ITEM:,} "
                    "characters as JSON"
                )
            validation.warn(f"item {index}: field {_preview(key)} removed ({why})")
            continue
        outcome[name] = stored
        extras += 1
        extras_chars += size
    return outcome


# A candidate's (-score, casefolded title, position): best first.
_rank_key = operator.itemgetter(0, 1, 2)


def _screened_key(item: Mapping[str, Any], title: str) -> str:
    """dedupe_key of the outcome the item will become, from the item as it is."""
    item_id = item.get("id")
    if isinstance(item_id, str | int) and not isinstance(item_id, bool):
        cleaned = clean_text(str(item_id), MAX_TITLE_CHARS)
        if cleaned:
            return f"id:{cleaned}"
    url = safe_url(item.get("url")) if item.get("url") is not None else None
    return f"url:{url}" if url else f"title:{title.casefold()}"


def _best(
    candidates: list[list], keep: int, already_sent: Set[str], validation: Validation
) -> list[list]:
    """The best `keep` candidates, one per dedupe key (the best-ranked copy), none already
    sent. A candidate's key is worked out once, when the walk first reaches it: most items
    fall below the best before it does."""
    candidates.sort(key=_rank_key)
    seen: set[str] = set()
    best = []
    for candidate in candidates:
        if candidate[3] is None:
            try:
                candidate[3] = _screened_key(candidate[4], candidate[5])
            except Exception:  # read once already; if it fails now, it is its own item
                candidate[3] = f"position:{candidate[2]}"
            if candidate[3] in already_sent:
                validation.already_sent_left_out += 1
        if candidate[3] in already_sent:
            continue
        if candidate[3] in seen:
            validation.duplicates_removed += 1
            continue
        seen.add(candidate[3])
        best.append(candidate)
        if len(best) == keep:
            break
    return best


def validate_outcomes(
    items: Iterable[Any],
    keep: int = MAX_OUTCOMES_KEPT,
    read_limit: int = MAX_ITEMS_READ,
    already_sent: Set[str] = frozenset(),
) -> Validation:
    """Every item read is screened: dropped with its reason, or a valid outcome. Of the
    valid ones, the best `keep` distinct ones not in already_sent (dedupe keys of earlier
    windows' emails), by score, then title, then position (the ranking's order), are checked
    in full and kept; duplicates and items already sent met on the way are counted, the rest
    counted as not kept. Choosing after duplicates and sent items are out keeps them from
    crowding the new items out of the top. At most read_limit items are read."""
    validation = Validation()
    candidates: list[list] = []
    for index, item in enumerate(itertools.islice(items, read_limit + 1)):
        if index == read_limit:
            validation.read_cut = True
            break
        try:
            screened = screen_outcome(item)
        except Exception as exc:  # a mapping of the agent's own whose methods raise
            screened = f"item could not be read ({type(exc).__name__})"
        if isinstance(screened, str):
            validation.drop(index, screened, item)
            continue
        title, score = screened
        if isinstance(score, str):
            validation.drop(index, score, item)
            continue
        validation.valid_total += 1
        candidates.append([-score, title.casefold(), index, None, item, title, score])
        if len(candidates) >= 2 * keep:  # prune in batches: a sort per item would cost more
            candidates = _best(candidates, keep, already_sent, validation)
    candidates = _best(candidates, keep, already_sent, validation)
    candidates.sort(key=lambda candidate: candidate[2])  # back to the agent's order
    for _, _, index, _, item, title, score in candidates:
        try:
            validation.outcomes.append(complete_outcome(item, index, title, score, validation))
        except Exception as exc:
            validation.valid_total -= 1  # counted once: as dropped
            validation.drop(index, f"item could not be read ({type(exc).__name__})", item)
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
    min_score: float | None = None,
) -> Ranking:
    """Deduplicated (the best-scored copy wins) and sorted by score, highest first; ties go
    by title, then by the agent's order, so equal input always ranks the same. The top leaves
    out items whose dedupe key is in already_sent (sent in earlier windows' emails), and items
    scored under min_score (None: no minimum)."""
    if not outcomes:
        return Ranking(ranked=[], top=[], duplicates_removed=0)
    # Imported here, not at the top: only a run ranks, and pandas is 0.3 s and 40 MB that the
    # code server, the sensors and every process that merely loads the definitions would pay.
    import pandas as pd

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
    relevant = [o for o in new if min_score is None or o["score"] >= min_score]
    return Ranking(
        ranked=ranked,
        top=relevant[:top_n],
        duplicates_removed=len(frame) - len(unique),
        already_sent_left_out=len(ranked) - len(new),
        below_min_score=len(new) - len(relevant),
        min_score=min_score,
    )


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def build_result(
    validation: Validation, ranking: Ranking, agent_stats: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON document stored in agent_runs.result: at most MAX_RESULT_BYTES, whatever the
    agent returned (agent_stats: its own account, already made storable). The ranked
    outcomes after the top five fill what room is left."""
    result: dict[str, Any] = {
        "top_five": ranking.top,
        "outcomes": [],
        "outcomes_total": validation.valid_total,
        "outcomes_ranked": len(ranking.ranked),
        "outcomes_not_kept": validation.not_kept,
        "duplicates_removed": validation.duplicates_removed + ranking.duplicates_removed,
        "already_sent_left_out": validation.already_sent_left_out
        + ranking.already_sent_left_out,
        "below_min_score_left_out": ranking.below_min_score,
        "min_score": ranking.min_score,
        "dropped": [dropped.as_dict() for dropped in validation.dropped[:MAX_STORED_DROPS]],
        "dropped_total": validation.dropped_total,
        "warnings": validation.warnings[:MAX_STORED_DROPS],
        "warnings_total": validation.warnings_total,
        "agent_stats": dict(agent_stats or {}),
    }
    room = MAX_RESULT_BYTES - _json_size(result)
    for outcome in ranking.ranked[:MAX_STORED_OUTCOMES]:
        size = _json_size(outcome) + 1
        if size > room:
            break
        result["outcomes"].append(outcome)
        room -= size
    return result


def drop_reason_rows(reasons: Counter[str]) -> list[dict[str, Any]]:
    """Why items were dropped, most common reason first: one row per reason for the UI's
    table."""
    return [{"reason": reason, "items": count} for reason, count in reasons.most_common()]


def top_five_rows(top: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The top five as rows for the UI's table (rank, score, title, url): plain values, which
    the UI shows as text, never as markup."""
    return [
        {"rank": rank, "score": outcome["score"], "title": outcome["title"],
         "url": outcome.get("url") or ""}
        for rank, outcome in enumerate(top, start=1)
    ]


def compact_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A stored result as the retention job keeps it once it is old: the top five, the counts
    and the agent's numeric stats (calls, tokens, cost); the outcomes, drops and warnings go."""
    def counts(values: Mapping[str, Any]) -> dict[str, Any]:
        return {
            key: value for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }

    compacted = {"top_five": result.get("top_five") or [], **counts(result)}
    if isinstance(result.get("agent_stats"), Mapping):
        compacted["agent_stats"] = counts(result["agent_stats"])
    return compacted


def sent_item_keys(top_fives: Iterable[Any]) -> set[str]:
    """Dedupe keys of the items in emails already sent (their top fives)."""
    return {
        dedupe_key(item)
        for top in top_fives
        for item in (top if isinstance(top, list) else [])
        if isinstance(item, dict) and item.get("title")
    }
