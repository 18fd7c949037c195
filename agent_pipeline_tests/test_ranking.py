from __future__ import annotations

import json
import math
import random
from decimal import Decimal

import pytest

from agent_pipeline.errors import AgentOutputError
from agent_pipeline.ranking import (
    MAX_RESULT_BYTES,
    MAX_STORED_OUTCOMES,
    MAX_TITLE_CHARS,
    build_result,
    dedupe_key,
    drop_reason_rows,
    iterate_outcomes,
    rank_outcomes,
    storable_stats,
    top_five_rows,
    validate_outcomes,
)
from agent_pipeline.text import clean_text, safe_url


@pytest.mark.parametrize(
    "raw, message",
    [
        (None, "returned None"),
        ("a string", "returned a str"),
        (b"bytes", "returned a bytes"),
        ({"title": "x", "score": 1}, "returned a dict"),
        (42, "int, which is not iterable"),
    ],
)
def test_what_is_no_list_of_items_is_refused(raw, message):
    with pytest.raises(AgentOutputError, match=message):
        iterate_outcomes(raw)


def test_generators_are_drained():
    items = ({"title": f"t{n}", "score": n} for n in range(3))
    validation = validate_outcomes(iterate_outcomes(items))
    assert validation.valid_total == 3 and len(validation.outcomes) == 3


def test_reading_stops_at_the_limit_and_says_so():
    def endless():
        n = 0
        while True:
            yield {"title": f"t{n}", "score": n}
            n += 1

    validation = validate_outcomes(endless(), read_limit=5)
    assert [o["score"] for o in validation.outcomes] == [0, 1, 2, 3, 4] and validation.read_cut
    assert not validate_outcomes([{"title": "t", "score": 1}] * 5, read_limit=5).read_cut


def test_the_best_are_kept_wherever_they_come_and_the_rest_counted():
    """Kept: the best by score, ties by title then position, as the ranking orders them;
    the best item last among 10,000 is still in the top."""
    items = [{"title": f"item {n:05d}", "score": n % 100} for n in range(10_000)]
    items.append({"title": "the best", "score": 1_000})
    validation = validate_outcomes(items, keep=150)
    assert validation.valid_total == 10_001 and validation.not_kept == 10_001 - 150
    kept = {o["title"] for o in validation.outcomes}
    assert "the best" in kept
    expected_99 = sorted(f"item {n:05d}" for n in range(99, 10_000, 100))
    expected_98 = sorted(f"item {n:05d}" for n in range(98, 10_000, 100))[:49]
    assert kept == {"the best", *expected_99, *expected_98}
    top = rank_outcomes(validation.outcomes).top
    assert [o["title"] for o in top] == ["the best", *expected_99[:4]]


@pytest.mark.parametrize("key", ["title\x00", " title", "score\r\n", "url\t", "id "])
def test_extra_keys_cannot_pose_as_checked_fields(key):
    item = {"title": "safe", "score": 1, key: "<b>javascript:alert(1)</b>"}
    validation = validate_outcomes([item])
    (outcome,) = validation.outcomes
    assert outcome == {"title": "safe", "score": 1.0}
    assert "clashing name" in validation.warnings[0]


def test_extra_fields_are_capped_per_item():
    item = {"title": "t", "score": 1, **{f"field{n:02d}": n for n in range(30)}}
    validation = validate_outcomes([item])
    (outcome,) = validation.outcomes
    assert len(outcome) == 2 + 20
    assert len(validation.warnings) == 10 and "over 20 fields" in validation.warnings[0]


@pytest.mark.parametrize(
    "item, reason",
    [
        ("just text", "item is a str, not a mapping"),
        (["title", 1], "item is a list, not a mapping"),
        ({"score": 1}, "missing title"),
        ({"title": None, "score": 1}, "title is a NoneType, not text"),
        ({"title": "  \n\t ", "score": 1}, "empty title"),
        ({"title": "t"}, "missing score"),
        ({"title": "t", "score": True}, "score is a boolean"),
        ({"title": "t", "score": "90"}, "score is a str, not a number"),
        ({"title": "t", "score": None}, "score is a NoneType, not a number"),
        ({"title": "t", "score": math.nan}, "score is nan"),
        ({"title": "t", "score": math.inf}, "score is inf"),
        ({"title": "t", "score": -math.inf}, "score is -inf"),
        ({"title": "t", "score": 10**400}, "score is out of range"),
        ({"title": "t", "score": 1e307}, "score is outside ±1e+12"),
        ({"title": "t", "score": -2e12}, "score is outside ±1e+12"),
    ],
)
def test_invalid_items_are_dropped_with_their_reason(item, reason):
    validation = validate_outcomes([{"title": "kept", "score": 1}, item])
    assert [o["title"] for o in validation.outcomes] == ["kept"]
    assert len(validation.dropped) == 1
    assert validation.dropped[0].index == 1
    assert validation.dropped[0].reason.startswith(reason)


