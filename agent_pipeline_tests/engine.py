"""A Docker engine for the engine test, and the images the compose file names: the official
ones where the engine can pull them, else stand-ins built here from Debian packages (a
debootstrap bookworm root imported as a base image, then engine_images/*/Dockerfile on it).
Stand-ins are kept between runs, so a second `make test` builds nothing again."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from agent_pipeline_tests.services import free_port
from agent_pipeline_tests.topology import graphql

IMAGES = Path(__file__).resolve().parent / "engine_images"
BASE_IMAGE = "agent_pipeline_test/bookworm"
# The compose file's image variables: the official image, and the stand-in built where no
# registry answers (from the engine_images folder of that name).
OFFICIAL_IMAGES = {
    "PYTHON_IMAGE": "python:3.11-slim",
    "POSTGRES_IMAGE": "postgres:16",
    "REDIS_IMAGE": "redis:7",
    "MAIL_IMAGE": "axllent/mailpit:v1.21",
}
STAND_INS = {
    "PYTHON_IMAGE": ("agent_pipeline_test/python:3.11", "python"),
    "POSTGRES_IMAGE": ("agent_pipeline_test/postgres", "postgres"),
    "REDIS_IMAGE": ("agent_pipeline_test/redis", "redis"),
    "MAIL_IMAGE": ("agent_pipeline_test/mail", "mail"),
}
# The machine's CA bundle: where PyPI is reached through a TLS proxy, its CA is only there.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class EngineUnavailable(Exception):
    """No Docker engine answers and none can be started here: the reason to skip."""


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check)


def engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return docker("info", timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def apt_install(*packages: str) -> None:
    """Debian packages, as root where apt-get is; EngineUnavailable otherwise."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EngineUnavailable(f"{', '.join(packages)} missing, and only root can install them")
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True,
                   capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


@contextmanager
def docker_engine(log_dir: Path) -> Iterator[None]:
    """An engine that answers: the one running, or a dockerd started here (installed from
    Debian's docker.io when missing) and stopped at the end."""
    if engine_answers():
        yield
        return
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and only root can start dockerd")
    if not shutil.which("dockerd") or not shutil.which("docker"):
        apt_install("docker.io")
    log = open(log_dir / "dockerd.log", "w")  # noqa: SIM115 (closed below)
    daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"dockerd did not start: {(log_dir / 'dockerd.log').read_text()[-500:]}"
                )
            time.sleep(0.5)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()


def image_variables() -> dict[str, str]:
    """The compose file's image variables: none where the official images can be pulled (a
    user's machine), else the stand-ins, built when missing."""
    if all(_present_or_pulled(image) for image in OFFICIAL_IMAGES.values()):
        return {}
    if not _present(BASE_IMAGE):
        _import_base_image()
    for tag, folder in STAND_INS.values():
        if not _present(tag):
            _build_stand_in(tag, folder)
    return {variable: tag for variable, (tag, _folder) in STAND_INS.items()}


def _present(image: str) -> bool:
    return docker("image", "inspect", image, check=False).returncode == 0


def _present_or_pulled(image: str) -> bool:
    return _present(image) or docker("pull", image, check=False, timeout=300).returncode == 0


def _debian_mirror() -> str:
    """The mirror this machine's apt uses (a proxy or a snapshot may be all that answers)."""
    for source in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if source.is_file():
            found = re.search(r"(?:^URIs:|^deb)\s+(https?://\S+/debian)\b", source.read_text(),
                              re.MULTILINE)
            if found:
                return found.group(1)
    return DEFAULT_MIRROR


def _import_base_image() -> None:
    """A minimal Debian bookworm root (debootstrap, about 30 s), imported as BASE_IMAGE."""
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="bookworm-") as root:
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", root, _debian_mirror()],
                       check=True, capture_output=True)
        archive = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=archive.stdout, check=True,
                       capture_output=True)
        archive.wait()


