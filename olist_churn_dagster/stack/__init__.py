"""The deployed stack on one machine: Postgres, the Dagster servers and MLflow's server.

Not imported by the code location; `make stack` and the stack's tests use it.
"""