@pytest.mark.parametrize(
    "score, expected", [(7, 7.0), (7.5, 7.5), (Decimal("3.25"), 3.25), (-1, -1.0)]
)
def test_numeric_scores_become_floats(score, expected):
    (outcome,) = validate_outcomes([{"title": "t", "score": score}]).outcomes
    assert outcome["score"] == expected
    assert isinstance(outcome["score"], float)


def test_kept_items_are_cleaned_and_extra_json_fields_kept():
    item = {
        "title": "Line one\r\nBcc: victim@example.com\x00",
        "score": 3,
        "url": "https://example.org/a?b=c",
        "summary": "  spaced   out  ",
        "id": 17,
        "source": "feed",
        "tags": ["a", "b"],
    }
    (outcome,) = validate_outcomes([item]).outcomes
    assert outcome == {
        "title": "Line one Bcc: victim@example.com",
        "score": 3.0,
        "url": "https://example.org/a?b=c",
        "summary": "spaced out",
        "id": "17",
        "source": "feed",
        "tags": ["a", "b"],
    }


@pytest.mark.parametrize(
    "field_name, value, warning",
    [
        ("url", "javascript:alert(1)", "url removed"),
        ("url", "data:text/html,<script>", "url removed"),
        ("url", "/relative/path", "url removed"),
        ("url", 12, "url removed"),
        ("summary", ["not", "text"], "summary removed"),
        ("id", {"nested": 1}, "id removed"),
        ("when", object(), "removed (not JSON-able: a object)"),
        ("ratio", math.nan, "removed (not JSON-able: not a finite number)"),
    ],
)
def test_bad_optional_fields_are_removed_and_the_item_kept(field_name, value, warning):
    validation = validate_outcomes([{"title": "t", "score": 1, field_name: value}])
    (outcome,) = validation.outcomes
    assert field_name not in outcome
    assert len(validation.warnings) == 1 and warning in validation.warnings[0]


def test_long_titles_are_cut():
    (outcome,) = validate_outcomes([{"title": "x" * 1_000_000, "score": 1}]).outcomes
    assert len(outcome["title"]) == MAX_TITLE_CHARS
    assert outcome["title"].endswith("…")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://example.org", "http://example.org"),
        ("  https://example.org/x  ", "https://example.org/x"),
        ("HTTPS://EXAMPLE.ORG", "HTTPS://EXAMPLE.ORG"),
        ("javascript:alert(1)", None),
        ("ftp://example.org/file", None),
        ("https://", None),
        ("https://exa mple.org", None),
        ("https://example.org/\nx", None),
        (None, None),
    ],
)
def test_safe_url(url, expected):
    assert safe_url(url) == expected


def test_clean_text_collapses_control_characters_and_whitespace():
    assert clean_text("a\tb\r\n\x1bc  d", 100) == "a b c d"
    assert clean_text("abcdef", 4) == "abc…"


def test_ranking_sorts_by_score_then_title_then_input_order():
    outcomes = [
        {"title": "b", "score": 5.0},
        {"title": "C", "score": 9.0},
        {"title": "a", "score": 5.0},
        {"title": "d", "score": 1.0},
        {"title": "e", "score": 7.0},
        {"title": "f", "score": 0.5},
    ]
    ranking = rank_outcomes(outcomes)
    assert [o["title"] for o in ranking.ranked] == ["C", "e", "a", "b", "d", "f"]
    assert [o["title"] for o in ranking.top] == ["C", "e", "a", "b", "d"]


def test_ranking_is_the_same_whatever_the_input_order():
    outcomes = [{"title": f"title {n:02d}", "score": float(n % 3)} for n in range(12)]
    expected = rank_outcomes(outcomes).ranked
    for seed in range(5):
        shuffled = outcomes[:]
        random.Random(seed).shuffle(shuffled)
        assert rank_outcomes(shuffled).ranked == expected


