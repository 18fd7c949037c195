"""The one way this project retries a call that may fail for a moment (an SMTP delivery, an
LLM request, database work whose server went away): tenacity, with a bounded number of
attempts, exponential backoff with jitter, and the server's Retry-After when it gives one.
Callers say which failures are worth another attempt; everything else is raised at once."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import tenacity

# A server asking for more than this is not waited for longer: the run has its own budget.
MAX_RETRY_AFTER_SECONDS = 60.0


class RetryLater(Exception):
    """A failure worth another attempt; retry_after: the seconds the server asked for."""

    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def retry_policy(
    *,
    attempts: int,
    backoff_seconds: float,
    worth_retrying: Callable[[BaseException], bool],
    least_jitter: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> tenacity.Retrying:
    """Up to `attempts` calls. Before call n+1 it waits the failure's retry_after, else
    backoff_seconds * 2**(n-1) times a random factor between least_jitter and 1 (0: full
    jitter). on_retry(error, seconds) is told before each wait. The last failure is raised
    as it was."""

    def wait(state: tenacity.RetryCallState) -> float:
        retry_after = getattr(state.outcome.exception(), "retry_after", None)
        if retry_after is not None:
            return retry_after
        growth = backoff_seconds * 2 ** (state.attempt_number - 1)
        return growth * random.uniform(least_jitter, 1.0)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state.outcome.exception(), state.upcoming_sleep)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(attempts, 1)),
        wait=wait,
        retry=tenacity.retry_if_exception(worth_retrying),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


# What a Postgres server that went away says, from the moment it begins shutting down to the
# moment it takes connections again (psycopg2's messages, lowercased).
_SERVER_WENT_AWAY = (
    "server closed the connection",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "terminating connection due to administrator command",
    "connection refused",
    "could not connect to server",
    "could not receive data from server",
    "could not send data to server",
    "connection already closed",
    "ssl connection has been closed unexpectedly",
)
# About as long as dagster-postgres waits for its database (retry_pg_connection_fn: a try and
# five retries, 0.2 s doubling): a restart takes a fraction of a second, so waiting longer
# only delays the clear error of a database that is down for good.
DATABASE_ATTEMPTS = 6
DATABASE_BACKOFF_SECONDS = 0.2


def database_went_away(error: BaseException) -> bool:
    """Whether error says the database server dropped the connection or is restarting, not
    that the statement was wrong: the same work on a new connection may well succeed."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig if error.orig is not None else error
    message = str(error).lower()
    return any(sign in message for sign in _SERVER_WENT_AWAY)


def database_error_line(error: BaseException) -> str:
    """The first line of what the database driver said (SQLAlchemy wraps it, with the
    statement, in lines of its own)."""
    cause = getattr(error, "orig", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def database_retry(
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> tenacity.Retrying:
    """Retries a unit of database work while the server is away: DATABASE_ATTEMPTS calls, 0.2 s
    doubling with half jitter (between 3 and 6 s of waiting in all), other errors at once."""
    return retry_policy(
        attempts=DATABASE_ATTEMPTS,
        backoff_seconds=DATABASE_BACKOFF_SECONDS,
        worth_retrying=database_went_away,
        least_jitter=0.5,
        on_retry=on_retry,
    )
