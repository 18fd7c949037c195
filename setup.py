from setuptools import find_packages, setup

# The Dagster set is pinned together: the integration libraries stop at 0.29.27, which
# pins dagster 1.13.27, and unpinned pip resolves them to five-year-old releases.
DAGSTER = [
    "dagster==1.13.27",
    "dagster-webserver==1.13.27",
    "dagster-graphql==1.13.27",
    "dagster-dg-cli==1.13.27",
    "dagster-postgres==0.29.27",
    "dagster-docker==0.29.27",
]

setup(
    name="agent_pipeline",
    version="0.1.0",
    description="A Dagster code location that runs an AI agent every 10 minutes and emails the top five.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(exclude=["agent_pipeline_tests", "agent_pipeline_tests.*"]),
    package_data={
        "agent_pipeline": [
            "agents/*.json", "alembic/*.py", "alembic/versions/*.py", "templates/*",
        ],
    },
    install_requires=[
        *DAGSTER,
        # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which breaks Dagster's own
        # Postgres storage; 2.0 uses psycopg2 for the same URLs.
        "sqlalchemy>=2.0,<2.1",
        "alembic>=1.13,<2",
        "psycopg2-binary>=2.9,<3",
        "redis>=5,<9",
        "pandas>=2.2,<4",
        "httpx>=0.27,<1",
        "feedparser>=6.0,<7",
        "rank-bm25>=0.2.2,<0.3",
        # dagster-graphql's Python client passes arguments that gql 4 deprecates, and every
        # call would print a DeprecationWarning.
        "gql[requests]>=3.5,<4",
        "jinja2>=3.1,<4",
        "structlog>=24.1,<27",
        # The one retry mechanism: SMTP delivery and the LLM API (agent_pipeline/retries.py).
        "tenacity>=8.2,<10",
    ],
    extras_require={
        # Kubernetes run launcher, for the Helm deployment (README, "On Kubernetes").
        "k8s": ["dagster-k8s==0.29.27"],
        "dev": [
            "pytest>=8,<10",
            # The fast tier runs on two workers (pyproject.toml); each has its own Redis db.
            "pytest-xdist>=3.5,<4",
            "aiosmtpd>=1.4,<2",
            "trustme>=1.1",
            "ruff>=0.6",
            # Drives Debian's /usr/bin/chromium (make test installs it); Playwright's own
            # browser download is never used.
            "playwright>=1.45,<2",
        ],
    },
)
