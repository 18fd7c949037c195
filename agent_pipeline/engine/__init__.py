"""Parts of Dagster's engine of our own, each in place of a stock part and each chosen by the
instance file alone (dagster.yaml, deploy/dagster.yaml), never by the code location:

- run_launcher.ForkServerRunLauncher, for the code server's DefaultRunLauncher (local);
- storage.PooledPostgresRunStorage and PooledPostgresEventLogStorage, for dagster-postgres'
  PostgresRunStorage and PostgresEventLogStorage (production);
- compute_logs.TeeComputeLogManager, for LocalComputeLogManager (both).

Every private `dagster._` import of the project is in this package (the few elsewhere are
named, with their reason, in agent_pipeline_tests/test_engine_private_surface.py, which also
pins each private function, method and attribute these parts rely on). What each part gains
against the stock one: docs/benchmarks.md; how to go back to the stock parts:
docs/production.md."""
