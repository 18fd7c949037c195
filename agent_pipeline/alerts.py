"""Failure alerts, grouped as Alertmanager groups them. Windows that fail for good one after
another form a failure streak (table alert_streaks): its first failure is emailed at once,
later ones at most once per ALERT_REPEAT_MINUTES in one summary, and one "recovered" email
says when a run succeeds again. An email that may not have gone out is no failure: its alert
goes out on its own, at once. Plain functions over the store and the Smtp resource; the
sensors call them."""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from agent_pipeline.emails import WINDOW_HEADER, new_message, run_link, window_label
from agent_pipeline.errors import ConfigurationError, describe_error
from agent_pipeline.partitions import window_bounds
from agent_pipeline.resources.agent_runs import AgentRunsStore
from agent_pipeline.resources.digest import DigestSettings
from agent_pipeline.resources.smtp import Smtp, rejects_message
from agent_pipeline.schema import ALERT_FAILED, ALERT_PENDING, ALERT_SENT, naive_utc
from agent_pipeline.text import clean_text, storable_text

# Alerts delivered per sensor tick; the rest wait for the next tick.
ALERTS_PER_TICK = 10
# The key of an alert about a window's email (not about a failed run) starts so.
EMAIL_ALERT_PREFIX = "email:"
# The key of the alert that the LLM's daily budget was reached: the prefix and the UTC day,
# so there is one a day.
BUDGET_ALERT_PREFIX = "budget:"
# A summary lists this many distinct errors, most frequent first, each cut to this length:
# errors are the agent's or a library's words (untrusted, and an LLM's can be long), so they
# go in the plain-text body only, and never make an email long.
ERRORS_PER_SUMMARY = 5
ERROR_CHARS_IN_SUMMARY = 300


def alert_key(partition_key: str | None, run_id: str) -> str:
    """What an alert is unique to: the window, or the run when it has none."""
    return partition_key or f"run:{run_id}"


def queue_alert(
    store: AgentRunsStore,
    partition_key: str | None,
    run_id: str,
    error_message: str,
    attempts: int,
    now: datetime | None = None,
) -> bool:
    """Record the alert of a run that failed for good, in the open failure streak (a new one
    when none is open); False when its window has one."""
    return store.add_failure_alert(
        alert_key(partition_key, run_id), partition_key, run_id, error_message, attempts,
        now=naive_utc(now),
    )


def resolve_recovery(store: AgentRunsStore, now: datetime | None = None) -> dict | None:
    """End the open failure streak when a run has succeeded since its last failure; the
    streak ended, if any. Read from agent_runs, not from a run event: a sensor that missed
    the success (the daemon was down) or a restart loses nothing."""
    return store.resolve_recovered_streak(naive_utc(now))


def queue_unknown_email_alert(store: AgentRunsStore, partition_key: str | None,
                              run_id: str, reason: str) -> bool:
    """Record the alert of a window whose email an attempt died sending; False if queued
    already. Its own key: the window may have a failure alert too."""
    key = EMAIL_ALERT_PREFIX + alert_key(partition_key, run_id)
    return store.add_alert(key, partition_key, run_id, reason, 1)


def queue_budget_alert(
    store: AgentRunsStore, day: date, partition_key: str | None, run_id: str, reason: str
) -> bool:
    """Record the alert that the LLM's daily budget (LLM_DAILY_BUDGET) was reached on the UTC
    day; False when the day has one already."""
    return store.add_alert(BUDGET_ALERT_PREFIX + day.isoformat(), partition_key, run_id, reason, 1)


def build_budget_alert_email(
    alert: Mapping[str, Any], sender: str, recipients: list[str], run_url: str | None
) -> EmailMessage:
    """The day's one email saying that the LLM's daily budget was reached."""
    day = alert["alert_key"].removeprefix(BUDGET_ALERT_PREFIX)
    message = new_message(
        f"agent_pipeline: LLM daily budget reached on {day} (UTC)", sender, recipients
    )
    lines = [
        f"agent_job stopped calling the LLM for the rest of {day} (UTC):",
        f"  {storable_text(alert['error_message'])}",
        "",
        "Runs go on and email what was scored. The items left unscored wait in the backlog "
        "(for up to BACKLOG_MAX_AGE_HOURS) and are scored first from 00:00 UTC, when the "
        "budget starts afresh. Raise LLM_DAILY_BUDGET to score them sooner.",
        "",
        f"Run: {alert['dagster_run_id']}",
    ]
    if run_url:
        lines.append(f"Open it in Dagster: {run_url}")
    lines += ["", "This is the only alert about the budget today."]
    _finish(message, lines)
    return message