def test_dedupe_by_id_then_url_then_title_keeps_the_best_scored_copy():
    outcomes = [
        {"title": "first", "score": 1.0, "id": "x"},
        {"title": "second", "score": 3.0, "id": "x"},
        {"title": "u1", "score": 2.0, "url": "https://e.org/a"},
        {"title": "u2", "score": 1.5, "url": "https://e.org/a"},
        {"title": "Same Title", "score": 0.5},
        {"title": "same title", "score": 0.7},
    ]
    ranking = rank_outcomes(outcomes)
    assert [o["title"] for o in ranking.ranked] == ["second", "u1", "same title"]
    assert ranking.duplicates_removed == 3


def test_dedupe_key_prefers_id():
    assert dedupe_key({"title": "t", "id": "1", "url": "https://e.org"}) == "id:1"
    assert dedupe_key({"title": "t", "url": "https://e.org"}) == "url:https://e.org"
    assert dedupe_key({"title": "T"}) == "title:t"


def test_fewer_than_five_and_none():
    assert len(rank_outcomes([{"title": "a", "score": 1.0}]).top) == 1
    empty = rank_outcomes([])
    assert empty.top == [] and empty.ranked == []


def test_result_is_bounded():
    validation = validate_outcomes(
        [{"title": f"item {n}", "score": n} for n in range(500)] + ["bad"] * 300
    )
    result = build_result(validation, rank_outcomes(validation.outcomes))
    assert [o["score"] for o in result["top_five"]] == [499, 498, 497, 496, 495]
    assert len(result["outcomes"]) == MAX_STORED_OUTCOMES
    assert result["outcomes_total"] == 500
    assert result["dropped_total"] == 300 and len(result["dropped"]) == 50


def test_the_stored_result_stays_under_a_megabyte_whatever_the_items_carry():
    fat = {f"field{n}": "x" * 8_000 for n in range(10)}
    items = [
        {"title": f"item {n} " + "t" * 500, "score": n, "summary": "s" * 5_000,
         "url": "https://example.org/" + "u" * 2_000, "id": f"id-{n}", **fat}
        for n in range(2_000)
    ]
    validation = validate_outcomes(items)
    result = build_result(validation, rank_outcomes(validation.outcomes))
    size = len(json.dumps(result, separators=(",", ":")).encode())
    assert size <= MAX_RESULT_BYTES
    assert [o["score"] for o in result["top_five"]] == [1999, 1998, 1997, 1996, 1995]
    assert 0 < len(result["outcomes"]) < MAX_STORED_OUTCOMES  # as many as fit
    # One 8,000-character field fits in an item's 10,000 for extras; the other nine do not.
    assert sum(key.startswith("field") for key in result["top_five"][0]) == 1
    assert result["warnings_total"] == 1_000 * 9 and len(result["warnings"]) == 50
    assert result["outcomes_total"] == 2_000 and result["outcomes_not_kept"] == 1_000


def test_many_distinct_drop_reasons_are_counted_in_bounded_space():
    kinds = [type(f"Kind{n}", (), {}) for n in range(200)]
    validation = validate_outcomes([kind() for kind in kinds])
    assert validation.dropped_total == 200 and len(validation.dropped_reasons) == 51
    assert validation.dropped_reasons["other reasons"] == 150
    assert len(validation.dropped) == 50


def test_the_top_five_rows_keep_the_text_as_it_is():
    rows = top_five_rows(
        [{"title": "a | b <script>", "score": 2.5, "url": "https://e.org/x_y"},
         {"title": "no link", "score": 1}]
    )
    assert rows == [
        {"rank": 1, "score": 2.5, "title": "a | b <script>", "url": "https://e.org/x_y"},
        {"rank": 2, "score": 1, "title": "no link", "url": ""},
    ]
    assert top_five_rows([]) == []


def test_drop_reasons_are_counted_most_common_first():
    validation = validate_outcomes(
        [{"title": "a"}, {"title": "b"}, {"score": 1}, "x", {"title": "c | d"}]
    )
    assert drop_reason_rows(validation.dropped_reasons) == [
        {"reason": "missing score", "items": 3},
        {"reason": "missing title", "items": 1},
        {"reason": "item is a str, not a mapping", "items": 1},
    ]
    assert drop_reason_rows(validate_outcomes([]).dropped_reasons) == []


