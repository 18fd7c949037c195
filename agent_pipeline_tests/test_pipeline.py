"""agent_job end to end, in process, configured from the environment as a user would."""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from email import message_from_bytes, policy

import psycopg2
import pytest
from aiosmtpd.controller import Controller
from dagster import (
    DagsterInstance,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)

from agent_pipeline.agents import AgentCache, AgentContext, AgentSettings
from agent_pipeline.agents.keywords import keywords_agent
from agent_pipeline.jobs import agent_job
from agent_pipeline.partitions import window_bounds
from agent_pipeline.ranking import rank_outcomes, validate_outcomes
from agent_pipeline.settings import resources_from_env
from agent_pipeline_tests.feed_server import ATOM, JSON_ITEMS, RSS2, FeedServer
from agent_pipeline_tests.helpers import (
    INTERESTS,
    SmtpCatcher,
    agent_job_from_env,
    in_memory_instance,
    rows,
    run_window,
    window_keys,
)
from agent_pipeline_tests.llm_server import LoopbackLlm, default_score
from agent_pipeline_tests.services import free_port


def expected_top_five(window: str) -> list[dict]:
    start, end = window_bounds(window)
    context = AgentContext(
        window, start, end, AgentCache(None, 1), logging.getLogger(),
        AgentSettings(interests=INTERESTS),
    )
    outcomes = keywords_agent(context)
    return rank_outcomes(validate_outcomes(outcomes).outcomes).top


def test_a_window_on_postgres_redis_and_smtp(production_env, postgres_url, smtp_server):
    (window,) = window_keys(1)
    result = run_window(window)
    assert result.success

    (row,) = rows(postgres_url)
    assert row["status"] == "succeeded" and row["error_message"] is None
    assert row["partition_key"] == window and row["dagster_run_id"] == result.run_id
    assert row["started_at"] <= row["completed_at"]
    # The row completes once its email is settled: after it was sent.
    assert row["email_status"] == "sent" and row["email_sent_at"] <= row["completed_at"]
    top = expected_top_five(window)
    assert [o["score"] for o in top] == sorted((o["score"] for o in top), reverse=True)
    assert row["result"]["top_five"] == top
    assert row["result"]["outcomes_total"] == 24
    # Each event is a write to Dagster's storage: none for what did not happen (a failure
    # hook's HOOK_SKIPPED on every op), and no input for send_email, which reads the top five
    # from the row (three events: rank_top_five's output handled, the input loaded, checked).
    events = in_memory_instance().all_logs(result.run_id)
    assert not [e for e in events if e.dagster_event and "HOOK" in e.dagster_event.event_type_value]
    assert not [e for e in events if e.step_key == "send_email" and e.dagster_event
                and e.dagster_event.event_type_value in ("LOADED_INPUT", "STEP_INPUT")]
    assert len(events) <= 27

    (mail,) = smtp_server.received
    assert mail.mail_from == "agent@example.com"
    assert mail.rcpt_tos == ["ann@example.com", "bob@example.com"]
    start, end = window_bounds(window)
    assert mail.message["Subject"] == (
        f"agent_pipeline: top 5 for {start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC"
    )
    text = mail.message.get_body(("plain",)).get_content()
    titles_in_order = [line.split(". ", 1)[1].rsplit("  (score", 1)[0]
                       for line in text.splitlines() if line[:2] in {"1.", "2.", "3.", "4.", "5."}]
    assert titles_in_order == [o["title"] for o in top]

    metadata = {
        event.step_key: event.step_output_data.metadata
        for event in result.all_events
        if event.is_successful_output
    }
    table = metadata["rank_top_five"]["top_five"].value
    assert [record.data["title"] for record in table.records] == [o["title"] for o in top]
    # The run's tags say the window, the agent and the email's fate.
    tags = in_memory_instance().get_run_by_id(result.run_id).tags
    assert tags["dagster/partition"] == window
    assert (tags["agent_pipeline/agent"], tags["agent_pipeline/email"]) == ("keywords", "sent")
    assert metadata["run_agent"]["cache_misses"].value == 24
    assert metadata["send_email"]["recipients"].value == 2