def build_alert_email(
    *,
    partition_key: str | None,
    run_id: str,
    error_message: str,
    attempts: int,
    sender: str,
    recipients: list[str],
    run_url: str | None,
    about_email: bool = False,
    repeat_minutes: int | None = None,
) -> EmailMessage:
    """A plain-text alert: the window, the error, the attempts, the link to the run; for
    the first failure of a streak, repeat_minutes says what comes next."""
    if partition_key:
        what = f"window {window_label(*window_bounds(partition_key))}"
    else:
        what = f"run {run_id} (no window)"
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    # The error often carries the agent's words: it goes in the body, never in a header.
    subject = (
        f"agent_pipeline: the email of {what} may not have gone out"
        if about_email
        else f"agent_pipeline: {what} failed after {tries}"
    )
    message = new_message(subject, sender, recipients)
    if partition_key:
        message[WINDOW_HEADER] = partition_key
    lines = [
        f"The digest email of {what} may or may not have gone out."
        if about_email
        else f"agent_job failed for {what} after {tries}.",
        "",
        "Error:",
        f"  {storable_text(error_message)}",
        "",
        f"Run: {run_id}",
    ]
    if run_url:
        lines.append(f"Open it in Dagster: {run_url}")
    lines += [
        "",
        "It is not sent again on its own. If it did not arrive, set its row's email_status "
        "to failed in agent_runs and launch the window."
        if about_email
        else "This is the only alert for this window. Once the cause is fixed, re-execute the "
        "run from the Dagster UI, or backfill the window with the dagster CLI.",
    ]
    if repeat_minutes is not None:
        lines += ["", _what_comes_next(repeat_minutes)]
    _finish(message, lines)
    return message


def _alert_row_email(
    alert: Mapping[str, Any], digest: DigestSettings, recipients: list[str], **options: Any
) -> EmailMessage:
    """build_alert_email for one agent_alerts row: its window, error, attempts and run."""
    return build_alert_email(
        partition_key=alert["partition_key"],
        run_id=alert["dagster_run_id"],
        error_message=alert["error_message"],
        attempts=alert["attempts"],
        sender=digest.sender(),
        recipients=recipients,
        run_url=run_link(digest.webserver_url, alert["dagster_run_id"]),
        **options,
    )


def _what_comes_next(repeat_minutes: int) -> str:
    return (
        f"If more windows fail, they are summed up in at most one email every {repeat_minutes} "
        "minutes, and one email says when a run succeeds again."
    )


def _finish(message: EmailMessage, lines: list[str]) -> None:
    message.set_content("\n".join(lines) + "\n")


def window_text(partition_key: str | None) -> str | None:
    """A window key as the emails show it; None when it names no window (a run launched
    without one, or a tag that is not a window key: never shown, as it is not ours)."""
    if not partition_key:
        return None
    try:
        return window_label(*window_bounds(partition_key))
    except ValueError:
        return None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _windows_lines(summary: Mapping[str, Any]) -> list[str]:
    """First and last window of a summary's failures, and the runs without one."""
    lines = []
    first, last = window_text(summary["first_window"]), window_text(summary["last_window"])
    if first:
        lines.append(f"First window: {first}")
    if last and last != first:
        lines.append(f"Last window:  {last}")
    without = summary["count"] - summary["windows"]
    if without:
        lines.append(f"Runs without a window: {without}")
    return lines