def test_the_top_leaves_out_items_already_sent():
    outcomes = [{"title": f"t{n}", "score": float(n), "id": str(n)} for n in range(8)]
    ranking = rank_outcomes(outcomes, already_sent={"id:7", "id:5", "id:99"})
    assert [o["id"] for o in ranking.top] == ["6", "4", "3", "2", "1"]
    assert len(ranking.ranked) == 8 and ranking.already_sent_left_out == 2


def test_the_top_leaves_out_items_under_the_minimum_score():
    outcomes = [{"title": f"t{n}", "score": float(n), "id": str(n)} for n in range(4)]
    ranking = rank_outcomes(outcomes, min_score=2)
    assert [o["id"] for o in ranking.top] == ["3", "2"]
    assert len(ranking.ranked) == 4 and ranking.below_min_score == 2
    nothing = rank_outcomes([{"title": "x", "score": 0.0}], min_score=0.1)
    assert nothing.top == [] and nothing.below_min_score == 1
    assert rank_outcomes([{"title": "x", "score": 0.0}]).top != []  # no minimum: no cut


def test_duplicates_do_not_crowd_the_others_out_of_the_kept():
    copies = [{"title": "same", "score": 100, "id": "x"}] * 1_000
    others = [{"title": f"other {n}", "score": n} for n in range(10)]
    validation = validate_outcomes(copies + others, keep=100)
    assert len(validation.outcomes) == 11 and validation.duplicates_removed == 999
    assert len(rank_outcomes(validation.outcomes).top) == 5


def test_stats_are_kept_key_by_key_within_their_bound():
    stats = {"sources_failed": {f"https://x.org/{n}": "e" * 300 for n in range(1_000)},
             "llm_calls": 12, "cost": 0.25, "odd": {1, 2}}
    kept = storable_stats(stats, 50_000)
    assert kept["llm_calls"] == 12 and kept["cost"] == 0.25
    assert kept["sources_failed"].startswith("not stored: over ")
    assert kept["odd"] == "not stored: a set"
    assert len(json.dumps(kept)) < 50_000


class Unlistable(list):
    def __iter__(self):
        raise RuntimeError("no")


class Unprintable:
    def __str__(self):
        raise RuntimeError("no")


def test_hostile_stats_cost_their_own_entry_and_the_total_stays_bounded():
    stats = {"huge": 10**5000, "broken": Unlistable([1]), Unprintable(): 1, "ok": 2,
             **{f"filler {n}": "x" * 9_000 for n in range(10)}, "late": 3}
    kept = storable_stats(stats, 50_000)
    assert kept["huge"] == "not stored: an integer too large"
    assert kept["broken"] == "not stored: RuntimeError" and kept["stat 2"] == 1
    # Fillers fit while there is room, then each says it did not; small ones still fit.
    assert kept["ok"] == 2 and kept["late"] == 3
    assert kept["filler 9"].startswith("not stored: over ")
    assert len(json.dumps(kept)) <= 50_000
    many = storable_stats({f"k{n}": n for n in range(60)}, 50_000)
    assert len(many) == 51 and many["stats_truncated"] == "the entries after the first 50 left out"


def test_an_integer_no_json_reader_can_hold_costs_its_field_or_item_only():
    validation = validate_outcomes([
        {"title": "a", "score": 10**5000}, {"title": "b", "x": 10**5000},
        {"title": "c", "score": 1, "n": 10**5000}, {"title": "d", "score": 2, "id": 10**5000},
    ])
    assert [o["title"] for o in validation.outcomes] == ["c"]
    assert validation.dropped_total == 3 and validation.valid_total == 1
    assert "an integer too large" in validation.warnings[0]


class Treacherous(dict):
    """A mapping whose reads fail after the first few: an agent's own type."""

    reads = 0

    def get(self, key, default=None):
        Treacherous.reads += 1
        if Treacherous.reads > 2:
            raise RuntimeError("gone")
        return super().get(key, default)

    def __contains__(self, key):
        if key == "title" and self.get("explode_early"):
            raise RuntimeError("no")
        return super().__contains__(key)


def test_an_item_whose_reads_fail_is_dropped_not_the_run():
    items = [Treacherous(title="a", score=1, explode_early=True),
             Treacherous(title="b", score=2, url="https://x.org/b", summary="s"),
             {"title": "c", "score": 3}]
    validation = validate_outcomes(items)
    assert [o["title"] for o in validation.outcomes] == ["c"]
    assert validation.dropped_reasons == {"item could not be read (RuntimeError)": 2}
