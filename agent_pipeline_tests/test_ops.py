"""Each op on its own, with build_op_context. Such a context's run id is always EPHEMERAL,
so rows written by these ops are found under that id."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, DagsterRun, build_op_context

from agent_pipeline.errors import AgentOutputError, ConfigurationError, NoRankedResultError
from agent_pipeline.ops import (
    MAX_ANCESTORS,
    AgentRun,
    rank_top_five,
    record_run,
    run_agent,
    run_lineage,
    send_email,
)
from agent_pipeline.ranking import validate_outcomes
from agent_pipeline.resources import AgentResource, DigestSettings, RedisStore, Smtp
from agent_pipeline_tests.services import free_port

WINDOW = "2026-11-26-09:30"
RUN_ID = "EPHEMERAL"


def context(**resources):
    return build_op_context(resources=resources, partition_key=WINDOW)


def agent_context(store, agent: AgentResource, redis: RedisStore):
    """run_agent's resources: the agent, Redis, and what it asks of earlier emails."""
    digest = DigestSettings(email_from="agent@example.com", email_to="a@example.com")
    return context(agent=agent, redis=redis, agent_runs=store, digest=digest)


def ranked(store, top_five: list[dict]) -> int:
    """This run's row as rank_top_five leaves it: running, its top five in its result."""
    row_id = store.get_or_create_row(RUN_ID, WINDOW, "keywords")
    store.store_result(row_id, {"top_five": top_five})
    return row_id


@pytest.fixture
def mail(smtp_server):
    return {
        "smtp": Smtp(host=smtp_server.host, port=smtp_server.port, security="none"),
        "digest": DigestSettings(email_from="agent@example.com", email_to="a@example.com"),
    }


def test_record_run_inserts_the_running_row(pg_store):
    with context(agent_runs=pg_store, agent=AgentResource()) as ctx:
        record_run(ctx)
        metadata = ctx.get_output_metadata("result")
    row = pg_store.get_row_of_run(RUN_ID)
    assert metadata["row_id"] == row["id"]
    assert row["status"] == "running" and row["partition_key"] == WINDOW
    assert row["agent"] == "keywords"


def test_record_run_needs_a_window(pg_store):
    resources = {"agent_runs": pg_store, "agent": AgentResource()}
    with build_op_context(resources=resources) as ctx:
        with pytest.raises(ConfigurationError, match="launch it for a partition"):
            record_run(ctx)


def test_run_agent_validates_and_reports_counts(redis_url, pg_store):
    agent = AgentResource(agent="agent_pipeline_tests.sample_agents:hostile")
    with agent_context(pg_store, agent, RedisStore(url=redis_url)) as ctx:
        validation = run_agent(ctx).validation
        metadata = ctx.get_output_metadata("result")
    assert len(validation.outcomes) == 6 and validation.duplicates_removed == 1
    assert [d.reason for d in validation.dropped] == [
        "missing score",
        "score is nan, not a finite number",
        "item is a str, not a mapping",
        "empty title",
    ]
    assert metadata["outcomes"] == 7 and metadata["dropped"] == 4 and metadata["fixed"] == 1


def test_run_agent_counts_cache_hits(redis_url, pg_store):
    def run():
        with agent_context(pg_store, AgentResource(), RedisStore(url=redis_url)) as ctx:
            run_agent(ctx)
            return ctx.get_output_metadata("result")

    first, second = run(), run()
    assert first["cache_hits"] == 0 and first["cache_misses"] == first["outcomes"] > 0
    assert second["cache_hits"] == first["outcomes"] and second["cache_misses"] == 0


@pytest.mark.parametrize(
    "agent, error",
    [
        ("agent_pipeline_tests.sample_agents:not_a_list", AgentOutputError),
        ("agent_pipeline_tests.sample_agents:broken", RuntimeError),
        ("no.such.module:agent", ConfigurationError),
    ],
)
def test_run_agent_failures_raise(agent, error, pg_store):
    with agent_context(pg_store, AgentResource(agent=agent), RedisStore()) as ctx:
        with pytest.raises(error):
            run_agent(ctx)


