"""The four ops of agent_job. Glue only: resources in, plain functions, metadata out."""

# No `from __future__ import annotations` here: Dagster reads the ops' annotations as real
# types to wire inputs, resources and the context.

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunNotFoundError,
    In,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    TableColumn,
    TableRecord,
    TableSchema,
    op,
)
from dagster._core.errors import DagsterInvalidPropertyError

from agent_pipeline.agents import AgentCache, AgentContext
from agent_pipeline.alerts import queue_budget_alert
from agent_pipeline.delivery import Delivery, deliver_window_email, redeliver_failed, window_email
from agent_pipeline.errors import ConfigurationError, NoRankedResultError, describe_error
from agent_pipeline.logs import event_logger
from agent_pipeline.partitions import window_bounds
from agent_pipeline.ranking import (
    MAX_ITEMS_READ,
    Validation,
    build_result,
    drop_reason_rows,
    iterate_outcomes,
    rank_outcomes,
    sent_item_keys,
    storable_stats,
    top_five_rows,
    validate_outcomes,
)
from agent_pipeline.resources import (
    AgentResource,
    AgentRunsStore,
    DigestSettings,
    RedisStore,
    Retention,
    Smtp,
)
from agent_pipeline.retention import apply_retention
from agent_pipeline.schema import EMAIL_REJECTED, EMAIL_SENT
from agent_pipeline.settings import log_settings

WARNINGS_LOGGED = 20
# Dagster tags each run of a backfill with the backfill's id.
BACKFILL_TAG = "dagster/backfill"
# ... and each re-execution with the run it re-executes.
PARENT_RUN_TAG = "dagster/parent_run_id"
# How far back send_email looks for a ranked result among the runs a re-execution re-executes.
MAX_ANCESTORS = 20
# The email reason a backfill's row records.
BACKFILL = "backfill"
# Run tags the UI's run list and run page show: which agent ran, and what became of the email
# (with Dagster's own dagster/partition, the window).
AGENT_TAG = "agent_pipeline/agent"
EMAIL_TAG = "agent_pipeline/email"
MAX_TAG_CHARS = 100
# An agent's own account of its work (AgentContext.stats): what is kept of it, and how many
# of its entries the UI shows.
MAX_STATS_JSON_CHARS = 50_000
MAX_STATS_SHOWN = 30


def _fails_its_row(compute: Callable[..., Any]) -> Callable[..., Any]:
    """An op of agent_job whose exception first marks the run's row failed with it. A
    job-level failure hook did this before, at the cost of an event (HOOK_SKIPPED) per op of
    every run that went well; what fails outside an op's body (its inputs, its outputs) is
    marked by the run-failure sensor and the sweeper."""

    @functools.wraps(compute)
    def compute_then_fail_the_row(context: OpExecutionContext, **kwargs: Any) -> Any:
        try:
            return compute(context, **kwargs)
        except Exception as error:
            try:
                kwargs["agent_runs"].fail_run(context.run_id, describe_error(error))
            except Exception as also:  # the database is gone too: the sweeper marks it later
                context.log.warning(f"The row could not be marked failed: {describe_error(also)}")
            raise

    return compute_then_fail_the_row


def _already_sent(agent_runs: AgentRunsStore, digest: DigestSettings, window: str) -> set[str]:
    """Dedupe keys of the items other windows' emails had (EMAIL_ONLY_NEW), else none."""
    if not digest.only_new:
        return set()
    return sent_item_keys(agent_runs.sent_top_fives(other_than_window=window))


@dataclass
class AgentRun:
    """What run_agent hands to rank_top_five: the agent's outcomes as validated, and its own
    account of its work (sources, LLM calls, tokens, cost), made storable."""

    validation: Validation
    agent_stats: dict[str, Any]


def _window(context: OpExecutionContext) -> tuple[str, datetime, datetime]:
    """The run's window: its partition key, start and end."""
    if not context.has_partition_key:
        raise ConfigurationError(
            "partition", "agent_job runs one 10-minute window: launch it for a partition"
        )
    return (context.partition_key, *window_bounds(context.partition_key))


def _logger(context: OpExecutionContext, agent: AgentResource) -> Any:
    """The op's structured logger: JSON lines to the run's logs, stdout and LOG_FILE."""
    return event_logger(
        context.log,
        log_settings(),
        run_id=context.run_id,
        window=context.partition_key if context.has_partition_key else None,
        agent=agent.agent,
        op=context.op_def.name,
    )


