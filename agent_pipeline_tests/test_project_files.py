"""The files around the code agree with it: configuration docs, compose file, instance."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dagster_docker.container_context import DockerContainerContext

from agent_pipeline.settings import ENVIRONMENT_VARIABLES, resources_from_env

REPO = Path(__file__).resolve().parent.parent


def test_every_variable_read_is_listed_and_documented():
    """settings.Environment is the one reader of the environment: no other module of the
    package reads it, and each of its variables is in .env.example (docs/configuration.md:
    test_docs.py)."""
    package = REPO / "agent_pipeline"
    readers = [
        str(path.relative_to(REPO)) for path in package.rglob("*.py")
        if re.search(r"os\.environ|getenv\(", path.read_text())
    ]
    assert readers == ["agent_pipeline/settings.py"]
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^# ?([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    assert set(ENVIRONMENT_VARIABLES) <= documented


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def production_instance() -> dict:
    return yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())


DAGSTER_STORAGE_VARIABLES = {
    "DAGSTER_POSTGRES_HOST",
    "DAGSTER_POSTGRES_PORT",
    "DAGSTER_POSTGRES_USER",
    "DAGSTER_POSTGRES_PASSWORD",
    "DAGSTER_POSTGRES_DB",
    "DAGSTER_STORAGE_DIR",
}


def test_compose_has_the_production_services_with_health_checks():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "mailpit", "user_code", "webserver", "daemon"}
    for name in ("postgres", "redis", "user_code"):
        assert "healthcheck" in services[name]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "grpc-health-check" in services["user_code"]["healthcheck"]["test"]
    for name in ("user_code", "webserver", "daemon"):
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert set(conditions.values()) == {"service_healthy"}
        assert "postgres" in conditions
    assert all(service["networks"] == ["agent_pipeline"] for service in services.values())
    assert services["webserver"]["ports"] == ["127.0.0.1:${WEBSERVER_HOST_PORT:-3000}:3000"]


def test_every_run_variable_reaches_the_run_containers():
    """Run containers inherit nothing: each variable a run reads must be in the launcher's
    env_vars, and set on the daemon, whose values the launcher copies."""
    services = compose()["services"]
    env_vars = set(production_instance()["run_launcher"]["config"]["env_vars"])
    needed = set(ENVIRONMENT_VARIABLES) | DAGSTER_STORAGE_VARIABLES
    assert env_vars == needed
    for name in ("daemon", "user_code"):
        assert needed <= set(services[name]["environment"]), name
    assert DAGSTER_STORAGE_VARIABLES <= set(services["webserver"]["environment"])


def test_names_agree_across_compose_instance_and_workspace():
    document = compose()
    services = document["services"]
    launcher = production_instance()["run_launcher"]["config"]
    # The storage volume that run containers mount (by this name without compose).
    volume_name, mount = launcher["container_kwargs"]["volumes"][0].split(":")
    assert f"{volume_name}:{mount}" in services["daemon"]["volumes"]
    assert services["user_code"]["environment"]["DAGSTER_STORAGE_DIR"] == mount
    # The image run containers start from is the one compose builds.
    assert services["user_code"]["environment"]["DAGSTER_CURRENT_IMAGE"] == (
        services["user_code"]["image"]
    )
    assert services["daemon"]["image"] == services["user_code"]["image"]
    # The workspace points at the code server's service name and port.
    workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    assert server["host"] == "user_code"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f'"-p", "{server["port"]}"' in dockerfile
    assert f'"--location-name", "{server["location_name"]}"' in dockerfile
    assert f'"-p", "{server["port"]}"' in " ".join(
        f'"{part}"' for part in services["user_code"]["healthcheck"]["test"]
    ).replace('" "', '", "')
    # Dagster's storage host is the postgres service.
    assert services["daemon"]["environment"]["DAGSTER_POSTGRES_HOST"] == "postgres"
    assert "@postgres:5432/" in services["daemon"]["environment"]["DATABASE_URL"]
    assert "redis://redis:" in services["daemon"]["environment"]["REDIS_URL"]


def test_the_production_instance_queues_retries_and_monitors():
    instance = production_instance()
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert instance["run_coordinator"]["config"]["max_concurrent_runs"] == 1
    assert instance["run_launcher"]["class"] == "DockerRunLauncher"
    assert instance["run_launcher"]["config"]["container_kwargs"]["auto_remove"] is True
    assert instance["run_monitoring"]["enabled"] is True
    assert instance["run_monitoring"]["max_runtime_seconds"] > 0
    assert instance["run_retries"] == {"enabled": True, "max_retries": 2}
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        assert set(instance[storage]["config"]["postgres_db"]) == {
            "hostname", "port", "username", "password", "db_name",
        }
    assert instance["event_log_storage"]["class"] == "PooledPostgresEventLogStorage"


def test_the_dockerfile_runs_as_a_non_root_user_on_slim_python():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("# ")
    assert "ARG PYTHON_IMAGE=python:3.11-slim\nFROM ${PYTHON_IMAGE}\n" in dockerfile
    assert "\nUSER dagster\n" in dockerfile
    assert "COPY deploy/dagster.yaml" in dockerfile


def test_the_env_example_has_the_compose_settings():
    example = (REPO / ".env.example").read_text()
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "RUN_MEMORY_LIMIT",
                 "REDIS_MAXMEMORY"):
        assert re.search(rf"^# ?{name}=", example, re.MULTILINE), name


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


def rendered_compose(tmp_path: Path, **variables: str) -> dict:
    """The compose file as `docker-compose config` renders it from variables alone (an empty
    env file: a developer's .env must not leak in)."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    render = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "--env-file", str(env_file),
         "config"],
        capture_output=True, text=True, env={"PATH": os.environ["PATH"], **variables},
    )
    assert render.returncode == 0, render.stderr
    return yaml.safe_load(render.stdout)


