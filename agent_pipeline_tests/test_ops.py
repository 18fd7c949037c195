from __future__ import annotations

import pytest
from dagster import build_op_context

from agent_pipeline.errors import AgentOutputError, ConfigurationError
from agent_pipeline.ops import rank_top_five, record_run, run_agent, send_email
from agent_pipeline.ranking import validate_outcomes
from agent_pipeline.resources import AgentResource, DigestSettings, Redis, Smtp
from agent_pipeline_tests.services import free_port

WINDOW = "2026-11-26-09:30"


def context(**resources):
    return build_op_context(resources=resources, partition_key=WINDOW)


def test_record_run_inserts_the_running_row(pg_store):
    with context(agent_runs=pg_store, agent=AgentResource()) as ctx:
        row_id = record_run(ctx)
    row = pg_store.get_run(row_id)
    assert row["status"] == "running"
    assert row["partition_key"] == WINDOW and row["dagster_run_id"] == ctx.run_id
    assert row["agent"] == "keywords"


def test_record_run_needs_a_window(pg_store):
    resources = {"agent_runs": pg_store, "agent": AgentResource()}
    with build_op_context(resources=resources) as ctx:
        with pytest.raises(ConfigurationError, match="launch it for a partition"):
            record_run(ctx)


def test_run_agent_validates_and_reports_counts(redis_url):
    agent = AgentResource(agent="agent_pipeline_tests.sample_agents:hostile")
    with context(agent=agent, redis=Redis(url=redis_url)) as ctx:
        validation = run_agent(ctx, 1)
    assert len(validation.outcomes) == 7
    assert [d.reason for d in validation.dropped] == [
        "missing score", "score is nan, not a finite number",
        "item is a str, not a mapping", "empty title",
    ]
    metadata = ctx.get_output_metadata("result")
    assert metadata["outcomes"] == 7 and metadata["dropped"] == 4 and metadata["fixed"] == 1


def test_run_agent_counts_cache_hits(redis_url):
    def run():
        with context(agent=AgentResource(), redis=Redis(url=redis_url)) as ctx:
            run_agent(ctx, 1)
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
def test_run_agent_failures_raise(agent, error):
    with context(agent=AgentResource(agent=agent), redis=Redis()) as ctx:
        with pytest.raises(error):
            run_agent(ctx, 1)


def test_rank_top_five_stores_the_result_and_completes_the_row(pg_store):
    row_id = pg_store.start_run("run-1", WINDOW, "keywords")
    validation = validate_outcomes([{"title": f"t{n}", "score": n} for n in range(8)] + [None])
    with context(agent_runs=pg_store) as ctx:
        top = rank_top_five(ctx, row_id, validation)
        metadata = ctx.get_output_metadata("result")
    assert [o["score"] for o in top] == [7, 6, 5, 4, 3]
    row = pg_store.get_run(row_id)
    assert row["status"] == "succeeded"
    assert row["result"]["top_five"] == top
    assert row["result"]["outcomes_total"] == 8 and row["result"]["dropped_total"] == 1
    assert metadata["top_five"].value.startswith("| # | score | title | url |")


def test_send_email_sends_once_per_window(pg_store, smtp_server):
    smtp = Smtp(host=smtp_server.host, port=smtp_server.port, security="none")
    digest = DigestSettings(email_from="agent@example.com", email_to="a@example.com")
    top = [{"title": "only", "score": 1.0}]
    first = pg_store.start_run("run-1", WINDOW, "keywords")
    second = pg_store.start_run("run-2", WINDOW, "keywords")

    with context(agent_runs=pg_store, smtp=smtp, digest=digest) as ctx:
        send_email(ctx, first, top)
        assert ctx.get_output_metadata("result")["sent"] is True
    assert pg_store.get_run(first)["email_status"] == "sent"

    with context(agent_runs=pg_store, smtp=smtp, digest=digest) as ctx:
        send_email(ctx, second, top)
        assert ctx.get_output_metadata("result")["reason"] == "already sent for this window"
    assert len(smtp_server.received) == 1


def test_send_email_skips_an_empty_top_five(pg_store, smtp_server):
    row_id = pg_store.start_run("run-1", WINDOW, "keywords")
    smtp = Smtp(host=smtp_server.host, port=smtp_server.port, security="none")
    digest = DigestSettings(email_from="agent@example.com", email_to="a@example.com")
    with context(agent_runs=pg_store, smtp=smtp, digest=digest) as ctx:
        send_email(ctx, row_id, [])
    assert smtp_server.received == []
    row = pg_store.get_run(row_id)
    assert row["email_status"] == "skipped" and row["email_error"] == "the agent found nothing"


def test_a_failed_delivery_is_recorded_and_releases_the_window(pg_store):
    row_id = pg_store.start_run("run-1", WINDOW, "keywords")
    smtp = Smtp(host="127.0.0.1", port=free_port(), security="none", timeout=2)
    digest = DigestSettings(email_from="agent@example.com", email_to="a@example.com")
    with context(agent_runs=pg_store, smtp=smtp, digest=digest) as ctx:
        with pytest.raises(ConnectionRefusedError):
            send_email(ctx, row_id, [{"title": "x", "score": 1.0}])
    row = pg_store.get_run(row_id)
    assert row["email_status"] == "failed"
    assert row["email_error"].startswith("ConnectionRefusedError:")
    assert pg_store.claim_email(pg_store.start_run("run-2", WINDOW, "keywords"))