def _run_row(context: OpExecutionContext, agent_runs: AgentRunsStore, agent: AgentResource) -> int:
    """This run's agent_runs row, inserted if missing. Each op that writes the row finds it
    by the run id, so a re-execution from failure (a new run that skips record_run) gets a row
    of its own instead of writing to its parent's."""
    window_key, _, _ = _window(context)
    return agent_runs.get_or_create_row(context.run_id, window_key, agent.agent)


@op(
    out=Out(Nothing),
    description="Insert this run's row into agent_runs (status running): every launched run "
    "leaves one row.",
)
@_fails_its_row
def record_run(
    context: OpExecutionContext, agent_runs: AgentRunsStore, agent: AgentResource
) -> None:
    row_id = _run_row(context, agent_runs, agent)
    agent_tag = agent.agent[:MAX_TAG_CHARS]
    if context.get_tag(AGENT_TAG) != agent_tag:
        _tag_run(context, {AGENT_TAG: agent_tag})
    _logger(context, agent).info("Run recorded in agent_runs", row_id=row_id)
    context.add_output_metadata({"row_id": row_id, "database": agent_runs.describe()})


@op(
    ins={"recorded": In(Nothing)},
    description="Run the agent (AGENT) for the window; keep each item it returns that is "
    "valid, drop the others with a reason.",
)
@_fails_its_row
def run_agent(
    context: OpExecutionContext,
    agent: AgentResource,
    redis: RedisStore,
    agent_runs: AgentRunsStore,
    digest: DigestSettings,
) -> AgentRun:
    log = _logger(context, agent)
    agent_callable = agent.load()
    cache = AgentCache(redis, agent.cache_ttl_seconds)
    cache_was_enabled = cache.enabled
    if not cache_was_enabled:
        log.warning(f"Nothing is cached this run: {redis.unavailable_reason}.")
    window_key, window_start, window_end = _window(context)
    agent_context = AgentContext(
        partition_key=window_key,
        window_start=window_start,
        window_end=window_end,
        cache=cache,
        log=log,
        settings=agent.settings(),
        queue=redis,
        spend=agent_runs,
    )
    # Known before the outcomes are chosen: the best new items are kept, not the best ones.
    sent = _already_sent(agent_runs, digest, window_key)
    started = time.perf_counter()
    validation = validate_outcomes(
        iterate_outcomes(agent_callable(agent_context)), already_sent=sent
    )
    agent_stats = storable_stats(agent_context.stats, MAX_STATS_JSON_CHARS)
    duration = time.perf_counter() - started
    if validation.read_cut:
        log.warning(
            f"The agent returned more than {MAX_ITEMS_READ:,} items; the rest were not read."
        )
    if validation.not_kept:
        log.info(
            f"Kept the best {len(validation.outcomes):,} of {validation.valid_total:,} valid "
            f"items; {validation.not_kept:,} lower-scored ones only counted."
        )
    if cache_was_enabled and not cache.enabled:
        log.warning(f"Cache lost part way through: {redis.unavailable_reason}.")
    if agent_stats.get("llm_daily_budget_reached"):
        queue_budget_alert(agent_runs, datetime.now(UTC).date(), window_key, context.run_id,
                           str(agent_stats.get("llm_stopped", "LLM_DAILY_BUDGET reached")))
    for dropped in validation.dropped[:WARNINGS_LOGGED]:
        log.warning(f"Dropped item {dropped.index}: {dropped.reason}")
    for warning in validation.warnings[:WARNINGS_LOGGED]:
        log.warning(warning)
    log.info(
        "Agent finished",
        outcomes=validation.valid_total,
        kept=len(validation.outcomes),
        dropped=validation.dropped_total,
        fixed=validation.warnings_total,
        cache_hits=cache.hits,
        cache_misses=cache.misses,
        duration_seconds=round(duration, 3),
    )
    context.add_output_metadata(
        {
            "agent": agent.agent,
            "outcomes": validation.valid_total,
            "kept": len(validation.outcomes),
            "dropped": validation.dropped_total,
            "dropped_why": _table(DROP_REASONS, drop_reason_rows(validation.dropped_reasons)),
            "fixed": validation.warnings_total,
            "duration_seconds": round(duration, 3),
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            # The agent's own account, e.g. sources, LLM calls, tokens and cost for triage.
            **{
                f"agent_{key}": _metadata_value(value)
                for key, value in list(agent_stats.items())[:MAX_STATS_SHOWN]
            },
        }
    )
    return AgentRun(validation, agent_stats)


# The UI shows table metadata on the run page as it is, without a click, and its cells as text.
TOP_FIVE = TableSchema(columns=[
    TableColumn("rank", "int"), TableColumn("score", "float"),
    TableColumn("title", "string"), TableColumn("url", "string"),
])
DROP_REASONS = TableSchema(columns=[TableColumn("reason", "string"), TableColumn("items", "int")])