def rendered_settings(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The daemon's environment as rendered from variables alone."""
    environment = rendered_compose(tmp_path, **variables)["services"]["daemon"]["environment"]
    return {name: "" if value is None else str(value) for name, value in environment.items()}


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed"
)
@pytest.mark.parametrize(
    "variables, network, volume",
    [({}, "agent_pipeline", "agent_pipeline_storage"),
     ({"DOCKER_NETWORK": "engine_test", "STORAGE_VOLUME": "engine_test_storage"},
      "engine_test", "engine_test_storage")],
)
def test_run_containers_join_the_stacks_network_and_mount_its_volume(
    tmp_path, variables, network, volume
):
    """Run containers are made by DockerRunLauncher, not by compose: they find the network
    and the volume by name, which the code server's container context passes on."""
    document = rendered_compose(tmp_path, **variables)
    assert document["networks"]["agent_pipeline"]["name"] == network
    assert document["volumes"]["agent_pipeline_storage"]["name"] == volume
    context = json.loads(
        document["services"]["user_code"]["environment"]["DAGSTER_CONTAINER_CONTEXT"]
    )["docker"]
    assert context["networks"] == [network]
    assert context["container_kwargs"]["volumes"] == [f"{volume}:/opt/dagster/storage"]


STAND_INS = {"POSTGRES_IMAGE": "local/postgres", "REDIS_IMAGE": "local/redis",
             "MAIL_IMAGE": "local/mail", "PYTHON_IMAGE": "local/python"}


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed"
)
@pytest.mark.parametrize(
    "variables, images",
    [({}, {"postgres": "postgres:16", "redis": "redis:7", "mailpit": "axllent/mailpit:v1.21",
           "python": "python:3.11-slim"}),
     (STAND_INS, {"postgres": "local/postgres", "redis": "local/redis", "mailpit": "local/mail",
                  "python": "local/python"})],
)
def test_the_images_are_the_official_ones_unless_a_variable_names_another(
    tmp_path, variables, images
):
    """Where no registry answers, the stand-ins built from Debian packages take the official
    images' place through these variables; a user's path is unchanged."""
    services = rendered_compose(tmp_path, **variables)["services"]
    for service in ("postgres", "redis", "mailpit"):
        assert services[service]["image"] == images[service]
    for service in ("user_code", "webserver", "daemon"):
        assert services[service]["build"]["args"] == {"PYTHON_IMAGE": images["python"]}
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim\nFROM ${PYTHON_IMAGE}\n" in dockerfile


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed"
)
@pytest.mark.parametrize(
    "variables, run_memory, redis_memory",
    [({}, "1g", "256mb"), ({"RUN_MEMORY_LIMIT": "512m", "REDIS_MAXMEMORY": "64mb"}, "512m",
                          "64mb")],
)
def test_run_containers_and_redis_have_memory_caps(tmp_path, variables, run_memory,
                                                    redis_memory):
    services = rendered_compose(tmp_path, **variables)["services"]
    # What DockerRunLauncher starts a run container with: its own config from the instance,
    # merged with the code location's container context, as Dagster merges them.
    launcher = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["run_launcher"]
    own = launcher["config"]["container_kwargs"]
    assert (own["mem_limit"], own["memswap_limit"]) == ("1g", "1g")  # without compose too
    context = DockerContainerContext(
        container_kwargs=launcher["config"].get("container_kwargs")
    ).merge(DockerContainerContext.create_from_config(
        json.loads(services["user_code"]["environment"]["DAGSTER_CONTAINER_CONTEXT"])
    ))
    kwargs = context.container_kwargs
    assert (kwargs["mem_limit"], kwargs["memswap_limit"]) == (run_memory, run_memory)
    assert kwargs["auto_remove"] and kwargs["volumes"]  # the launcher's own are kept
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory") + 1] == redis_memory
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed"
)
@pytest.mark.slow
def test_compose_sends_to_mailpit_until_smtp_host_is_set_then_uses_starttls(tmp_path):
    trial = resources_from_env(rendered_settings(tmp_path))["smtp"]
    assert (trial.host, trial.port, trial.security) == ("mailpit", 1025, "none")
    real = resources_from_env(rendered_settings(tmp_path, SMTP_HOST="smtp.example.com"))["smtp"]
    assert (real.host, real.port, real.security) == ("smtp.example.com", 587, "starttls")
    ssl = resources_from_env(
        rendered_settings(tmp_path, SMTP_HOST="smtp.example.com", SMTP_SECURITY="ssl")
    )["smtp"]
    assert (ssl.port, ssl.security) == (465, "ssl")


