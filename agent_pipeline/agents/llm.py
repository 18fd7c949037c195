"""Scoring items with an LLM behind any OpenAI-compatible chat-completions API (OpenAI, a local
Ollama or vLLM). Plain Python: retries with backoff, bounded concurrency, validated answers,
summed token usage. The API is a remote server like any other: each request has one deadline
(headers included) and a byte cap on its reply, each answer a token cap, and the run's scoring
a budget of time; an answer that breaks a rule costs its item the score, never the run."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from agent_pipeline.agents.bounded_http import (
    ResponseTooLarge,
    UnsupportedEncoding,
    bounded_client,
    bounded_request,
)
from agent_pipeline.retries import RetryLater, retry_after_seconds, retry_policy

if TYPE_CHECKING:
    from agent_pipeline.agents.budget import CallBudget

# Part of every cache key: bump it when the prompt changes, so old scores are not reused.
PROMPT_VERSION = 1
SYSTEM_PROMPT = (
    "You triage news items for one reader. Rate how relevant the item is to the reader's "
    "interests from 0 (not at all) to 100 (must read). Answer with JSON only, exactly "
    '{"score": <integer 0-100>, "reason": "<one sentence>"}.'
)
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_ITEM_CHARS = 2_000
MAX_REASON_CHARS = 300
# What LLM_BASE_URL, LLM_MODEL and LLM_CONCURRENCY default to.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_CONCURRENCY = 8
# Requests per run when LLM_MAX_CALLS_PER_RUN is not set: above any normal set of feeds (a
# few hundred new items a window), below what a feed gone wild would cost.
DEFAULT_MAX_CALLS_PER_RUN = 2_000
# The answer is one small JSON object: a few hundred bytes. These bound what a broken or
# hostile API can make a run read and pay for.
MAX_COMPLETION_TOKENS = 300
MAX_REPLY_BYTES = 65_536
# Past any model's context: a larger count in a reply's usage is a broken report.
MAX_REPORTED_TOKENS = 10_000_000
# All the scoring of one run; what is left unscored then waits for a later run.
SCORING_BUDGET_SECONDS = 240.0


class LlmError(Exception):
    """A call that failed for good: retries spent, or an answer the API itself refused."""


class LimitReached(LlmError):
    """A limit of the run (time, calls, money) was reached before this item was scored: said
    once for the run by its caller, not once per item."""


class ScoringDeadline(LimitReached):
    """The run's scoring budget of time ran out before this item was scored."""


class MalformedAnswer(Exception):
    """The model answered, but not with the JSON asked for."""


@dataclass(frozen=True)
class Prices:
    """LLM_PRICE_INPUT and LLM_PRICE_OUTPUT: per million prompt and completion tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


@dataclass(frozen=True)
class LlmSettings:
    base_url: str
    api_key: str = field(repr=False)
    model: str
    concurrency: int = DEFAULT_CONCURRENCY
    # One request, from connecting to the last byte of the reply.
    timeout_seconds: float = 30.0
    max_retries: int = 4
    backoff_seconds: float = 1.0
    scoring_budget_seconds: float = SCORING_BUDGET_SECONDS
    max_reply_bytes: int = MAX_REPLY_BYTES
    max_tokens: int = MAX_COMPLETION_TOKENS
    # None: no price known, so no cost shown and no daily budget possible.
    prices: Prices | None = None
    # LLM_MAX_CALLS_PER_RUN (0: no limit) and LLM_DAILY_BUDGET (None: no limit).
    max_calls_per_run: int = DEFAULT_MAX_CALLS_PER_RUN
    daily_budget: float | None = None


@dataclass
class Usage:
    """Token usage and calls of a run, summed across threads."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Items whose answers broke a rule (malformed, too large) twice, and went unscored.
    rejected_answers: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, answer: Mapping[str, Any]) -> tuple[int, int]:
        """Count an answer's call and tokens; its (prompt, completion) tokens."""
        usage = answer.get("usage")
        prompt = completion = 0
        if isinstance(usage, Mapping):
            try:  # an API that reports usage oddly must not cost the item its score
                prompt = min(max(int(usage.get("prompt_tokens") or 0), 0), MAX_REPORTED_TOKENS)
                completion = min(
                    max(int(usage.get("completion_tokens") or 0), 0), MAX_REPORTED_TOKENS
                )
            except (TypeError, ValueError, OverflowError):
                prompt = completion = 0
        with self._lock:
            self.calls += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion
        return prompt, completion

    def reject(self) -> None:
        with self._lock:
            self.rejected_answers += 1


def parse_answer(content: str) -> tuple[float, str]:
    """(score, reason) from the model's answer, or MalformedAnswer saying what is wrong."""
    text = content.strip()
    if text.startswith("```"):  # models like to fence JSON even when told not to
        text = text.strip("`").removeprefix("json").strip()
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        raise MalformedAnswer(f"not JSON: {content[:80]!r}") from None
    if not isinstance(answer, dict):
        raise MalformedAnswer("not a JSON object")
    score, reason = answer.get("score"), answer.get("reason")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise MalformedAnswer(f"score is not a number: {str(score)[:40]}")
    try:  # an integer of 400 digits does not fit a float
        score = float(score)
    except OverflowError:
        raise MalformedAnswer("score is out of range") from None
    if not math.isfinite(score):
        raise MalformedAnswer(f"score is not a number: {score!r}")
    if not 0 <= score <= 100:
        raise MalformedAnswer(f"score {score} is outside 0-100")
    if not isinstance(reason, str) or not reason.strip():
        raise MalformedAnswer("no reason")
    return float(score), " ".join(reason.split())[:MAX_REASON_CHARS]