def _build_stand_in(tag: str, folder: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{folder}-") as context:
        shutil.copytree(IMAGES / folder, context, dirs_exist_ok=True)
        shutil.copy(HOST_CA_BUNDLE, Path(context) / "ca-certificates.crt")
        # The host's network: apt-get and pip reach the mirrors as the host does.
        docker("build", "--network", "host", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag,
               context, timeout=900)


REPO = Path(__file__).resolve().parent.parent
USER_CODE_IMAGE = "agent_pipeline_test/user_code"
CODE_LOCATION_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise EngineUnavailable("neither `docker compose` nor docker-compose is installed")


@dataclass
class Stack:
    """A compose project of docker-compose.yml, up."""

    project: str
    variables: dict[str, str]
    env_file: Path
    command: list[str]

    @property
    def web_port(self) -> int:
        return int(self.variables["WEBSERVER_HOST_PORT"])

    @property
    def database_url(self) -> str:
        return (f"postgresql://agent_pipeline:agent_pipeline@127.0.0.1:"
                f"{self.variables['POSTGRES_HOST_PORT']}/agent_pipeline")

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        # Only these variables: a developer's own settings must not reach the test's stack.
        environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                       **self.variables}
        done = subprocess.run(
            [*self.command, "-p", self.project, "--env-file", str(self.env_file),
             "-f", str(REPO / "docker-compose.yml"), *args],
            capture_output=True, text=True, timeout=timeout, env=environment,
        )
        if done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def rows(self) -> list[dict]:
        with psycopg2.connect(self.database_url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT partition_key, dagster_run_id, status, email_status, "
                           "error_message FROM agent_runs ORDER BY id")
            names = [column.name for column in cursor.description]
            found = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        connection.close()
        return found


def wait_until(check, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:  # noqa: BLE001 (not up yet)
            found = None
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextmanager
def compose_stack(folder: Path, project: str) -> Iterator[Stack]:
    """docker-compose.yml up (built) under project, on free ports and a network and volume of
    its own, on an engine (docker_engine) and images (image_variables) as above; taken down at
    the end. EngineUnavailable when there can be no engine."""
    with ExitStack() as cleanup:
        cleanup.enter_context(docker_engine(folder))
        command = compose_command()
        variables = {
            **image_variables(),
            "USER_CODE_IMAGE": USER_CODE_IMAGE,
            "DOCKER_NETWORK": f"{project}_network",
            "STORAGE_VOLUME": f"{project}_storage",
            **{name: str(free_port()) for name in (
                "WEBSERVER_HOST_PORT", "POSTGRES_HOST_PORT", "REDIS_HOST_PORT",
                "MAIL_HOST_PORT", "MAIL_UI_HOST_PORT")},
        }
        env_file = folder / "empty.env"
        env_file.write_text("")
        running = Stack(project, variables, env_file, command)
        cleanup.callback(_take_down, running)
        before = _image_id(USER_CODE_IMAGE)
        running.compose("up", "-d", "--build")
        if before and before != _image_id(USER_CODE_IMAGE):
            docker("rmi", before, check=False)  # the previous build, else left dangling
        wait_until(lambda: code_location_loaded(running.web_port), "the code location")
        yield running


def _image_id(image: str) -> str | None:
    found = docker("image", "inspect", "-f", "{{.Id}}", image, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def _take_down(stack: Stack) -> None:
    """Everything the stack made but the images (kept: the next run builds nothing again):
    its containers, run containers included, its network and its volumes."""
    project_label = f"label=com.docker.compose.project={stack.project}"
    for container in docker("ps", "-aq", "--filter", project_label, check=False).stdout.split():
        docker("rm", "-f", container, check=False)
    for run_container in docker("ps", "-aq", "--filter", "label=dagster/job_name",
                                check=False).stdout.split():
        networks = docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", run_container,
                          check=False).stdout
        if stack.variables["DOCKER_NETWORK"] in networks:
            docker("rm", "-f", run_container, check=False)
    stack.compose("down", "-v", "--remove-orphans")


def code_location_loaded(port: int) -> bool:
    entries = graphql(port, CODE_LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
    return [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
        ("agent_pipeline", "RepositoryLocation")
    ]