def test_the_email_escapes_what_the_agent_wrote(production_env, smtp_server):
    production_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:hostile")
    (window,) = window_keys(1)
    result = run_window(window)
    assert result.success
    (mail,) = smtp_server.received
    html = mail.message.get_body(("html",)).get_content()
    assert "<script>" not in html and "<img" not in html and "javascript:" not in html
    assert "&lt;b&gt;Bold&lt;/b&gt; &amp; &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert mail.message["Bcc"] is None
    assert html.count('class="card"') == 5
    # The email links to the run that made it, on the UI that DAGSTER_WEBSERVER_URL names.
    assert f'href="http://localhost:3000/runs/{result.run_id}"' in html
    # The job's own tag names the agent the code location loaded with; the run's names the
    # one that ran.
    tags = in_memory_instance().get_run_by_id(result.run_id).tags
    assert tags["agent_pipeline/agent"] == "agent_pipeline_tests.sample_agents:hostile"


def test_a_window_sends_once_however_often_it_runs(production_env, postgres_url, smtp_server):
    first, second = window_keys(2)
    assert run_window(first).success
    assert run_window(first).success
    assert run_window(second).success
    assert [mail.message["X-Agent-Pipeline-Window"] for mail in smtp_server.received] == [
        first, second,
    ]
    found = rows(postgres_url)
    assert [(r["partition_key"], r["status"], r["email_status"]) for r in found] == [
        (first, "succeeded", "sent"),
        (first, "succeeded", "skipped"),
        (second, "succeeded", "sent"),
    ]


def test_a_failing_agent_fails_the_row_and_sends_nothing(production_env, postgres_url, smtp_server):
    production_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:broken")
    (window,) = window_keys(1)
    result = run_window(window)
    assert not result.success
    (row,) = rows(postgres_url)
    assert row["status"] == "failed"
    assert row["error_message"] == "RuntimeError: the agent fell over"
    assert row["completed_at"] is not None and row["result"] is None
    assert smtp_server.received == []


def test_smtp_down_fails_the_run_and_keeps_the_result(production_env, postgres_url):
    production_env.setenv("SMTP_PORT", str(free_port()))
    (window,) = window_keys(1)
    assert not run_window(window).success
    (row,) = rows(postgres_url)
    assert row["status"] == "failed" and row["error_message"].startswith("ConnectionRefusedError")
    assert row["email_status"] == "failed"
    assert len(row["result"]["top_five"]) == 5


def test_a_rejected_digest_is_not_retried_and_the_run_succeeds(
    production_env, postgres_url, smtp_server
):
    """A 5xx to the message: Dagster retrying the run could only be rejected again."""
    smtp_server.fail_with = lambda: "550 5.7.1 no"
    (window,) = window_keys(1)
    with DagsterInstance.ephemeral() as instance:
        result = agent_job.execute_in_process(
            partition_key=window, resources=resources_from_env(os.environ),
            instance=instance, raise_on_error=False,
        )
        errors = [e.user_message for e in instance.all_logs(result.run_id)
                  if e.level == logging.ERROR]
    assert result.success
    assert smtp_server.attempts == 1 and smtp_server.received == []
    (row,) = rows(postgres_url)
    assert row["status"] == "succeeded" and row["error_message"] is None
    assert row["email_status"] == "rejected"
    assert row["email_error"] == "SMTPDataError: (550, b'5.7.1 no')"
    metadata = next(
        e.step_output_data.metadata for e in result.all_events
        if e.is_successful_output and e.step_key == "send_email"
    )
    assert metadata["sent"].value is False and metadata["rejected"].value is True
    assert metadata["reason"].value == row["email_error"]
    assert any("Email rejected" in m and "5.7.1 no" in m for m in errors)

    # The same window again (a backfill, a second launch): no second attempt.
    again = run_window(window)
    assert again.success and smtp_server.attempts == 1
    _, second = rows(postgres_url)
    assert second["email_status"] == "skipped"
    assert second["email_error"].startswith(
        f"the SMTP server rejected this window's email for good in run {result.run_id}"
    )


def test_the_embedded_default_needs_no_services(clean_env, tmp_path):
    (window,) = window_keys(1)
    result = run_window(window)
    assert result.success
    home = tmp_path / "home"
    (row,) = rows(f"sqlite:///{home / 'agent_runs.sqlite3'}")
    assert row["status"] == "succeeded" and len(row["result"]["top_five"]) == 5
    assert row["email_status"] == "sent"
    (eml,) = (home / "outbox").glob("*.eml")
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["To"] == "you@example.com"
    assert message["X-Agent-Pipeline-Window"] == window
    assert sum("Nothing is cached this run: REDIS_URL is not set" in m for m in result.logs) == 1


