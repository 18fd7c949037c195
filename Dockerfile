# One image for the whole production stack: the gRPC code server (user_code), the webserver,
# the daemon, and the run containers that DockerRunLauncher starts from it, so that every
# process runs the same pinned Dagster set and the same project code.
# The base image: Docker Hub's by default; the engine test builds the image on a local stand-in
# (make test, where no registry answers).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DAGSTER_STORAGE_DIR=/opt/dagster/storage

WORKDIR /opt/dagster/app

# Extras to install: empty for docker compose, "k8s" for the Helm chart's run launcher.
ARG EXTRAS=""

# Dependencies first, so that a code change does not reinstall them; at the versions of
# constraints.txt, as make dev and make test install them.
COPY setup.py pyproject.toml constraints.txt ./
RUN mkdir agent_pipeline && touch agent_pipeline/__init__.py \
    && pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" && pip uninstall -y agent_pipeline \
    && rm -rf agent_pipeline build

COPY agent_pipeline ./agent_pipeline
RUN pip install --no-deps . && rm -rf build

RUN useradd --create-home --uid 10001 dagster \
    && mkdir -p "$DAGSTER_HOME" "$DAGSTER_STORAGE_DIR" \
    && chown -R dagster "$DAGSTER_HOME" "$DAGSTER_STORAGE_DIR"
COPY deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
COPY deploy/workspace.yaml /opt/dagster/app/workspace.yaml

USER dagster

EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "agent_pipeline.definitions", "--location-name", "agent_pipeline"]
