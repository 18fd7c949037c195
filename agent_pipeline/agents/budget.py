"""What the LLM may spend: LLM_MAX_CALLS_PER_RUN requests per run, and LLM_DAILY_BUDGET (in
the currency of LLM_PRICE_INPUT/LLM_PRICE_OUTPUT) per UTC day. Each request asks first. With a
daily budget, the day's spend is read from, and each answer's cost added to, a ledger that
outlives the run (agent_runs' database, in the job), so a new run, or another run at the same
time, sees what the others spent; without one, a run's spend is added once, at its end. A
request is let through only while today's spend, plus the calls in flight at today's mean cost
per call, plus this one, stays within the budget: concurrent calls cannot overshoot it by more
than the calls in flight, and with calls that cost the same they do not overshoot at all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Protocol

from agent_pipeline.agents.llm import DEFAULT_MAX_CALLS_PER_RUN, LimitReached, Prices

# A float sum of equal costs may land a hair above the budget they add up to.
_TOLERANCE = 1e-9


class BudgetReached(LimitReached):
    """A limit on the LLM's spending was reached before this item was scored."""


class SpendLedger(Protocol):
    """Where the LLM's spending is counted per UTC day (AgentRunsStore, in the job)."""

    def llm_spend_on(self, day: date) -> tuple[int, float]:
        """(calls, cost) counted for day."""
        ...

    def add_llm_spend(
        self, day: date, calls: int, prompt_tokens: int, completion_tokens: int, cost: float
    ) -> None:
        """Count calls, their tokens and cost for day."""
        ...


class CallBudget:
    """The limits of one run's LLM requests, shared by its scoring threads."""

    def __init__(
        self,
        max_calls_per_run: int = DEFAULT_MAX_CALLS_PER_RUN,
        daily_budget: float | None = None,
        prices: Prices | None = None,
        ledger: SpendLedger | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        if daily_budget is not None and (prices is None or ledger is None):
            raise ValueError("a daily budget needs prices and a ledger to count spend in")
        self.max_calls_per_run = max_calls_per_run
        self.daily_budget = daily_budget
        self.prices = prices
        self._ledger = ledger
        self._clock = clock
        self._changed = threading.Condition()
        self._in_flight = 0
        # Calls, prompt and completion tokens and cost settled but not yet in the ledger.
        self._unflushed: tuple[int, int, int, float] = (0, 0, 0, 0.0)
        self.requests = 0
        # Why the run stopped calling the LLM (the first limit it reached), or None; and
        # whether the daily budget was among the limits reached.
        self.stopped_by: str | None = None
        self.daily_budget_reached = False

    def today(self) -> date:
        return self._clock().astimezone(UTC).date()

    def spent_today(self) -> tuple[int, float] | None:
        """(calls, cost) of today from the ledger; None without one."""
        return self._ledger.llm_spend_on(self.today()) if self._ledger is not None else None

    def acquire(self) -> None:
        """Before a request: BudgetReached when a limit forbids it."""
        with self._changed:
            if self.max_calls_per_run and self.requests >= self.max_calls_per_run:
                self._stop(f"LLM_MAX_CALLS_PER_RUN ({self.max_calls_per_run:,}) reached")
            while self.daily_budget is not None:
                calls, cost = self._ledger.llm_spend_on(self.today())
                if cost >= self.daily_budget - _TOLERANCE:
                    self._stop_for_the_day(
                        f"LLM_DAILY_BUDGET ({self.daily_budget:g}) reached: {cost:.6g} spent "
                        f"today (UTC) over {calls:,} calls"
                    )
                if calls == 0 and self._in_flight == 0:
                    break  # the day's first call: nothing to estimate its cost from
                mean = cost / calls if calls else None
                fits = mean is not None and (
                    cost + (self._in_flight + 1) * mean <= self.daily_budget + _TOLERANCE
                )
                if fits:
                    break
                if self._in_flight == 0:
                    self._stop_for_the_day(
                        f"LLM_DAILY_BUDGET ({self.daily_budget:g}) reached: {cost:.6g} spent "
                        f"today (UTC), and a call costs {mean:.6g} on average"
                    )
                # Wait for a call in flight to end: its real cost settles the question.
                self._changed.wait(timeout=5)
            self.requests += 1
            self._in_flight += 1

    def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """After a request that was answered (and is paid for): count its cost. With a daily
        budget, in the ledger at once, for the next request's check and other runs' (outside
        the lock: other threads need not wait for the write; until the release the call still
        counts as in flight, which only errs on the safe side). Without one, in memory until
        flush(): a write per call would cost more than the nothing it protects."""
        cost = self.prices.cost(prompt_tokens, completion_tokens) if self.prices else 0.0
        try:
            if self._ledger is not None and self.daily_budget is not None:
                self._ledger.add_llm_spend(self.today(), 1, prompt_tokens, completion_tokens, cost)
            else:
                with self._changed:
                    self._unflushed = tuple(
                        total + value for total, value in
                        zip(self._unflushed, (1, prompt_tokens, completion_tokens, cost),
                            strict=True)
                    )
        finally:
            with self._changed:
                self._release()

    def flush(self) -> None:
        """Count in the ledger what settle kept in memory; at the end of the run's scoring."""
        with self._changed:
            calls, prompt_tokens, completion_tokens, cost = self._unflushed
            self._unflushed = (0, 0, 0, 0.0)
        if calls and self._ledger is not None:
            self._ledger.add_llm_spend(self.today(), calls, prompt_tokens, completion_tokens,
                                       cost)

    def release(self) -> None:
        """After a request that got no answer to pay for (a timeout, a 5xx, a dropped
        connection)."""
        with self._changed:
            self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        self._changed.notify_all()

    def _stop_for_the_day(self, reason: str) -> None:
        self.daily_budget_reached = True
        self._stop(reason)

    def _stop(self, reason: str) -> None:
        if self.stopped_by is None:
            self.stopped_by = reason
        raise BudgetReached(reason)