def test_postgres_down_fails_the_run_fast_naming_the_database(production_env, smtp_server):
    production_env.setenv("DATABASE_URL", f"postgresql://agent:hunter2@127.0.0.1:{free_port()}/db")
    (window,) = window_keys(1)
    result = run_window(window)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE")
    message = failure.event_specific_data.error.to_string()
    assert "cannot reach the agent_runs database" in message and "(DATABASE_URL)" in message
    assert "hunter2" not in message
    assert smtp_server.received == []


@pytest.mark.slow
def test_re_execution_from_failure_sends_once_and_records_its_own_row(
    production_env, postgres_url, tmp_path
):
    (window,) = window_keys(1)
    smtp_server = SmtpCatcher("127.0.0.1", free_port())
    production_env.setenv("SMTP_PORT", str(smtp_server.port))
    job = reconstructable(agent_job_from_env)
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        # Nothing listens on the SMTP port yet: delivery fails.
        with execute_job(job, instance, tags={"dagster/partition": window}) as failed:
            assert not failed.success
        controller = Controller(smtp_server, hostname=smtp_server.host, port=smtp_server.port)
        controller.start()
        options = ReexecutionOptions.from_failure(failed.run_id, instance)
        # The UI's "re-execute from failure" copies the parent's tags, the window among them.
        tags = {"dagster/partition": window}
        with execute_job(job, instance, tags=tags, reexecution_options=options) as retried:
            assert retried.success
            assert [e.step_key for e in retried.all_events if e.is_step_start] == ["send_email"]
        # A second re-execution of the same failed run finds the window sent.
        with execute_job(job, instance, tags=tags, reexecution_options=options) as again:
            assert again.success
        controller.stop()

    assert len(smtp_server.received) == 1
    by_run = {row["dagster_run_id"]: row for row in rows(postgres_url)}
    assert len(by_run) == 3
    original, first, second = by_run[failed.run_id], by_run[retried.run_id], by_run[again.run_id]
    assert (original["status"], original["email_status"]) == ("failed", "failed")
    assert original["error_message"].startswith("ConnectionRefusedError")
    assert len(original["result"]["top_five"]) == 5
    assert (first["status"], first["email_status"]) == ("succeeded", "sent")
    assert first["result"] == original["result"]  # the parent's, as its row recorded it
    assert (second["status"], second["email_status"]) == ("succeeded", "skipped")


def test_every_kind_of_bad_output_is_dropped_or_made_safe(
    production_env, postgres_url, smtp_server
):
    production_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:every_kind_of_bad")
    (window,) = window_keys(1)
    assert run_window(window).success

    (row,) = rows(postgres_url)
    result = row["result"]
    assert [o["title"] for o in result["top_five"]] == [
        "Decimal score",
        "Subject Bcc: victim@example.com",
        "<script>alert(1)</script>",
        "second copy",
        "a data: link",
    ]
    assert "url" not in result["top_five"][4]
    assert result["duplicates_removed"] == 1
    reasons = [d["reason"] for d in result["dropped"]]
    assert reasons == [
        "title is a bytes, not text",
        "score is a boolean, not a number",
        "score is inf, not a finite number",
        "score is a str, not a number",
        "empty title",
        "missing title",
        "item is a NoneType, not a mapping",
        "item is a str, not a mapping",
        "item is a Opaque, not a mapping",
    ]
    assert result["dropped"][-1]["preview"] == "<Opaque>"
    by_title = {o["title"][:20]: o for o in result["outcomes"]}
    long_title = by_title["x" * 20]["title"]
    assert len(long_title) == 300
    undecodable = by_title["NUL and undecodable "]
    assert undecodable["title"] == "NUL and undecodable caf\ufffd \ufffd"
    assert undecodable["note"] == "ab caf\ufffd \ufffd".replace(" ", "", 1)
    assert undecodable["nested"] == {"k": ["caf\ufffd \ufffd", 1.5, None]}
    not_json = by_title["values that are not "]
    assert set(not_json) == {"title", "score"}
    assert result["warnings_total"] == 6  # five fields and a URL

    (mail,) = smtp_server.received
    html = mail.message.get_body(("html",)).get_content()
    assert "<script>" not in html and 'href="data:' not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert mail.message["Bcc"] is None


