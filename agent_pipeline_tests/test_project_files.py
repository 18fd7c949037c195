"""The files around the code agree with it: configuration docs, compose file, instance."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent_pipeline.settings import ENVIRONMENT_VARIABLES

REPO = Path(__file__).resolve().parent.parent


def variables_read_by(path: Path) -> set[str]:
    source = path.read_text()
    return set(re.findall(r'env(?:\.get\(|, )"([A-Z][A-Z0-9_]+)"', source))


def test_every_variable_read_is_listed_and_documented():
    read = variables_read_by(REPO / "agent_pipeline" / "settings.py")
    assert read == set(ENVIRONMENT_VARIABLES)
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^# ?([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    assert set(ENVIRONMENT_VARIABLES) <= documented
    readme = (REPO / "README.md").read_text()
    assert [name for name in ENVIRONMENT_VARIABLES if f"`{name}`" not in readme] == []


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_services_have_health_checks_and_one_network():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "mailpit"}
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert all(service["networks"] == ["agent_pipeline"] for service in services.values())


def test_the_env_example_compose_block_matches_the_compose_file():
    services = compose()["services"]
    example = (REPO / ".env.example").read_text().split("docker-compose.yml", 1)[1]
    values = dict(re.findall(r"^# ([A-Z_]+)=(\S+)", example, re.MULTILINE))
    postgres = services["postgres"]["environment"]
    assert values["DATABASE_URL"] == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@localhost:5432/{postgres['POSTGRES_DB']}"
    )
    assert any(port.endswith(f":{values['SMTP_PORT']}") for port in services["mailpit"]["ports"])
    assert any(port.endswith(":6379") for port in services["redis"]["ports"])


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (apt-get install docker-compose); "
    "the structural tests above still run",
)
def test_docker_compose_accepts_the_file():
    check = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr


def test_the_local_instance_queues_one_run_at_a_time():
    instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert instance["concurrency"]["runs"]["max_concurrent_runs"] == 1
    assert instance["storage"]["sqlite"]["base_dir"].startswith(".dagster_home/")


def test_make_dev_uses_this_folder_as_dagster_home():
    """The local deployment test runs these files from a copy; this pins the command."""
    dry_run = subprocess.run(
        ["make", "-n", "-W", "setup.py", "dev"], cwd=REPO, capture_output=True, text=True
    )
    assert dry_run.returncode == 0, dry_run.stderr
    command = dry_run.stdout.strip().splitlines()[-1]
    assert command == f"DAGSTER_HOME={REPO} .venv/bin/dg dev -w workspace.yaml --port 3000"