def _table(schema: TableSchema, rows: list[dict[str, Any]]) -> MetadataValue:
    return MetadataValue.table(records=[TableRecord(row) for row in rows], schema=schema)


def _metadata_value(value: Any) -> Any:
    """A stat as UI metadata: numbers and text as they are, anything else as JSON."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return MetadataValue.json(value)  # already made storable with the rest of the stats


@op(
    out=Out(Nothing),
    description="Dedupe and rank the items and keep the top five (its top_five metadata) in "
    "the row's result, where send_email reads it."
)
@_fails_its_row
def rank_top_five(
    context: OpExecutionContext,
    agent_run: AgentRun,
    agent_runs: AgentRunsStore,
    agent: AgentResource,
    digest: DigestSettings,
) -> None:
    log = _logger(context, agent)
    window_key, _, _ = _window(context)
    # Asked again: a window may have been sent since run_agent chose the outcomes.
    sent = _already_sent(agent_runs, digest, window_key)
    validation = agent_run.validation
    ranking = rank_outcomes(
        validation.outcomes, already_sent=sent, min_score=agent.digest_min_score()
    )
    result = build_result(validation, ranking, agent_run.agent_stats)
    if result["already_sent_left_out"]:
        log.info(
            f"Left out {result['already_sent_left_out']} item(s) already sent in earlier emails."
        )
    # The row stays running until send_email has settled the email: a worker killed while
    # sending must not leave a row that says it succeeded.
    agent_runs.store_result(_run_row(context, agent_runs, agent), result)
    log.info(
        "Ranked",
        top=len(ranking.top),
        outcomes=len(ranking.ranked),
        duplicates_removed=result["duplicates_removed"],
        best_score=ranking.top[0]["score"] if ranking.top else None,
    )
    context.add_output_metadata(
        {
            "top_five": _table(TOP_FIVE, top_five_rows(ranking.top)),
            "outcomes": len(ranking.ranked),
            "duplicates_removed": result["duplicates_removed"],
            "already_sent_left_out": result["already_sent_left_out"],
            "below_min_score": ranking.below_min_score,
            "dropped": validation.dropped_total,
        }
    )


@op(
    # The top five comes from the row, not as an input: an input costs a run three events
    # (the output handled, the input loaded and checked) and a pickle in the storage, for
    # what the row holds anyway.
    ins={"ranked": In(Nothing)},
    description="Email the top five (from the row) to EMAIL_TO, at most once per window (a "
    "backfill's runs only with BACKFILL_EMAIL=each), and send the emails of earlier windows "
    "whose delivery failed."
)
@_fails_its_row
def send_email(
    context: OpExecutionContext,
    agent_runs: AgentRunsStore,
    agent: AgentResource,
    smtp: Smtp,
    digest: DigestSettings,
) -> None:
    log = _logger(context, agent)
    row_id = _run_row(context, agent_runs, agent)
    result = agent_runs.get_row(row_id)["result"]
    if result is None:
        # A re-execution from failure that starts here: its row gets the result it sends.
        result = _parent_result(context, agent_runs)
        agent_runs.store_result(row_id, result)
    top_five = result["top_five"]
    window_key, _, _ = _window(context)
    recipients = digest.recipients()
    metadata: dict[str, Any] = {"sent": False}
    if context.has_tag(BACKFILL_TAG) and digest.backfill_email == "none":
        # A backfill of a day would send 144 digests of old windows (BACKFILL_EMAIL=each).
        agent_runs.record_email_skipped(row_id, BACKFILL)
        log.info("No email: a backfill's runs send none (BACKFILL_EMAIL=none).")
        metadata["reason"] = BACKFILL
    elif not top_five:
        reason = _why_no_items(result)
        agent_runs.record_email_skipped(row_id, reason)
        log.info(f"No email: {reason}.")
        metadata["reason"] = reason
    else:
        message = window_email(digest, window_key, top_five, context.run_id, result)
        # A failed delivery (after the resource's retries) fails the run; the row keeps the
        # result and the error, and a later run delivers it. A rejected one (5xx) does not
        # fail it: Dagster's retry of the run would only be rejected again.
        delivery = deliver_window_email(agent_runs, smtp, row_id, message)
        metadata.update(_report_delivery(log, delivery, len(top_five), len(recipients)))
    caught_up = redeliver_failed(agent_runs, smtp, digest, log)
    if caught_up:
        log.info(f"Delivered the emails that had failed for {', '.join(caught_up)}.")
    metadata["redelivered"] = len(caught_up)
    agent_runs.succeed_run(row_id)
    _tag_run(context, {EMAIL_TAG: _email_fate(metadata)})
    context.add_output_metadata(metadata)


def _parent_result(context: OpExecutionContext, agent_runs: AgentRunsStore) -> dict[str, Any]:
    """The result of the nearest run this one re-executes (its parent, the parent's parent,
    ...) whose row has one: what rank_top_five stored. A retry of a retry whose send_email
    never started has no result of its own to give."""
    try:
        lineage = run_lineage(context.instance, context.run)
    except DagsterInvalidPropertyError:  # an op invoked on its own has no run, only tags
        lineage = [context.get_tag(PARENT_RUN_TAG)] if context.has_tag(PARENT_RUN_TAG) else []
    for run_id in lineage:
        row = agent_runs.get_row_of_run(run_id)
        if row is not None and row["result"] is not None:
            return row["result"]
    raise NoRankedResultError(
        "no ranked top five to send: neither this run's row nor those of the runs it "
        f"re-executes ({', '.join(lineage) or 'none'}) have one; run rank_top_five first "
        "(re-execute the whole run)"
    )


def run_lineage(instance: DagsterInstance, run: DagsterRun) -> list[str]:
    """The ids of the runs a run re-executes, nearest first (at most MAX_ANCESTORS)."""
    lineage: list[str] = []
    parent_run_id = run.parent_run_id
    while parent_run_id is not None and len(lineage) < MAX_ANCESTORS:
        lineage.append(parent_run_id)
        parent = instance.get_run_by_id(parent_run_id)
        parent_run_id = parent.parent_run_id if parent is not None else None
    return lineage


def _why_no_items(result: dict[str, Any]) -> str:
    """Why a window's top five is empty, from its stored result."""
    below, left_out = result.get("below_min_score_left_out"), result.get("already_sent_left_out")
    if below:
        return (f"nothing relevant in this window: {below} item(s) scored under "
                f"{result.get('min_score'):g}")
    if left_out:
        return f"nothing new: all {left_out} item(s) were in earlier emails"
    return "the agent found nothing"