def test_a_hundred_thousand_items(production_env, postgres_url):
    production_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:many")
    (window,) = window_keys(1)
    result = run_window(window)
    assert result.success
    (row,) = rows(postgres_url)
    assert [o["score"] for o in row["result"]["top_five"]] == [999.0] * 5
    assert [o["title"] for o in row["result"]["top_five"]] == [
        "item 000999", "item 001999", "item 002999", "item 003999", "item 004999",
    ]
    assert row["result"]["outcomes_total"] == 100_000
    assert len(row["result"]["outcomes"]) == 100


def test_a_score_of_1e307_costs_its_item_not_the_window(production_env, postgres_url, smtp_server):
    production_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:huge_scores")
    (window,) = window_keys(1)
    assert run_window(window).success
    (row,) = rows(postgres_url)
    assert [o["title"] for o in row["result"]["top_five"]] == [
        f"Ordinary {n}" for n in (5, 4, 3, 2, 1)
    ]
    assert [d["reason"] for d in row["result"]["dropped"]] == ["score is outside ±1e+12"] * 2
    (mail,) = smtp_server.received
    assert "Ordinary 5" in mail.message.get_body(("plain",)).get_content()


def test_a_hundred_thousand_fat_items_keep_the_best_and_a_bounded_row(
    production_env, postgres_url, smtp_server
):
    production_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:many_with_extras")
    (window,) = window_keys(1)
    assert run_window(window).success
    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT length(result::text) FROM agent_runs")
        ((text_chars,),) = cursor.fetchall()
    assert text_chars <= 1_000_000
    (row,) = rows(postgres_url)
    result = row["result"]
    assert result["top_five"][0]["title"] == "the best, last"
    assert result["outcomes_total"] == 100_001 and result["outcomes_not_kept"] == 99_001
    assert len(smtp_server.received) == 1


@pytest.mark.slow
def test_an_smtp_server_failing_half_the_time_loses_no_email_and_sends_none_twice(
    production_env, postgres_url, smtp_server
):
    coin = random.Random(20261126)
    smtp_server.fail_with = lambda: "451 4.3.0 flaky, try later" if coin.random() < 0.5 else None
    production_env.setenv("SMTP_RETRIES", "1")
    production_env.setenv("EMAIL_ONLY_NEW", "false")  # every window has its five to send
    windows = window_keys(11)
    outcomes = [run_window(window).success for window in windows[:10]]
    assert outcomes.count(False) >= 3  # the flaky server really failed some runs

    smtp_server.fail_with = None  # the server recovers; the next run catches up
    assert run_window(windows[10]).success
    delivered = Counter(mail.message["X-Agent-Pipeline-Window"] for mail in smtp_server.received)
    assert delivered == Counter(windows)  # every window exactly once
    found = rows(postgres_url)
    failed = [r for r in found if r["status"] == "failed"]
    assert len(failed) == outcomes.count(False)
    assert all(r["email_status"] == "sent" for r in failed)  # redelivered later
    assert all(r["error_message"].startswith("SMTPDataError: (451") for r in failed)


