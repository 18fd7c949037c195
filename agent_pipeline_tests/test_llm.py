from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from agent_pipeline.agents.llm import (
    MAX_COMPLETION_TOKENS,
    LlmError,
    LlmScorer,
    LlmSettings,
    MalformedAnswer,
    Prices,
    ScoringDeadline,
    parse_answer,
)
from agent_pipeline.retries import retry_after_seconds
from agent_pipeline_tests.feed_server import DripServer
from agent_pipeline_tests.llm_server import LoopbackLlm, Reply, default_score

LOG = logging.getLogger("test-llm")


def scorer(llm: LoopbackLlm, waits: list[float] | None = None, **settings) -> LlmScorer:
    options = {"concurrency": 4, "timeout_seconds": 5, "max_retries": 3, "backoff_seconds": 0.01}
    options.update(settings)
    sleep = waits.append if waits is not None else time.sleep
    return LlmScorer(
        LlmSettings(base_url=llm.base_url, api_key="sk-test", model="test-model", **options),
        interests="dagster, postgres",
        log=LOG,
        sleep=sleep,
    )


def items(count: int) -> list[dict]:
    return [{"title": f"item {n}", "summary": f"about {n}"} for n in range(count)]


def test_concurrency_stays_within_the_bound_and_usage_is_summed():
    with LoopbackLlm(lambda request, call: Reply(delay=0.1)) as llm:
        with scorer(llm, concurrency=8) as llm_scorer:
            results = llm_scorer.score_all(items(40), llm_scorer.score)
    assert llm.max_in_flight == 8  # in parallel, never past the bound
    assert [score for score, _ in results] == [
        float(default_score(f"item {n}")) for n in range(40)
    ]
    usage = llm_scorer.usage
    assert (usage.calls, usage.prompt_tokens, usage.completion_tokens) == (40, 2000, 400)
    assert Prices(2.5, 10.0).cost(usage.prompt_tokens, usage.completion_tokens) == (
        pytest.approx((2000 * 2.5 + 400 * 10.0) / 1e6)
    )
    request, headers = llm.requests[0], llm.headers[0]
    assert headers["Authorization"] == "Bearer sk-test"
    assert request["model"] == "test-model" and request["response_format"]["type"] == "json_object"
    assert "Reader's interests: dagster, postgres" in request["messages"][1]["content"]


