"""End-to-end tests: a real `dagster dev` server, its GraphQL API and a headless browser."""