def _tag_run(context: OpExecutionContext, tags: dict[str, str]) -> None:
    """Tags on the op's run; an op invoked on its own, outside any run, has none to tag (and
    asking the storage first would cost every run a query per tag write)."""
    try:
        context.instance.add_run_tags(context.run_id, tags)
    except DagsterRunNotFoundError:
        pass


def _email_fate(metadata: dict[str, Any]) -> str:
    """The window's email in a few words, for the run's tag: sent, rejected or why not."""
    if metadata.get("sent"):
        return "sent"
    if metadata.get("rejected"):
        return "rejected"
    return f"not sent: {metadata.get('reason', 'unknown')}"[:MAX_TAG_CHARS]


def _report_delivery(log: Any, delivery: Delivery, items: int, recipients: int) -> dict[str, Any]:
    """Log what became of the window's email; the op's metadata about it."""
    if delivery.status == EMAIL_SENT:
        log.info(
            f"Emailed the top {items} to {recipients} recipient(s) via {delivery.detail}.",
            recipients=recipients,
            destination=delivery.detail,
        )
        return {"sent": True, "recipients": recipients, "destination": delivery.detail}
    if delivery.status == EMAIL_REJECTED:
        log.error(
            "Email rejected: the SMTP server refused it for good, so it is not retried: "
            f"{delivery.detail}"
        )
        return {"rejected": True, "reason": delivery.detail}
    log.info(f"No email: {delivery.detail}.")
    return {"reason": delivery.detail}


@op(
    out=Out(Nothing),
    description="Delete Dagster runs older than DAGSTER_RUN_RETENTION_DAYS with their event "
    "logs, compute logs and stored op outputs; cut agent_runs results older than "
    "RESULT_COMPACT_DAYS down to the top five and the counts; delete agent_runs and "
    "agent_alerts rows older than AGENT_RUNS_RETENTION_DAYS. In batches, for at most 5 "
    "minutes: the rest waits for the next day.",
)
def apply_retention_policy(
    context: OpExecutionContext, agent_runs: AgentRunsStore, retention: Retention
) -> None:
    started = time.monotonic()
    report = apply_retention(context.instance, agent_runs, retention, datetime.now(UTC))
    removed = report.as_dict()
    context.log.info(
        "Retention: "
        + ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in removed.items())
    )
    context.add_output_metadata(
        {**removed, "duration_seconds": round(time.monotonic() - started, 3)}
    )
