"""The Dagster UI in a real browser, as a user drives it: under `make dev`, headless Chromium
finds agent_job from the Jobs list, launches one window from the Launchpad's partition
selector, watches the run page until the run succeeds, and reads the top_five table of
rank_top_five on the run page: the five outcomes stored in that run's agent_runs row.
No uncaught JavaScript error may happen on the way. The run page's screenshot is the README's
(docs/dagster-run-page.png, rewritten only with UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import create_engine, select

from agent_pipeline.jobs import agent_job
from agent_pipeline.schema import agent_runs
from agent_pipeline_tests.browser import chromium
from agent_pipeline_tests.topology import REPO, graphql, local_dev, run_status

pytestmark = pytest.mark.slow

# Generous: the run waits in the queue behind any schedule tick, on a busy machine.
RUN_MS = 180_000
# The first pages' queries may wait on a code server still loading the definitions.
ACTION_MS = 60_000
SCREENSHOT = REPO / "docs" / "dagster-run-page.png"


def agent_row(home: Path, run_id: str) -> dict:
    engine = create_engine(f"sqlite:///{home / 'agent' / 'agent_runs.sqlite3'}")
    try:
        with engine.connect() as connection:
            query = select(agent_runs).where(agent_runs.c.dagster_run_id == run_id)
            (row,) = connection.execute(query).mappings()
            return dict(row)
    finally:
        engine.dispose()


def launch_from_the_launchpad(page: Page, base_url: str, window: str) -> str:
    """Jobs list -> agent_job -> Launchpad -> partition -> Launch Run; the new run's id."""
    page.goto(base_url)
    # The icons' names are part of the links' accessible names ("column_lineage Jobs").
    page.get_by_role("navigation").get_by_role("link", name=re.compile(r"\bJobs$")).click()
    page.get_by_role("link", name=re.compile(r"\bagent_job$")).click()
    page.get_by_role("tab", name="Launchpad").click()

    partition = page.get_by_role("combobox", name="Partition")
    # Until the partition keys have loaded the field is a stand-in, which the loaded field
    # replaces, dropping what was typed; the sort button comes with the loaded one.
    expect(page.get_by_role("button", name="sort_by_alpha")).to_be_visible()
    # Typing narrows the suggestions (2000-odd windows) to the one key.
    partition.fill(window)
    page.get_by_role("menuitem", name=window, exact=True).click()
    expect(partition).to_have_value(window)
    # The window's tags are loaded after the choice; Launch Run is enabled even without them.
    expect(page.get_by_text(f"partition: {window}")).to_be_visible()
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    return re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)


def test_launch_a_window_from_the_launchpad_and_read_its_top_five(tmp_path):
    # A window a day back, so that no schedule tick during the test touches it.
    window = agent_job.partitions_def.get_partition_keys()[-150]
    with local_dev(tmp_path, {"AGENT_PIPELINE_HOME": str(tmp_path / "agent")}) as dev:
        base_url = f"http://127.0.0.1:{dev.web_port}"
        # A fresh instance greets the first page with a modal "Join the Dagster community"
        # prompt a second after it loads, over whatever the test is clicking by then. Mark it
        # seen, as its Skip button does, so that it never shows.
        graphql(dev.web_port, "mutation { setNuxSeen }")
        assert graphql(dev.web_port, "{ shouldShowNux }") == {"shouldShowNux": False}
        with chromium() as browser:
            # UTC as the partition keys are, so the screenshot's times match its window.
            context = browser.new_context(
                viewport={"width": 1400, "height": 1000}, timezone_id="UTC", locale="en-US"
            )
            page = context.new_page()
            page.set_default_timeout(ACTION_MS)
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            try:
                run_id = launch_from_the_launchpad(page, base_url, window)
                expect(page.get_by_text(f"partition: {window}")).to_be_visible()

                # The run's status tag ends as one of these; fail on the first, not at timeout.
                finished = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$"))
                expect(finished).to_be_visible(timeout=RUN_MS)
                expect(finished).to_have_text("Success")
                assert run_status(dev.web_port, run_id) == "SUCCESS"

                # The event log is virtualised: narrow it to the step so its rows are rendered.
                page.get_by_placeholder("Filter…").fill("step:rank_top_five")
                metadata = page.get_by_role("row").filter(
                    has=page.get_by_role("cell", name="top_five", exact=True)
                )
                # The table is on the run page itself: no link to click, no dialog.
                table = metadata.get_by_role("table")
                expect(table).to_be_visible()
                rows = table.get_by_role("row")
                expect(rows).to_have_count(6)  # the header and the five

                top_five = agent_row(tmp_path, run_id)["result"]["top_five"]
                assert len(top_five) == 5
                expect(rows.first).to_have_text(re.compile(r"rank\s*score\s*title\s*url"))
                for rank, outcome in enumerate(top_five, start=1):
                    expect(rows.nth(rank).get_by_role("cell")).to_have_text(
                        [str(rank), f"{outcome['score']:g}", outcome["title"],
                         outcome.get("url") or ""]
                    )
                page.screenshot(path=tmp_path / "dagster-run-page.png")
            except Exception:
                page.screenshot(path=tmp_path / "failure.png")
                print(f"Browser at {page.url}; screenshot {tmp_path / 'failure.png'}")
                print(dev.processes.logs())
                raise
            finally:
                context.close()

    assert page_errors == []
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "dagster-run-page.png", SCREENSHOT)
