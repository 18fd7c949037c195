from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from agent_pipeline.errors import ConfigurationError, DatabaseUnavailableError
from agent_pipeline.ranking import sent_item_keys
from agent_pipeline.resources.agent_runs import AgentRunsStore, parse_database_url
from agent_pipeline_tests.services import free_port

SEED_SCHEMA = """
CREATE TABLE agent_runs (
    id SERIAL PRIMARY KEY,
    started_at TIMESTAMP NOT NULL DEFAULT NOW(),
    completed_at TIMESTAMP,
    status VARCHAR(20) NOT NULL,
    result JSONB,
    error_message TEXT
)
"""


@pytest.fixture(params=["postgres", "sqlite"])
def store(request):
    url = request.getfixturevalue("postgres_url" if request.param == "postgres" else "sqlite_url")
    store = AgentRunsStore(database_url=url)
    store.open()
    yield store
    store.close()


def test_a_run_moves_from_running_to_succeeded(store):
    row_id = store.get_or_create_row("run-1", "2026-11-26-09:30", "keywords")
    row = store.get_row(row_id)
    assert row["status"] == "running" and row["completed_at"] is None
    assert row["partition_key"] == "2026-11-26-09:30" and row["agent"] == "keywords"
    assert row["email_status"] == "not_sent"

    store.complete_run(row_id, {"top_five": [{"title": "a", "score": 1.0}]})
    row = store.get_row(row_id)
    assert row["status"] == "succeeded"
    assert row["completed_at"] >= row["started_at"]
    assert row["result"] == {"top_five": [{"title": "a", "score": 1.0}]}


def test_start_run_is_idempotent_per_dagster_run(store):
    first = store.get_or_create_row("run-1", "2026-11-26-09:30", "keywords")
    assert store.get_or_create_row("run-1", "2026-11-26-09:30", "keywords") == first
    assert len(store.runs_for_window("2026-11-26-09:30")) == 1


def test_fail_run_records_the_message(store):
    row_id = store.get_or_create_row("run-1", "2026-11-26-09:30", "keywords")
    assert store.fail_run("run-1", "ValueError: boom" + "x" * 10_000)
    row = store.get_row(row_id)
    assert row["status"] == "failed" and row["completed_at"] is not None
    assert row["error_message"].startswith("ValueError: boom") and len(row["error_message"]) == 4000
    assert store.fail_run("no-such-run", "x") is False


def test_only_one_row_per_window_can_claim_the_email(store):
    first = store.get_or_create_row("run-1", "w", "keywords")
    second = store.get_or_create_row("run-2", "w", "keywords")
    other_window = store.get_or_create_row("run-3", "v", "keywords")
    assert store.claim_email(first)
    assert not store.claim_email(second)
    assert store.claim_email(other_window)
    # A failed delivery releases the window for a later run.
    store.record_email_failed(first, "SMTPServerDisconnected: gone")
    assert store.claim_email(second)
    store.record_email_sent(second)
    assert not store.claim_email(first)
    rows = {row["id"]: row for row in store.runs_for_window("w")}
    assert rows[first]["email_status"] == "failed"
    assert rows[first]["email_error"] == "SMTPServerDisconnected: gone"
    assert rows[second]["email_status"] == "sent" and rows[second]["email_sent_at"] is not None


def test_an_existing_seed_table_is_adopted_with_its_rows(postgres_url):
    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text(SEED_SCHEMA))
        connection.execute(
            text("INSERT INTO agent_runs (status, result) VALUES ('succeeded', '{\"old\": true}')")
        )
    store = AgentRunsStore(database_url=postgres_url)
    store.open()
    try:
        old = store.get_row(1)
        assert old["status"] == "succeeded" and old["result"] == {"old": True}
        assert store.get_or_create_row("run-1", "w", "keywords") == 2
        columns = {c["name"]: c for c in inspect(engine).get_columns("agent_runs")}
        assert str(columns["result"]["type"]) == "JSONB"
        assert {"dagster_run_id", "partition_key", "email_status"} <= set(columns)
        with engine.connect() as connection:
            assert connection.execute(
                text("SELECT version_num FROM agent_runs_alembic_version")
            ).scalar_one() == "0008"
            # Dagster's own alembic_version table is left alone.
            assert not inspect(engine).has_table("alembic_version")
    finally:
        store.close()
        engine.dispose()


def test_describe_hides_passwords_in_the_url_and_its_query():
    store = AgentRunsStore(database_url="postgresql://u:secret@db:5432/x?password=secret2")
    assert store.describe() == "postgresql://u:***@db:5432/x"


def test_the_user_form_of_a_postgres_url_works(postgres_url):
    assert postgres_url.startswith("postgresql://")
    assert parse_database_url(postgres_url.replace("postgresql://", "postgres://")).drivername == (
        "postgresql"
    )


@pytest.mark.parametrize(
    "url, problem",
    [
        ("not a url", "is not a database URL"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("postgresql://u@h:5432", "names no database"),
    ],
)
def test_bad_database_urls_name_the_variable(url, problem):
    with pytest.raises(ConfigurationError, match=f"^DATABASE_URL: {problem}"):
        parse_database_url(url)


def test_an_unreachable_database_fails_fast_naming_it():
    store = AgentRunsStore(database_url=f"postgresql://u:secret@127.0.0.1:{free_port()}/db")
    with pytest.raises(DatabaseUnavailableError) as failure:
        store.open()
    message = str(failure.value)
    assert "cannot reach the agent_runs database" in message and "(DATABASE_URL)" in message
    assert "secret" not in message and "127.0.0.1" in message
    store.close()


def test_sent_item_keys_come_from_other_windows_emails(store):
    def sent_row(run_id, window, top):
        row_id = store.get_or_create_row(run_id, window, "keywords")
        store.complete_run(row_id, {"top_five": top})
        assert store.claim_email(row_id)
        store.record_email_sent(row_id)

    sent_row("r1", "w1", [{"title": "A", "score": 1.0, "id": "a"},
                          {"title": "B", "score": 1.0, "url": "https://e.org/b"}])
    sent_row("r2", "w2", [{"title": "C", "score": 1.0}])
    failed = store.get_or_create_row("r3", "w3", "keywords")
    store.complete_run(failed, {"top_five": [{"title": "D", "score": 1.0}]})
    assert sent_item_keys(store.sent_top_fives(other_than_window="w2")) == {"id:a", "url:https://e.org/b"}
    assert sent_item_keys(store.sent_top_fives(other_than_window="w9")) == {
        "id:a", "url:https://e.org/b", "title:c",
    }
