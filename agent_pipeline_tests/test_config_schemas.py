"""The resources' Dagster config schemas are inferred once per class and process
(agent_pipeline.engine.config_schemas), where Dagster infers them three times per resource
on every run; the schemas still check the config they are given."""

from __future__ import annotations

import os

import dagster._config.pythonic_config.config as dagster_config
import pytest
from dagster import DagsterInvalidConfigError

import agent_pipeline.engine.config_schemas as config_schemas
from agent_pipeline.jobs import agent_job
from agent_pipeline.settings import resources_from_env
from agent_pipeline_tests.helpers import in_memory_instance, window_keys


def fields_inferred_in_one_run(monkeypatch: pytest.MonkeyPatch, window: str) -> list[str]:
    """The resource config fields whose Dagster config type was inferred from pydantic's
    during one run of agent_job (a schema inference converts each field of its class)."""
    converted: list[str] = []
    convert = dagster_config._convert_pydantic_field

    def counted(pydantic_field, *args, **kwargs):
        converted.append(str(pydantic_field.description)[:40])
        return convert(pydantic_field, *args, **kwargs)

    monkeypatch.setattr(dagster_config, "_convert_pydantic_field", counted)
    result = agent_job.execute_in_process(
        partition_key=window, resources=resources_from_env(os.environ),
        instance=in_memory_instance(),
    )
    assert result.success
    return converted


def test_a_run_infers_no_schema_its_process_has_inferred_before(
    production_env, monkeypatch
):
    first, second = window_keys(2)
    config_schemas.install()  # as definitions.py does
    config_schemas._schema_of.cache_clear()
    # Each field of the five resources agent_job uses, once (Dagster alone: three times on
    # every run).
    assert len(fields_inferred_in_one_run(monkeypatch, first)) > 10
    assert fields_inferred_in_one_run(monkeypatch, second) == []


def test_a_resource_config_the_schema_does_not_have_is_refused(production_env):
    config_schemas.install()
    (window,) = window_keys(1)
    for _ in range(2):  # the second time from the kept schemas
        with pytest.raises(DagsterInvalidConfigError, match="no_such_setting"):
            agent_job.execute_in_process(
                partition_key=window, resources=resources_from_env(os.environ),
                instance=in_memory_instance(),
                run_config={"resources": {"digest": {"config": {"no_such_setting": 1}}}},
            )
