"""The one retry policy: attempts, backoff with jitter, Retry-After, what is not retried."""

from __future__ import annotations

import pytest

from agent_pipeline.retries import RetryLater, retry_policy


def calls_failing(*failures):
    """A function that raises each of failures in turn, then returns "done"; its calls."""
    calls = []

    def call():
        calls.append(len(calls))
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "done"

    return call, calls


def test_waits_grow_with_jitter_and_a_retry_after_is_honoured():
    waits, told = [], []
    policy = retry_policy(
        attempts=4, backoff_seconds=2.0, worth_retrying=lambda e: isinstance(e, RetryLater),
        least_jitter=0.5, sleep=waits.append, on_retry=lambda e, s: told.append((str(e), s)),
    )
    call, calls = calls_failing(RetryLater("busy"), RetryLater("busy"), RetryLater("slow", 7.0))
    assert policy(call) == "done" and len(calls) == 4
    assert 1.0 <= waits[0] <= 2.0 and 2.0 <= waits[1] <= 4.0  # 2 s, then 4 s, half jitter
    assert waits[2] == 7.0  # what the server asked for
    assert [text for text, _ in told] == ["busy", "busy", "slow"]


def test_the_last_failure_is_raised_after_the_attempts():
    waits = []
    policy = retry_policy(attempts=3, backoff_seconds=1.0, worth_retrying=lambda e: True,
                          sleep=waits.append)
    call, calls = calls_failing(*[RetryLater(f"try {n}") for n in range(5)])
    with pytest.raises(RetryLater, match="try 2"):
        policy(call)
    assert len(calls) == 3 and len(waits) == 2
    assert all(0 <= wait <= 2.0 for wait in waits)  # full jitter: between 0 and the growth


def test_a_failure_not_worth_retrying_is_raised_at_once():
    waits = []
    policy = retry_policy(attempts=5, backoff_seconds=1.0,
                          worth_retrying=lambda e: isinstance(e, RetryLater), sleep=waits.append)
    call, calls = calls_failing(ValueError("for good"))
    with pytest.raises(ValueError, match="for good"):
        policy(call)
    assert len(calls) == 1 and waits == []