def test_the_triage_agent_end_to_end(production_env, postgres_url, smtp_server, tmp_path):
    """AGENT=triage with the LLM scorer: feeds over loopback HTTP and a file, the loopback
    LLM, Postgres, Redis and SMTP."""
    (tmp_path / "items.json").write_bytes(JSON_ITEMS)
    routes = {"/rss2.xml": (200, "application/rss+xml", RSS2),
              "/atom.xml": (200, "application/atom+xml", ATOM)}
    with FeedServer(routes) as feeds, LoopbackLlm() as llm:
        production_env.setenv("AGENT", "triage")
        production_env.setenv(
            "AGENT_SOURCES",
            f"{feeds.url('/rss2.xml')}, {feeds.url('/atom.xml')}, {tmp_path / 'items.json'}",
        )
        production_env.setenv("LLM_BASE_URL", llm.base_url)
        production_env.setenv("LLM_API_KEY", "sk-test")
        production_env.setenv("LLM_PRICE_INPUT", "1")
        production_env.setenv("LLM_PRICE_OUTPUT", "2")
        first, second = window_keys(2)
        run = run_window(first)
        assert run.success
        assert run_window(second).success  # all from cache
    assert len(llm.requests) == 4
    by_window = {row["partition_key"]: row for row in rows(postgres_url)}
    result = by_window[first]["result"]
    expected = sorted(
        ["Dagster adds faster backfills", "Gardening in winter", "LLM agents on a schedule",
         "Data orchestration at scale"],
        key=lambda title: (-default_score(title), title.casefold()),
    )
    assert [o["title"] for o in result["top_five"]] == expected
    top = result["top_five"][0]
    assert top["reason"] == f"About {top['title']}." and top["source"] and "published" in top
    assert result["agent_stats"]["llm_calls"] == 4
    assert result["agent_stats"]["prompt_tokens"] == 200
    assert by_window[second]["result"]["agent_stats"]["cache_hits"] == 4
    metadata = {
        event.step_key: event.step_output_data.metadata
        for event in run.all_events if event.is_successful_output
    }["run_agent"]
    assert metadata["agent_llm_calls"].value == 4
    assert metadata["agent_cost"].value == pytest.approx((200 * 1 + 40 * 2) / 1e6)
    # The second window found the same four items, all in the first window's email.
    assert len(smtp_server.received) == 1
    assert by_window[second]["email_error"] == "nothing new: all 4 item(s) were in earlier emails"


def test_an_hour_and_more_of_the_default_agent_emails_relevant_news_every_window(
    production_env, postgres_url, smtp_server
):
    """The first hours as a newcomer sees them: the default agent and interests, eight
    windows in a row (the sample feed replays once an hour). Every window emails something
    that matches an interest, nothing that matches none, and no item twice."""
    production_env.delenv("AGENT_INTERESTS")
    windows = window_keys(8)
    for window in windows:
        assert run_window(window).success
    by_window = {row["partition_key"]: row for row in rows(postgres_url)}
    tops = [by_window[w]["result"]["top_five"] for w in windows]
    assert len(tops[0]) == 5  # the feed's last hour, as a first digest
    assert all(top for top in tops)
    assert all(o["score"] >= 0.1 and o["reason"].startswith("mentions ") for top in tops
               for o in top)
    assert len({o["id"] for top in tops for o in top}) == sum(len(top) for top in tops)
    assert [by_window[w]["email_status"] for w in windows] == ["sent"] * len(windows)
    assert len(smtp_server.received) == len(windows)


def test_a_window_where_nothing_new_matches_says_so(production_env, postgres_url, smtp_server):
    """Interested in soup only: the first window emails the one soup item of the feed's
    last hour; the next has none that was not sent, and says nothing relevant is in it."""
    production_env.setenv("AGENT_INTERESTS", "soups")
    # Not the window at :10, in which the soup item is published again, as a new item.
    windows = window_keys(12)
    second = next(w for w in windows[1:] if w.endswith(":30"))
    first = windows[windows.index(second) - 1]
    assert run_window(first).success and run_window(second).success
    by_window = {row["partition_key"]: row for row in rows(postgres_url)}
    assert [o["title"] for o in by_window[first]["result"]["top_five"]] == [
        "Five soups for a cold evening"]
    later = by_window[second]
    assert later["email_status"] == "skipped" and later["result"]["top_five"] == []
    assert later["email_error"] == "nothing relevant in this window: 23 item(s) scored under 0.1"
    assert later["result"]["already_sent_left_out"] == 1
    assert len(smtp_server.received) == 1


@pytest.mark.parametrize("mode, sent", [(None, False), ("none", False), ("each", True)])
@pytest.mark.slow
def test_a_backfills_runs_email_only_when_asked(production_env, postgres_url, smtp_server,
                                                mode, sent):
    if mode:
        production_env.setenv("BACKFILL_EMAIL", mode)
    (window,) = window_keys(1)
    result = run_window(window, tags={"dagster/backfill": "abcdefgh"})
    assert result.success
    (row,) = rows(postgres_url)
    assert row["status"] == "succeeded" and len(row["result"]["top_five"]) == 5
    email_tag = in_memory_instance().get_run_by_id(result.run_id).tags["agent_pipeline/email"]
    if sent:
        assert row["email_status"] == "sent" and len(smtp_server.received) == 1
        assert email_tag == "sent"
    else:
        assert (row["email_status"], row["email_error"]) == ("skipped", "backfill")
        assert smtp_server.received == []
        assert email_tag == "not sent: backfill"