def build_failure_summary_email(
    *,
    summary: Mapping[str, Any],
    streak_total: Mapping[str, Any],
    first: bool,
    sender: str,
    recipients: list[str],
    repeat_minutes: int,
    run_url: str | None,
) -> EmailMessage:
    """A plain-text summary of the windows that failed since the last alert (summary), in a
    streak that has failed streak_total's windows in all; first: no email of the streak went
    out before (several failures were waiting at once)."""
    count = summary["count"]
    failures = _plural(count, "window")
    subject = (
        f"agent_pipeline: {failures} failed" if first
        else f"agent_pipeline: agent_job still failing, {_plural(count, 'more window')} failed"
    )
    message = new_message(subject, sender, recipients)
    lines = [
        f"agent_job failed for good in {failures}." if first else
        f"agent_job is still failing: {failures} failed for good since the last alert.",
        "",
        *_windows_lines(summary),
        "",
        f"Errors ({summary['distinct_errors']} distinct, the most frequent first):",
    ]
    for error, times in summary["errors"]:
        lines.append(f"  {times} × {clean_text(error, ERROR_CHARS_IN_SUMMARY)}")
    hidden = summary["distinct_errors"] - len(summary["errors"])
    if hidden > 0:
        lines.append(f"  and {_plural(hidden, 'other error')}")
    if not first:
        since = window_text(streak_total["first_window"])
        lines += [
            "",
            f"Failing since window {since}: " if since else "Failing since earlier: ",
        ]
        lines[-1] += f"{_plural(streak_total['count'], 'window')} in all."
    if run_url:
        lines += ["", f"The last failed run in Dagster: {run_url}"]
    lines += [
        "",
        _what_comes_next(repeat_minutes),
        "Once the cause is fixed, backfill the failed windows with the dagster CLI.",
    ]
    _finish(message, lines)
    return message


def build_recovered_email(
    *,
    streak: Mapping[str, Any],
    streak_total: Mapping[str, Any],
    unalerted: int,
    sender: str,
    recipients: list[str],
    run_url: str | None,
) -> EmailMessage:
    """The plain-text "recovered" email of an ended streak: which run succeeded, since when
    windows had failed and how many; unalerted: how many of them no earlier email told of."""
    succeeded = window_text(streak["resolved_partition_key"])
    what = f"window {succeeded}" if succeeded else "a run"
    subject = "agent_pipeline: agent_job recovered" + (
        f", window {succeeded} succeeded" if succeeded else ""
    )
    message = new_message(subject, sender, recipients)
    ended = f"{streak['resolved_run_at']:%Y-%m-%d %H:%M} UTC"
    since = window_text(streak_total["first_window"])
    failed = _plural(streak_total["count"], "window")
    last = window_text(streak_total["last_window"])
    lines = [
        f"agent_job works again: {what} succeeded (its run ended {ended}).",
        "",
        f"It had been failing since window {since}: {failed} failed for good"
        + (f", the last {last}." if last and last != since else ".")
        if since else f"It had been failing: {failed} failed for good.",
    ]
    without = streak_total["count"] - streak_total["windows"]
    if without:
        lines.append(f"Of these, {_plural(without, 'run')} had no window.")
    if unalerted:
        lines.append(f"{unalerted} of them were in no earlier alert.")
    if since and last:
        lines += [
            "",
            "The failed windows have no digest. To run them again:",
            "  dagster job backfill -j agent_job "
            f"--from {streak_total['first_window']} --to {streak_total['last_window']}",
        ]
    if streak["resolved_run_id"]:
        lines += ["", f"Run: {streak['resolved_run_id']}"]
    if run_url:
        lines.append(f"Open it in Dagster: {run_url}")
    _finish(message, lines)
    return message


def send_pending_alerts(
    store: AgentRunsStore,
    smtp: Smtp,
    digest: DigestSettings,
    log: logging.Logger,
    limit: int = ALERTS_PER_TICK,
    now: datetime | None = None,
) -> list[str]:
    """Deliver what is due: the alerts sent one by one (emails that may not have gone out),
    oldest first; the open failure streak's email when the period since its last one has
    passed (at once for its first); an ended streak's recovered email. What went out: alert
    keys, and streak:<id>:failed or streak:<id>:recovered.

    Each email is claimed before its one attempt, so two sensor evaluations never send it
    twice. A message the server rejects for good is marked failed and the others go on; any
    other failure (the server down, a refused login) leaves it pending for the next tick and
    stops there, as it would fail the rest too."""
    recipients = digest.alert_recipients()
    if not recipients:
        return []
    now = naive_utc(now)
    delivered = []
    for alert in store.pending_alerts(limit, ungrouped_only=True):
        if not store.claim_alert(alert["id"]):
            continue
        outcome, error = _attempt(
            smtp,
            lambda alert=alert: build_budget_alert_email(
                alert, digest.sender(), recipients,
                run_link(digest.webserver_url, alert["dagster_run_id"]),
            )
            if alert["alert_key"].startswith(BUDGET_ALERT_PREFIX)
            else _alert_row_email(
                alert, digest, recipients,
                # Else a failure alert queued before failure streaks (migration 0005).
                about_email=alert["alert_key"].startswith(EMAIL_ALERT_PREFIX),
            ),
        )
        if outcome == ALERT_SENT:
            store.record_alert_sent(alert["id"])
            delivered.append(alert["alert_key"])
        elif outcome == ALERT_FAILED:
            store.record_alert_rejected(alert["id"], error)
            log.warning(f"Alert for {alert['alert_key']} given up: {error}")
        else:
            store.release_alert(alert["id"], error)
            log.warning(f"Alert for {alert['alert_key']} not delivered, retried later: {error}")
            return delivered
    repeat = timedelta(minutes=digest.alert_repeat_minutes)
    for streak in store.streaks_to_deliver():
        if streak["resolved_at"] is None:
            outcome = _send_failure_email(store, smtp, digest, recipients, streak, repeat, now)
            kind = "failed"
        else:
            outcome = _send_recovered_email(store, smtp, digest, recipients, streak, now)
            kind = "recovered"
        if outcome is None:
            continue
        what = f"streak:{streak['id']}:{kind}"
        if outcome[0] == ALERT_SENT:
            delivered.append(what)
        elif outcome[0] == ALERT_FAILED:
            log.warning(f"Alert {what} given up: {outcome[1]}")
        else:
            log.warning(f"Alert {what} not delivered, retried later: {outcome[1]}")
            break
    return delivered