def test_the_local_instance_queues_one_run_at_a_time():
    instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert instance["run_coordinator"]["config"]["max_concurrent_runs"] == 1
    assert instance["storage"]["sqlite"]["base_dir"].startswith(".dagster_home/")


def test_make_dev_uses_this_folder_as_dagster_home():
    """The local deployment test runs these files from a copy; this pins the command."""
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", "setup.py", "dev"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert dry_run.returncode == 0, dry_run.stderr
    # The dry run prints the install recipe too; the dev command is the one that runs Dagster.
    (command,) = [line for line in dry_run.stdout.splitlines() if "dev.py" in line]
    assert command == f"DAGSTER_HOME={REPO} .venv/bin/python deploy/dev.py --port 3000"


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical_name(name)] = version
    return pins


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_installed_dependencies_are_the_pinned_ones():
    """make test installs with -c constraints.txt: every installed package that the file
    pins is at its version, and the file pins every requirement of setup.py's."""
    pins = pinned_versions()
    installed = {
        canonical_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }
    differing = {
        name: (installed[name], version)
        for name, version in pins.items()
        if name in installed and installed[name] != version
    }
    assert differing == {}
    required = importlib.metadata.requires("agent_pipeline") or []
    names = {canonical_name(re.split(r"[\s\[<>=!~;]", requirement)[0]) for requirement in required}
    assert sorted(names - set(pins)) == []


def test_the_image_and_the_makefile_install_with_the_constraints():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY setup.py pyproject.toml constraints.txt ./" in dockerfile
    assert 'pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}"' in dockerfile
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", "constraints.txt", "install"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert "pip install -c constraints.txt -e '.[dev]'" in dry_run.stdout


INSTANCE_FILES = ("dagster.yaml", "deploy/dagster.yaml")


def test_each_part_of_ours_the_instance_files_name_has_a_stock_part_that_loads():
    import importlib

    stock = yaml.safe_load((REPO / "deploy" / "stock-parts.yaml").read_text())
    ours = {
        section
        for name in INSTANCE_FILES
        for section, part in yaml.safe_load((REPO / name).read_text()).items()
        if isinstance(part, dict) and str(part.get("module")).startswith("agent_pipeline.")
    }
    assert ours == {"run_launcher", "run_storage", "event_log_storage", "compute_logs"}
    assert ours <= set(stock)
    for part in filter(None, stock.values()):
        assert isinstance(getattr(importlib.import_module(part["module"]), part["class"]), type)


def test_the_local_instance_opens_on_the_stock_parts_with_the_overlay_alone(tmp_path):
    from dagster import DefaultRunLauncher
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

    from agent_pipeline_tests.topology import instance_from_config, with_engine_parts

    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    local["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    local["compute_logs"]["config"]["base_dir"] = str(tmp_path / "compute_logs")
    with instance_from_config(tmp_path, with_engine_parts(local, "stock")) as instance:
        assert type(instance.run_launcher) is DefaultRunLauncher
        assert type(instance.compute_log_manager) is LocalComputeLogManager
    with instance_from_config(tmp_path, with_engine_parts(local, "ours")) as instance:
        assert type(instance.run_launcher).__name__ == "ForkServerRunLauncher"
        assert type(instance.compute_log_manager).__name__ == "TeeComputeLogManager"


def test_the_fork_server_stays_warm_from_one_schedule_tick_to_the_next():
    """A fork server that exits between two ticks makes every scheduled run pay its cold start
    (2.2 s to the row instead of 1.1 s)."""
    from agent_pipeline.jobs import agent_job

    partitions = agent_job.partitions_def
    window = partitions.time_window_for_partition_key(partitions.get_last_partition_key())
    launcher = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert launcher["idle_timeout_seconds"] > (window.end - window.start).total_seconds()
