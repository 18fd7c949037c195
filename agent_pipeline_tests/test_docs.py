"""The README and docs/ stay true: every variable the code reads is documented with its
default, no page names one it does not read, the commands' dates are windows that exist, the
commands, scripts and links they name exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from agent_pipeline.settings import ENVIRONMENT_VARIABLES, Environment

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
PAGES = {path.name: path.read_text() for path in (REPO / "docs").glob("*.md")}
VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]{2,})`")


def table_rows(text: str) -> list[tuple[list[str], str]]:
    """(the variables named in the first cell, the second cell) of each table row."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 2:
            rows.append((VARIABLE.findall(cells[0]), cells[1]))
    return rows


def shown(default: object) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_the_configuration_page_lists_every_variable_with_its_default():
    rows = table_rows(PAGES["configuration.md"])
    listed = [name for names, _ in rows for name in names]
    assert sorted(listed) == sorted(ENVIRONMENT_VARIABLES)  # each once, none the code lacks
    for names, default_cell in rows:
        for name in names:
            default = Environment.model_fields[name].default
            if default is not None:
                assert default_cell.replace("`", "").startswith(shown(default)), name


def test_the_readme_names_only_variables_the_code_reads():
    configuration = README[README.index("## Configuration"):README.index("## More")]
    named = {name for names, _ in table_rows(configuration) for name in names}
    assert named and named <= set(ENVIRONMENT_VARIABLES)


def test_the_readme_backfill_dates_are_windows_that_exist():
    from agent_pipeline.jobs import agent_job

    windows = set(agent_job.partitions_def.get_partition_keys())
    commands = "\n".join(re.findall(r"```sh\n(.*?)```", README, re.DOTALL))
    # A fixed date in a command fails once it leaves the history: none may be written out.
    assert re.findall(r"\d{4}-\d\d-\d\d-\d\d:\d\d", commands) == []
    expressions = re.findall(r'"\$\((date [^)]*)\)"', commands)
    assert len(expressions) >= 3
    for expression in expressions:
        key = subprocess.run(["bash", "-c", expression], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert key in windows, (expression, key)


def test_the_commands_scripts_and_links_the_docs_name_exist():
    makefile = (REPO / "Makefile").read_text()
    for text in (README, *PAGES.values()):
        for target in re.findall(r"`make ([a-z-]+)", text):
            assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"make {target}"
        for script in re.findall(r"benchmarks/(bench_\w+\.py)", text):
            assert (REPO / "benchmarks" / script).exists(), script
    for name, text in (("README.md", README), *((f"docs/{n}", t) for n, t in PAGES.items())):
        base = (REPO / name).parent
        for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))(?:#([a-z0-9-]+))?\)", text):
            path, anchor = target
            assert (base / path).exists(), f"{name}: {path}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", (base / path).read_text(), re.MULTILINE)
                slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                         for h in headings}
                assert anchor in slugs, f"{name}: {path}#{anchor}"


def test_the_readme_is_read_in_five_minutes():
    assert len(README) <= 12_000