def test_run_agent_keeps_the_best_new_items_not_the_best_ones(pg_store, monkeypatch):
    """The 1,000 best items were all in earlier emails: the 500 new ones below them are
    what the run keeps, so the top five is not empty."""
    sent_row = pg_store.get_or_create_row("earlier", "2026-11-26-09:20", "x")
    pg_store.complete_run(sent_row, {"top_five": [
        {"title": f"old {n}", "score": 1, "id": f"old-{n}"} for n in range(1_000)
    ]})
    assert pg_store.claim_email(sent_row)
    pg_store.record_email_sent(sent_row)
    monkeypatch.setattr(
        "agent_pipeline.agents.keywords.sample_feed_at",
        lambda moment: [{"title": f"old {n}", "id": f"old-{n}"} for n in range(1_000)]
        + [{"title": f"new {n}", "id": f"new-{n}"} for n in range(500)],
    )
    with agent_context(pg_store, AgentResource(interests="old, new"), RedisStore()) as ctx:
        validation = run_agent(ctx).validation
    assert validation.already_sent_left_out == 1_000
    assert {o["id"] for o in validation.outcomes} == {f"new-{n}" for n in range(500)}


def test_rank_top_five_stores_the_result_and_leaves_the_row_running(pg_store):
    pg_store.get_or_create_row(RUN_ID, WINDOW, "keywords")
    validation = validate_outcomes([{"title": f"t{n}", "score": n} for n in range(8)] + [None])
    digest = DigestSettings(email_from="agent@example.com", email_to="a@example.com")
    with context(agent_runs=pg_store, agent=AgentResource(), digest=digest) as ctx:
        rank_top_five(ctx, AgentRun(validation, {"calls": 3}))
        metadata = ctx.get_output_metadata("result")
    row = pg_store.get_row_of_run(RUN_ID)
    assert row["status"] == "running"  # until send_email has settled the email
    top = row["result"]["top_five"]  # where send_email reads it
    assert [o["score"] for o in top] == [7, 6, 5, 4, 3]
    assert row["result"]["outcomes_total"] == 8 and row["result"]["dropped_total"] == 1
    assert row["result"]["agent_stats"] == {"calls": 3}
    table = metadata["top_five"].value
    assert [column.name for column in table.schema.columns] == ["rank", "score", "title", "url"]
    assert [record.data["score"] for record in table.records] == [7, 6, 5, 4, 3]
    assert [record.data["title"] for record in table.records] == [o["title"] for o in top]


def test_send_email_sends_and_records_it(pg_store, mail, smtp_server):
    ranked(pg_store, [{"title": "only", "score": 1.0}])
    with context(agent_runs=pg_store, agent=AgentResource(), **mail) as ctx:
        send_email(ctx)
        assert ctx.get_output_metadata("result")["sent"] is True
    row = pg_store.get_row_of_run(RUN_ID)
    assert (row["email_status"], row["status"]) == ("sent", "succeeded")
    assert row["completed_at"] >= row["email_sent_at"]
    assert len(smtp_server.received) == 1


def test_send_email_skips_a_window_another_run_has_sent(pg_store, mail, smtp_server):
    earlier = pg_store.get_or_create_row("earlier-run", WINDOW, "keywords")
    assert pg_store.claim_email(earlier)
    pg_store.record_email_sent(earlier)
    ranked(pg_store, [{"title": "only", "score": 1.0}])
    with context(agent_runs=pg_store, agent=AgentResource(), **mail) as ctx:
        send_email(ctx)
        reason = ctx.get_output_metadata("result")["reason"]
        assert reason == "already sent for this window by another run"
    assert smtp_server.received == []
    assert pg_store.get_row_of_run(RUN_ID)["email_status"] == "skipped"


def test_send_email_never_sends_its_own_row_twice(pg_store, mail, smtp_server):
    ranked(pg_store, [{"title": "only", "score": 1.0}])
    with context(agent_runs=pg_store, agent=AgentResource(), **mail) as ctx:
        send_email(ctx)
    with context(agent_runs=pg_store, agent=AgentResource(), **mail) as ctx:
        send_email(ctx)
    assert len(smtp_server.received) == 1


