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
from contextlib import contextmanager
from pathlib import Path

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