def _send_failure_email(
    store: AgentRunsStore,
    smtp: Smtp,
    digest: DigestSettings,
    recipients: list[str],
    streak: Mapping[str, Any],
    repeat: timedelta,
    now: datetime,
) -> tuple[str, str | None] | None:
    """The open streak's failure email, if due: the failures no email has carried yet. The
    first of a streak goes out as a window's own alert when it is about one window."""
    notified = streak["notified_at"]
    if notified is not None and notified > now - repeat:
        return None  # within the period: the failures wait for the next summary
    if not store.claim_streak_notice(streak["id"], repeat, now):
        return None
    summary = store.streak_alerts_summary(streak["id"], True, ERRORS_PER_SUMMARY)
    first = notified is None
    only = summary["only"]

    def build() -> EmailMessage:
        if first and only is not None:
            return _alert_row_email(
                only, digest, recipients, repeat_minutes=digest.alert_repeat_minutes
            )
        return build_failure_summary_email(
            summary=summary,
            streak_total=store.streak_alerts_summary(streak["id"], False, 0),
            first=first,
            sender=digest.sender(),
            recipients=recipients,
            repeat_minutes=digest.alert_repeat_minutes,
            run_url=run_link(digest.webserver_url, summary["last_run_id"]),
        )

    outcome, error = _attempt(smtp, build)
    store.finish_streak_notice(streak["id"], outcome, error, now)
    return outcome, error


def _send_recovered_email(
    store: AgentRunsStore,
    smtp: Smtp,
    digest: DigestSettings,
    recipients: list[str],
    streak: Mapping[str, Any],
    now: datetime,
) -> tuple[str, str | None] | None:
    """An ended streak's one recovered email; it also tells of the failures that no email
    carried yet (the server was down, or the streak ended within its period)."""
    if not store.claim_recovered_notice(streak["id"], now):
        return None
    unalerted = store.streak_alerts_summary(streak["id"], True, 0)["count"]
    outcome, error = _attempt(
        smtp,
        lambda: build_recovered_email(
            streak=streak,
            streak_total=store.streak_alerts_summary(streak["id"], False, 0),
            unalerted=unalerted,
            sender=digest.sender(),
            recipients=recipients,
            run_url=run_link(digest.webserver_url, streak["resolved_run_id"]),
        ),
    )
    store.finish_recovered_notice(streak["id"], outcome, error, now)
    return outcome, error


def _attempt(smtp: Smtp, build: Callable[[], EmailMessage]) -> tuple[str, str | None]:
    """One delivery attempt of the email build() makes: ALERT_SENT, ALERT_FAILED (given up:
    the server rejected it, or it cannot be built) or ALERT_PENDING (worth retrying), with
    the error."""
    try:
        smtp.send_attempt(build())
    except Exception as exc:
        error = describe_error(exc)
        # An alert that cannot be built (a partition tag that is no window) will not build
        # next time either. A setting the resource refuses (a plain login) is fixed by a
        # person, after which the alert should still go out.
        retryable = smtplib.SMTPException | OSError | ConfigurationError
        if rejects_message(exc) or not isinstance(exc, retryable):
            return ALERT_FAILED, error
        return ALERT_PENDING, error
    return ALERT_SENT, None