def test_send_email_completes_a_row_it_had_to_create(pg_store, mail, smtp_server):
    """A re-execution from failure that starts at send_email has no row yet: it gets the
    result of the run it re-executes."""
    parent = pg_store.get_or_create_row("parent-run", WINDOW, "keywords")
    pg_store.store_result(parent, {"top_five": [{"title": "only", "score": 1.0}], "calls": 2})
    tags = {"dagster/parent_run_id": "parent-run"}
    resources = {"agent_runs": pg_store, "agent": AgentResource(), **mail}
    with build_op_context(resources=resources, partition_key=WINDOW, run_tags=tags) as ctx:
        send_email(ctx)
    row = pg_store.get_row_of_run(RUN_ID)
    assert row["status"] == "succeeded" and row["email_status"] == "sent"
    assert row["result"] == {"top_five": [{"title": "only", "score": 1.0}], "calls": 2}
    assert len(smtp_server.received) == 1


def test_the_lineage_of_a_retry_of_a_retry_goes_back_to_the_root():
    """send_email of a retry whose parent never ranked nor sent looks further back."""
    instance = DagsterInstance.ephemeral()
    instance.add_run(DagsterRun(job_name="agent_job", run_id="root"))
    instance.add_run(DagsterRun(job_name="agent_job", run_id="retry", parent_run_id="root",
                                root_run_id="root"))
    retry_of_retry = DagsterRun(job_name="agent_job", run_id="again", parent_run_id="retry",
                                root_run_id="root")
    assert run_lineage(instance, retry_of_retry) == ["retry", "root"]
    assert run_lineage(instance, instance.get_run_by_id("root")) == []
    # A run its own parent (a corrupt record) is followed only so far.
    looped = instance.add_run(DagsterRun(job_name="agent_job", run_id="loop",
                                         parent_run_id="loop", root_run_id="loop"))
    assert run_lineage(instance, looped) == ["loop"] * MAX_ANCESTORS


def test_send_email_without_a_ranked_top_five_says_what_to_run(pg_store, mail, smtp_server):
    with context(agent_runs=pg_store, agent=AgentResource(), **mail) as ctx:
        with pytest.raises(NoRankedResultError, match="run rank_top_five first"):
            send_email(ctx)
    row = pg_store.get_row_of_run(RUN_ID)
    assert row["status"] == "failed" and "no ranked top five" in row["error_message"]
    assert smtp_server.received == []


def test_send_email_skips_an_empty_top_five(pg_store, mail, smtp_server):
    ranked(pg_store, [])
    with context(agent_runs=pg_store, agent=AgentResource(), **mail) as ctx:
        send_email(ctx)
    assert smtp_server.received == []
    row = pg_store.get_row_of_run(RUN_ID)
    assert row["email_status"] == "skipped" and row["email_error"] == "the agent found nothing"


def test_a_window_where_nothing_passes_the_minimum_says_so(pg_store, mail, smtp_server):
    validation = validate_outcomes([{"title": "about nothing", "score": 0.0}])
    with context(agent_runs=pg_store, agent=AgentResource(), **mail) as ctx:
        rank_top_five(ctx, AgentRun(validation, {}))
        send_email(ctx)
    assert smtp_server.received == []
    row = pg_store.get_row_of_run(RUN_ID)
    assert (row["email_status"], row["email_error"]) == (
        "skipped", "nothing relevant in this window: 1 item(s) scored under 0.1"
    )


def test_the_minimum_score_is_the_scorers_own_unless_set():
    assert AgentResource().digest_min_score() == 0.1  # keywords: any mention of an interest
    assert AgentResource(agent="triage", scorer="llm").digest_min_score() == 20
    assert AgentResource(agent="my_agents:find").digest_min_score() is None  # its own scale
    assert AgentResource(agent="my_agents:find", min_score=5).digest_min_score() == 5


def test_a_failed_delivery_is_recorded_and_releases_the_window(pg_store, mail):
    smtp = Smtp(
        host="127.0.0.1", port=free_port(), security="none", timeout=2, retry_backoff_seconds=0.01
    )
    resources = {"agent_runs": pg_store, "agent": AgentResource(), "digest": mail["digest"]}
    ranked(pg_store, [{"title": "x", "score": 1.0}])
    with context(smtp=smtp, **resources) as ctx:
        with pytest.raises(ConnectionRefusedError):
            send_email(ctx)
    row = pg_store.get_row_of_run(RUN_ID)
    assert row["email_status"] == "failed"
    assert row["email_error"].startswith("ConnectionRefusedError:")
    assert pg_store.claim_email(pg_store.get_or_create_row("later-run", WINDOW, "keywords"))