def item_prompt(item: Mapping[str, Any], interests: str) -> str:
    parts = [f"Reader's interests: {interests}", f"Title: {item.get('title', '')}"]
    if item.get("summary"):
        parts.append(f"Summary: {item['summary']}")
    if item.get("source"):
        parts.append(f"Source: {item['source']}")
    return "\n".join(parts)[:MAX_ITEM_CHARS]


class LlmScorer:
    """Scores items against interests; one client, at most `concurrency` calls at once, all
    within the scoring budget of time that starts when the scorer is made, and each request
    asked of the call budget (LLM_MAX_CALLS_PER_RUN, LLM_DAILY_BUDGET) first."""

    def __init__(
        self,
        settings: LlmSettings,
        interests: str,
        log: logging.Logger,
        sleep: Callable[[float], None] = time.sleep,
        budget: CallBudget | None = None,
    ):
        self.settings, self.interests, self.log, self._sleep = settings, interests, log, sleep
        self.budget = budget
        self.usage = Usage()
        self._deadline = time.monotonic() + settings.scoring_budget_seconds
        self._client = bounded_client(
            base_url=settings.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {settings.api_key}"},
            timeout=settings.timeout_seconds,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> LlmScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise ScoringDeadline(
                f"the run's scoring budget of {self.settings.scoring_budget_seconds:g} s ran out"
            )
        return remaining

    def _call(self, prompt: str) -> dict[str, Any]:
        """One chat completion, retried on 429, 5xx, timeouts and dropped connections."""
        body = {
            "model": self.settings.model,
            "temperature": 0,
            "max_tokens": self.settings.max_tokens,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ],
        }
        attempts = self.settings.max_retries + 1
        policy = retry_policy(
            attempts=attempts,
            backoff_seconds=self.settings.backoff_seconds,
            worth_retrying=lambda exc: isinstance(exc, RetryLater),
            # A wait never outlasts the run's scoring budget (ScoringDeadline when it is gone).
            sleep=lambda seconds: self._sleep(min(seconds, self._remaining())),
        )
        try:
            return policy(self._attempt, body)
        except RetryLater as exc:
            raise LlmError(f"{exc} after {attempts} attempts") from None

    def _attempt(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request; RetryLater for what another attempt may cure (429, 5xx, timeouts,
        dropped connections), with the Retry-After the API sent."""
        if self.budget is not None:
            self.budget.acquire()  # BudgetReached: no request
        try:
            answer = self._request(body)
        except BaseException:
            if self.budget is not None:
                self.budget.release()  # no answer, nothing to pay for
            raise
        tokens = self.usage.add(answer)
        if self.budget is not None:
            self.budget.settle(*tokens)
        return answer

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        timeout = self.settings.timeout_seconds
        try:
            response = bounded_request(
                self._client, "POST", "chat/completions", json=body,
                max_bytes=self.settings.max_reply_bytes,
                deadline_seconds=min(timeout, self._remaining()),
            )
        except ResponseTooLarge as exc:
            raise MalformedAnswer(f"the API's reply is {exc}") from None
        except UnsupportedEncoding as exc:
            raise MalformedAnswer(f"the API's reply: {exc}") from None
        except httpx.TimeoutException:
            self._remaining()  # the budget, not the API, may have run out
            raise RetryLater(f"no answer within {timeout:g} s") from None
        except httpx.TransportError as exc:
            raise RetryLater(f"{type(exc).__name__}") from None
        if response.status_code == 200:
            try:
                answer = json.loads(response.content)
            except (ValueError, RecursionError):
                raise MalformedAnswer("the API's reply is not JSON") from None
            if not isinstance(answer, dict):
                raise MalformedAnswer("the API's reply is not a JSON object")
            return answer
        if response.status_code in (401, 403):
            # The body is left out: some APIs echo the key they refused.
            raise LlmError(f"HTTP {response.status_code}: the API refused LLM_API_KEY")
        if response.status_code not in RETRY_STATUSES:
            raise LlmError(f"HTTP {response.status_code}: {self._redact(response.text[:200])}")
        raise RetryLater(
            f"HTTP {response.status_code}",
            retry_after_seconds(response.headers.get("Retry-After")),
        )

    def _redact(self, text: str) -> str:
        return text.replace(self.settings.api_key, "***") if self.settings.api_key else text

    def score(self, item: Mapping[str, Any]) -> tuple[float, str] | None:
        """(score, reason); None when the model's answers were malformed twice (the item is
        dropped with a warning); LlmError when the API could not be reached or refused, so
        that the caller can keep the item for another attempt."""
        prompt = item_prompt(item, self.interests)
        title = str(item.get("title", ""))[:80]
        for attempt in (1, 2):  # a malformed answer gets one more chance
            try:
                answer = self._call(prompt)
                content = answer["choices"][0]["message"]["content"]
                return parse_answer(content if isinstance(content, str) else "")
            except (MalformedAnswer, KeyError, IndexError, TypeError) as exc:
                if attempt == 2:
                    self.log.warning(f"Dropped {title!r}: malformed answer ({exc})")
                    self.usage.reject()
                    return None
        return None

    def score_all(
        self,
        items: Iterable[Any],
        score_one: Callable[[Any], Any],
    ) -> list[Any]:
        """score_one(item) for every item, `concurrency` at a time, in the items' order.
        An LlmError is returned in place of its item's result, not raised."""

        def guarded(item: Any) -> Any:
            try:
                return score_one(item)
            except LimitReached as exc:
                return exc
            except LlmError as exc:
                self.log.warning(f"Not scored: {exc}")
                return exc
            except Exception as exc:  # whatever else a reply causes costs its item alone
                self.log.warning(f"Not scored: {type(exc).__name__}: {str(exc)[:200]}")
                return LlmError(f"unexpected {type(exc).__name__}")

        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(guarded, list(items)))
