"""Each of this package's resource classes has its Dagster config schema inferred once per
process, not three times per resource per run.

Dagster builds a resource for a run by copying it three times (its nested resources, the
init context, the run's config), and each copy infers the class's config schema from its
pydantic fields again: 15 inferences for agent_job's five resources, about 15 ms of a run of
some 130 (benchmarks/bench_pipeline.py). The schema depends only on the class and the fields
left out, and Dagster never changes a schema it has made (it makes new fields to apply
defaults), so one per class serves every copy. Only classes of agent_pipeline are kept;
every other class goes to Dagster's own inference as before."""

from __future__ import annotations

import functools
from typing import Any

import dagster._config.pythonic_config.resource as dagster_resource

_infer_schema = dagster_resource.infer_schema_from_config_class


@functools.cache
def _schema_of(model_cls: type, fields_to_omit: frozenset[str]) -> Any:
    return _infer_schema(model_cls, fields_to_omit=set(fields_to_omit))


def infer_schema_once(
    model_cls: type,
    description: str | None = None,
    fields_to_omit: set[str] | None = None,
    default: Any | None = None,
) -> Any:
    """Dagster's infer_schema_from_config_class, kept per class for this package's classes."""
    if (model_cls.__module__.startswith("agent_pipeline.") and description is None
            and default is None):
        return _schema_of(model_cls, frozenset(fields_to_omit or ()))
    return _infer_schema(model_cls, description, fields_to_omit, default)


def install() -> None:
    """From now on in this process, this package's resource classes have their schema
    inferred once. Where ConfigurableResourceFactory.__init__ looks the function up
    (Dagster 1.13); calling it again changes nothing."""
    dagster_resource.infer_schema_from_config_class = infer_schema_once