def test_429_waits_as_retry_after_says():
    def script(request, call):
        return Reply(status=429, headers={"Retry-After": "3"}) if call == 1 else Reply()

    waits: list[float] = []
    with LoopbackLlm(script) as llm, scorer(llm, waits) as llm_scorer:
        (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert result is not None and waits == [3.0]
    assert llm_scorer.usage.calls == 1  # the 429 is no completion


def test_server_errors_back_off_exponentially_then_give_up():
    waits: list[float] = []
    with LoopbackLlm(lambda request, call: Reply(status=503)) as llm:
        with scorer(llm, waits, max_retries=3, backoff_seconds=1.0) as llm_scorer:
            (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert isinstance(result, LlmError) and str(result) == "HTTP 503 after 4 attempts"
    assert len(waits) == 3 and len(llm.requests) == 4
    assert [0 <= wait <= 2**n for n, wait in enumerate(waits)] == [True] * 3


def test_a_500_then_success_is_scored():
    script = lambda request, call: Reply(status=500) if call <= 2 else Reply()  # noqa: E731
    with LoopbackLlm(script) as llm, scorer(llm, []) as llm_scorer:
        (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert result == (float(default_score("item 0")), "About item 0.")


def test_a_client_error_is_not_retried_and_never_shows_the_key():
    echo = Reply(status=400, body='{"error": "bad request from key sk-test"}')
    with LoopbackLlm(lambda request, call: echo) as llm:
        with scorer(llm, []) as llm_scorer:
            (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert isinstance(result, LlmError) and len(llm.requests) == 1
    assert "sk-test" not in str(result) and "bad request from key ***" in str(result)
    assert "sk-test" not in repr(llm_scorer.settings)


def test_a_refused_key_is_said_without_the_body():
    refused = Reply(status=401, body='{"error": "invalid key sk-test"}')
    with LoopbackLlm(lambda request, call: refused) as llm, scorer(llm, []) as llm_scorer:
        (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert str(result) == "HTTP 401: the API refused LLM_API_KEY"


@pytest.mark.parametrize(
    "body",
    ["[1, 2, 3]", '{"choices": []}', '{"choices": [{"message": {"content": 7}}]}', "null"],
)
def test_a_malformed_api_reply_drops_the_item_not_the_run(body):
    with LoopbackLlm(lambda request, call: Reply(body=body)) as llm:
        with scorer(llm, []) as llm_scorer:
            (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert result is None and len(llm.requests) == 2


def test_odd_usage_reports_do_not_break_scoring():
    odd = json.dumps({"choices": [{"message": {"content": '{"score": 5, "reason": "ok"}'}}],
                      "usage": {"prompt_tokens": "n/a", "completion_tokens": None}})
    with LoopbackLlm(lambda request, call: Reply(body=odd)) as llm:
        with scorer(llm, []) as llm_scorer:
            (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert result == (5.0, "ok") and llm_scorer.usage.prompt_tokens == 0


@pytest.mark.parametrize(
    "first, second, scored",
    [
        ("not json at all", None, True),
        ('{"score": 150, "reason": "too high"}', None, True),
        ("not json", "still not json", False),
        ('{"score": "high", "reason": "x"}', '{"reason": "no score"}', False),
    ],
)
def test_a_malformed_answer_is_retried_once_then_dropped(first, second, scored, caplog):
    def script(request, call):
        return Reply(content=first) if call == 1 else Reply(content=second)

    with LoopbackLlm(script) as llm, scorer(llm, []) as llm_scorer:
        (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert (result is not None) is scored
    assert len(llm.requests) == 2
    if not scored:
        assert "malformed answer" in caplog.text


def test_a_hanging_connection_times_out():
    with LoopbackLlm(lambda request, call: Reply(delay=3)) as llm:
        with scorer(llm, [], timeout_seconds=0.3, max_retries=1) as llm_scorer:
            (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    # Both attempts gave up at the timeout rather than waiting out the 3 s answer.
    assert isinstance(result, LlmError) and str(result) == "no answer within 0.3 s after 2 attempts"


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"score": 87, "reason": "Directly about Dagster."}', (87.0, "Directly about Dagster.")),
        ('```json\n{"score": 0, "reason": "Off topic."}\n```', (0.0, "Off topic.")),
        ('{"score": 99.5, "reason": "  spaced\\n out  "}', (99.5, "spaced out")),
    ],
)
def test_parse_answer(content, expected):
    assert parse_answer(content) == expected


@pytest.mark.parametrize(
    "content",
    ["", "[1, 2]", '{"score": true, "reason": "x"}', '{"score": -1, "reason": "x"}',
     '{"score": NaN, "reason": "x"}', '{"score": 5}', '{"score": 5, "reason": "  "}',
     "[" * 100_000, '{"score": 1' + "0" * 400 + ', "reason": "x"}',
     '{"score": ' + "9" * 5_000 + ', "reason": "x"}'],
)
def test_parse_answer_rejects(content):
    with pytest.raises(MalformedAnswer):
        parse_answer(content)


def test_retry_after_seconds():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("100000") == 60.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Mon, 1 Jan 99999999999 00:00:00 GMT") is None
    in_five = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    assert 3 <= retry_after_seconds(in_five) <= 5


def test_a_huge_reply_is_cut_at_the_byte_cap_and_costs_only_its_item(caplog):
    """200 MB for one item: reading stops at 64 KiB, the item goes unscored (after the one
    more chance a malformed answer gets), the others are scored."""
    def script(request, call):
        huge = "item 1" in request["messages"][-1]["content"]
        return Reply(huge_bytes=200_000_000) if huge else Reply()

    with LoopbackLlm(script) as llm, scorer(llm, []) as llm_scorer:
        results = llm_scorer.score_all(items(3), llm_scorer.score)
    assert results[1] is None and results[0] is not None and results[2] is not None
    assert llm_scorer.usage.rejected_answers == 1
    assert "the API's reply is larger than 65,536 bytes" in caplog.text
    # Two tries of 200 MB offered; what left the server is what the socket buffers took.
    assert llm.huge_bytes_sent < 20_000_000
    assert {request["max_tokens"] for request in llm.requests} == {MAX_COMPLETION_TOKENS}


def test_an_api_that_drips_its_headers_meets_the_request_deadline():
    completion = json.dumps(
        {"choices": [{"message": {"content": '{"score": 5, "reason": "ok"}'}}]}
    ).encode()
    with DripServer(completion, content_type="application/json") as api:
        settings = LlmSettings(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="sk-test",
                               model="m", timeout_seconds=1, max_retries=0)
        with LlmScorer(settings, "dagster", LOG) as llm_scorer:
            (result,) = llm_scorer.score_all(items(1), llm_scorer.score)
    assert isinstance(result, LlmError) and str(result) == "no answer within 1 s after 1 attempts"
    assert api.sent < 60  # given up inside the status line or the headers


def test_the_scoring_budget_leaves_the_rest_unscored():
    with LoopbackLlm(lambda request, call: Reply(delay=0.3)) as llm:
        with scorer(llm, concurrency=1, scoring_budget_seconds=1.0) as llm_scorer:
            results = llm_scorer.score_all(items(10), llm_scorer.score)
    scored = [r for r in results if isinstance(r, tuple)]
    late = [r for r in results if isinstance(r, ScoringDeadline)]
    assert scored and late and len(scored) + len(late) == 10
    assert results[: len(scored)] == scored  # in order: the budget ran out, then nothing
    assert str(late[0]) == "the run's scoring budget of 1 s ran out"
    assert len(llm.requests) <= len(scored) + 1  # the one cut short at the budget


@pytest.mark.parametrize(
    "reply",
    [Reply(content="[" * 100_000), Reply(body="[" * 100_000),
     Reply(content='{"score": 1' + "0" * 400 + ', "reason": "injected"}'),
     Reply(status=429, headers={"Retry-After": "Mon, 1 Jan 99999999999 00:00:00 GMT"})],
)
def test_a_reply_that_breaks_a_rule_costs_its_item_never_the_run(reply):
    def script(request, call):
        return reply if "item 0" in request["messages"][-1]["content"] else Reply()

    with LoopbackLlm(script) as llm, scorer(llm, [], max_retries=1) as llm_scorer:
        results = llm_scorer.score_all(items(2), llm_scorer.score)
    assert not isinstance(results[0], tuple) and isinstance(results[1], tuple)
